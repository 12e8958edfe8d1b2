"""The supervisor's decisions, driven turn by turn on a fake clock with fake processes.

Restart, backoff, crash loop, drain and rolling replacement are decided by the real
:class:`Supervisor` here; only its ``Environment`` (clock, process creation, signals,
waiting) is a fake, so a minute of supervisor life takes milliseconds. The same
behaviour with real processes and real signals: tests/process/test_supervisor.py.

Every setting is the shipped default except the pipeline (a task that needs no Redis)
and the scheduler and monitor, turned off so the tests count only queue workers.
"""
from __future__ import annotations

import heapq
import itertools
import signal
from typing import Callable

import pytest

from conserver.config import load_config
from conserver.errors import ExitCode
from conserver.process.board import BUSY, EXITED, IDLE, Board
from conserver.process.restarts import BACKOFF_MAX, BACKOFF_START, Death, classify_death
from conserver.process.supervisor import Supervisor

EPOCH = 1_700_000_000.0  # the fake wall clock is the fake monotonic clock plus this
TICK_SLACK = 0.3  # deadlines are checked once per loop turn (0.2 s apart), plus 0.05 s for a stack dump


class FakeProcess:
    """A child that does what its test scripts: boot, work, die, drain on SIGTERM."""

    def __init__(self, env: "FakeEnvironment", args: tuple):
        self.env = env
        self.spec, board = args
        self.slot = board.slots[self.spec.slot_index]
        self.pid: int | None = None
        self.exitcode: int | None = None
        self.sentinel = -1
        self.started_at = self.ended_at = None
        self.received: list[int] = []
        self.hung = False  # stops heartbeats and ignores SIGTERM
        self.drain_seconds = 0.0  # how long a SIGTERM takes to end it

    # --- what the supervisor calls ---
    def start(self) -> None:
        if self.env.refuse_starts:
            self.env.refuse_starts -= 1
            raise OSError(11, "Resource temporarily unavailable")
        self.pid = next(self.env.pids)
        self.slot.pid = self.pid
        self.started_at = self.env.now
        self.env.processes.append(self)
        self.env.on_start(self)

    def is_alive(self) -> bool:
        return self.pid is not None and self.exitcode is None

    def join(self, timeout: float | None = None) -> None:
        pass  # it ends when its script says, on the fake clock

    def close(self) -> None:
        assert not self.is_alive()

    # --- what the child does ---
    def boot(self, after: float = 0.0) -> None:
        self.env.at(after, lambda: self.is_alive() and setattr(self.slot, "state", IDLE))

    def exit(self, code: int) -> None:
        if self.is_alive():
            self.exitcode, self.ended_at = code, self.env.now
            if code >= 0:  # a process killed by a signal writes nothing more on the board
                self.slot.state = EXITED

    def die_after(self, seconds: float, code: int = ExitCode.FAILED) -> None:
        self.env.at(seconds, lambda: self.exit(code))

    def receive(self, sig: int) -> None:
        self.received.append(sig)
        if sig == signal.SIGKILL:
            self.exit(-signal.SIGKILL)
        elif sig == signal.SIGTERM and not self.hung:
            self.env.at(self.drain_seconds, lambda: self.exit(ExitCode.OK))


