"""Process lifecycle, per start method (fork, spawn, forkserver):

* replacement: ``kill -9`` of an idle worker -> a new pid with the same worker number shows
  ``idle`` in its title (4 workers, victims in rotation, CONSERVER_MIN_UPTIME=0 so there is
  no backoff). Also the time until the new process exists at all.
* requeue: ``kill -9`` of a worker that holds a claimed batch (benchmarks.slow_store makes
  write_batch sleep) -> its 50 vCons are back in the ingress list (LLEN back to the count,
  or its processing list gone: the requeue is one Lua script). CONSERVER_MIN_UPTIME is
  high here so the replacement starts after a backoff of >= 80 ms and cannot re-claim the
  batch before it is seen back in the list; the requeue itself does not depend on it.
* SIGTERM -> every process gone: idle (4 idle workers), and busy (4 workers each inside a
  slow write_batch: the drain waits for the batch in hand, acks it, and leaves the rest).

    .venv/bin/python -m benchmarks lifecycle [--kills 50] [--methods fork,spawn,forkserver]

Ratios: to the targets (replacement p99 100 ms for fork, requeue 1 s, idle SIGTERM 1 s) and
to fork, measured in the same run.
"""

from __future__ import annotations

import argparse
import os
import signal
import time
from pathlib import Path
from typing import Any

from benchmarks.common import (remove_scratch, scratch_dir, WORKER_TITLE, Conserver, VconFactory, alive, base_env, descendants, enqueue_vcons,
                               log, machine_info, md_table, percentile, ratio, redis_client, report, start_redis,
                               title, wait_for, wait_quiet)

METHODS = ("fork", "spawn", "forkserver")
TARGET_REPLACE_P99 = 0.100
TARGET_REQUEUE = 1.0
TARGET_TERM_IDLE = 1.0
SLOW_STORE = "benchmarks.slow_store:SlowStore"
POLL = 0.0005


def worker_by_number(c: Conserver, state: str | None = None) -> dict[int, int]:
    """worker number -> pid of the live workers (in ``state`` if given)."""
    out = {}
    for pid in descendants(c.pid):
        m = WORKER_TITLE.match(title(pid))
        if m and (state is None or m.group(4) == state) and alive(pid):
            out[int(m.group(1))] = pid
    return out


def replacement(server, method: str, kills: int, workers: int, workdir: Path) -> dict[str, Any]:
    env = base_env(server.url, workers=workers, method=method, storages="null")
    c = Conserver(env, workdir, f"replace-{method}")
    try:
        c.wait_workers(workers, "idle", timeout=120)
        to_new, to_idle = [], []
        for i in range(kills):
            number = i % workers + 1
            wait_for(lambda: len(worker_by_number(c, "idle")) == workers and worker_by_number(c, "idle"), 60, 0.002,
                     f"{workers} idle workers")
            victim = worker_by_number(c, "idle")[number]
            before = set(descendants(c.pid))
            os.kill(victim, signal.SIGKILL)
            t0 = time.perf_counter()
            t_new = None
            deadline = t0 + 60
            while True:
                now = time.perf_counter()
                kids = descendants(c.pid)
                fresh = [p for p in kids if p not in before]
                if fresh and t_new is None:
                    t_new = now
                done = False
                for p in fresh:
                    m = WORKER_TITLE.match(title(p))
                    if m and int(m.group(1)) == number and m.group(4) == "idle":
                        done = True
                if done:
                    to_idle.append(now - t0)
                    to_new.append((t_new or now) - t0)
                    break
                if now > deadline:
                    raise TimeoutError(f"no replacement for worker {number} in 60s\n{c.log_tail()}")
                time.sleep(POLL)
        return {"to_new_process": to_new, "to_idle": to_idle}
    finally:
        c.stop()


