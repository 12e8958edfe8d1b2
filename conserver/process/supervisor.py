"""The main process: owns the process table and the signal loop (gunicorn's arbiter shape).

One loop turn (:meth:`Supervisor.loop_once`)::

    wait(wake pipe + every worker's sentinel, timeout)   # a death wakes us at once
      → handle queued signals → reap_workers → murder_stuck_workers
      → manage_workers → housekeeping (titles, READY/WATCHDOG/STATUS)

Signal handlers only queue the signal and wake the wait; every decision and every log
line happens in the loop. What runs is compared each turn with what is wanted
(``pools.PoolTargets``); when a dead worker may start again is ``restarts.RestartPolicy``'s
call; clocks, processes and signals go through one ``environment.Environment``, so the
unit tests drive these turns with a fake clock and fake processes.

The supervisor holds no store client and no thread. It opens a short-lived Redis
connection only to give a dead worker's claimed vCons back (``conserver.queue.recovery.requeue_dead_worker``), and closes it again before it forks.

Signals: TERM/INT drain (a second one, or QUIT, stops at once; one that comes within a
second of the first is the same request: a terminal's Ctrl-C and a wrapper's SIGTERM); HUP re-reads the
configuration and replaces workers one at a time, the new one ready before the old one
stops; TTIN/TTOU add/remove a worker; USR1 reopens log files.
"""

from __future__ import annotations

import collections
import glob
import logging
import os
import shutil
import signal
import tempfile
from typing import Callable

from conserver.config import Config, ConfigError, PoolConfig
from conserver.errors import ExitCode, describe_exit
from conserver.observability.logging import reopen_logs, setup_logging
from conserver.observability.systemd import watchdog_interval
from conserver.process.board import BUSY, EMPTY, STARTING, STATE_NAMES
from conserver.process.environment import Environment, ProcessEnvironment
from conserver.process.pools import PoolTargets
from conserver.process.restarts import RestartPolicy, classify_death
from conserver.process.table import ProcessTable, WorkerHandle
from conserver.queue.recovery import requeue_dead_worker
from conserver.storage import store_modules

log = logging.getLogger("conserver.process.supervisor")

HANDLED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP,
                   signal.SIGTTIN, signal.SIGTTOU, signal.SIGUSR1)
TICK = 0.2  # the longest wait of a turn: paces what workers write on the board
DRAIN_REQUEST_GRACE = 1.0  # a TERM/INT this soon after the drain began asks for the same drain


