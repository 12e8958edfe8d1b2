"""The main process: owns the process table and the signal loop (gunicorn's arbiter shape).

One loop turn::

    wait(wake pipe + every worker's sentinel, timeout)   # a death wakes us at once
      → handle queued signals → reap_workers → murder_stuck_workers
      → manage_workers → housekeeping (titles, READY/WATCHDOG/STATUS)

Signal handlers only queue the signal and write a byte to the wake pipe; every decision
and every log line happens in the loop. The supervisor holds no store client and no
thread. It opens a short-lived Redis connection only to give a dead worker's claimed
vCons back (``conserver.queue.recovery.requeue_dead_worker``), and closes it again before it forks.

Signals: TERM/INT drain (a second one, or QUIT, stops at once); HUP re-reads the
configuration and replaces workers one at a time, the new one ready before the old one
stops; TTIN/TTOU add/remove a worker; USR1 reopens log files.
"""

from __future__ import annotations

import collections
import ctypes
import glob
import importlib
import logging
import multiprocessing
import multiprocessing.connection
import os
import random
import shutil
import signal
import tempfile
import time
from dataclasses import dataclass, field, replace
from typing import Callable

from conserver.config import Config, ConfigError, PoolConfig
from conserver.observability.logging import reopen_logs, setup_logging
from conserver.observability.systemd import sd_notify, watchdog_interval
from conserver.observability.titles import set_title
from conserver.process.worker import (BUSY, EMPTY, EXIT_BOOT_ERROR, MAX_SLOTS, SERVICE_TASKS, STARTING, STATE_NAMES,
                              Board, WorkerSpec, worker_main)
from conserver.queue.recovery import requeue_dead_worker
from conserver.storage import store_modules

log = logging.getLogger("conserver.process.supervisor")

EXIT_CRASH_LOOP = 4
BACKOFF_START, BACKOFF_MAX, HEALTHY_RESET = 0.1, 30.0, 60.0
SCHEDULER_POOL = PoolConfig("scheduler", 1, (), ())
MONITOR_POOL = PoolConfig("monitor", 1, (), ())
HANDLED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP,
                   signal.SIGTTIN, signal.SIGTTOU, signal.SIGUSR1)


@dataclass
class WorkerHandle:
    """The supervisor's record of one child process."""

    process: multiprocessing.process.BaseProcess
    spec: WorkerSpec
    started: float  # monotonic
    retiring: bool = False  # we asked it to stop: its exit is not a crash
    kill_at: float | None = None  # SIGKILL deadline once we sent SIGTERM
    pid: int = field(init=False)

    def __post_init__(self) -> None:
        self.pid = self.process.pid

    @property
    def key(self) -> tuple[str, int]:
        return (self.spec.pool.name, self.spec.number)


def describe_exit(code: int | None) -> str:
    if code is None:
        return "is still running"
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    if code == EXIT_BOOT_ERROR:
        return "failed to boot (exit code 3)"
    return f"exited with code {code}"


