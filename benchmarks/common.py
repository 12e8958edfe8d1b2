"""Shared harness for the benchmarks: private Redis, conserver as a child process, its
process tree and titles, drain detection, machine facts, tables, JSON and RESULTS.md.

Nothing here imports from ``tests/``; the ideas of tests/proc.py are reused (the child's
own environment and working directory, titles read from /proc/PID/cmdline).
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import platform
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid as uuid_mod
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

from conserver.dev.devstack import wait_for  # noqa: F401  (the benchmarks import it from here)
from conserver.observability.titles import process_title as title  # noqa: F401  (likewise)

ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = ROOT / "benchmarks"
OUT_DIR = BENCH_DIR / "out"
RESULTS = BENCH_DIR / "RESULTS.md"
PYTHON = sys.executable

if str(ROOT) not in sys.path:  # `python benchmarks/x.py` as well as `python -m benchmarks x`
    sys.path.insert(0, str(ROOT))

# Environment variables conserver reads; none of the caller's leak into a benchmark's child.
_DROP_PREFIXES = ("CONSERVER_", "REDIS_", "NOTIFY_SOCKET", "WATCHDOG_", "LOG_", "JOB_TIMEOUT", "TICK_INTERVAL",
                  "POSTGRES_", "DATABASE_URL", "S3_", "AWS_", "ELASTICSEARCH_", "MAX_RETRIES", "SCHEDULER_",
                  "CIRCUIT_BREAKER_", "DEFAULT_TENANT_", "ENABLE_SCHEDULER", "PROMETHEUS_MULTIPROC_DIR")


# ---------------------------------------------------------------------------- machine


def _read(path: str) -> str:
    try:
        with open(path) as fh:
            return fh.read()
    except OSError:
        return ""


def cpu_model() -> str:
    for line in _read("/proc/cpuinfo").splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def machine_info() -> dict[str, Any]:
    """The facts a result needs beside it: CPU, cores, memory, Python, OS, Redis, date, load."""
    try:
        cores_usable = len(os.sched_getaffinity(0))
    except AttributeError:
        cores_usable = os.cpu_count() or 1
    mem_kb = 0
    for line in _read("/proc/meminfo").splitlines():
        if line.startswith("MemTotal:"):
            mem_kb = int(line.split()[1])
    redis_version = ""
    try:
        out = subprocess.run([shutil.which("redis-server") or "redis-server", "--version"], capture_output=True,
                             text=True, timeout=10).stdout
        m = re.search(r"v=(\S+)", out)
        redis_version = m.group(1) if m else out.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    commit = ""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                                timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        if commit and dirty:
            commit += " (with uncommitted changes)"
    except (OSError, subprocess.SubprocessError):
        pass
    os_name = platform.platform()
    pretty = re.search(r'^PRETTY_NAME="?([^"\n]*)', _read("/etc/os-release"), re.M)
    if pretty:
        os_name = f"{pretty.group(1)} (kernel {platform.release()})"
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count() or 1,
        "cores_usable": cores_usable,
        "memory_gib": round(mem_kb / 1048576, 1),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "os": os_name,
        "redis_server": redis_version,
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "loadavg_at_start": _read("/proc/loadavg").split()[:3],
        "cpu_idle_pct_at_start": round(cpu_idle(1.0), 1),
        "commit": commit,
    }


def _cpu_times() -> tuple[int, int]:
    fields = _read("/proc/stat").splitlines()[0].split()[1:]
    values = [int(x) for x in fields]
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
    return sum(values[:8]), idle


def cpu_idle(seconds: float = 0.5) -> float:
    """Percent of all CPUs idle over the next ``seconds``: how busy the machine is without us."""
    t0, i0 = _cpu_times()
    time.sleep(seconds)
    t1, i1 = _cpu_times()
    return 100.0 * (i1 - i0) / max(1, t1 - t0)


def wait_quiet(min_idle: float = 60.0, max_wait: float = 60.0) -> float:
    """On a shared machine, wait (at most ``max_wait`` s) until at least ``min_idle`` percent of
    the CPUs were idle over half a second, so other people's work disturbs a measurement less.
    Returns the idle percent last seen (the figure to print beside the result)."""
    deadline = time.monotonic() + max_wait
    idle = cpu_idle()
    while idle < min_idle and time.monotonic() < deadline:
        idle = cpu_idle()
    return idle


def machine_line(info: dict[str, Any]) -> str:
    load = " ".join(info.get("loadavg_at_start") or [])
    return (f"Machine: {info['cpu']}, {info['cores']} cores ({info['cores_usable']} usable), "
            f"{info['memory_gib']} GiB, Python {info['python']}, {info['os']}, redis-server {info['redis_server']}; "
            f"run {info['date']}, load average at start {load}, CPU idle at start "
            f"{info.get('cpu_idle_pct_at_start', '?')}%; commit {info['commit'] or '?'}.")


# ---------------------------------------------------------------------------- redis


def start_redis():
    """A private redis-server on a free 127.0.0.1 port, without persistence (conserver.dev.devstack)."""
    from conserver.dev.devstack import RedisServer

    return RedisServer(appendonly=False).start()


def redis_client(server, **kwargs):
    import redis

    return redis.Redis.from_url(server.url, **kwargs)


# ---------------------------------------------------------------------------- sample vCons


class VconFactory:
    """Sample vCons (conserver.vcon.sample_vcon, ~1.5 KB) fast: ``pool`` distinct documents
    are generated once; each one handed out gets a fresh uuid written into its JSON."""

    def __init__(self, seed: int = 1, pool: int = 2000):
        import orjson

        from conserver.dev.samples import sample_vcon

        self.rng = random.Random(seed)
        self.templates: list[tuple[bytes, bytes]] = []
        for _ in range(pool):
            doc = sample_vcon(self.rng)
            self.templates.append((doc["uuid"].encode(), orjson.dumps(doc)))
        self.mean_bytes = sum(len(b) for _, b in self.templates) / len(self.templates)
        self._i = 0

    def new_uuid(self) -> str:
        return str(uuid_mod.UUID(int=self.rng.getrandbits(128), version=4))

    def make(self, n: int) -> Iterator[tuple[str, bytes]]:
        for _ in range(n):
            old, body = self.templates[self._i % len(self.templates)]
            self._i += 1
            new = self.new_uuid()
            yield new, body.replace(old, new.encode())


def enqueue_vcons(client, list_name: str, n: int, factory: VconFactory, chunk: int = 5000) -> float:
    """Store n bodies at vcon:{uuid} and RPUSH their uuids with QueueAdmin.enqueue. Returns seconds."""
    from conserver.queue.admin import QueueAdmin

    q = QueueAdmin(client, [list_name])
    t0 = time.perf_counter()
    left = n
    while left > 0:
        k = min(chunk, left)
        q.enqueue(list_name, factory.make(k))
        left -= k
    return time.perf_counter() - t0


# ---------------------------------------------------------------------------- process tree


def children(pid: int) -> list[int]:
    """Direct children of pid, from /proc/PID/task/*/children (cheap), else psutil."""
    out: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tasks:
        text = _read(f"/proc/{pid}/task/{tid}/children")
        out.extend(int(x) for x in text.split())
    if not out and not os.path.exists(f"/proc/{pid}/task/{pid}/children"):
        try:
            import psutil

            return [c.pid for c in psutil.Process(pid).children()]
        except Exception:
            return []
    return out


def descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        kids = children(todo.pop())
        out.extend(kids)
        todo.extend(kids)
    return out


def alive(pid: int) -> bool:
    """Running and not a zombie."""
    stat = _read(f"/proc/{pid}/stat")
    if not stat:
        return False
    state = stat.rsplit(")", 1)[-1].split()[0]
    return state not in ("Z", "X")


WORKER_TITLE = re.compile(r"^conserver: worker (\d+)/(\d+) \[([^\]]*)\] (\w+)")


def base_env(redis_url: str, *, workers: int = 2, method: str = "fork", storages: str = "null",
             lists: str = "default", **extra: Any) -> dict[str, str]:
    """The child's environment: the caller's minus every conserver setting, plus these."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(_DROP_PREFIXES)}
    env.update({
        "PYTHONPATH": str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else ""),
        "REDIS_URL": redis_url,
        "CONSERVER_WORKERS": str(workers),
        "CONSERVER_START_METHOD": method,
        "CONSERVER_STORAGES": storages,
        "CONSERVER_INGRESS_LISTS": lists,
        "CONSERVER_BATCH_SIZE": "50",
        "CONSERVER_ENABLE_SCHEDULER": "false",
        "CONSERVER_METRICS_LOG_INTERVAL": "0",
        "CONSERVER_METRICS_PORT": "0",
        "CONSERVER_MIN_UPTIME": "0",  # a kill -9'd worker comes back without backoff
        "CONSERVER_CRASH_LIMIT": "10000",  # the most config.py accepts
        "LOG_LEVEL": "WARNING",
    })
    env.update({k: str(v) for k, v in extra.items()})
    return env


class Conserver:
    """``python -m conserver run`` as a child in its own session, logging to a file."""

    def __init__(self, env: dict[str, str], workdir: Path | None = None, label: str = "conserver"):
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="conserver-bench-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.workdir / f"{label}-{time.monotonic_ns()}.log"
        self._log = open(self.log_path, "wb")
        self.started = time.perf_counter()
        # cwd is a scratch folder: conserver reads .env from its working directory.
        self.proc = subprocess.Popen([PYTHON, "-m", "conserver", "run"], env=env, cwd=self.workdir,
                                     stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        self.pid = self.proc.pid

    # --- the tree
    def pids(self) -> list[int]:
        return [self.pid, *descendants(self.pid)] if alive(self.pid) else descendants(self.pid)

    def titles(self) -> dict[int, str]:
        return {p: title(p) for p in descendants(self.pid)}

    def workers(self, state: str | tuple[str, ...] = ()) -> dict[int, str]:
        """pid -> title of live worker processes, optionally only those in ``state``."""
        states = (state,) if isinstance(state, str) else state
        out = {}
        for pid, t in self.titles().items():
            m = WORKER_TITLE.match(t)
            if m and (not states or m.group(4) in states) and alive(pid):
                out[pid] = t
        return out

    def helpers(self) -> dict[int, str]:
        """Descendants that are not workers: the forkserver, multiprocessing's resource tracker."""
        return {p: t for p, t in self.titles().items() if not WORKER_TITLE.match(t) and alive(p)}

    def wait_workers(self, n: int, state: str | tuple[str, ...] = ("idle", "busy"), timeout: float = 60.0) -> dict[int, str]:
        def ready():
            if self.proc.poll() is not None:
                raise RuntimeError(f"conserver exited with code {self.proc.returncode}\n{self.log_tail()}")
            ws = self.workers(state)
            return ws if len(ws) == n else None
        try:
            return wait_for(ready, timeout, 0.005, f"{n} workers {state}")
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}\ntitles: {self.titles()}\n{self.log_tail()}") from None

    # --- logs
    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def log_tail(self, lines: int = 30) -> str:
        return "--- conserver log tail:\n" + "\n".join(self.log().splitlines()[-lines:])

    # --- stopping
    def terminate(self, timeout: float = 30.0) -> float:
        """SIGTERM to the master; seconds until every process of the tree is gone."""
        pids = self.pids()
        t0 = time.perf_counter()
        os.kill(self.pid, signal.SIGTERM)
        self.proc.wait(timeout)
        wait_for(lambda: not any(alive(p) for p in pids), timeout, 0.001, "every process gone")
        return time.perf_counter() - t0

    def stop(self) -> None:
        """Leave nothing behind: SIGKILL the whole process group (our own session)."""
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        for p in descendants(self.pid):
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass
        _reap(self.proc, self._log)

    def __enter__(self) -> "Conserver":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def _reap(proc: subprocess.Popen, log) -> None:
    """Wait (bounded) for a killed process, then close its log."""
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        pass
    log.close()


class Group:
    """Any command run as its own session (a peer's workers): stop() kills the whole group."""

    def __init__(self, argv: list[str], env: dict[str, str], cwd: Path, log_path: Path):
        self.log_path = log_path
        self._log = open(log_path, "wb")
        self.proc = subprocess.Popen(argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=self._log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        self.pid = self.proc.pid

    def stop(self, grace: float = 5.0) -> None:
        try:
            os.killpg(self.pid, signal.SIGTERM)
            self.proc.wait(grace)
        except (ProcessLookupError, PermissionError):
            pass
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        _reap(self.proc, self._log)

    def log_tail(self, lines: int = 30) -> str:
        self._log.flush()
        text = self.log_path.read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])


# ---------------------------------------------------------------------------- drain detection

# One round trip: how many items wait in the given lists, and how many sit in processing
# lists (every key registered in conserver:inflight).
_DEPTH_LUA = """
local waiting = 0
for i = 1, #KEYS do waiting = waiting + redis.call('LLEN', KEYS[i]) end
local processing = 0
local reg = redis.call('HKEYS', ARGV[1])
for i = 1, #reg do processing = processing + redis.call('LLEN', reg[i]) end
return {waiting, processing}
"""


def watch_drain(client, lists: Sequence[str], total: int, *, timeout: float = 300.0, poll: float = 0.002,
                ready: Callable[[], bool] | None = None, stall: float = 30.0,
                on_fail: Callable[[], str] | None = None) -> dict[str, float]:
    """Poll until ``total`` pre-enqueued vCons are all acknowledged (ingress lists empty and
    nothing in processing lists). Returns perf_counter times: ``ready`` (first poll at which
    ``ready()`` was true), ``first_claim`` (first poll with fewer than ``total`` waiting) and
    ``drained``, plus ``done_at_first_claim`` (already acknowledged at that poll)."""
    from conserver.queue.keys import DEFAULT_KEYS

    depth = client.register_script(_DEPTH_LUA)
    keys = list(lists)
    t_ready = t_claim = None
    done0 = 0.0
    last_progress, last_left = time.perf_counter(), None
    deadline = time.perf_counter() + timeout
    while True:
        now = time.perf_counter()
        if t_ready is None and ready is not None and ready():
            t_ready = now
        waiting, processing = depth(keys=keys, args=[DEFAULT_KEYS.inflight])
        if t_claim is None and waiting < total:
            t_claim = now
            done0 = total - waiting - processing
            if t_ready is None and ready is not None:
                t_ready = now  # a claim proves a worker was up
        left = waiting + processing
        if waiting == 0 and processing == 0:
            t_end = time.perf_counter()
            return {"ready": t_ready if t_ready is not None else t_claim, "first_claim": t_claim, "drained": t_end,
                    "done_at_first_claim": done0}
        if left != last_left:
            last_left, last_progress = left, now
        if now - last_progress > stall or now > deadline:
            why = on_fail() if on_fail else ""
            raise TimeoutError(f"no drain: {waiting} waiting, {processing} processing after "
                               f"{now - last_progress:.0f}s without progress\n{why}")
        time.sleep(poll)


# ---------------------------------------------------------------------------- statistics


def percentile(values: Sequence[float], p: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    if not values:
        return math.nan
    s = sorted(values)
    k = (len(s) - 1) * p / 100.0
    lo, hi = math.floor(k), math.ceil(k)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def median(values: Sequence[float]) -> float:
    return percentile(values, 50)


def slope(xs: Sequence[float], ys: Sequence[float]) -> tuple[float, float]:
    """Least-squares line y = a + b x: returns (b, a)."""
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx if sxx else math.nan
    return b, my - b * mx


def ratio(x: float, base: float) -> str:
    if base is None or x is None or base == 0 or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    r = x / base
    return f"{r:.2f}x" if r < 100 else f"{r:.0f}x"


# ---------------------------------------------------------------------------- output


def md_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    rows = [[str(c) for c in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]

    def line(cells):
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"

    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(headers), sep, *(line(r) for r in rows)])


def write_json(name: str, data: dict[str, Any]) -> Path:
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    path = OUT_DIR / f"{name}.json"
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")
    return path


def read_json(name: str) -> dict[str, Any] | None:
    path = OUT_DIR / f"{name}.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


RESULTS_HEADER = """# conserver benchmarks

Measured numbers, not unit tests. Each benchmark starts its own private `redis-server`
(`conserver.devstack.RedisServer`, no persistence, a free 127.0.0.1 port) and needs nothing
but the virtualenv (`pip install -e '.[bench]'`). Every figure is also given as a ratio to
a baseline measured in the same run (or to a stated target). Run from the repository root:

| benchmark | command | what it measures |
|---|---|---|
| queue | `.venv/bin/python -m benchmarks queue` | no-op job throughput: conserver (null store) vs RQ, Celery, Dramatiq, Huey and a bare redis-py at-least-once loop, 2 processes each |
| lifecycle | `.venv/bin/python -m benchmarks lifecycle` | kill -9 -> replacement idle, kill -9 -> claimed vCons back in the list, SIGTERM -> all gone (idle and busy), per start method |
| memory | `.venv/bin/python -m benchmarks memory` | PSS of master + workers (+ forkserver) for 1, 2, 4, 8 workers per start method |
| fanout | `.venv/bin/python -m benchmarks fanout` | end to end into PostgreSQL + S3 + OpenSearch against a vcon-server style loop, worker CPU per vCon, each store's bare client, parallel vs sequential with injected latency |
| scaling | `.venv/bin/python -m benchmarks scaling --workers 1,2,4,8,16` | null-store vCons/s against the number of workers |
| chains | `.venv/bin/python -m benchmarks chains` | a chain with a webhook link answering in 50 ms, CONSERVER_VCON_CONCURRENCY 1 and 16, against vcon-server's loop |
| plot | `.venv/bin/python -m benchmarks plot` | `scaling.png`, `queue.png`, `memory.png`, `fanout.png` (when `out/fanout.json` exists) next to this file |

Each run prints its table, writes `benchmarks/out/NAME.json` (raw numbers, not committed)
and replaces its own section below, with the machine it ran on. The numbers are only
comparable within a section: on a 2-core machine every process, the harness's own polling
and Redis itself share two CPUs.
"""

_ORDER = ["queue", "lifecycle", "memory", "scaling", "fanout", "chains", "plot"]


def update_results(name: str, body: str) -> Path:
    """Replace (or add) the section ``name`` of RESULTS.md, keeping the others."""
    text = RESULTS.read_text() if RESULTS.exists() else ""
    sections: dict[str, str] = {}
    for m in re.finditer(r"<!-- BEGIN (\S+) -->\n(.*?)<!-- END \1 -->", text, re.S):
        sections[m.group(1)] = m.group(2)
    sections[name] = body.rstrip() + "\n"
    names = sorted(sections, key=lambda n: (_ORDER.index(n) if n in _ORDER else len(_ORDER), n))
    parts = [RESULTS_HEADER]
    for n in names:
        parts.append(f"<!-- BEGIN {n} -->\n{sections[n]}<!-- END {n} -->\n")
    RESULTS.write_text("\n".join(parts))
    return RESULTS


def section(title: str, info: dict[str, Any], command: str, intro: str, tables: Sequence[str], notes: str = "") -> str:
    if command.startswith("python "):
        command = ".venv/bin/" + command
    out = [f"## {title}", "", f"Command: `{command}`", "", machine_line(info), ""]
    if intro:
        out += [intro.strip(), ""]
    for t in tables:
        out += [t, ""]
    if notes:
        out += [notes.strip(), ""]
    return "\n".join(out)


def report(name: str, title: str, info: dict[str, Any], command: str, intro: str, tables: Sequence[str],
           data: dict[str, Any], notes: str = "") -> None:
    """Print the tables, write out/NAME.json and the RESULTS.md section."""
    print()
    print(machine_line(info))
    for t in tables:
        print()
        print(t)
    if notes:
        print()
        print(notes.strip())
    data = {"benchmark": name, "machine": info, "command": command, **data}
    path = write_json(name, data)
    update_results(name, section(title, info, command, intro, tables, notes))
    print(f"\nwrote {path.relative_to(ROOT)} and the '{name}' section of {RESULTS.relative_to(ROOT)}")


def scratch_dir(prefix: str) -> Path:
    """A folder for one run's logs and server data (world-readable: PostgreSQL runs as postgres)."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o755)
    return path


def remove_scratch(path: Path, ok: bool) -> None:
    """Remove a run's scratch folder when it went well; keep it (and say where) when not."""
    if ok:
        shutil.rmtree(path, ignore_errors=True)
    else:
        print(f"logs kept in {path}")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)