def requeue(server, client, method: str, trials: int, workers: int, workdir: Path) -> dict[str, Any]:
    from conserver.queue.admin import QueueAdmin
    from conserver.queue.keys import DEFAULT_KEYS

    client.flushall()
    batch = 50
    factory = VconFactory(seed=11, pool=200)
    enqueue_vcons(client, "default", workers * batch, factory)
    env = base_env(server.url, workers=workers, method=method, storages=SLOW_STORE,
                   CONSERVER_STORE_SLOW_SECONDS=300, CONSERVER_STORE_TIMEOUT=600, JOB_TIMEOUT=3600,
                   CONSERVER_STORE_RETRIES=0, CONSERVER_MIN_UPTIME=3600, CONSERVER_HEARTBEAT_TIMEOUT=3600)
    c = Conserver(env, workdir, f"requeue-{method}")
    q = QueueAdmin(client, ["default"])
    probe = client.register_script("return {redis.call('LLEN', KEYS[1]), redis.call('EXISTS', KEYS[2])}")
    times, how = [], []
    try:
        def all_busy():
            d = q.depths()
            busy = worker_by_number(c, "busy")
            return len(busy) == workers and d["lists"]["default"] == 0 and d["processing"] == workers * batch and busy
        for i in range(trials):
            busy = wait_for(all_busy, 120, 0.005, f"{workers} workers each holding a batch")
            number = i % workers + 1
            victim = busy[number]
            proc_key = next((k.decode() for k, v in client.hgetall(DEFAULT_KEYS.inflight).items()
                             if v.decode().split("\n")[0].split(":")[-2] == str(victim)), None)
            assert proc_key, f"no processing list for pid {victim}"
            assert client.llen(proc_key) == batch
            os.kill(victim, signal.SIGKILL)
            t0 = time.perf_counter()
            while True:
                n, exists = probe(keys=["default", proc_key])
                now = time.perf_counter()
                if n >= batch or not exists:
                    times.append(now - t0)
                    how.append("llen" if n >= batch else "processing list gone")
                    # The replacement (after its >= 80 ms backoff) must claim a fresh batch: a
                    # redelivered one is taken one vCon at a time (pipeline.py), so swap the
                    # requeued 50 for 50 new vCons before it starts.
                    wait_for(lambda: client.llen("default") >= batch, 5, 0.0005, "the requeued batch")
                    client.delete("default")
                    enqueue_vcons(client, "default", batch, factory)
                    break
                if now - t0 > 120:
                    raise TimeoutError(f"the batch of pid {victim} did not come back\n{c.log_tail()}")
                time.sleep(POLL)
        return {"times": times, "detected_by": how}
    finally:
        c.stop()


def term_idle(server, method: str, workers: int, reps: int, workdir: Path) -> list[float]:
    out = []
    for _ in range(reps):
        c = Conserver(base_env(server.url, workers=workers, method=method, storages="null"), workdir,
                      f"term-idle-{method}")
        try:
            c.wait_workers(workers, "idle", timeout=120)
            time.sleep(0.3)
            out.append(c.terminate(timeout=60))
        finally:
            c.stop()
    return out


