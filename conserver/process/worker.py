"""One worker process: ``initialize`` → ``loop`` → ``shutdown`` (Huey's shape).

The supervisor starts this module's :func:`worker_main` through the start method the
operator chose. Everything with a socket, a thread or a pool — the Redis client, the
store clients, the fan-out thread pools — is built here, after the process started,
by the pluggable :class:`WorkerTask` (the default one is ``conserver.tasks.pipeline``).

A worker talks to the supervisor through its slot on the shared-memory board
(``board.py``): a heartbeat, what it is busy with and since when, how many vCons it
finished. :class:`WorkerContext` is the task's pen for that slot.

Signals in a worker: SIGTERM/SIGINT ask for a drain (finish the batch in hand, hand back
what was claimed but not started, exit 0); SIGQUIT exits at once; SIGUSR1 reopens log
files; SIGUSR2 dumps every thread's stack (faulthandler), used by the supervisor on a
job that ran past ``JOB_TIMEOUT``.
"""

from __future__ import annotations

import ctypes
import faulthandler
import importlib
import logging
import os
import random
import signal
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

from conserver.config import Config, PoolConfig
from conserver.errors import ExitCode
from conserver.observability.logging import reopen_logs, setup_logging
from conserver.observability.titles import set_title
from conserver.process.board import BUSY, DRAINING, EXITED, IDLE, STARTING, Board, WorkerSlot
from conserver.queue.recovery import requeue_dead_worker

log = logging.getLogger("conserver.process.worker")

# Service processes the supervisor runs beside the workers: pool name -> task.
SERVICE_TASKS = {"scheduler": "conserver.tasks.scheduler:SchedulerTask", "monitor": "conserver.tasks.monitor:MonitorTask"}


@dataclass(frozen=True)
class WorkerSpec:
    """Everything a new worker needs; pickled for spawn and forkserver."""

    config: Config
    pool: PoolConfig
    number: int
    role: str  # "worker", or a service: "scheduler", "monitor"
    task: str  # import path "package.module:Class"
    master_pid: int
    slot_index: int
    generation: int = 0