class Supervisor:
    def __init__(self, config: Config, reload: Callable[[], Config] | None = None,
                 env: Environment | None = None):
        self.cfg = config
        self.reload = reload
        self.env = env if env is not None else ProcessEnvironment(config.start_method)
        self.method = self.env.start_method
        # One shared board of slots for the whole life of the supervisor; a process gets
        # a free slot. Allocated once, before any fork, and holds no thread or socket.
        self.board = self.env.shared_board()
        self.board.master_pid = os.getpid()
        self.board.started = self.env.wall_time()
        self.board.start_method = self.method.encode()
        self.workers = ProcessTable(self.env, self.board)
        self.wanted = PoolTargets(self.board)
        self.wanted.apply(config)
        self.policy = RestartPolicy(config)
        self.generation = 0
        self.restarts = 0
        self.signals: collections.deque[int] = collections.deque()
        self.stopping = False
        self.stop_deadline = 0.0
        self.drain_requested_at = float("-inf")
        self.exit_code = ExitCode.OK
        self.ready_sent = False
        self.started = self.env.monotonic()
        self.metrics_dir = ""
        self._last_housekeeping = 0.0
        self._watchdog = watchdog_interval()
        self._last_watchdog = 0.0
        self._last_extend = 0.0

    def on_signal(self, signum: int, frame: object) -> None:
        # Nothing but queue it and wake the loop: logging or forking here could deadlock.
        self.signals.append(signum)
        self.env.wake()

    # ------------------------------------------------------------------ main loop
    def run(self) -> int:
        self.env.install_signal_handlers(HANDLED_SIGNALS, self.on_signal)
        # prometheus-client's multiprocess mode: every worker writes its own mmap'ed files
        # here and the monitor process adds them up. Set before any child starts, and even
        # when no monitor runs yet: a SIGHUP may turn metrics on.
        self.metrics_dir = tempfile.mkdtemp(prefix="conserver-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = self.metrics_dir
        self._preload()
        log.info("starting conserver master: %d workers, start method %s, lists %s, stores %s",
                 self.cfg.total_workers, self.method, ",".join(self.cfg.ingress_lists_used),
                 ",".join(self.cfg.stores_used) or "none")
        try:
            self.serve()
        finally:
            self.workers.signal_all(signal.SIGKILL)
            self.reap_workers(block=True)
            self.env.notify("STATUS=stopped")
            shutil.rmtree(self.metrics_dir, ignore_errors=True)
        log.info("master exiting with code %d", self.exit_code)
        return self.exit_code

    def serve(self) -> int:
        """Start the workers, then turn the loop until a stop has ended every process."""
        self._set_title()
        self.manage_workers()
        while self.loop_once():
            pass
        return self.exit_code

    def loop_once(self) -> bool:
        """One turn of the loop; False once stopping and no process is left."""
        self.env.wait([h.process for h in self.workers], self.policy.next_due(self.env.monotonic(), TICK))
        self._handle_signals()
        self.reap_workers()
        if self.stopping:
            if not self.workers:
                return False
            self._drain_tick()
        elif not self._crash_loop():
            self.murder_stuck_workers()
            self.manage_workers()
            self._housekeeping()
        return True

    def _preload(self) -> None:
        """Import what workers need once, before any fork (imports only: no clients)."""
        if self.method == "spawn":
            return  # nothing to share, and the master stays lean
        try:
            # the pipeline module brings the fan-out and metrics; prometheus_client they import lazily
            self.env.preload(["conserver.process.worker", self.cfg.pipeline.partition(":")[0], "prometheus_client",
                              *store_modules(self.cfg)])
        except Exception as exc:  # a worker will fail to boot and say why, with backoff
            log.warning("could not preload %s: %s", self.cfg.pipeline, exc)

    # ------------------------------------------------------------------ signals
    def _handle_signals(self) -> None:
        while self.signals:
            sig = self.signals.popleft()
            name = signal.Signals(sig).name
            if sig in (signal.SIGTERM, signal.SIGINT):
                since = self.env.monotonic() - self.drain_requested_at
                if not self.stopping:
                    self.begin_drain(name)
                elif since < DRAIN_REQUEST_GRACE:
                    # Ctrl-C reaches the whole foreground process group, and a wrapper
                    # (make, a demo, a shell script) may send its own SIGTERM with it.
                    log.info("%s %.2fs after the drain began: the same request, still draining", name, since)
                else:
                    log.warning("second %s: stopping at once", name)
                    self._stop_now()
            elif sig == signal.SIGQUIT:
                log.warning("SIGQUIT: stopping at once")
                self._stop_now()
            elif self.stopping:
                log.info("%s ignored while draining", name)
            elif sig == signal.SIGHUP:
                self.reload_config()
            elif sig in (signal.SIGTTIN, signal.SIGTTOU):
                self.wanted.resize(+1 if sig == signal.SIGTTIN else -1, name)
            elif sig == signal.SIGUSR1:
                reopen_logs()
                log.info("SIGUSR1: log files reopened")
                self.workers.signal_all(signal.SIGUSR1)

    def begin_drain(self, why: str) -> None:
        self.stopping = True
        self.drain_requested_at = self.env.monotonic()
        self.board.draining = 1
        self.stop_deadline = self.env.monotonic() + self.cfg.graceful_timeout
        log.info("%s: draining %d processes (graceful timeout %gs)", why, len(self.workers), self.cfg.graceful_timeout)
        self.env.notify("STOPPING=1", f"STATUS=draining {len(self.workers)} workers")
        self._set_title("draining")
        for h in self.workers:
            h.retiring = True
            self.workers.signal(h, signal.SIGTERM)

    def _drain_tick(self) -> None:
        now = self.env.monotonic()
        if now >= self.stop_deadline:
            pids = sorted(h.pid for h in self.workers)
            log.warning("graceful timeout: killing %d workers still running: %s", len(pids), pids)
            self.workers.signal_all(signal.SIGKILL)
            self.reap_workers(block=True)
        elif now - self._last_extend >= 1.0:
            # Tell systemd the stop is progressing, so its own timeout covers ours.
            self._last_extend = now
            self.env.notify(f"EXTEND_TIMEOUT_USEC={int((self.stop_deadline - now + 5) * 1e6)}",
                            f"STATUS=draining {len(self.workers)} workers")

    def _stop_now(self) -> None:
        self.stopping = True
        self.stop_deadline = 0.0
        self.env.notify("STOPPING=1")
        self.workers.signal_all(signal.SIGKILL)
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
        self.cfg = self.policy.cfg = cfg
        self.generation += 1
        self.wanted.apply(cfg)
        log.info("SIGHUP: configuration re-read; replacing %d workers one at a time (generation %d)",
                 len(self.workers), self.generation)

    # ------------------------------------------------------------------ process table
    def spawn_worker(self, pool: PoolConfig, number: int) -> WorkerHandle | None:
        try:
            h = self.workers.start(self.cfg, pool, number, self.generation)
        except OSError as exc:
            log.error("could not start process %d of pool %s: %s", number, pool.name, exc)
            self.policy.hold((pool.name, number), self.env.monotonic() + 1.0)
            return None
        log.info("started %s %d/%d [%s] pid=%d", h.spec.role, number, pool.workers, pool.name, h.pid)
        return h

    def reap_workers(self, block: bool = False) -> None:
        for h in self.workers.reap(block):
            self._on_exit(h)

    def _on_exit(self, h: WorkerHandle) -> None:
        code = h.process.exitcode
        slot = self.workers.slot(h)
        lived = self.env.monotonic() - h.started
        if h.retiring and code == 0:
            log.info("%s pid=%d stopped after %.1fs", h.who, h.pid, lived)
        elif h.retiring:
            log.info("%s pid=%d %s after %.1fs", h.who, h.pid, describe_exit(code), lived)
        else:
            busy = f" while busy on {slot.current_text}" if slot.state == BUSY else ""
            death = classify_death(code, slot.state not in (STARTING, EMPTY), lived, self.cfg.min_uptime)
            self.restarts += 1
            self.board.restarts = self.restarts
            delay = self.policy.died(h.key, death, self.env.monotonic())
            then = (f"restarting it in {delay:.2f}s ({death.value}: {len(self.policy.early_deaths)} of "
                    f"CONSERVER_CRASH_LIMIT={self.cfg.crash_limit} in {self.cfg.crash_window:g}s)"
                    if death.counts else f"replacing it at once ({death.value})")
            log.warning("%s pid=%d %s after %.1fs%s; %s", h.who, h.pid, describe_exit(code), lived, busy, then)
        self._recover(h, slot.ident_text)
        if self.metrics_dir:  # what prometheus_client.multiprocess.mark_process_dead does
            for path in glob.glob(os.path.join(self.metrics_dir, f"gauge_live*_{h.pid}.db")):
                os.remove(path)
        self.workers.release(h)

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

    def _crash_loop(self) -> bool:
        if not self.policy.crash_loop(self.env.monotonic()):
            return False
        log.critical("crash loop: %d workers died soon after starting within %gs (CONSERVER_CRASH_LIMIT=%d); "
                     "giving up so the service manager can restart conserver — see the errors above",
                     len(self.policy.early_deaths), self.cfg.crash_window, self.cfg.crash_limit)
        self.exit_code = ExitCode.CRASH_LOOP
        self.begin_drain("crash loop")
        return True

    def manage_workers(self) -> None:
        """Start what is missing, retire what is surplus or replaced (rolling).

        Per worker slot (pool, number) the newest process is the one that counts. When it is
        outdated (an older configuration, or it asked to be recycled) a new one starts —
        one replacement booting at a time across the pool — and every older process of that
        slot is asked to drain only once the newest one is up.
        """
        self.wanted.follow_autoscale(self.cfg)
        now = self.env.monotonic()
        by_key: dict[tuple[str, int], list[WorkerHandle]] = collections.defaultdict(list)
        for h in sorted(self.workers, key=lambda h: h.started):
            if not h.retiring:
                by_key[h.key].append(h)
        booting = self.workers.booting
        booting_replacements = sum(1 for hs in by_key.values() if len(hs) > 1 and booting(hs[-1]))
        targets = self.wanted.targets
        for name, pool in self.wanted.pools.items():
            for number in range(1, targets.get(name, 0) + 1):
                key = (name, number)
                handles = by_key.get(key, [])
                newest = handles[-1] if handles else None
                if newest is not None and not booting(newest):
                    for old in handles[:-1]:  # its replacement is up: now the old one may drain
                        self.retire(old, "replaced")
                if newest is None or (self._outdated(newest) and not booting(newest)):
                    if newest is not None and booting_replacements >= 1:
                        continue  # roll one at a time
                    if not self.policy.may_start(key, now):
                        continue
                    if self.spawn_worker(pool, number) and newest is not None:
                        booting_replacements += 1
        for (name, number), handles in by_key.items():
            if name not in self.wanted.pools or number > targets.get(name, 0):
                for h in handles:
                    self.retire(h, "surplus")

    def _outdated(self, h: WorkerHandle) -> bool:
        return h.spec.generation != self.generation or bool(self.workers.slot(h).recycle)

    def retire(self, h: WorkerHandle, why: str) -> None:
        if h.retiring:
            return
        h.retiring = True
        h.kill_at = self.env.monotonic() + self.cfg.graceful_timeout
        log.info("retiring %s pid=%d (%s)", h.who, h.pid, why)
        self.workers.signal(h, signal.SIGTERM)

    def murder_stuck_workers(self) -> None:
        """JOB_TIMEOUT and silent workers: dump the stack, SIGTERM, then SIGKILL after a grace."""
        now_wall, now = self.env.wall_time(), self.env.monotonic()
        for h in self.workers:
            if h.kill_at is not None:
                if now >= h.kill_at:
                    log.warning("%s pid=%d did not stop in time: SIGKILL", h.who, h.pid)
                    self.workers.signal(h, signal.SIGKILL)
                    h.kill_at = now + 3600  # sent; the reap follows
                continue
            slot = self.workers.slot(h)
            why = ""
            if slot.state == BUSY and slot.busy_since and now_wall - slot.busy_since > self.cfg.job_timeout:
                why = (f"busy on {slot.current_text} for {now_wall - slot.busy_since:.1f}s "
                       f"> JOB_TIMEOUT {self.cfg.job_timeout:g}s")
            elif slot.state != BUSY and now_wall - slot.heartbeat > self.cfg.heartbeat_timeout:
                why = f"no heartbeat for {now_wall - slot.heartbeat:.1f}s (state {STATE_NAMES.get(slot.state)})"
            if why:
                log.error("%s pid=%d %s: dumping its stack, then SIGTERM", h.who, h.pid, why)
                self.workers.signal(h, signal.SIGUSR2)
                self.env.sleep(0.05)  # let faulthandler write before the drain starts
                h.kill_at = now + self.cfg.graceful_timeout
                self.workers.signal(h, signal.SIGTERM)

    # ------------------------------------------------------------------ reporting
    def _housekeeping(self) -> None:
        now = self.env.monotonic()
        if not self.ready_sent and self._all_up():
            self.ready_sent = True
            services = sorted(h.spec.role for h in self.workers if h.spec.role != "worker")
            log.info("ready: %d workers up in %.2fs%s", len(self.workers) - len(services), now - self.started,
                     f" (and {', '.join(services)})" if services else "")
            self.env.notify("READY=1", self._status_line())
        if now - self._last_housekeeping >= 1.0:
            self._last_housekeeping = now
            self._set_title()
            if self.ready_sent:
                self.env.notify(self._status_line())
        if self._watchdog and now - self._last_watchdog >= self._watchdog and self._healthy():
            self._last_watchdog = now
            self.env.notify("WATCHDOG=1")

    def _all_up(self) -> bool:
        up = [h for h in self.workers if not h.retiring and self.workers.slot(h).state not in (STARTING, EMPTY)]
        return len(up) >= self.wanted.wanted()

    def _healthy(self) -> bool:
        """Every wanted worker is running and none is being killed for hanging."""
        return self._all_up() and not any(h.kill_at and not h.retiring for h in self.workers)

    def _status_line(self) -> str:
        n = sum(1 for h in self.workers if h.spec.role == "worker")
        return f"STATUS={n} workers, {self.workers.processed()} vCons processed, {self.restarts} restarts"

    def _set_title(self, extra: str = "") -> None:
        title = f"conserver: master [{self.board.target_workers} workers, {self.method}] processed={self.workers.processed()}"
        self.env.set_title(f"{title} {extra}".rstrip())