def term_busy(server, client, method: str, workers: int, reps: int, seconds: float, workdir: Path) -> list[dict]:
    from conserver.queue.admin import QueueAdmin

    out = []
    batch = 50
    for _ in range(reps):
        client.flushall()
        enqueue_vcons(client, "default", 2 * workers * batch, VconFactory(seed=13, pool=200))
        env = base_env(server.url, workers=workers, method=method, storages=SLOW_STORE,
                       CONSERVER_STORE_SLOW_SECONDS=seconds, CONSERVER_STORE_TIMEOUT=600, JOB_TIMEOUT=3600)
        c = Conserver(env, workdir, f"term-busy-{method}")
        q = QueueAdmin(client, ["default"])
        try:
            seen: dict[int, float] = {}

            def all_busy():
                now = time.perf_counter()
                for n, pid in worker_by_number(c, "busy").items():
                    seen.setdefault(pid, now)
                return len(worker_by_number(c, "busy")) == workers
            wait_for(all_busy, 120, 0.001, f"{workers} busy workers")
            t_term = time.perf_counter()
            batch_left = max(0.0, max(seen.values()) + seconds - t_term)
            took = c.terminate(timeout=120)
            d = q.depths()
            acked = 2 * workers * batch - d["lists"]["default"] - d["processing"] - d["dlq"]["default"] - d["delayed"]
            out.append({"seconds": took, "batch_left_s": batch_left, "overhead_s": took - batch_left,
                        "acked": acked, "left_in_list": d["lists"]["default"], "processing": d["processing"],
                        "dlq": d["dlq"]["default"], "delayed": d["delayed"],
                        "ok": acked == workers * batch and d["lists"]["default"] == workers * batch
                        and d["processing"] == 0})
        finally:
            c.stop()
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks lifecycle", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--kills", type=int, default=50, help="kill -9 trials for the replacement time, per method")
    p.add_argument("--requeue-trials", type=int, default=12, help="kill -9 of a busy worker, per method")
    p.add_argument("--term-reps", type=int, default=3, help="SIGTERM trials (idle and busy), per method")
    p.add_argument("--min-idle", type=float, default=60.0,
                   help="before each run wait until this %% of the CPUs is idle (a shared machine) ...")
    p.add_argument("--quiet-wait", type=float, default=60.0, help="... but at most this many seconds (0: never wait)")
    p.add_argument("--busy-seconds", type=float, default=2.0, help="how long the slow store's write_batch sleeps")
    args = p.parse_args(argv)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    info = machine_info()
    server = start_redis()
    client = redis_client(server)
    workdir = scratch_dir("bench-lifecycle-")
    ok = False
    res: dict[str, dict[str, Any]] = {}
    try:
        for m in methods:
            r: dict[str, Any] = {"cpu_idle_before_pct": {}}
            client.flushall()
            r["cpu_idle_before_pct"]["replacement"] = wait_quiet(args.min_idle, args.quiet_wait)
            log(f"{m}: {args.kills} x kill -9 of an idle worker ({args.workers} workers)")
            r["replacement"] = replacement(server, m, args.kills, args.workers, workdir)
            log(f"{m}: replacement p50 {percentile(r['replacement']['to_idle'], 50) * 1000:.1f} ms, "
                f"p99 {percentile(r['replacement']['to_idle'], 99) * 1000:.1f} ms")
            r["cpu_idle_before_pct"]["requeue"] = wait_quiet(args.min_idle, args.quiet_wait)
            log(f"{m}: {args.requeue_trials} x kill -9 of a worker holding 50 claimed vCons")
            r["requeue"] = requeue(server, client, m, args.requeue_trials, args.workers, workdir)
            log(f"{m}: requeue p50 {percentile(r['requeue']['times'], 50) * 1000:.1f} ms")
            client.flushall()
            r["cpu_idle_before_pct"]["sigterm"] = wait_quiet(args.min_idle, args.quiet_wait)
            log(f"{m}: SIGTERM, idle and busy, {args.term_reps} times each")
            r["term_idle"] = term_idle(server, m, args.workers, args.term_reps, workdir)
            r["term_busy"] = term_busy(server, client, m, args.workers, args.term_reps, args.busy_seconds, workdir)
            res[m] = r
        ok = True
    finally:
        client.close()
        server.close()
        remove_scratch(workdir, ok)

    def ms(x: float) -> str:
        return f"{x * 1000:.1f}"

    base = res.get("fork")
    rows = []
    for m, r in res.items():
        rep = r["replacement"]["to_idle"]
        new = r["replacement"]["to_new_process"]
        b = base["replacement"]["to_idle"] if base else None
        rows.append([m, len(rep), ms(percentile(new, 50)), ms(percentile(rep, 50)), ms(percentile(rep, 99)),
                     ms(max(rep)), ratio(percentile(rep, 99), TARGET_REPLACE_P99),
                     ratio(percentile(rep, 50), percentile(b, 50)) if b else "n/a"])
    t_replace = md_table(["start method", "kills", "p50 to new pid (ms)", "p50 to idle (ms)", "p99 to idle (ms)",
                          "max (ms)", "p99 / target 100 ms", "p50 vs fork"], rows)
    rows = []
    for m, r in res.items():
        t = r["requeue"]["times"]
        b = base["requeue"]["times"] if base else None
        rows.append([m, len(t), ms(percentile(t, 50)), ms(percentile(t, 99)), ms(max(t)),
                     ratio(max(t), TARGET_REQUEUE), ratio(percentile(t, 50), percentile(b, 50)) if b else "n/a"])
    t_requeue = md_table(["start method", "kills", "p50 (ms)", "p99 (ms)", "max (ms)", "max / target 1 s",
                          "p50 vs fork"], rows)
    rows = []
    for m, r in res.items():
        idle = r["term_idle"]
        busy = r["term_busy"]
        bi = base["term_idle"] if base else None
        rows.append([m, ms(percentile(idle, 50)), ms(max(idle)), ratio(max(idle), TARGET_TERM_IDLE),
                     ratio(percentile(idle, 50), percentile(bi, 50)) if bi else "n/a",
                     ms(percentile([x["seconds"] for x in busy], 50)),
                     ms(percentile([x["batch_left_s"] for x in busy], 50)),
                     ms(percentile([x["overhead_s"] for x in busy], 50)),
                     "yes" if all(x["ok"] for x in busy) else "NO: " + str([(x["acked"], x["left_in_list"]) for x in busy])])
    t_term = md_table(["start method", "idle: p50 (ms)", "idle: max (ms)", "idle max / target 1 s", "idle p50 vs fork",
                       "busy: p50 (ms)", "busy: batch time left at SIGTERM (ms)", "busy: p50 beyond the batch (ms)",
                       "busy: batch in hand acked, rest left queued"], rows)
    intro = (f"{args.workers} workers, null store (requeue and busy SIGTERM: benchmarks.slow_store, write_batch "
             f"sleeps). Replacement: {args.kills} kills per method, victims in rotation, CONSERVER_MIN_UPTIME=0; "
             "clock from os.kill to a new pid with the same worker number showing `idle` (polled every 0.5 ms). "
             f"Requeue: {args.requeue_trials} kills per method of a worker holding 50 claimed vCons; clock to the 50 "
             "being back in the list (CONSERVER_MIN_UPTIME=3600 there, so the replacement starts after a >= 80 ms "
             "backoff and cannot re-claim them first; the requeued 50 are then swapped for 50 fresh vCons, since a "
             "redelivered batch is taken one vCon at a time). SIGTERM: to the master; clock to every process of the tree gone "
             f"({args.term_reps} runs each; busy: every worker inside a {args.busy_seconds:g} s write_batch, 200 more "
             "vCons queued, which must stay queued). Ratios to the targets and to fork in this run.")
    idle_rows = [[m, *(f"{r['cpu_idle_before_pct'].get(k, float('nan')):.0f}%" for k in ("replacement", "requeue", "sigterm"))]
                 for m, r in res.items()]
    t_idle = md_table(["start method", "CPU idle before: replacement", "requeue", "SIGTERM"], idle_rows)
    report("lifecycle", "Process lifecycle: replacement, requeue, SIGTERM", info,
           "python -m benchmarks lifecycle" + ("" if not argv else " " + " ".join(argv)), intro,
           ["Replacement after kill -9 (idle worker):\n\n" + t_replace,
            "Requeue after kill -9 of a worker holding a batch:\n\n" + t_requeue,
            "SIGTERM to every process gone:\n\n" + t_term,
            "How busy the (shared) machine was just before each phase:\n\n" + t_idle],
           {"results": res, "targets": {"replacement_p99_s": TARGET_REPLACE_P99, "requeue_s": TARGET_REQUEUE,
                                        "term_idle_s": TARGET_TERM_IDLE}, "args": vars(args)})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
