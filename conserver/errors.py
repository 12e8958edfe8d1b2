"""Exit codes of every conserver process, and what each one means (one table).

Three audiences read them: the service manager reads the main process's code (systemd's
``RestartPreventExitStatus=2``: restarting cannot fix a bad setting, but a crash loop is
worth a restart), the supervisor reads its workers' codes (a boot failure counts as a
crash and is logged as such), and an operator's shell reads the commands' codes.
"""

from __future__ import annotations

import enum
import signal


class ExitCode(enum.IntEnum):
    """``code, what a log line says of a process that ended with it, when it is used``."""

    says: str
    meaning: str

    def __new__(cls, code: int, says: str, meaning: str) -> "ExitCode":
        member = int.__new__(cls, code)
        member._value_ = code
        member.says = says
        member.meaning = meaning
        return member

    OK = (0, "exited cleanly",
          "done: a drained worker, a supervisor after SIGTERM, a command that did its work")
    FAILED = (1, "failed",
              "a worker's loop raised (it is restarted); a command found nothing to act on "
              "(`dlq show` of an unknown uuid, `dlq requeue` of nothing)")
    CONFIG_ERROR = (2, "stopped on a bad setting or usage",
                    "a setting or a command line is invalid; the message names it. "
                    "Not restarted by systemd: only a fixed configuration helps")
    BOOT_ERROR = (3, "failed to boot",
                  "a worker's task could not start (import, open); the supervisor counts it "
                  "as an early death, so a task that never boots ends in CRASH_LOOP")
    CRASH_LOOP = (4, "gave up after a crash loop",
                  "more than CONSERVER_CRASH_LIMIT workers died within CONSERVER_MIN_UPTIME of "
                  "starting in CONSERVER_CRASH_WINDOW; the supervisor drained and stopped, "
                  "for the service manager to restart it")


def describe_exit(code: int | None) -> str:
    """How the supervisor words a child's ``exitcode`` (None: running, -N: killed by signal N)."""
    if code is None:
        return "is still running"
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    try:
        says = ExitCode(code).says
    except ValueError:
        says = "exited"
    return f"{says} (exit code {code})"  # one marker for every exit that was not a signal