class WorkerTask:
    """The pluggable step a worker runs. ``run_once`` is one loop turn: it must return
    within about a second when there is no work, so a drain is seen at once."""

    def __init__(self, ctx: "WorkerContext"):
        self.ctx = ctx

    def open(self) -> None:
        """Build clients and pools. Runs in the worker process, never in the supervisor."""

    def run_once(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Hand back claimed but unstarted work; release what ``open`` built."""


class WorkerContext:
    """What a task sees of its process: settings, identity, the stop flag and the slot."""

    def __init__(self, spec: WorkerSpec, slot: WorkerSlot, board: Board):
        self.spec = spec
        self.board = board
        self.config = spec.config
        self.pool = spec.pool
        self.number = spec.number
        self.slot = slot
        self.stopping = False
        self.started = time.time()
        self.processed = 0

    # --- reporting to the supervisor (hot path: plain attribute stores) ---
    def set_ident(self, ident: str) -> None:
        """The queue worker id this process claims under: when it dies, the supervisor gives
        that id's claims back (conserver.queue.recovery.requeue_dead_worker)."""
        self.slot.ident = ident.encode()[:159]

    def busy(self, current: str) -> None:
        now = time.time()
        self.slot.current = current.encode()[:63]
        self.slot.busy_since = now
        self.slot.heartbeat = now
        self.slot.state = BUSY
        self._title(f"busy {current}")

    def idle(self, processed: int = 0, failed: int = 0) -> None:
        now = time.time()
        if self.slot.busy_since:
            self.slot.busy_seconds += now - self.slot.busy_since
        self.processed += processed
        self.slot.processed += processed
        self.slot.failed += failed
        self.slot.busy_since = 0.0
        self.slot.current = b""
        self.slot.heartbeat = now
        if self.slot.state == BUSY:
            self.slot.state = IDLE
        self._title("idle")

    def heartbeat(self) -> None:
        self.slot.heartbeat = time.time()

    def _title(self, what: str) -> None:
        set_title(self.title(what))  # about 1 us: it rewrites argv memory, no system call

    def title(self, what: str) -> str:
        s = self.spec
        if s.role != "worker":
            return f"conserver: {s.role} {what}"
        return f"conserver: worker {s.number}/{s.pool.workers} [{s.pool.name}] {what} processed={self.processed}"


def load_task(path: str) -> type[WorkerTask]:
    module, _, name = path.partition(":")
    cls = getattr(importlib.import_module(module), name)
    if not (isinstance(cls, type) and issubclass(cls, WorkerTask)):
        raise TypeError(f"{path} is not a WorkerTask")
    return cls


def _set_parent_death_signal(sig: int) -> None:
    """Linux: have the kernel send ``sig`` when our parent dies (PR_SET_PDEATHSIG)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, sig, 0, 0, 0)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class ParentWatch:
    """Ends an orphaned worker even while its main thread is stuck.

    When the supervisor dies (``kill -9``, the OOM killer) the kernel sends us SIGTERM
    (PR_SET_PDEATHSIG) and the loop checks the parent twice a second. Both act only
    between two loop turns: the handler sets a flag, and a store call that never returns
    (a hung PostgreSQL that still accepts TCP) keeps the main thread from ever reading
    it — Python runs the handler and goes back into the same wait — while the task's
    heartbeat thread keeps our claims safe from every orphan sweep. So this thread
    watches too: when the parent is gone it asks for the drain, gives the main thread
    what is left of CONSERVER_STORE_TIMEOUT to finish it, and if it does not, hands our
    claims back to their lists (no one else will while our heartbeat lives) and ends the
    process with ``os._exit``, the one exit a blocked thread cannot hold up.
    """

    EVERY = 0.5

    def __init__(self, worker: "Worker"):
        self.worker = worker
        # detection (EVERY) + this grace + the hand-back stay within the store timeout
        self.grace = max(1.0, worker.spec.config.store_timeout - 2 * self.EVERY)
        self.thread = threading.Thread(target=self.run, name="parent-watch", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def run(self) -> None:
        worker = self.worker
        while worker.parent_alive():
            time.sleep(self.EVERY)
        worker.ctx.stopping = True
        time.sleep(self.grace)  # a drained worker has ended the process (os._exit) by now
        ident = worker.slot.ident_text
        n: int | str = 0
        if ident:
            try:
                n = requeue_dead_worker(worker.spec.config, ident)
            except Exception as exc:  # Redis away: the orphan sweep does it once our heartbeat expires
                n = f"none ({exc})"
        log.warning("supervisor (pid %d) is gone and this worker is still busy after %.1fs: "
                    "handed back %s claimed vCons, exiting", worker.spec.master_pid, self.grace, n)
        logging.shutdown()
        os._exit(ExitCode.FAILED)


class Worker:
    """The process body: signals, the loop, recycling, and a clean exit."""

    def __init__(self, spec: WorkerSpec, board: Board):
        self.spec = spec
        self.slot: WorkerSlot = board.slots[spec.slot_index]
        self.ctx = WorkerContext(spec, self.slot, board)
        self.task: WorkerTask | None = None
        self.parent_pid = os.getppid()
        cfg = spec.config
        # Recycling thresholds get jitter so a pool started together does not restart together.
        jitter = random.uniform(0.9, 1.1)
        self.max_vcons = int(cfg.max_vcons_per_worker * jitter) if cfg.max_vcons_per_worker else 0
        self.max_age = cfg.max_worker_age * jitter if cfg.max_worker_age else 0.0
        self._next_parent_check = 0.0
        self._next_rss_check = 0.0

    # --- lifecycle ---
    def initialize(self) -> None:
        _set_parent_death_signal(signal.SIGTERM)
        cfg = self.spec.config
        setup_logging(cfg.log_level, cfg.log_format, cfg.log_file,
                      role=self.spec.role, worker=self.spec.number if self.spec.role == "worker" else None)
        self.slot.pid = os.getpid()
        self.slot.started = time.time()
        self.slot.heartbeat = time.time()
        self.slot.state = STARTING
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        signal.signal(signal.SIGQUIT, self._on_quit)
        signal.signal(signal.SIGUSR1, lambda *_: reopen_logs())
        signal.signal(signal.SIGHUP, signal.SIG_IGN)  # the supervisor reloads; workers are replaced
        signal.signal(signal.SIGTTIN, signal.SIG_IGN)
        signal.signal(signal.SIGTTOU, signal.SIG_IGN)
        faulthandler.register(signal.SIGUSR2, file=sys.stderr, all_threads=True, chain=False)
        if not self.parent_alive():  # the parent died before PR_SET_PDEATHSIG took effect
            raise SystemExit(ExitCode.OK)
        ParentWatch(self).start()  # before the task opens: opening can hang too
        self.ctx._title("starting")
        self.task = load_task(self.spec.task)(self.ctx)
        self.task.open()
        self.slot.state = IDLE
        self.slot.heartbeat = time.time()
        self.ctx._title("idle")
        log.info("worker started pool=%s task=%s", self.spec.pool.name, self.spec.task)

    def loop(self) -> None:
        assert self.task is not None
        while not self.ctx.stopping:
            now = time.monotonic()
            if now >= self._next_parent_check:
                self._next_parent_check = now + 0.5
                if not self.parent_alive():
                    log.warning("supervisor (pid %d) is gone: draining", self.spec.master_pid)
                    self.ctx.stopping = True
                    break
                self._check_recycle()
            self.ctx.heartbeat()
            self.task.run_once()

    def shutdown(self) -> None:
        self.slot.state = DRAINING
        self.ctx._title("draining")
        try:
            if self.task is not None:
                self.task.close()
        finally:
            self.slot.state = EXITED
            log.info("worker exiting processed=%d", self.ctx.processed)

    # --- signal handlers: set a flag only; the loop acts on it ---
    def _on_stop(self, signum: int, frame: Any) -> None:
        self.ctx.stopping = True

    def _on_quit(self, signum: int, frame: Any) -> None:
        os._exit(ExitCode.OK)

    # --- checks, twice a second ---
    def parent_alive(self) -> bool:
        # Reparenting means our parent (the supervisor, or the forkserver) died.
        return os.getppid() == self.parent_pid and pid_alive(self.spec.master_pid)

    def _check_recycle(self) -> None:
        # The recycling limits are for queue workers; a scheduler or monitor that replaced
        # itself each time would only lose its leader lock or its metrics.
        if self.slot.recycle or self.spec.role != "worker":
            return
        reason = ""
        if self.max_vcons and self.ctx.processed >= self.max_vcons:
            reason = f"processed {self.ctx.processed} >= CONSERVER_MAX_VCONS_PER_WORKER"
        elif self.max_age and time.time() - self.ctx.started >= self.max_age:
            reason = f"age {time.time() - self.ctx.started:.0f}s >= CONSERVER_MAX_WORKER_AGE"
        elif (self.spec.config.max_worker_rss_mb and time.monotonic() >= self._next_rss_check
              and time.time() - self.ctx.started >= self.spec.config.min_uptime):
            # (not before CONSERVER_MIN_UPTIME: a limit below a fresh worker's size must not
            # replace workers as fast as they start)
            self._next_rss_check = time.monotonic() + 5
            import psutil

            rss_mb = psutil.Process().memory_info().rss / 1048576
            if rss_mb >= self.spec.config.max_worker_rss_mb:
                reason = f"rss {rss_mb:.0f}MB >= CONSERVER_MAX_WORKER_RSS_MB"
        if reason:
            # Ask for a replacement; the supervisor starts it first, then sends us SIGTERM.
            log.info("asking to be recycled: %s", reason)
            self.slot.recycle = 1


def worker_main(spec: WorkerSpec, board: Board) -> None:
    """Entry point of every worker, scheduler and monitor process."""
    worker = Worker(spec, board)
    try:
        worker.initialize()
    except SystemExit:
        raise
    except BaseException:
        log.exception("worker failed to start")
        worker.slot.state = EXITED
        logging.shutdown()
        os._exit(ExitCode.BOOT_ERROR)
    try:
        worker.loop()
    except Exception:
        log.exception("worker loop crashed")
        worker.shutdown()
        logging.shutdown()
        os._exit(ExitCode.FAILED)
    worker.shutdown()
    logging.shutdown()
    # Skip interpreter finalization (a spawn child would spend up to a second in it): all
    # that had to happen on the way out has happened.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(ExitCode.OK)
