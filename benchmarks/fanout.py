"""End-to-end fan-out into PostgreSQL, S3 and OpenSearch: conserver against a vcon-server
style loop, each store's bare client, and parallel against sequential store writes with
latency injected in front of the real servers.

    .venv/bin/python -m benchmarks fanout            (or: python -m benchmarks.fanout)

Everything runs on private local servers started here (conserver.dev.devstack: redis-server,
PostgreSQL, SeaweedFS for S3, osmem for the OpenSearch API); never the machine's own.

1. Throughput. The same N sample vCons (~1.5 KB) are written to vcon:{uuid} and their
   uuids RPUSHed to a staging list before anything starts. The system under test starts
   and opens its clients; once every worker is ready the staging list is RENAMEd onto the
   list it reads (one O(1) command that wakes blocked readers), and the clock runs from
   there to the last vCon done (conserver: ingress and processing lists empty, i.e. every
   vCon acknowledged after all three stores committed it; the baseline: its done counter).
   Worker CPU = user + system time of the worker processes (psutil) over that window, per
   vCon; the same for every server process.
   - baseline: benchmarks/vcon_server_loop.py, 2 processes, BLPOP one uuid, a new thread
     pool per vCon, one upsert + two PUTs (the vCon and its lookup pointer) + one index()
     call per part document (vcon-server's storage modules).
   - conserver: ``python -m conserver run``, CONSERVER_WORKERS=2, all three stores, batch
     50, the default layout (vcon-server's: two PUTs per vCon, the part documents in one
     ``_bulk`` per batch).
   - optionally (--one-put) conserver with S3_LOOKUP_OBJECTS=false: one PUT per vCon.
   Both write vcon-server's table layout, object keys and part documents, under names of
   their own per round. Afterwards every store is counted: each must hold every vCon. --rounds rounds
   in rotating order; the best verified round of each system counts, and each round says how
   much of the machine other processes took meanwhile (the machine may be shared). A
   conserver worker's CPU is also split by thread (/proc/PID/task/TID/schedstat, thread
   names from ``py-spy dump``): main loop, each store's fan-out thread, the S3 PUT threads,
   obstore's tokio threads.
2. Bare clients, in the same run: PostgreSQL executemany of 50-row upserts (one transaction
   each), S3 PUTs of 1.5 KB with boto3 and with obstore (8 threads each), ``_bulk`` of 50
   documents. Client CPU per operation is this process's CPU time.
3. Latency. benchmarks/latency_proxy.py in front of PostgreSQL (100 ms), S3 (150 ms) and
   OpenSearch (100 ms): every server->client round trip is delayed once. conserver runs with
   1 worker, CONSERVER_PARALLEL_STORAGE=true and then false, for small batches (every S3
   PUT of a batch in flight at once on the 8 store threads, so a batch is one S3 round
   trip) and for batches of 50. Per batch: the wall time from outside (K batches drained
   one after another), the mean of conserver_vcon_duration_seconds (claim to ack, per
   vCon) and of conserver_store_write_seconds per store, and the round trips each proxy
   saw. The vcon-server-style loop (1 process) runs through the same proxies for the
   per-vCon latency of the baseline.

Prints the tables, writes benchmarks/out/fanout.json and the ``fanout`` section of
benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Callable, Sequence

from benchmarks.common import (PYTHON, ROOT, Conserver, Group, VconFactory, base_env, log, machine_info, md_table,
                               ratio, report, wait_for, wait_quiet, watch_drain)

STORES = ("postgres", "s3", "elasticsearch")
DELAYS = {"postgres": 0.100, "s3": 0.150, "elasticsearch": 0.100}  # seconds, per round trip
STAGE = "fanout:stage"
BASELINE_LIST = "baseline"
BASELINE_KEYS = "vcon_server_loop"
TARGET_SPEEDUP = 4.5
TARGET_CPU_MS = 0.8
TARGET_PARALLEL = 1.1


# ---------------------------------------------------------------------------- CPU


def cpu_of(pids: Sequence[int]) -> dict[int, float]:
    """pid -> user + system seconds (all threads, exited ones included) of the live ones."""
    import psutil

    out = {}
    for pid in pids:
        try:
            t = psutil.Process(pid).cpu_times()
            out[pid] = t.user + t.system
        except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
            pass
    return out


def cpu_delta(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU used between two snapshots; a process born in between counts from zero."""
    return sum(t - before.get(pid, 0.0) for pid, t in after.items())


def server_pids(stack) -> dict[str, list[int]]:
    """Every process of every server (PostgreSQL: the postmaster and its backends)."""
    import psutil

    out = {}
    for name, server in stack.servers.items():
        pids = [server.pid] if server.pid else []
        try:
            pids += [c.pid for c in psutil.Process(server.pid).children(recursive=True)]
        except (psutil.NoSuchProcess, TypeError):
            pass
        out[name] = pids
    return out


class CpuWatch:
    """CPU of named process groups between start() and stop(); the groups are looked up
    again at stop() (new PostgreSQL backends count from zero)."""

    def __init__(self, groups: Callable[[], dict[str, list[int]]]):
        self.groups = groups
        self.before: dict[str, dict[int, float]] = {}

    def start(self) -> None:
        self.before = {name: cpu_of(pids) for name, pids in self.groups().items()}

    def stop(self) -> dict[str, float]:
        after = {name: cpu_of(pids) for name, pids in self.groups().items()}
        return {name: cpu_delta(self.before.get(name, {}), snap) for name, snap in after.items()}


def thread_names(pid: int) -> dict[int, str]:
    """tid -> Python thread name (py-spy dump; Python does not name OS threads). {} if py-spy fails."""
    exe = shutil.which("py-spy") or str(Path(PYTHON).parent / "py-spy")
    try:
        out = subprocess.run([exe, "dump", "--pid", str(pid), "--json"], capture_output=True, text=True, timeout=20)
        return {t["os_thread_id"]: t["thread_name"] for t in json.loads(out.stdout) if t.get("os_thread_id")}
    except (OSError, ValueError, subprocess.SubprocessError, KeyError, TypeError):
        return {}