class Supervisor:
    def __init__(self, config: Config, reload: Callable[[], Config] | None = None):
        self.cfg = config
        self.reload = reload
        method = config.start_method or None
        self.mp = multiprocessing.get_context(method)
        self.method = self.mp.get_start_method()
        # One shared board of slots for the whole life of the supervisor; a process gets
        # a free slot. Allocated once, before any fork, and holds no thread or socket.
        self.board = self.mp.RawValue(Board)
        self.board.master_pid = os.getpid()
        self.board.started = time.time()
        self.board.start_method = self.method.encode()
        self.slots = self.board.slots
        self.free_slots = list(range(MAX_SLOTS - 1, -1, -1))
        self.workers: dict[int, WorkerHandle] = {}
        self.targets: dict[str, int] = {}
        self.pools: dict[str, PoolConfig] = {}
        self.generation = 0
        self.backoff: dict[tuple[str, int], float] = {}
        self.not_before: dict[tuple[str, int], float] = {}
        self.early_deaths: collections.deque[float] = collections.deque()
        self.restarts = 0
        self.processed_by_dead = 0
        self.signals: collections.deque[int] = collections.deque()
        self.stopping = False
        self.stop_deadline = 0.0
        self.exit_code = 0
        self.ready_sent = False
        self.started = time.monotonic()
        self._wake_r = self._wake_w = -1
        self.metrics_dir = ""
        self._last_housekeeping = 0.0
        self._watchdog = watchdog_interval()
        self._last_watchdog = 0.0
        self._last_extend = 0.0
        self._apply_pools(config)

    # ------------------------------------------------------------------ set-up
    def _apply_pools(self, cfg: Config) -> None:
        self.pools = {p.name: p for p in cfg.pools}
        self.targets = {p.name: p.workers for p in cfg.pools}
        services = [SCHEDULER_POOL] if cfg.enable_scheduler else []
        if cfg.metrics_port or cfg.metrics_log_interval or cfg.autoscale:
            services.append(MONITOR_POOL)
        for pool in services:
            self.pools[pool.name] = pool
            self.targets[pool.name] = 1
        self.board.target_workers = sum(t for p, t in self.targets.items() if p not in SERVICE_TASKS)

    def _install_signals(self) -> None:
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        for sig in HANDLED_SIGNALS:
            signal.signal(sig, self._on_signal)

    def _on_signal(self, signum: int, frame: object) -> None:
        # Nothing but queue it and wake the loop: logging or forking here could deadlock.
        self.signals.append(signum)
        try:
            os.write(self._wake_w, b"!")
        except OSError:
            pass

    # ------------------------------------------------------------------ main loop
    def run(self) -> int:
        self._install_signals()
        # prometheus-client's multiprocess mode: every worker writes its own mmap'ed files
        # here and the monitor process adds them up. Set before any child starts, and even
        # when no monitor runs yet: a SIGHUP may turn metrics on.
        self.metrics_dir = tempfile.mkdtemp(prefix="conserver-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = self.metrics_dir
        self._preload()
        log.info("starting conserver master: %d workers, start method %s, lists %s, stores %s",
                 self.cfg.total_workers, self.method, ",".join(self.cfg.ingress_lists_used),
                 ",".join(self.cfg.stores_used) or "none")
        self._set_title()
        try:
            self.manage_workers()
            while True:
                self._wait(self._next_timeout())
                self._handle_signals()
                self.reap_workers()
                if self.stopping:
                    if not self.workers:
                        break
                    self._drain_tick()
                    continue
                if self._crash_loop():
                    continue
                self.murder_stuck_workers()
                self.manage_workers()
                self._housekeeping()
        finally:
            self._kill_all(signal.SIGKILL)
            self.reap_workers(block=True)
            sd_notify("STATUS=stopped")
            if self.metrics_dir:
                shutil.rmtree(self.metrics_dir, ignore_errors=True)
        log.info("master exiting with code %d", self.exit_code)
        return self.exit_code

    def _preload(self) -> None:
        """Import what workers need once, before any fork (imports only: no clients)."""
        if self.method == "spawn":
            return  # nothing to share: every worker is a new interpreter
        try:
            # the pipeline module brings the fan-out and metrics; prometheus_client they import lazily
            modules = ["conserver.process.worker", self.cfg.pipeline.partition(":")[0], "prometheus_client",
                       *store_modules(self.cfg)]
            if self.method == "forkserver":
                self.mp.set_forkserver_preload(modules)  # the fork server imports them, we stay lean
            else:
                for name in modules:
                    importlib.import_module(name)
        except Exception as exc:  # a worker will fail to boot and say why, with backoff
            log.warning("could not preload %s: %s", self.cfg.pipeline, exc)

    def _next_timeout(self) -> float:
        # Deaths and signals wake us at once; this tick only paces what workers write on
        # the board (ready, recycle requests, hangs), so a few times a second is enough.
        timeout = 0.2
        now = time.monotonic()
        for t in self.not_before.values():
            timeout = min(timeout, max(0.0, t - now))
        return timeout

    def _wait(self, timeout: float) -> None:
        fds: list[int] = [self._wake_r] + [h.process.sentinel for h in self.workers.values()]
        multiprocessing.connection.wait(fds, timeout)
        try:
            while os.read(self._wake_r, 4096):
                pass
        except (BlockingIOError, InterruptedError):
            pass

    # ------------------------------------------------------------------ signals
    def _handle_signals(self) -> None:
        while self.signals:
            sig = self.signals.popleft()
            name = signal.Signals(sig).name
            if sig in (signal.SIGTERM, signal.SIGINT):
                if self.stopping:
                    log.warning("second %s: stopping at once", name)
                    self._stop_now()
                else:
                    self.begin_drain(name)
            elif sig == signal.SIGQUIT:
                log.warning("SIGQUIT: stopping at once")
                self._stop_now()
            elif self.stopping:
                log.info("%s ignored while draining", name)
            elif sig == signal.SIGHUP:
                self.reload_config()
            elif sig == signal.SIGTTIN:
                self._resize(+1)
            elif sig == signal.SIGTTOU:
                self._resize(-1)
            elif sig == signal.SIGUSR1:
                reopen_logs()
                log.info("SIGUSR1: log files reopened")
                for h in self.workers.values():
                    self._signal(h, signal.SIGUSR1)

    def begin_drain(self, why: str) -> None:
        self.stopping = True
        self.board.draining = 1
        self.stop_deadline = time.monotonic() + self.cfg.graceful_timeout
        log.info("%s: draining %d processes (graceful timeout %gs)", why, len(self.workers), self.cfg.graceful_timeout)
        sd_notify("STOPPING=1", f"STATUS=draining {len(self.workers)} workers")
        self._set_title("draining")
        for h in self.workers.values():
            h.retiring = True
            self._signal(h, signal.SIGTERM)

    def _drain_tick(self) -> None:
        now = time.monotonic()
        if now >= self.stop_deadline:
            pids = sorted(self.workers)
            log.warning("graceful timeout: killing %d workers still running: %s", len(pids), pids)
            self._kill_all(signal.SIGKILL)
            self.reap_workers(block=True)
        elif now - self._last_extend >= 1.0:
            # Tell systemd the stop is progressing, so its own timeout covers ours.
            self._last_extend = now
            sd_notify(f"EXTEND_TIMEOUT_USEC={int((self.stop_deadline - now + 5) * 1e6)}",
                      f"STATUS=draining {len(self.workers)} workers")

    def _stop_now(self) -> None:
        self.stopping = True
        self.stop_deadline = 0.0
        sd_notify("STOPPING=1")
        self._kill_all(signal.SIGKILL)
        self.reap_workers(block=True)

    def reload_config(self) -> None:
        if self.reload is None:
            log.warning("SIGHUP: no configuration source to re-read")
            return
        try:
            cfg = self.reload()
        except ConfigError as exc:
            log.error("SIGHUP: keeping the running configuration: %s", exc)
            return
        if (cfg.start_method or self.method) != self.method:
            log.warning("SIGHUP: CONSERVER_START_METHOD changes only on restart; keeping %s", self.method)
        setup_logging(cfg.log_level, cfg.log_format, cfg.log_file, role="master")
        self.cfg = cfg
        self.generation += 1
        self._apply_pools(cfg)
        log.info("SIGHUP: configuration re-read; replacing %d workers one at a time (generation %d)",
                 len(self.workers), self.generation)

    def _resize(self, delta: int) -> None:
        pool = self._first_worker_pool()
        if pool is None:
            return
        new = self.targets[pool] + delta
        if not 1 <= new <= 256:
            log.warning("%s: pool %s stays at %d workers (allowed 1..256)",
                        "SIGTTIN" if delta > 0 else "SIGTTOU", pool, self.targets[pool])
            return
        self._set_target(pool, new)
        log.info("%s: pool %s now wants %d workers", "SIGTTIN" if delta > 0 else "SIGTTOU", pool, new)

    def _first_worker_pool(self) -> str | None:
        """The pool TTIN/TTOU and autoscaling act on (not the scheduler or monitor)."""
        return next(iter(p for p in self.pools if p not in SERVICE_TASKS), None)

    def _set_target(self, name: str, workers: int) -> None:
        p = self.pools[name]
        self.board.target_workers += workers - self.targets[name]
        self.targets[name] = workers
        self.pools[name] = replace(p, workers=workers)

    # ------------------------------------------------------------------ process table
    def spawn_worker(self, pool: PoolConfig, number: int) -> WorkerHandle | None:
        role = pool.name if pool.name in SERVICE_TASKS else "worker"
        slot_index = self.free_slots.pop()
        slot = self.slots[slot_index]
        ctypes.memset(ctypes.addressof(slot), 0, ctypes.sizeof(slot))  # no stale counters
        slot.state = STARTING
        slot.heartbeat = time.time()
        slot.role, slot.pool, slot.number = role.encode(), pool.name.encode()[:63], number
        spec = WorkerSpec(config=self.cfg, pool=pool, number=number, role=role,
                          task=SERVICE_TASKS.get(role, self.cfg.pipeline),
                          master_pid=os.getpid(), slot_index=slot_index, generation=self.generation)
        process = self.mp.Process(target=worker_main, args=(spec, self.board),
                                  name=f"conserver-{pool.name}-{number}")
        try:
            process.start()
        except OSError as exc:
            self.free_slots.append(slot_index)
            log.error("could not start %s %d of pool %s: %s", role, number, pool.name, exc)
            self.not_before[(pool.name, number)] = time.monotonic() + 1.0
            return None
        handle = WorkerHandle(process, spec, time.monotonic())
        self.workers[handle.pid] = handle
        log.info("started %s %d/%d [%s] pid=%d", role, number, pool.workers, pool.name, handle.pid)
        return handle

    def reap_workers(self, block: bool = False) -> None:
        deadline = time.monotonic() + 5.0
        for pid, h in list(self.workers.items()):
            if block:
                h.process.join(max(0.0, deadline - time.monotonic()))
            if h.process.is_alive():
                continue
            del self.workers[pid]
            self._on_exit(h)

    def _on_exit(self, h: WorkerHandle) -> None:
        code = h.process.exitcode
        slot = self.slots[h.spec.slot_index]
        ident = slot.ident.decode(errors="replace")
        self.processed_by_dead += slot.processed
        self.board.processed_by_dead = self.processed_by_dead
        lived = time.monotonic() - h.started
        role = h.spec.role
        if h.retiring and code == 0:
            log.info("%s %d [%s] pid=%d stopped after %.1fs", role, h.spec.number, h.spec.pool.name, h.pid, lived)
        else:
            busy = f" while busy on {slot.current.decode(errors='replace')}" if slot.state == BUSY else ""
            level = logging.INFO if h.retiring else logging.WARNING
            log.log(level, "%s %d [%s] pid=%d %s after %.1fs%s", role, h.spec.number, h.spec.pool.name,
                    h.pid, describe_exit(code), lived, busy)
        if not h.retiring:
            self._schedule_restart(h, lived)
        self._recover(h, ident)
        if self.metrics_dir:  # what prometheus_client.multiprocess.mark_process_dead does
            for path in glob.glob(os.path.join(self.metrics_dir, f"gauge_live*_{h.pid}.db")):
                os.remove(path)
        slot.state = EMPTY
        h.process.close()
        self.free_slots.append(h.spec.slot_index)

    def _recover(self, h: WorkerHandle, ident: str) -> None:
        """Give the dead worker's claimed vCons back to their lists at once."""
        if not ident:
            return
        try:
            n = requeue_dead_worker(self.cfg, ident)
        except Exception as exc:  # Redis down: the orphan sweep recovers them after heartbeat expiry
            log.warning("could not requeue the vCons of pid %d now (%s); the orphan sweep will", h.pid, exc)
            return
        if n:
            log.warning("requeued %d vCons claimed by pid %d", n, h.pid)

    def _schedule_restart(self, h: WorkerHandle, lived: float) -> None:
        self.restarts += 1
        self.board.restarts = self.restarts
        key = h.key
        now = time.monotonic()
        if lived >= self.cfg.min_uptime:
            self.backoff.pop(key, None)
            return
        # Died soon after it started: back off, 0.1 s doubling to 30 s, with jitter.
        self.early_deaths.append(now)
        delay = min(BACKOFF_MAX, self.backoff.get(key, BACKOFF_START / 2) * 2)
        self.backoff[key] = delay
        self.not_before[key] = now + delay * random.uniform(0.8, 1.2)
        log.info("restarting %s %d [%s] in %.2fs (it lived %.1fs)", h.spec.role, h.spec.number, key[0],
                 self.not_before[key] - now, lived)

    def _crash_loop(self) -> bool:
        now = time.monotonic()
        while self.early_deaths and now - self.early_deaths[0] > self.cfg.crash_window:
            self.early_deaths.popleft()
        if len(self.early_deaths) <= self.cfg.crash_limit:
            return False
        log.critical("crash loop: %d workers died soon after starting within %gs (CONSERVER_CRASH_LIMIT=%d); "
                     "giving up so the service manager can restart conserver — see the errors above",
                     len(self.early_deaths), self.cfg.crash_window, self.cfg.crash_limit)
        self.exit_code = EXIT_CRASH_LOOP
        self.begin_drain("crash loop")
        return True

    def _follow_autoscale(self) -> None:
        """The monitor decided how many workers the first pool needs; we own the processes."""
        want = self.board.autoscale_target
        pool = self._first_worker_pool()
        if not self.cfg.autoscale or not want or pool is None:
            return
        low, high = self.cfg.autoscale
        want = max(low, min(high, want))
        if want != self.targets[pool]:
            log.info("autoscale: pool %s %d -> %d workers", pool, self.targets[pool], want)
            self._set_target(pool, want)

    def manage_workers(self) -> None:
        """Start what is missing, retire what is surplus or replaced (rolling).

        Per worker slot (pool, number) the newest process is the one that counts. When it is
        outdated (an older configuration, or it asked to be recycled) a new one starts —
        one replacement booting at a time across the pool — and every older process of that
        slot is asked to drain only once the newest one is up.
        """
        self._follow_autoscale()
        now = time.monotonic()
        by_key: dict[tuple[str, int], list[WorkerHandle]] = collections.defaultdict(list)
        for h in sorted(self.workers.values(), key=lambda h: h.started):
            if not h.retiring:
                by_key[h.key].append(h)
        booting_replacements = sum(1 for hs in by_key.values() if len(hs) > 1 and self._booting(hs[-1]))
        for name, pool in self.pools.items():
            for number in range(1, self.targets.get(name, 0) + 1):
                key = (name, number)
                handles = by_key.get(key, [])
                newest = handles[-1] if handles else None
                if newest is not None and not self._booting(newest):
                    for old in handles[:-1]:  # its replacement is up: now the old one may drain
                        self.retire(old, "replaced")
                if newest is None or (self._outdated(newest) and not self._booting(newest)):
                    if self.not_before.get(key, 0) > now:
                        continue
                    if newest is not None and booting_replacements >= 1:
                        continue  # roll one at a time
                    self.not_before.pop(key, None)
                    if self.spawn_worker(pool, number) and newest is not None:
                        booting_replacements += 1
        for key, handles in by_key.items():
            name, number = key
            if name not in self.pools or number > self.targets.get(name, 0):
                for h in handles:
                    self.retire(h, "surplus")

    def _booting(self, h: WorkerHandle) -> bool:
        return self.slots[h.spec.slot_index].state == STARTING

    def _outdated(self, h: WorkerHandle) -> bool:
        return h.spec.generation != self.generation or bool(self.slots[h.spec.slot_index].recycle)

    def retire(self, h: WorkerHandle, why: str) -> None:
        if h.retiring:
            return
        h.retiring = True
        h.kill_at = time.monotonic() + self.cfg.graceful_timeout
        log.info("retiring %s %d [%s] pid=%d (%s)", h.spec.role, h.spec.number, h.spec.pool.name, h.pid, why)
        self._signal(h, signal.SIGTERM)

    def murder_stuck_workers(self) -> None:
        """JOB_TIMEOUT and silent workers: dump the stack, SIGTERM, then SIGKILL after a grace."""
        now_wall, now = time.time(), time.monotonic()
        for h in list(self.workers.values()):
            if h.kill_at is not None:
                if now >= h.kill_at:
                    log.warning("%s %d pid=%d did not stop in time: SIGKILL", h.spec.role, h.spec.number, h.pid)
                    self._signal(h, signal.SIGKILL)
                    h.kill_at = now + 3600  # sent; the reap follows
                continue
            slot = self.slots[h.spec.slot_index]
            why = ""
            if slot.state == BUSY and slot.busy_since and now_wall - slot.busy_since > self.cfg.job_timeout:
                why = (f"busy on {slot.current.decode(errors='replace')} for {now_wall - slot.busy_since:.1f}s "
                       f"> JOB_TIMEOUT {self.cfg.job_timeout:g}s")
            elif slot.state != BUSY and now_wall - slot.heartbeat > self.cfg.heartbeat_timeout:
                why = f"no heartbeat for {now_wall - slot.heartbeat:.1f}s (state {STATE_NAMES.get(slot.state)})"
            if why:
                log.error("%s %d [%s] pid=%d %s: dumping its stack, then SIGTERM", h.spec.role, h.spec.number,
                          h.spec.pool.name, h.pid, why)
                self._signal(h, signal.SIGUSR2)
                time.sleep(0.05)  # let faulthandler write before the drain starts
                h.kill_at = now + self.cfg.graceful_timeout
                self._signal(h, signal.SIGTERM)

    def _signal(self, h: WorkerHandle, sig: int) -> None:
        try:
            os.kill(h.pid, sig)
        except ProcessLookupError:
            pass

    def _kill_all(self, sig: int) -> None:
        for h in self.workers.values():
            self._signal(h, sig)

    # ------------------------------------------------------------------ reporting
    def _housekeeping(self) -> None:
        now = time.monotonic()
        if not self.ready_sent and self._all_up():
            self.ready_sent = True
            services = sorted(h.spec.role for h in self.workers.values() if h.spec.role != "worker")
            log.info("ready: %d workers up in %.2fs%s", len(self.workers) - len(services), now - self.started,
                     f" (and {', '.join(services)})" if services else "")
            sd_notify("READY=1", self._status_line())
        if now - self._last_housekeeping >= 1.0:
            self._last_housekeeping = now
            self._set_title()
            if self.ready_sent:
                sd_notify(self._status_line())
        if self._watchdog and now - self._last_watchdog >= self._watchdog and self._healthy():
            self._last_watchdog = now
            sd_notify("WATCHDOG=1")

    def _all_up(self) -> bool:
        want = sum(self.targets.values())
        up = [h for h in self.workers.values() if not h.retiring
              and self.slots[h.spec.slot_index].state not in (STARTING, EMPTY)]
        return len(up) >= want

    def _healthy(self) -> bool:
        """Every wanted worker is running and none is being killed for hanging."""
        return self._all_up() and not any(h.kill_at and not h.retiring for h in self.workers.values())

    def processed(self) -> int:
        return self.processed_by_dead + sum(self.slots[h.spec.slot_index].processed for h in self.workers.values())

    def _status_line(self) -> str:
        n = sum(1 for h in self.workers.values() if h.spec.role == "worker")
        return f"STATUS={n} workers, {self.processed()} vCons processed, {self.restarts} restarts"

    def _set_title(self, extra: str = "") -> None:
        n = self.board.target_workers
        title = f"conserver: master [{n} workers, {self.method}] processed={self.processed()}"
        set_title(f"{title} {extra}".rstrip())