class FakeEnvironment:
    """The supervisor's seam (conserver.process.environment.Environment), on a fake clock."""

    start_method = "fork"

    def __init__(self, on_start: Callable[[FakeProcess], None] = FakeProcess.boot):
        self.on_start = on_start  # each new child's script
        self.now = 1000.0
        self.events: list[tuple[float, int, Callable[[], object]]] = []
        self.seq = itertools.count()
        self.pids = itertools.count(4000)
        self.processes: list[FakeProcess] = []
        self.notified: list[str] = []
        self.woken = False
        self.refuse_starts = 0

    def at(self, delay: float, action: Callable[[], object]) -> None:
        heapq.heappush(self.events, (self.now + delay, next(self.seq), action))

    def advance(self, until: float, stop: Callable[[], bool] = lambda: False) -> None:
        """Run what is due up to ``until`` in time order; live, responsive children heartbeat."""
        while self.events and self.events[0][0] <= until and not stop():
            when, _, action = heapq.heappop(self.events)
            self.now = max(self.now, when)
            action()
        if not stop():
            self.now = max(self.now, until)
        for p in self.processes:
            if p.is_alive() and not p.hung:
                p.slot.heartbeat = self.wall_time()

    # --- the Environment protocol ---
    def monotonic(self) -> float:
        return self.now

    def wall_time(self) -> float:
        return EPOCH + self.now

    def sleep(self, seconds: float) -> None:
        self.advance(self.now + seconds)

    def shared_board(self) -> Board:
        return Board()

    def preload(self, modules: list[str]) -> None:
        pass

    def create_process(self, target, args: tuple, name: str) -> FakeProcess:
        return FakeProcess(self, args)

    def send_signal(self, pid: int, sig: int) -> None:
        for p in self.processes:
            if p.pid == pid and p.is_alive():
                p.receive(sig)

    def install_signal_handlers(self, signals, handler) -> None:
        pass

    def wake(self) -> None:
        self.woken = True

    def wait(self, processes, timeout: float) -> None:
        watched = list(processes)
        self.advance(self.now + timeout, stop=lambda: self.woken or any(not p.is_alive() for p in watched))
        self.woken = False

    def notify(self, *lines: str) -> None:
        self.notified += lines

    def set_title(self, title: str) -> None:
        self.title = title


def supervisor(env: FakeEnvironment, workers: int = 1, **settings: str) -> Supervisor:
    cfg = load_config(environ={"CONSERVER_PIPELINE": "tests.helpers.tasks:IdleTask", "CONSERVER_WORKERS": str(workers),
                               "CONSERVER_ENABLE_SCHEDULER": "false", "CONSERVER_METRICS_LOG_INTERVAL": "0",
                               **settings}, dotenv_path=None)
    sup = Supervisor(cfg, env=env)
    sup.manage_workers()  # what serve() does before its first turn
    return sup


def turn_until(sup: Supervisor, done: Callable[[], object], turns: int = 20_000) -> None:
    for _ in range(turns):
        if done():
            return
        assert sup.loop_once(), "the supervisor stopped"
    raise AssertionError(f"not reached in {turns} turns (fake time {sup.env.now})")


def finish(sup: Supervisor, turns: int = 20_000) -> int:
    """Turn the loop until it ends (what serve() does), boundedly; the exit code."""
    for _ in range(turns):
        if not sup.loop_once():
            return sup.exit_code
    raise AssertionError(f"still running after {turns} turns (fake time {sup.env.now})")


def of(env: FakeEnvironment, number: int) -> list[FakeProcess]:
    return [p for p in env.processes if p.spec.number == number]


def test_a_dead_worker_is_restarted_at_once_and_reported():
    env = FakeEnvironment()
    sup = supervisor(env, workers=2)
    turn_until(sup, lambda: sup.ready_sent)
    assert "READY=1" in env.notified
    victim = of(env, 1)[0]
    victim.die_after(sup.cfg.min_uptime + 5, -signal.SIGKILL)
    turn_until(sup, lambda: len(of(env, 1)) == 2)
    replacement = of(env, 1)[1]
    assert replacement.started_at == victim.ended_at  # it lived past MIN_UPTIME: no backoff
    assert sup.restarts == sup.board.restarts == 1
    assert [p.spec.number for p in env.processes] == [1, 2, 1]  # worker 2 untouched
    assert replacement.spec.slot_index == victim.spec.slot_index  # the freed slot is reused
    turn_until(sup, lambda: replacement.slot.state == IDLE)
    assert len(sup.workers) == 2


def test_backoff_doubles_from_a_tenth_of_a_second_to_thirty_on_early_deaths():
    def short_lived(p: FakeProcess) -> None:
        p.boot()
        p.die_after(1.0)  # well inside MIN_UPTIME (10 s)

    env = FakeEnvironment(short_lived)
    sup = supervisor(env)
    key = ("default", 1)
    backoffs = []
    for n in range(2, 14):
        turn_until(sup, lambda: len(env.processes) == n)
        backoffs.append(sup.policy.backoff[key])
    expected = [min(BACKOFF_MAX, BACKOFF_START * 2 ** i) for i in range(12)]
    assert backoffs == pytest.approx(expected)
    assert expected[0] == 0.1 and expected[-3:] == [30.0] * 3
    for before, after, delay in zip(env.processes, env.processes[1:], backoffs):
        waited = after.started_at - before.ended_at
        assert 0.8 * delay - 1e-9 <= waited <= 1.2 * delay + 1e-9  # +-20 % jitter
    assert sup.exit_code == ExitCode.OK  # deaths this far apart are no crash loop