def thread_cpu(pid: int) -> dict[int, tuple[str, float]]:
    """tid -> (comm, seconds on a CPU) of every thread of pid: /proc/PID/task/TID/schedstat (nanoseconds;
    the tick-sampled utime + stime of single threads add up to 10-15% less than the process's)."""
    tick = os.sysconf("SC_CLK_TCK")
    out = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as fh:
                stat = fh.read()
        except OSError:
            continue
        comm = stat[stat.index("(") + 1:stat.rindex(")")]
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as fh:
                secs = int(fh.read().split()[0]) / 1e9
        except (OSError, ValueError, IndexError):
            fields = stat[stat.rindex(")") + 2:].split()
            secs = (int(fields[11]) + int(fields[12])) / tick
        out[int(tid)] = (comm, secs)
    return out


def thread_group(name: str) -> str:
    """s3-put_3 -> s3-put, fanout-postgres_0 -> fanout-postgres, tokio-runtime-w stays."""
    if re.match(r"^conserver-.+-(worker-\d+|scheduler)$", name):  # psycopg_pool's threads, named after the pool
        return "psycopg_pool"
    return re.sub(r"[_-]?\d+$", "", name) or name


def thread_breakdown(pids: Sequence[int], names: dict[int, dict[int, str]], before: dict[int, dict],
                     after: dict[int, dict]) -> dict[str, float]:
    """CPU seconds per thread group over the window, summed over the worker processes."""
    out: dict[str, float] = {}
    for pid in pids:
        for tid, (comm, secs) in after.get(pid, {}).items():
            name = "MainThread" if tid == pid else names.get(pid, {}).get(tid) or comm
            group = thread_group(name)
            out[group] = out.get(group, 0.0) + secs - before.get(pid, {}).get(tid, (comm, 0.0))[1]
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def machine_busy() -> tuple[int, int]:
    with open("/proc/stat") as fh:
        values = [int(x) for x in fh.readline().split()[1:]]
    return sum(values[:8]), values[3] + values[4]


def busy_pct(t0: tuple[int, int], t1: tuple[int, int]) -> float:
    total, idle = t1[0] - t0[0], t1[1] - t0[1]
    return 100.0 * (total - idle) / max(1, total)


# ---------------------------------------------------------------------------- stores


def pg_connect(dsn: str, **kw):
    import psycopg

    return psycopg.connect(dsn, autocommit=True, **kw)


def s3_client(env: dict[str, str]):
    import boto3
    from botocore.config import Config as BotoConfig

    return boto3.session.Session().client(
        "s3", endpoint_url=env["S3_ENDPOINT_URL"], aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"], region_name=env.get("AWS_REGION", "us-east-1"),
        config=BotoConfig(max_pool_connections=16))


