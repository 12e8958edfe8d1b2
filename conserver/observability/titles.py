"""Process titles: what `ps` shows for every conserver process (setproctitle)."""

from __future__ import annotations

try:  # setproctitle is a dependency, but a title is never worth a crash
    from setproctitle import setproctitle as _setproctitle
except ImportError:  # pragma: no cover
    _setproctitle = None


def set_title(title: str) -> None:
    if _setproctitle is not None:
        _setproctitle(title)


def process_title(pid: int) -> str:
    """What `ps` shows for ``pid`` (setproctitle rewrites argv, so /proc/PID/cmdline has it)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return fh.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""