def test_a_worker_past_min_uptime_resets_its_backoff():
    lives = iter([1.0, 1.0, 1.0, 15.0, 1.0])  # the fourth outlives MIN_UPTIME (10 s)

    def scripted(p: FakeProcess) -> None:
        p.boot()
        p.die_after(next(lives, 1000.0))

    env = FakeEnvironment(scripted)
    sup = supervisor(env)
    key = ("default", 1)
    turn_until(sup, lambda: len(env.processes) == 4)
    assert sup.policy.backoff[key] == pytest.approx(0.4)
    turn_until(sup, lambda: len(env.processes) == 5)
    assert key not in sup.policy.backoff
    fourth, fifth = env.processes[3:5]
    assert fifth.started_at == fourth.ended_at  # replaced at once
    turn_until(sup, lambda: len(env.processes) == 6)
    assert sup.policy.backoff[key] == pytest.approx(BACKOFF_START)  # the doubling starts over
    assert 0.08 <= env.processes[5].started_at - fifth.ended_at <= 0.12


def test_crash_loop_limit_ends_the_supervisor_with_exit_code_4(caplog):
    env = FakeEnvironment(lambda p: p.exit(ExitCode.BOOT_ERROR))  # never boots
    sup = supervisor(env, workers=4)
    began = env.now
    assert finish(sup) == ExitCode.CRASH_LOOP == 4
    limit = sup.cfg.crash_limit
    assert limit < len(sup.policy.early_deaths) <= limit + 4  # gave up at the first turn past the limit
    assert len(env.processes) == len(sup.policy.early_deaths)  # no restart after giving up
    assert env.now - began < sup.cfg.crash_window
    assert sup.board.draining == 1 and "STOPPING=1" in env.notified
    assert not sup.workers and all(not p.is_alive() for p in env.processes)
    assert "pid=4000 failed to boot (exit code 3)" in caplog.text
    assert f"crash loop: {len(env.processes)} workers died soon after starting" in caplog.text


def test_sigterm_drains_then_kills_what_outlives_the_graceful_timeout():
    env = FakeEnvironment()
    sup = supervisor(env, workers=2)
    turn_until(sup, lambda: sup.ready_sent)
    polite, stuck = env.processes
    polite.drain_seconds = 2.0
    stuck.hung = True
    began = env.now
    sup.on_signal(signal.SIGTERM, None)
    sup.loop_once()
    assert sup.stopping and sup.board.draining == 1
    stopping = env.notified.index("STOPPING=1")
    assert env.notified[stopping + 1] == "STATUS=draining 2 workers"
    assert polite.received == stuck.received == [signal.SIGTERM]
    assert finish(sup) == ExitCode.OK
    assert polite.exitcode == 0 and polite.ended_at - began == pytest.approx(2.0)
    assert stuck.exitcode == -signal.SIGKILL
    assert stuck.ended_at - began == pytest.approx(sup.cfg.graceful_timeout, abs=TICK_SLACK)
    assert len(env.processes) == 2  # a drain restarts nothing
    assert sum(line.startswith("EXTEND_TIMEOUT_USEC=") for line in env.notified[stopping:]) >= 20  # once a second
    assert sup.restarts == 0


def test_second_sigterm_stops_at_once():
    env = FakeEnvironment()
    sup = supervisor(env)
    turn_until(sup, lambda: sup.ready_sent)
    (worker,) = env.processes
    worker.drain_seconds = 30.0
    sup.on_signal(signal.SIGTERM, None)
    sup.loop_once()
    env.advance(env.now + 1.5)  # past the grace in which a second request is the same one
    sup.on_signal(signal.SIGTERM, None)
    assert not sup.loop_once()
    assert worker.received == [signal.SIGTERM, signal.SIGKILL] and worker.exitcode == -signal.SIGKILL