def es_request(env: dict[str, str], method: str, path: str, body: bytes | None = None,
               ctype: str = "application/json") -> dict:
    req = urllib.request.Request(env["ELASTICSEARCH_URL"] + path, data=body, method=method,
                                 headers={"content-type": ctype, "accept": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as resp:
        return json.loads(resp.read() or b"{}")


def count_stores(env: dict[str, str], table: str, bucket: str, index: str, prefix: str = "") -> dict[str, int]:
    """Rows, objects (under prefix) and documents now in the stores."""
    with pg_connect(env["POSTGRES_DSN"]) as conn:
        rows = conn.execute(f'SELECT count(*) FROM "{table}"').fetchone()[0]
    s3 = s3_client(env)
    objects = 0
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        objects += page.get("KeyCount", 0)
    try:
        es_request(env, "POST", f"/{index}/_refresh")
    except Exception:
        pass
    docs = es_request(env, "GET", f"/{index}/_count").get("count", 0)
    return {"postgres_rows": rows, "s3_objects": objects, "elasticsearch_docs": docs}


def part_docs(items: list[tuple[str, bytes]]) -> int:
    """vcon-server's part documents for these vCons (none for one without dialog)."""
    import orjson

    from conserver.storage.compat import normalize_legacy_fields
    from conserver.storage.elasticsearch_parts import part_documents

    return sum(len(part_documents(normalize_legacy_fields(orjson.loads(b)), u, "")) for u, b in items)


def stage(client, items: list[tuple[str, bytes]]) -> None:
    """Bodies at vcon:{uuid} and uuids RPUSHed to the staging list (QueueAdmin.enqueue)."""
    from conserver.queue.admin import QueueAdmin

    client.delete(STAGE)
    q = QueueAdmin(client, [STAGE])
    for lo in range(0, len(items), 5000):
        q.enqueue(STAGE, items[lo:lo + 5000])


# ---------------------------------------------------------------------------- bare clients


def bare_clients(env: dict[str, str], items: list[tuple[str, bytes]], n_boto3: int) -> list[dict[str, Any]]:
    import obstore
    import orjson
    from obstore.store import S3Store
    from opensearchpy import OpenSearch

    from benchmarks.vcon_server_loop import _upsert_sql
    from conserver.storage.compat import normalize_legacy_fields
    from conserver.storage.elasticsearch_parts import part_documents
    from conserver.storage.postgres_layout import create_index_sql, create_table_sql

    out = []
    docs = [orjson.loads(body) for _, body in items]

    def timed(name: str, op: str, n: int, fn: Callable[[], None], setup: str) -> None:
        wait_quiet(50, 10)
        c0, t0 = time.process_time(), time.perf_counter()
        fn()
        secs, cpu = time.perf_counter() - t0, time.process_time() - c0
        out.append({"client": name, "operation": op, "setup": setup, "n": n, "seconds": secs, "rate": n / secs,
                    "client_cpu_ms_per_op": 1000 * cpu / n})
        log(f"bare {name}: {n / secs:,.0f} {op}/s, {1000 * cpu / n:.3f} ms CPU per op")

    # PostgreSQL: the same upsert as conserver's sink, 50 rows per executemany, one transaction each
    import psycopg

    table = "bare_vcons"
    with pg_connect(env["POSTGRES_DSN"]) as conn:
        conn.execute(f'DROP TABLE IF EXISTS "{table}"')
        conn.execute(create_table_sql(table))
        conn.execute(create_index_sql(table))
    now = datetime.now()
    rows = [(u, d["vcon"], u, d["created_at"], now, d.get("subject"), orjson.dumps(normalize_legacy_fields(d)).decode())
            for (u, _), d in zip(items, docs)]
    sql = _upsert_sql(table)
    conn = psycopg.connect(env["POSTGRES_DSN"])

    def pg_run():
        with conn.cursor() as cur:
            for lo in range(0, len(rows), 50):
                with conn.transaction():
                    cur.executemany(sql, rows[lo:lo + 50])
    timed("PostgreSQL (psycopg 3)", "rows", len(rows), pg_run, "executemany of 50-row upserts, one transaction each")
    conn.close()

    # S3: boto3, 8 threads, one client
    s3 = s3_client(env)
    bucket = "bare"
    try:
        s3.create_bucket(Bucket=bucket)
    except Exception:
        pass
    keys = [(f"{d['created_at'][:10].replace('-', '/')}/{u}.vcon", b) for (u, b), d in zip(items, docs)]
    pool = ThreadPoolExecutor(8)
    s3.put_object(Bucket=bucket, Key="warm", Body=b"x")

    def boto_run():
        list(pool.map(lambda kb: s3.put_object(Bucket=bucket, Key="boto3/" + kb[0], Body=kb[1],
                                               ContentType="application/json"), keys[:n_boto3]))
    timed("S3 (boto3)", "PUTs", n_boto3, boto_run, "put_object of 1.5 KB, 8 threads, one client")

    store = S3Store(bucket, endpoint=env["S3_ENDPOINT_URL"], access_key_id=env["AWS_ACCESS_KEY_ID"],
                    secret_access_key=env["AWS_SECRET_ACCESS_KEY"], region=env.get("AWS_REGION", "us-east-1"),
                    client_options={"allow_http": True, "pool_max_idle_per_host": "8"}, retry_config={"max_retries": 0,
                    "retry_timeout": timedelta(seconds=10)})
    obstore.put(store, "warm", b"x")
    attrs = {"Content-Type": "application/json"}

    def obstore_run():
        list(pool.map(lambda kb: obstore.put(store, "obstore/" + kb[0], kb[1], attributes=attrs, use_multipart=False),
                      keys))
    timed("S3 (obstore)", "PUTs", len(keys), obstore_run, "obstore.put of 1.5 KB, 8 threads, one store")
    pool.shutdown()

    # OpenSearch: _bulk of 50 documents, opensearch-py transport as conserver's sink
    es = OpenSearch(hosts=[env["ELASTICSEARCH_URL"]], headers={"accept": "application/json"}, timeout=60)
    index = "bare_vcons"
    try:
        es.transport.perform_request("DELETE", f"/{index}")
    except Exception:
        pass
    action_docs = []
    for (u, _), d in zip(items, docs):
        for part_index, doc_id, doc in part_documents(normalize_legacy_fields(d), u, "bare_"):
            action_docs.append((orjson.dumps({"index": {"_index": part_index, "_id": doc_id}}), doc))

    def es_run():
        for lo in range(0, len(action_docs), 50):
            lines = []
            for action, doc in action_docs[lo:lo + 50]:
                lines.append(action)
                lines.append(orjson.dumps(doc))
            lines.append(b"")
            r = es.transport.perform_request("POST", "/_bulk", params={"filter_path": "errors"},
                                             body=b"\n".join(lines), headers={"content-type": "application/x-ndjson"})
            if r.get("errors"):
                raise RuntimeError("bulk errors")
    timed("OpenSearch API (osmem, opensearch-py)", "docs", len(action_docs), es_run,
          "_bulk of 50 part documents (vcon-server's layout)")
    es.close()
    return out


# ---------------------------------------------------------------------------- the baseline


def start_baseline(env: dict[str, str], client, processes: int, workdir: Path, label: str,
                   names: dict[str, str], setup: bool = True) -> Group:
    client.delete(f"{BASELINE_KEYS}:ready", f"{BASELINE_KEYS}:done", f"{BASELINE_KEYS}:errors", BASELINE_LIST)
    child_env = {k: v for k, v in os.environ.items() if not k.startswith(("CONSERVER_", "POSTGRES_", "S3_", "AWS_",
                                                                           "ELASTICSEARCH_", "REDIS_"))}
    child_env.update(env)
    child_env["PYTHONPATH"] = str(ROOT)
    argv = [PYTHON, "-m", "benchmarks.vcon_server_loop", "--processes", str(processes), "--list", BASELINE_LIST,
            "--table", names["table"], "--bucket", names["bucket"], "--index-prefix", names["prefix"],
            "--key-prefix", BASELINE_KEYS]
    if not setup:
        argv.append("--no-setup")
    g = Group(argv, child_env, workdir, workdir / f"{label}.log")

    def ready():
        if g.proc.poll() is not None:
            raise RuntimeError(f"vcon_server_loop exited with {g.proc.returncode}\n{g.log_tail()}")
        return int(client.get(f"{BASELINE_KEYS}:ready") or 0) >= processes
    wait_for(ready, 120, 0.01, "the vcon-server-style loop's processes")
    return g


def baseline_workers(g: Group) -> list[int]:
    import psutil

    try:
        return [c.pid for c in psutil.Process(g.pid).children()]
    except psutil.NoSuchProcess:
        return []


def wait_counter(client, key: str, total: int, timeout: float, poll: float = 0.005,
                 on_fail: Callable[[], str] | None = None) -> float:
    deadline = time.perf_counter() + timeout
    last, last_change = -1, time.perf_counter()
    while True:
        done = int(client.get(key) or 0)
        now = time.perf_counter()
        if done >= total:
            return now
        if done != last:
            last, last_change = done, now
        if now - last_change > 30 or now > deadline:
            raise TimeoutError(f"{key}: {done} of {total} done\n{on_fail() if on_fail else ''}")
        time.sleep(poll)


def run_baseline(stack, env: dict[str, str], client, items, processes: int, workdir: Path,
                 names: dict[str, str], label: str) -> dict[str, Any]:
    n = len(items)
    stage(client, items)
    g = start_baseline(env, client, processes, workdir, label, names)
    try:
        workers = baseline_workers(g)
        idle = wait_quiet(50, 15)
        watch = CpuWatch(lambda: {"workers": workers, "parent": [g.pid], **server_pids(stack)})
        watch.start()
        m0 = machine_busy()
        t0 = time.perf_counter()
        client.rename(STAGE, BASELINE_LIST)
        t1 = wait_counter(client, f"{BASELINE_KEYS}:done", n, 600, on_fail=g.log_tail)
        cpu = watch.stop()
        busy = busy_pct(m0, machine_busy())
        errors = int(client.get(f"{BASELINE_KEYS}:errors") or 0)
    finally:
        g.stop()
    secs = t1 - t0
    counts = count_stores(env, names["table"], names["bucket"], names["prefix"] + "vcon*")
    ok = errors == 0 and counts == {"postgres_rows": n, "s3_objects": 2 * n, "elasticsearch_docs": part_docs(items)}
    return {"system": "vcon-server-style loop", "label": label, "vcons": n, "seconds": secs, "rate": n / secs,
            "cpu_s": cpu, "worker_cpu_ms_per_vcon": 1000 * cpu["workers"] / n, "errors": errors, "counts": counts,
            "verified": ok, "cpu_idle_pct_before": round(idle, 1), "machine_busy_pct": round(busy, 1),
            "processes": processes, "names": names}


# ---------------------------------------------------------------------------- conserver


def conserver_env(stack_env: dict[str, str], **extra: Any) -> dict[str, str]:
    settings = {k: v for k, v in stack_env.items() if k not in ("REDIS_URL", "CONSERVER_STORAGES")}
    settings.update({k: str(v) for k, v in extra.items()})
    return base_env(stack_env["REDIS_URL"], storages="postgres,s3,elasticsearch", lists="default", **settings)


def run_conserver(stack, env: dict[str, str], client, items, workers: int, workdir: Path, names: dict[str, str],
                  label: str, lookup_objects: bool = True, profile_s: float = 0.0) -> dict[str, Any]:
    n = len(items)
    stack.servers["s3"].create_bucket(names["bucket"])
    stage(client, items)
    cenv = conserver_env(env, CONSERVER_WORKERS=workers, POSTGRES_TABLE=names["table"], S3_BUCKET=names["bucket"],
                         ELASTICSEARCH_INDEX_PREFIX=names["prefix"],
                         S3_LOOKUP_OBJECTS="true" if lookup_objects else "false")
    c = Conserver(cenv, workdir, label)
    prof = None
    try:
        ws = list(c.wait_workers(workers, "idle", timeout=120))
        idle = wait_quiet(50, 15)
        watch = CpuWatch(lambda: {"workers": ws, "master": [c.pid], **server_pids(stack)})
        threads0 = {pid: thread_cpu(pid) for pid in ws}
        watch.start()
        if profile_s:
            prof = start_pyspy(ws[0], workdir, profile_s)
        m0 = machine_busy()
        t0 = time.perf_counter()
        client.rename(STAGE, "default")
        w = watch_drain(client, ["default"], n, timeout=600, poll=0.005, on_fail=c.log_tail)
        cpu = watch.stop()
        threads1 = {pid: thread_cpu(pid) for pid in ws}
        busy = busy_pct(m0, machine_busy())
        names_by_pid = {pid: thread_names(pid) for pid in ws}  # after: pools start their threads lazily
        from conserver.queue.admin import QueueAdmin

        depths = QueueAdmin(client, ["default"]).depths()
        warnings = [line for line in c.log().splitlines() if " WARNING " in line or " ERROR " in line]
    finally:
        c.stop()
    secs = w["drained"] - t0
    counts = count_stores(env, names["table"], names["bucket"], names["prefix"] + "vcon*")
    per = 2 if lookup_objects else 1
    ok = (counts == {"postgres_rows": n, "s3_objects": per * n, "elasticsearch_docs": part_docs(items)}
          and depths["dlq"]["default"] == 0 and depths["delayed"] == 0)
    result = {"system": "conserver" if lookup_objects else "conserver, S3_LOOKUP_OBJECTS=false", "label": label,
              "vcons": n, "seconds": secs, "rate": n / secs, "cpu_s": cpu,
              "worker_cpu_ms_per_vcon": 1000 * cpu["workers"] / n, "counts": counts, "verified": ok,
              "dlq": depths["dlq"]["default"], "delayed": depths["delayed"], "log_warnings": warnings[:10],
              "cpu_idle_pct_before": round(idle, 1), "machine_busy_pct": round(busy, 1), "workers": workers,
              "puts_per_vcon": per, "names": names,
              "worker_threads_s": thread_breakdown(ws, names_by_pid, threads0, threads1)}
    if prof is not None:
        result["profile"] = finish_pyspy(prof)
    return result


# ---------------------------------------------------------------------------- profile (optional)


def start_pyspy(pid: int, workdir: Path, seconds: float):
    exe = shutil.which("py-spy") or str(Path(PYTHON).parent / "py-spy")
    path = workdir / f"pyspy-{pid}.txt"
    proc = subprocess.Popen([exe, "record", "--pid", str(pid), "--format", "raw", "--rate", "250", "--nonblocking",
                             "--duration", str(max(1, math.ceil(seconds))), "--output", str(path)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return proc, path


def finish_pyspy(prof) -> dict[str, Any]:
    proc, path = prof
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
    total, self_t, incl = 0, {}, {}
    try:
        text = path.read_text()
    except OSError:
        return {}
    for line in text.splitlines():
        stack, _, n = line.rpartition(" ")
        if not n.isdigit():
            continue
        n = int(n)
        frames = [re.sub(r" \(.*?/(site-packages|lib/python3\.\d+|main)/", " (", f) for f in stack.split(";")[1:]]
        total += n
        if frames:
            self_t[frames[-1]] = self_t.get(frames[-1], 0) + n
        for f in set(frames):
            incl[f] = incl.get(f, 0) + n
    top = lambda d: [(f, round(100 * v / total, 1)) for f, v in sorted(d.items(), key=lambda x: -x[1])[:25]]
    return {"samples": total, "self_pct": top(self_t), "inclusive_pct": top(incl), "raw": str(path)}


# ---------------------------------------------------------------------------- latency


class ProxyProcess:
    """benchmarks.latency_proxy as a child process (its delays never wait on our GIL)."""

    def __init__(self, upstreams: dict[str, tuple[str, int, float]], workdir: Path):
        argv = [PYTHON, "-m", "benchmarks.latency_proxy",
                *(f"{n}={h}:{p}:{d}" for n, (h, p, d) in upstreams.items())]
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=workdir, env=env,
                                     text=True, start_new_session=True)
        self.ports = json.loads(self.proc.stdout.readline())["ports"]

    def stats(self, reset: bool = False) -> dict[str, dict]:
        self.proc.stdin.write("reset\n" if reset else "stats\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def stop(self) -> None:
        try:
            self.proc.stdin.close()
            self.proc.wait(5)
        except Exception:
            self.proc.kill()
            self.proc.wait(5)


def proxied_env(env: dict[str, str], ports: dict[str, int]) -> dict[str, str]:
    out = dict(env)
    out["POSTGRES_DSN"] = re.sub(r"@127\.0\.0\.1:\d+/", f"@127.0.0.1:{ports['postgres']}/", env["POSTGRES_DSN"])
    out["S3_ENDPOINT_URL"] = f"http://127.0.0.1:{ports['s3']}"
    out["ELASTICSEARCH_URL"] = f"http://127.0.0.1:{ports['elasticsearch']}"
    return out


def scrape(port: int) -> dict[str, float]:
    """The histogram sums and counts of /metrics: {name{labels}: value}."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    out = {}
    for line in text.splitlines():
        if line.startswith(("conserver_store_write_seconds_", "conserver_vcon_duration_seconds_")) and \
                ("_sum" in line or "_count" in line):
            key, _, value = line.rpartition(" ")
            out[key] = float(value)
    return out


def hist_mean(m0: dict[str, float], m1: dict[str, float], name: str, labels: str = "") -> tuple[float, float]:
    """(mean seconds, count) between two scrapes."""
    s = m1.get(f"{name}_sum{labels}", 0.0) - m0.get(f"{name}_sum{labels}", 0.0)
    n = m1.get(f"{name}_count{labels}", 0.0) - m0.get(f"{name}_count{labels}", 0.0)
    return (s / n if n else math.nan), n


def latency_conserver(env: dict[str, str], client, factory: VconFactory, proxy: ProxyProcess, parallel: bool,
                      batch: int, batches: int, workdir: Path) -> dict[str, Any]:
    from conserver.dev.devstack import free_port

    port = free_port()
    cenv = conserver_env(proxied_env(env, proxy.ports), CONSERVER_WORKERS=1, CONSERVER_BATCH_SIZE=batch,
                         CONSERVER_PARALLEL_STORAGE="true" if parallel else "false", CONSERVER_METRICS_PORT=port)
    c = Conserver(cenv, workdir, f"latency-{'par' if parallel else 'seq'}-{batch}")
    try:
        c.wait_workers(1, "idle", timeout=120)
        wait_for(lambda: _scrape_ok(port), 30, 0.05, "/metrics")
        # warm-up: the first batches open connections and (OpenSearch) put the index template back
        warm = list(factory.make(2 * batch))
        stage(client, warm)
        client.rename(STAGE, "default")
        watch_drain(client, ["default"], len(warm), timeout=300, poll=0.005, on_fail=c.log_tail)
        time.sleep(0.2)
        items = list(factory.make(batches * batch))
        stage(client, items)
        m0 = scrape(port)
        proxy.stats(reset=True)
        t0 = time.perf_counter()
        client.rename(STAGE, "default")
        w = watch_drain(client, ["default"], len(items), timeout=300, poll=0.002, on_fail=c.log_tail)
        wall = w["drained"] - t0
        trips = proxy.stats()
        time.sleep(0.1)
        m1 = scrape(port)
    finally:
        c.stop()
    vcon_mean, vcon_n = hist_mean(m0, m1, "conserver_vcon_duration_seconds")
    stores = {s: hist_mean(m0, m1, "conserver_store_write_seconds", f'{{store="{s}"}}')[0] for s in STORES}
    return {"mode": "parallel" if parallel else "sequential", "batch": batch, "batches": batches,
            "wall_per_batch_s": wall / batches, "vcon_latency_s": vcon_mean, "vcons_counted": vcon_n,
            "store_s": stores,
            "round_trips_per_batch": {s: trips[s]["round_trips"] / batches for s in STORES},
            "new_connections": {s: trips[s]["connections"] for s in STORES}}


def _scrape_ok(port: int) -> bool:
    try:
        scrape(port)
        return True
    except OSError:
        return False


def latency_baseline(env: dict[str, str], client, factory: VconFactory, proxy: ProxyProcess, n: int,
                     workdir: Path) -> dict[str, Any]:
    penv = proxied_env(env, proxy.ports)
    g = start_baseline(penv, client, 1, workdir, "latency-baseline",
                       {"table": "latency_baseline", "bucket": "latency-baseline", "prefix": "latency_baseline_"})
    try:
        warm = list(factory.make(3))
        stage(client, warm)
        client.rename(STAGE, BASELINE_LIST)
        wait_counter(client, f"{BASELINE_KEYS}:done", 3, 120, on_fail=g.log_tail)
        items = list(factory.make(n))
        stage(client, items)
        proxy.stats(reset=True)
        t0 = time.perf_counter()
        client.rename(STAGE, BASELINE_LIST)
        t1 = wait_counter(client, f"{BASELINE_KEYS}:done", 3 + n, 300, poll=0.002, on_fail=g.log_tail)
        trips = proxy.stats()
    finally:
        g.stop()
    return {"mode": "vcon-server-style loop", "batch": 1, "batches": n, "wall_per_batch_s": (t1 - t0) / n,
            "vcon_latency_s": (t1 - t0) / n, "round_trips_per_batch": {s: trips[s]["round_trips"] / n for s in STORES},
            "new_connections": {s: trips[s]["connections"] for s in STORES}}


def run_latency(stack, env, client, factory, workdir: Path, small: int, small_batches: int, big_batches: int,
                baseline_n: int) -> dict[str, Any]:
    ups = {"postgres": ("127.0.0.1", stack.servers["postgres"].port, DELAYS["postgres"]),
           "s3": ("127.0.0.1", stack.servers["s3"].port, DELAYS["s3"]),
           "elasticsearch": ("127.0.0.1", stack.servers["elasticsearch"].port, DELAYS["elasticsearch"])}
    proxy = ProxyProcess(ups, workdir)
    runs = []
    try:
        log(f"latency: vcon-server-style loop, 1 process, {baseline_n} vCons through the proxies")
        runs.append(latency_baseline(env, client, factory, proxy, baseline_n, workdir))
        for batch, k in ((small, small_batches), (50, big_batches)):
            for parallel in (True, False):
                log(f"latency: conserver, 1 worker, batch {batch}, {'parallel' if parallel else 'sequential'}, "
                    f"{k} batches")
                runs.append(latency_conserver(env, client, factory, proxy, parallel, batch, k, workdir))
    finally:
        proxy.stop()
    return {"delays_s": DELAYS, "runs": runs}


# ---------------------------------------------------------------------------- tables


def fmt_ms(s: float | None) -> str:
    return "n/a" if s is None or (isinstance(s, float) and math.isnan(s)) else f"{1000 * s:.0f}"


def others_pct(r: dict) -> float:
    """Percent of the machine's CPU used by processes other than the system and the servers measured
    (this harness included) over the timed window: what disturbed the round."""
    cores = os.cpu_count() or 1
    ours = 100.0 * sum(r["cpu_s"].values()) / r["seconds"] / cores
    return max(0.0, r["machine_busy_pct"] - ours)


def best(runs: list[dict]) -> dict:
    return max(runs, key=lambda r: r["rate"] if r["verified"] else -1)


def build_tables(rounds: dict[str, list[dict]], bare: list[dict], lat: dict | None) -> tuple[list[str], dict]:
    tables = []
    base, cons = best(rounds["baseline"]), best(rounds["conserver"])
    one = best(rounds["conserver_one_put"]) if rounds.get("conserver_one_put") else None
    b_rate, b_cpu = base["rate"], base["worker_cpu_ms_per_vcon"]
    setups = {
        "baseline": f"{base['processes']} processes, BLPOP 1 uuid, new ThreadPoolExecutor per vCon, 1 upsert + "
                    "2 PUTs (boto3) + 1 index() per part document (opensearch-py)",
        "conserver": f"{cons['workers']} workers (fork), batch 50: 1 Lua claim, 1 upsert txn (executemany), "
                     "2 PUTs per vCon (obstore, 8 threads), 1 _bulk of the part documents",
        "conserver_one_put": "the same with 1 PUT per vCon (S3_LOOKUP_OBJECTS=false: no lookup pointer)",
    }
    rows = []
    for key, r in (("baseline", base), ("conserver", cons), ("conserver_one_put", one)):
        if r is None:
            continue
        c = r["counts"]
        all_rates = ", ".join(f"{x['rate']:,.0f}" for x in rounds[key])
        rows.append([r["system"], setups[key], f"{r['vcons']:,}", f"{r['seconds']:.2f}", f"{r['rate']:,.0f}",
                     all_rates, ratio(r["rate"], b_rate), f"{r['worker_cpu_ms_per_vcon']:.2f}",
                     ratio(r["worker_cpu_ms_per_vcon"], b_cpu),
                     f"{r['machine_busy_pct']:.0f} / {others_pct(r):.0f}",
                     f"{c['postgres_rows']:,} / {c['s3_objects']:,} / {c['elasticsearch_docs']:,}",
                     "yes" if all(x["verified"] for x in rounds[key]) else "NO"])
    tables.append(md_table(["system", "setup", "vCons", "seconds", "vCons/s (best round)", "all rounds",
                            "vs baseline", "worker CPU ms/vCon", "CPU vs baseline",
                            "machine CPU busy % / of it others'",
                            "rows / objects / docs", "all stored, every round"], rows))

    figures: dict[str, float] = {}
    speed = cons["rate"] / b_rate
    figures["speedup"] = speed
    figures["worker_cpu_ms_per_vcon"] = cons["worker_cpu_ms_per_vcon"]
    figures["baseline_worker_cpu_ms_per_vcon"] = b_cpu
    rows = [["conserver vCons/s / vcon-server-style loop vCons/s", f"{speed:.2f}x", f">= {TARGET_SPEEDUP}x",
             "met" if speed >= TARGET_SPEEDUP else "NOT met"],
            ["conserver worker CPU per vCon", f"{cons['worker_cpu_ms_per_vcon']:.2f} ms "
             f"({ratio(cons['worker_cpu_ms_per_vcon'], b_cpu)} of the baseline's {b_cpu:.2f} ms)",
             f"<= {TARGET_CPU_MS} ms", "met" if cons["worker_cpu_ms_per_vcon"] <= TARGET_CPU_MS else "NOT met"]]
    if one is not None:
        figures["speedup_one_put"] = one["rate"] / b_rate
        figures["worker_cpu_ms_per_vcon_one_put"] = one["worker_cpu_ms_per_vcon"]
        rows.append(["the same with 1 PUT per vCon (S3_LOOKUP_OBJECTS=false)",
                     f"{one['rate'] / b_rate:.2f}x, {one['worker_cpu_ms_per_vcon']:.2f} ms CPU/vCon", "", ""])
    # what the machine can do: all CPU per vCon of conserver's run against 2 cores
    total_ms = sum(1000 * v / cons["vcons"] for v in cons["cpu_s"].values())
    cores = os.cpu_count() or 1
    ceiling = 1000 * cores / total_ms
    figures["cpu_ceiling_vcons_per_s"] = ceiling
    rows.append([f"ceiling on this machine: {cores} cores / all CPU per vCon of conserver's run "
                 f"({total_ms:.2f} ms, servers included)", f"{ceiling:,.0f} vCons/s = {ceiling / b_rate:.2f}x "
                 "the baseline", "", ""])
    if lat:
        runs = lat["runs"]
        for batch in sorted({r["batch"] for r in runs if r["mode"] != "vcon-server-style loop"}):
            par = next(r for r in runs if r["batch"] == batch and r["mode"] == "parallel")
            seq = next(r for r in runs if r["batch"] == batch and r["mode"] == "sequential")
            st = seq["store_s"]
            mx, sm = max(st.values()), sum(st.values())
            pr, sr = par["vcon_latency_s"] / mx, seq["vcon_latency_s"] / sm
            inj = par["vcon_latency_s"] / max(DELAYS.values())
            figures[f"parallel_over_max_b{batch}"] = pr
            figures[f"sequential_over_sum_b{batch}"] = sr
            figures[f"parallel_over_injected_max_b{batch}"] = inj
            slowest = max(st, key=st.get)
            rows.append([f"batch {batch}: parallel per-vCon latency / slowest store ({slowest}, {fmt_ms(mx)} ms)",
                         f"{pr:.2f}x", f"<= {TARGET_PARALLEL}x", "met" if pr <= TARGET_PARALLEL else "NOT met"])
            rows.append([f"batch {batch}: sequential per-vCon latency / sum of the stores ({fmt_ms(sm)} ms)",
                         f"{sr:.2f}x", "~1x", ""])
            rows.append([f"batch {batch}: parallel per-vCon latency / largest injected delay "
                         f"({fmt_ms(max(DELAYS.values()))} ms)", f"{inj:.2f}x", f"<= {TARGET_PARALLEL}x (issue text)",
                         "met" if inj <= TARGET_PARALLEL else "NOT met"])
            rows.append([f"batch {batch}: parallel / sequential",
                         f"{par['vcon_latency_s'] / seq['vcon_latency_s']:.2f}x",
                         "", ""])
    tables.append(md_table(["figure", "value", "target", "status"], rows))

    # CPU by process group
    groups = [("workers", "workers"), ("master / parent", None), ("redis-server", "redis"),
              ("PostgreSQL (all backends)", "postgres"), ("SeaweedFS (S3)", "s3"),
              ("osmem (OpenSearch API)", "elasticsearch")]
    systems = [r for r in (base, cons, one) if r is not None]
    rows, totals = [], [0.0] * len(systems)
    for label, key in groups:
        vals = []
        for i, r in enumerate(systems):
            k = key or ("parent" if r is base else "master")
            v = 1000 * r["cpu_s"].get(k, 0.0) / r["vcons"]
            totals[i] += v
            vals.append(v)
        rows.append([label, *(f"{v:.3f}" for v in vals), *(ratio(v, vals[0]) for v in vals[1:])])
    rows.append(["all of the above", *(f"{v:.3f}" for v in totals), *(ratio(v, totals[0]) for v in totals[1:])])
    heads = ["processes", *(r["system"] for r in systems), *(f"{r['system']} vs baseline" for r in systems[1:])]
    tables.append("CPU per vCon by process (ms, user + system, over the timed window of the best round):\n\n" +
                  md_table(heads, rows))

    # where a conserver worker's CPU goes
    rows = []
    th_sys = [r for r in (cons, one) if r is not None]
    groups_t = list(dict.fromkeys(g for r in th_sys for g in r["worker_threads_s"]))
    labels = {"MainThread": "main thread: claim (Lua), parse + validate, ack, metrics",
              "fanout-postgres": "fan-out thread postgres: executemany, commit",
              "fanout-s3": "fan-out thread s3: submits the PUTs, waits",
              "fanout-elasticsearch": "fan-out thread elasticsearch: documents, orjson, _bulk",
              "s3-put": "8 S3 threads: obstore.put (the call, GIL, waiting on tokio)",
              "tokio-rt-worker": "obstore's tokio runtime threads (Rust I/O)",
              "psycopg_pool": "psycopg_pool's maintenance threads",
              "heartbeat": "worker heartbeat"}
    for g in groups_t:
        vals = [1000 * r["worker_threads_s"].get(g, 0.0) / r["vcons"] for r in th_sys]
        if max(vals) < 0.005:
            continue
        rows.append([g, labels.get(g, ""), *(f"{v:.3f}" for v in vals)])
    rows.append(["all threads", "",
                 *(f"{1000 * sum(r['worker_threads_s'].values()) / r['vcons']:.3f}" for r in th_sys)])
    tables.append("Where a conserver worker's CPU goes (ms per vCon per thread group, both workers summed; "
                  "/proc/PID/task/TID/schedstat):\n\n" +
                  md_table(["thread", "what it does", *(r["system"] for r in th_sys)], rows))

    rows = []
    for b in bare:
        rows.append([b["client"], b["setup"], f"{b['n']:,}", f"{b['seconds']:.2f}",
                     f"{b['rate']:,.0f} {b['operation']}/s", ratio(b["rate"], b_rate),
                     f"{b['client_cpu_ms_per_op']:.3f}"])
    if rows:
        tables.append("Each store's bare client, same servers, same run (no Redis, no fan-out; rate against the "
                      "baseline's vCons/s):\n\n" +
                      md_table(["client", "operation", "ops", "seconds", "rate", "vs baseline", "client CPU ms/op"],
                               rows))

    if lat:
        runs = lat["runs"]
        bl = runs[0]
        rows = []
        for r in runs:
            st = r.get("store_s") or {}
            rt = r["round_trips_per_batch"]
            rows.append([r["mode"], str(r["batch"]), str(r["batches"]), fmt_ms(r["wall_per_batch_s"]),
                         fmt_ms(r["vcon_latency_s"]), ratio(r["vcon_latency_s"], bl["vcon_latency_s"]),
                         " / ".join(fmt_ms(st.get(s)) for s in STORES) if st else "n/a",
                         " / ".join(f"{rt[s]:g}" for s in STORES),
                         f"{r['batch'] / r['wall_per_batch_s']:.1f}",
                         ratio(r["batch"] / r["wall_per_batch_s"], bl["batch"] / bl["wall_per_batch_s"])])
        tables.append(
            "Latency injected by benchmarks/latency_proxy.py on every server->client round trip: PostgreSQL "
            f"{fmt_ms(DELAYS['postgres'])} ms, S3 {fmt_ms(DELAYS['s3'])} ms, OpenSearch "
            f"{fmt_ms(DELAYS['elasticsearch'])} ms (Redis direct); 1 worker / 1 process. Per-vCon latency: conserver's "
            "conserver_vcon_duration_seconds (claim to ack) mean; the baseline's wall time per vCon. Store time: "
            "conserver_store_write_seconds mean per batch:\n\n" +
            md_table(["run", "batch", "batches timed", "wall per batch (ms)", "per-vCon latency (ms)",
                      "latency vs baseline", "store time pg / s3 / es (ms)", "round trips per batch pg / s3 / es",
                      "vCons/s", "throughput vs baseline"], rows))
    return tables, figures


# ---------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks fanout", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--vcons", type=int, default=3000)
    p.add_argument("--workers", type=int, default=2, help="conserver workers and baseline processes")
    p.add_argument("--rounds", type=int, default=2,
                   help="throughput rounds (rotating order); the best verified round of each system counts")
    p.add_argument("--one-put", action="store_true", help="also conserver with S3_LOOKUP_OBJECTS=false")
    p.add_argument("--boto3-puts", type=int, default=1000, help="PUTs for the boto3 bare client (it is slow)")
    p.add_argument("--latency-batch", type=int, default=4,
                   help="the small batch size of the latency runs (<= store threads / 2: one S3 round trip)")
    p.add_argument("--latency-batches", type=int, default=15, help="batches timed per small-batch latency run")
    p.add_argument("--latency-big-batches", type=int, default=3, help="batches of 50 timed per latency run")
    p.add_argument("--latency-baseline-vcons", type=int, default=20)
    p.add_argument("--skip-latency", action="store_true")
    p.add_argument("--skip-bare", action="store_true")
    p.add_argument("--profile", type=float, default=0.0, metavar="SECONDS",
                   help="py-spy one conserver worker for this long in the first round (perturbs that round)")
    p.add_argument("--state-dir", default="",
                   help="servers' state and logs, kept (default: a fresh folder under /tmp, removed after a run "
                        "that finished)")
    p.add_argument("--no-results", action="store_true", help="print only; no out/fanout.json, no RESULTS.md")
    args = p.parse_args(argv)

    from conserver.dev.devstack import DevStack

    started = time.perf_counter()
    info = machine_info()
    state = Path(args.state_dir or tempfile.mkdtemp(prefix="fanout-bench-", dir="/tmp"))
    os.chmod(state, 0o755)
    workdir = state / "work"
    workdir.mkdir(parents=True, exist_ok=True)
    log(f"starting redis-server, PostgreSQL, SeaweedFS and osmem under {state}")
    stack = DevStack(state).start()
    rounds: dict[str, list[dict]] = {"baseline": [], "conserver": [], "conserver_one_put": []}
    profile = None
    finished = False
    try:
        env = stack.env()
        import redis

        client = redis.Redis.from_url(env["REDIS_URL"])
        factory = VconFactory(seed=1)
        items = list(factory.make(args.vcons))
        mean_kb = sum(len(b) for _, b in items) / len(items) / 1024
        bare = [] if args.skip_bare else bare_clients(env, items, args.boto3_puts)
        order = ["baseline", "conserver"] + (["conserver_one_put"] if args.one_put else [])
        for i in range(args.rounds):
            for key in order[i % len(order):] + order[:i % len(order)]:
                tag = f"r{i + 1}"
                if key == "baseline":
                    log(f"round {i + 1}: vcon-server-style loop, {args.workers} processes, {args.vcons:,} vCons")
                    names = {"table": f"baseline_{tag}", "bucket": f"baseline-{tag}", "prefix": f"baseline_{tag}_"}
                    r = run_baseline(stack, env, client, items, args.workers, workdir, names, f"baseline-{tag}")
                else:
                    one_put = key == "conserver_one_put"
                    log(f"round {i + 1}: conserver{' (1 PUT per vCon)' if one_put else ''}, {args.workers} workers, "
                        f"{args.vcons:,} vCons")
                    short = "onepu" if one_put else "conserver"
                    names = {"table": f"{short}_{tag}", "bucket": f"{short}-{tag}", "prefix": f"{short}_{tag}_"}
                    r = run_conserver(stack, env, client, items, args.workers, workdir, names, f"{key}-{tag}",
                                      lookup_objects=not one_put,
                                      profile_s=args.profile if (i == 0 and not one_put) else 0.0)
                    profile = r.pop("profile", None) or profile
                rounds[key].append(r)
                log(f"  {r['rate']:,.0f} vCons/s, worker CPU {r['worker_cpu_ms_per_vcon']:.2f} ms/vCon, machine "
                    f"{r['machine_busy_pct']:.0f}% busy ({others_pct(r):.0f}% others), stores {r['counts']}"
                    f"{'' if r['verified'] else ' NOT VERIFIED'}")
        lat = None
        if not args.skip_latency:
            lat = run_latency(stack, env, client, factory, workdir, args.latency_batch, args.latency_batches,
                              args.latency_big_batches, args.latency_baseline_vcons)
        finished = True
    finally:
        stack.stop()
        if finished and not args.state_dir:
            shutil.rmtree(state, ignore_errors=True)  # SeaweedFS alone preallocates ~250 MB
        elif not finished:
            log(f"servers' data and the logs of every run are kept in {state}")
    elapsed = time.perf_counter() - started
    tables, figures = build_tables(rounds, bare, lat)
    if profile:
        print(f"\npy-spy of one worker ({profile['samples']} samples, every thread that was not idle), self:")
        for f, pct in profile["self_pct"][:15]:
            print(f"  {pct:5.1f}%  {f}")
    command = "python -m benchmarks fanout" + (" " + " ".join(argv if argv is not None else sys.argv[1:])).rstrip()
    intro = (f"{args.vcons:,} sample vCons (mean {mean_kb:.2f} KB) per system into PostgreSQL, S3 (SeaweedFS) and "
             "the OpenSearch API (osmem), all private servers on this machine (conserver.dev.devstack). Bodies and uuids "
             "are staged in Redis before anything starts; once every worker is ready the staging list is RENAMEd onto "
             "the list it reads, and the clock runs to the last vCon done (conserver: every vCon acknowledged after "
             "all three stores committed it). Worker CPU: psutil user + system of the worker processes over that "
             f"window. Afterwards every store is counted. {args.rounds} rounds in rotating order, the best verified "
             "round of each system counts (other processes on a shared machine only ever slow a round down). Ratios "
             "are to the vcon-server-style loop (benchmarks/vcon_server_loop.py) measured in this run.")
    notes = ("Both systems write vcon-server's layout (its storage modules, commit b9b0381): the peewee table's "
             "row, two S3 objects per vCon (the vCon and its lookup pointer; the S3_LOOKUP_OBJECTS=false row, if "
             f"run, one) and a document per part, {part_docs(items) / len(items):.1f} per sample vCon, in the part "
             "indices: conserver in one _bulk request per batch, the baseline with one index() call per document, "
             "as vcon-server does. The baseline is at-most-once (BLPOP); conserver acknowledges only after every store committed. "
             "boto3's put_object sends `Expect: 100-continue`, so each baseline PUT is two round trips through the "
             "latency proxy. vcon-server's own storage modules (a client per vCon) are not measured here. "
             f"Whole benchmark: {elapsed:.0f} s.")
    data = {"vcons": args.vcons, "mean_vcon_bytes": mean_kb * 1024, "rounds": rounds, "bare_clients": bare,
            "latency": lat, "figures": figures, "profile": profile, "elapsed_s": elapsed}
    if args.no_results:
        for t in tables:
            print()
            print(t)
        print(json.dumps(figures, indent=1))
    else:
        report("fanout", "End-to-end fan-out: conserver vs a vcon-server style loop", info, command, intro, tables,
               data, notes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