def test_a_recycled_worker_is_replaced_before_it_is_asked_to_stop():
    env = FakeEnvironment(lambda p: p.boot(after=0.5))
    sup = supervisor(env, workers=2)
    turn_until(sup, lambda: sup.ready_sent)
    first, second = env.processes
    first.slot.recycle = second.slot.recycle = 1  # both reached CONSERVER_MAX_VCONS_PER_WORKER
    turn_until(sup, lambda: len(env.processes) == 3)
    successor = env.processes[2]
    assert successor.spec.number == 1 and first.received == []  # not before its successor is up
    turn_until(sup, lambda: first.received)
    assert successor.slot.state == IDLE and first.received == [signal.SIGTERM]
    assert len(env.processes) == 3 or env.processes[3].started_at >= successor.started_at + 0.5  # one at a time
    turn_until(sup, lambda: second.received)
    assert not first.is_alive() and sup.restarts == 0  # a retired worker is no crash
    turn_until(sup, lambda: len(sup.workers) == 2 and not second.is_alive())


def test_a_hung_worker_gets_a_stack_dump_then_term_then_kill_and_is_replaced():
    def busy_forever(p: FakeProcess) -> None:
        if p.env.processes[0] is p:
            p.slot.state, p.slot.busy_since, p.slot.current, p.hung = BUSY, p.env.wall_time(), b"stuck-item", True
        else:
            p.boot()

    env = FakeEnvironment(busy_forever)
    sup = supervisor(env)
    (stuck,) = env.processes
    turn_until(sup, lambda: stuck.received)
    assert stuck.received == [signal.SIGUSR2, signal.SIGTERM]  # faulthandler's dump first
    assert env.now - stuck.started_at == pytest.approx(sup.cfg.job_timeout, abs=TICK_SLACK)
    turn_until(sup, lambda: len(env.processes) == 2)
    assert stuck.received[-1] == signal.SIGKILL
    assert stuck.ended_at - stuck.started_at == pytest.approx(sup.cfg.job_timeout + sup.cfg.graceful_timeout,
                                                              abs=2 * TICK_SLACK)


def test_a_refused_start_is_tried_again_a_second_later():
    env = FakeEnvironment()
    env.refuse_starts = 1
    began = env.now
    sup = supervisor(env)
    assert not env.processes and not sup.workers
    turn_until(sup, lambda: env.processes)
    assert env.processes[0].started_at - began == pytest.approx(1.0)
    assert env.processes[0].spec.slot_index == 0  # the refused start gave its slot back


def test_the_pool_follows_the_monitors_autoscale_target_within_its_bounds():
    env = FakeEnvironment()
    sup = supervisor(env, CONSERVER_AUTOSCALE="1,3")

    def queue_workers() -> list[int]:
        return sorted(h.spec.number for h in sup.workers if h.spec.role == "worker")

    turn_until(sup, lambda: sup.ready_sent)
    assert queue_workers() == [1] and {h.spec.role for h in sup.workers} == {"worker", "monitor"}
    sup.board.autoscale_target = 5  # the monitor asks for more than CONSERVER_AUTOSCALE allows
    turn_until(sup, lambda: queue_workers() == [1, 2, 3])
    assert sup.board.target_workers == 3
    sup.board.autoscale_target = 1
    turn_until(sup, lambda: queue_workers() == [1])
    retired = [p for p in env.processes if p.spec.number in (2, 3)]
    assert all(p.received == [signal.SIGTERM] and p.exitcode == 0 for p in retired) and sup.restarts == 0


@pytest.mark.parametrize("exitcode, ready, lived, death", [
    (-signal.SIGKILL, True, 0.3, Death.KILLED),  # the OOM killer, kill -9: at any age
    (-signal.SIGTERM, True, 0.3, Death.KILLED),
    (-signal.SIGKILL, False, 0.3, Death.BOOT),  # never reported ready
    (ExitCode.BOOT_ERROR, True, 0.3, Death.BOOT),
    (ExitCode.FAILED, True, 3.0, Death.EARLY_CRASH),  # its loop raised, within MIN_UPTIME
    (-signal.SIGSEGV, True, 3.0, Death.EARLY_CRASH),  # a fault of its own is an error, not a kill
    (-signal.SIGABRT, True, 3.0, Death.EARLY_CRASH),
    (ExitCode.FAILED, True, 30.0, Death.ENDED),
    (-signal.SIGSEGV, True, 30.0, Death.ENDED),
    (ExitCode.OK, True, 0.5, Death.ENDED),
])
def test_only_boot_failures_and_early_errors_of_its_own_count_towards_the_crash_limit(exitcode, ready, lived, death):
    got = classify_death(exitcode, ready, lived, min_uptime=10.0)
    assert got == death
    assert got.counts == (death in (Death.BOOT, Death.EARLY_CRASH))


def test_ready_workers_killed_every_250ms_are_replaced_at_once_and_never_end_the_supervisor(caplog):
    """The chaos row at the shipped defaults: kill -9 a random ready worker every 250 ms for
    12 s (48 kills, far more than CONSERVER_CRASH_LIMIT within CONSERVER_MIN_UPTIME)."""
    import random

    env = FakeEnvironment(lambda p: p.boot(after=0.1))
    sup = supervisor(env, workers=2)
    turn_until(sup, lambda: sup.ready_sent)
    rng = random.Random(7)
    victims: list[FakeProcess] = []

    def kill_one() -> None:
        ready = [p for p in env.processes if p.is_alive() and p.slot.state == IDLE]
        if ready:
            victims.append(rng.choice(ready))
            env.send_signal(victims[-1].pid, signal.SIGKILL)

    began = env.now
    for n in range(1, 49):
        env.at(began + 0.25 * n - env.now, kill_one)
    turn_until(sup, lambda: env.now >= began + 12.5)
    assert len(victims) == 48 and sup.restarts == 48 and sup.exit_code == ExitCode.OK
    assert not sup.stopping and not sup.policy.early_deaths and not sup.policy.backoff
    for victim in victims:
        (successor,) = [p for p in env.processes if p.spec.number == victim.spec.number
                        and p.started_at is not None and p.started_at >= victim.ended_at
                        and p is not victim][:1]
        assert successor.started_at == victim.ended_at  # in the same loop turn: no backoff
    assert len(sup.workers) == 2
    assert caplog.text.count("was killed by SIGKILL") == 48
    assert caplog.text.count("replacing it at once (killed from outside)") == 48


def test_a_worker_killed_before_it_reported_ready_is_a_boot_failure_with_backoff(caplog):
    env = FakeEnvironment(lambda p: p.boot(after=5.0))  # a slow boot
    sup = supervisor(env)
    (first,) = env.processes
    env.at(1.0, lambda: env.send_signal(first.pid, signal.SIGKILL))
    turn_until(sup, lambda: len(env.processes) == 2)
    second = env.processes[1]
    assert len(sup.policy.early_deaths) == 1
    assert 0.08 <= second.started_at - first.ended_at <= 0.12
    assert "restarting it in" in caplog.text and "(boot failure: 1 of CONSERVER_CRASH_LIMIT=10 in 60s)" in caplog.text


def test_sigint_and_sigterm_together_are_one_drain_request(caplog):
    """Ctrl-C in a terminal reaches the master (and a wrapper, which sends SIGTERM too)."""
    caplog.set_level("INFO", logger="conserver")
    env = FakeEnvironment()
    sup = supervisor(env, workers=2)
    turn_until(sup, lambda: sup.ready_sent)
    for p in env.processes:
        p.drain_seconds = 3.0
    sup.on_signal(signal.SIGINT, None)
    sup.loop_once()
    env.advance(env.now + 0.3)
    sup.on_signal(signal.SIGTERM, None)
    assert finish(sup) == ExitCode.OK
    assert all(p.received == [signal.SIGTERM] and p.exitcode == 0 for p in env.processes)
    assert "SIGINT: draining 2 processes" in caplog.text
    assert "the same request, still draining" in caplog.text and "stopping at once" not in caplog.text
