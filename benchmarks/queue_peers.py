"""Queue machinery with a no-op job: conserver against RQ, Celery, Dramatiq, Huey and a
bare redis-py loop, 2 worker processes each, all on one private redis-server in one run.

    .venv/bin/python -m benchmarks queue [--jobs 20000] [--only conserver,huey,...]

Method, the same for every system: enqueue all jobs first (in bulk, untimed, with no
worker running), then start the workers; the clock runs from the first job done to the
last. Every peer job does one INCR of a counter, which proves that each job ran exactly
once (the counter must end at --jobs and stay there). conserver's "job" is the real one:
fetch the vcon:{uuid} body (~1.5 KB), parse and validate it, hand it to the null store,
acknowledge it; its clock starts when the first worker shows ``idle``/``busy`` in its
title (or, second figure, at its first claim) and stops when the ingress list and every
processing list are empty. Nothing is subtracted.
"""

from __future__ import annotations

import argparse
import os
import re
import time
from pathlib import Path
from typing import Any, Callable

from benchmarks.common import (remove_scratch, scratch_dir, PYTHON, ROOT, Conserver, Group, VconFactory, base_env, enqueue_vcons, log,
                               machine_info, md_table, ratio, redis_client, report, start_redis, wait_for,
                               wait_quiet, watch_drain)
from benchmarks.peers import COUNTER

ALL = ("bare", "conserver", "huey", "dramatiq", "celery", "rq-simple", "rq")
BIN = Path(PYTHON).parent
QUEUE = "bench"


class Ctx:
    def __init__(self, server, client, jobs: int, workdir: Path, args: argparse.Namespace):
        self.server, self.client, self.jobs, self.workdir, self.args = server, client, jobs, workdir, args
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("CONSERVER_", "REDIS_"))}
        self.env["BENCH_REDIS_URL"] = server.url
        self.env["BENCH_COUNT"] = args.count
        self.env["PYTHONPATH"] = str(ROOT) + (os.pathsep + self.env["PYTHONPATH"] if self.env.get("PYTHONPATH") else "")

    def group(self, name: str, argv: list[str], **env: str) -> Group:
        return Group(argv, {**self.env, **env}, self.workdir, self.workdir / f"{name}-{time.monotonic_ns()}.log")


def watch_counter(client, total: int, groups: list[Group], cap: float = 0.0, timeout: float = 600.0,
                  stall: float = 30.0, poll: float = 0.002) -> dict[str, float]:
    """First poll with the counter above 0, and the poll at which it reached ``total`` (or,
    with ``cap``, the poll ``cap`` seconds after the first job, whichever comes first)."""
    t_first = None
    c0 = 0
    last, last_change = -1, time.perf_counter()
    t_start = time.perf_counter()
    while True:
        now = time.perf_counter()
        raw = client.get(COUNTER)
        c = int(raw) if raw else 0
        if t_first is None and c > 0:
            t_first, c0 = now, c
        if c >= total or (cap and t_first is not None and now - t_first >= cap):
            return {"first": t_first, "c0": c0, "end": now, "boot": (t_first or now) - t_start, "count": c,
                    "capped": c < total}
        if c != last:
            last, last_change = c, now
        if now - last_change > stall or now - t_start > timeout:
            tails = "\n".join(f"--- {g.log_path.name}:\n{g.log_tail(15)}" for g in groups)
            raise TimeoutError(f"counter at {c} of {total}, no progress for {now - last_change:.0f}s\n{tails}")
        time.sleep(poll)


def settle_count(client, total: int) -> int:
    """The counter a moment after the last job: a duplicate delivery would push it past total."""
    time.sleep(0.5)
    raw = client.get(COUNTER)
    return int(raw) if raw else 0


def timed_peer(ctx: Ctx, name: str, start: Callable[[], list[Group]], queue_len: Callable[[], int],
               total: int | None = None) -> dict[str, Any]:
    total = total or ctx.jobs
    assert queue_len() == total, f"{name}: {queue_len()} jobs in the queue, expected {total}"
    groups = start()
    try:
        w = watch_counter(ctx.client, total, groups, cap=ctx.args.max_seconds)
        if w["capped"]:
            for g in groups:
                g.stop()
            left = queue_len()
        count = settle_count(ctx.client, total)
        if not w["capped"]:
            left = queue_len()
    finally:
        for g in groups:
            g.stop()
    seconds = w["end"] - w["first"]
    done = w["count"] - w["c0"]
    res = {"seconds": seconds, "jobs_timed": done, "rate": done / seconds if seconds > 0 else float("nan"),
           "boot_s": w["boot"], "count": count, "jobs": total, "capped": w["capped"]}
    if w["capped"]:
        # Stopped at the time cap: no job may have run twice (count + still queued <= total;
        # jobs a worker had prefetched or was running are in neither).
        res["verified"] = count + left <= total
        res["note"] = f"stopped after {ctx.args.max_seconds:g}s: {count:,} of {total:,} ran"
    else:
        res["verified"] = count == total and left == 0
    return res


# ------------------------------------------------------------------------------ the systems


def run_bare(ctx: Ctx) -> dict[str, Any]:
    source = "bench:bare"
    total = ctx.jobs * ctx.args.bare_factor  # 20,000 would take a fraction of a second
    pipe = ctx.client.pipeline(transaction=False)
    for lo in range(0, total, 5000):
        pipe.rpush(source, *(f"job-{i:08d}" for i in range(lo, min(total, lo + 5000))))
    pipe.execute()

    def start():
        return [ctx.group(f"bare{i}", [PYTHON, "-m", "benchmarks.peers.bare", ctx.server.url, source, str(i)])
                for i in (1, 2)]

    res = timed_peer(ctx, "bare", start, lambda: ctx.client.llen(source), total)
    leftovers = sum(ctx.client.llen(f"bench:processing:{i}") for i in (1, 2))
    res["verified"] = res["verified"] and leftovers == 0
    return {**res, "setup": "2 processes, Lua claim of 50 into a processing list, DEL + INCRBY ack",
            "delivery": "at-least-once"}


def run_huey(ctx: Ctx) -> dict[str, Any]:
    from benchmarks.peers.huey_app import huey, noop

    storage = huey.storage
    msgs = [huey.serialize_task(noop.s(i)) for i in range(ctx.jobs)]
    pipe = storage.conn.pipeline(transaction=False)
    for lo in range(0, len(msgs), 5000):
        pipe.lpush(storage.queue_key, *msgs[lo:lo + 5000])
    pipe.execute()

    def start():
        return [ctx.group("huey", [str(BIN / "huey_consumer"), "benchmarks.peers.huey_app.huey",
                                   "-k", "process", "-w", "2", "-n", "-q"])]

    res = timed_peer(ctx, "huey", start, lambda: storage.conn.llen(storage.queue_key))
    return {**res, "setup": "RedisHuey(results=False), huey_consumer -k process -w 2",
            "delivery": "at-most-once (popped before it runs)"}


def run_dramatiq(ctx: Ctx) -> dict[str, Any]:
    from benchmarks.peers.dramatiq_app import broker, noop

    for i in range(ctx.jobs):  # one Lua script per message: the broker has no bulk enqueue
        noop.send(i)
    qkey = f"{broker.namespace}:{noop.queue_name}"

    def start():
        return [ctx.group("dramatiq", [PYTHON, "-m", "dramatiq", "benchmarks.peers.dramatiq_app",
                                       "-p", "2", "-t", "8", "-Q", noop.queue_name])]

    res = timed_peer(ctx, "dramatiq", start, lambda: ctx.client.llen(qkey))
    return {**res, "setup": "RedisBroker, dramatiq -p 2 -t 8, max_retries=0",
            "delivery": "at-least-once (ack after the job)"}


def run_celery(ctx: Ctx) -> dict[str, Any]:
    from benchmarks.peers.celery_app import app, noop

    with app.producer_or_acquire() as producer:
        for i in range(ctx.jobs):
            noop.apply_async((i,), producer=producer)
    prefetch = app.conf.worker_prefetch_multiplier

    def start():
        return [ctx.group("celery", [PYTHON, "-m", "celery", "-A", "benchmarks.peers.celery_app", "worker",
                                     "--pool", "prefork", "--concurrency", "2", "-Q", QUEUE, "--loglevel", "WARNING",
                                     "--without-heartbeat", "--without-gossip", "--without-mingle"])]

    res = timed_peer(ctx, "celery", start, lambda: ctx.client.llen(QUEUE))
    return {**res, "setup": f"Redis broker, no result backend, acks_late, prefetch x{prefetch}, "
                            "--pool prefork --concurrency 2",
            "delivery": "at-least-once (acks_late)"}


def _rq(ctx: Ctx, worker_class: str | None) -> dict[str, Any]:
    from rq import Queue

    from benchmarks.peers.rq_jobs import noop

    q = Queue(QUEUE, connection=ctx.client)
    for lo in range(0, ctx.jobs, 2000):
        with ctx.client.pipeline() as pipe:
            q.enqueue_many([Queue.prepare_data(noop, args=(i,), result_ttl=0)
                            for i in range(lo, min(ctx.jobs, lo + 2000))], pipeline=pipe)
            pipe.execute()
    extra = ["-w", worker_class] if worker_class else []

    def start():
        env = {} if worker_class else {"BENCH_RQ_DIRECT": "1"}
        return [ctx.group(f"rq{i}", [str(BIN / "rq"), "worker", "-u", ctx.server.url, "--burst", "-q",
                                     "-n", f"bench-{i}-{time.monotonic_ns()}", *extra, QUEUE], **env)
                for i in (1, 2)]

    return timed_peer(ctx, "rq", start, lambda: q.count)


def run_rq_simple(ctx: Ctx) -> dict[str, Any]:
    res = _rq(ctx, "rq.worker.SimpleWorker")
    return {**res, "setup": "2 x rq worker -w SimpleWorker (job runs in the worker)",
            "delivery": "at-least-once-ish (StartedJobRegistry)"}


def run_rq(ctx: Ctx) -> dict[str, Any]:
    res = _rq(ctx, None)
    return {**res, "setup": "2 x rq worker (default Worker: a forked work horse per job; direct INCR)",
            "delivery": "at-least-once-ish (StartedJobRegistry)"}


def run_conserver(ctx: Ctx) -> dict[str, Any]:
    from conserver.queue.admin import QueueAdmin

    factory = VconFactory(seed=7)
    enqueue_vcons(ctx.client, "default", ctx.jobs, factory)
    q = QueueAdmin(ctx.client, ["default"])
    assert q.depths()["lists"]["default"] == ctx.jobs
    env = base_env(ctx.server.url, workers=2, method=ctx.args.method, storages="null")
    c = Conserver(env, ctx.workdir, "conserver-queue")
    try:
        t0 = time.perf_counter()
        w = watch_drain(ctx.client, ["default"], ctx.jobs, poll=0.002,
                        ready=lambda: bool(c.workers(("idle", "busy"))), on_fail=c.log_tail)
        depths = q.depths()
        # The master's title adds up what every worker acknowledged (refreshed once a second).
        processed = 0
        try:
            processed = wait_for(lambda: _title_processed(c) >= ctx.jobs and _title_processed(c), 5.0, 0.05)
        except TimeoutError:
            processed = _title_processed(c)
    finally:
        c.stop()
    from_ready = w["drained"] - w["ready"]
    from_claim = w["drained"] - w["first_claim"]
    clean = not depths["dlq"]["default"] and not depths["delayed"] and depths["processing"] == 0
    return {
        "seconds": from_ready, "jobs_timed": ctx.jobs, "rate": ctx.jobs / from_ready,
        "rate_from_first_claim": (ctx.jobs - w["done_at_first_claim"]) / from_claim,
        "seconds_from_first_claim": from_claim, "boot_s": w["ready"] - t0, "count": processed,
        "dlq": depths["dlq"]["default"], "delayed": depths["delayed"], "vcon_bytes": round(factory.mean_bytes),
        "verified": clean and processed == ctx.jobs,
        "setup": f"2 workers ({ctx.args.method}), null store, batch 50, sample vCons of "
                 f"{factory.mean_bytes / 1000:.1f} KB fetched + parsed + validated",
        "delivery": "at-least-once (processing list, ack after the store)",
    }


def _title_processed(c: Conserver) -> int:
    from benchmarks.common import title

    m = re.search(r"processed=(\d+)", title(c.pid))
    return int(m.group(1)) if m else 0


RUNNERS: dict[str, Callable[[Ctx], dict[str, Any]]] = {
    "bare": run_bare, "conserver": run_conserver, "huey": run_huey, "dramatiq": run_dramatiq,
    "celery": run_celery, "rq-simple": run_rq_simple, "rq": run_rq,
}
LABELS = {"bare": "bare redis-py loop", "conserver": "conserver", "huey": "Huey", "dramatiq": "Dramatiq",
          "celery": "Celery", "rq-simple": "RQ (SimpleWorker)", "rq": "RQ (rq worker)"}


def incr_round_trip(client, n: int = 5000) -> float:
    """Seconds per serial INCR from one client: what each peer job's counting costs."""
    client.delete("bench:rtt")
    t0 = time.perf_counter()
    for _ in range(n):
        client.incr("bench:rtt")
    return (time.perf_counter() - t0) / n


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks queue", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--jobs", type=int, default=20000)
    p.add_argument("--only", default=",".join(ALL), help="comma list of " + ",".join(ALL))
    p.add_argument("--method", default="fork", choices=("fork", "spawn", "forkserver"), help="conserver's start method")
    p.add_argument("--max-seconds", type=float, default=45.0,
                   help="stop a system this long after its first job and rate what it did (0: no cap)")
    p.add_argument("--min-idle", type=float, default=60.0,
                   help="before each run wait until this %% of the CPUs is idle (a shared machine) ...")
    p.add_argument("--quiet-wait", type=float, default=60.0, help="... but at most this many seconds (0: never wait)")
    p.add_argument("--rounds", type=int, default=3,
                   help="rounds for the systems that finish fast (best verified round is reported)")
    p.add_argument("--repeat-under", type=float, default=15.0,
                   help="only systems whose first round took less than this many seconds run more rounds")
    p.add_argument("--bare-factor", type=int, default=10, help="the bare loop runs JOBS x this (it is that fast)")
    p.add_argument("--count", default="buffered", choices=("buffered", "direct"),
                   help="how peer jobs count themselves: buffered INCRBY every 10 ms per process, or one INCR per job")
    args = p.parse_args(argv)
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    for n in names:
        if n not in RUNNERS:
            p.error(f"unknown system {n!r}")
    info = machine_info()
    server = start_redis()
    os.environ["BENCH_REDIS_URL"] = server.url  # the peers' app modules read it at import
    client = redis_client(server)
    workdir = scratch_dir("bench-queue-")
    ok = False
    ctx = Ctx(server, client, args.jobs, workdir, args)
    runs: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
    idle_before: dict[str, list[float]] = {n: [] for n in names}
    try:
        rtt = incr_round_trip(client)
        for rnd in range(args.rounds):
            order = names[rnd % len(names):] + names[:rnd % len(names)]  # rotate: no system always goes first
            for name in order:
                prev = runs[name]
                if rnd > 0 and (not prev or "error" in prev[0] or prev[0].get("capped")
                                or prev[0]["seconds"] > args.repeat_under):
                    continue  # slow systems run once: another round would not change any ratio
                client.flushall()
                idle_before[name].append(wait_quiet(args.min_idle, args.quiet_wait))
                log(f"round {rnd + 1}, {name}: enqueue {args.jobs} jobs, then start 2 worker processes "
                    f"(CPU idle before: {idle_before[name][-1]:.0f}%)")
                try:
                    res = RUNNERS[name](ctx)
                except Exception as exc:  # one broken system must not lose the others' numbers
                    log(f"{name} FAILED: {exc}")
                    res = {"error": f"{type(exc).__name__}: {exc}"[:3000], "verified": False, "rate": float("nan"),
                           "seconds": float("nan"), "setup": "", "delivery": ""}
                res["cpu_idle_before_pct"] = idle_before[name][-1]
                runs[name].append(res)
                if "error" not in res:
                    log(f"{name}: {res['rate']:,.0f} jobs/s over {res['seconds']:.2f}s "
                        f"(count {res['count']}, verified {res['verified']})")
        ok = all(r.get("verified") for rs in runs.values() for r in rs)
    finally:
        client.close()
        server.close()
        remove_scratch(workdir, ok)

    results: dict[str, dict[str, Any]] = {}
    for name, rs in runs.items():
        good = [r for r in rs if r.get("verified")]
        best = max(good, key=lambda r: r["rate"]) if good else rs[0]
        results[name] = {**best, "rounds": len(rs), "all_rates": [r["rate"] for r in rs]}

    peers = {n: r for n, r in results.items() if n not in ("conserver", "bare") and r.get("verified")}
    fastest = max(peers, key=lambda n: peers[n]["rate"]) if peers else None
    fastest_rate = peers[fastest]["rate"] if fastest else None
    bare_rate = results["bare"]["rate"] if results.get("bare", {}).get("verified") else None
    rows = []
    for n in sorted(results, key=lambda n: -(results[n]["rate"] if results[n]["rate"] == results[n]["rate"] else -1)):
        r = results[n]
        if "error" in r:
            rows.append([LABELS[n], "FAILED: " + r["error"].splitlines()[0][:80], "", "", "", "", "", "", "no"])
            continue
        if r.get("capped"):
            check = ("partial, no duplicates: " if r["verified"] else "NO: ") + r["note"]
        else:
            check = "yes" if r["verified"] else f"NO (count {r.get('count')})"
        spread = ", ".join(f"{x:,.0f}" for x in r["all_rates"]) if r["rounds"] > 1 else "-"
        rows.append([LABELS[n], r["setup"], f"{r['jobs_timed']:,}", f"{r['seconds']:.2f}", f"{r['rate']:,.0f}",
                     spread, ratio(r["rate"], fastest_rate), ratio(r["rate"], bare_rate), check])
    table = md_table(["system", "setup", "jobs timed", "seconds", "jobs/s (best round)", "all rounds",
                      f"vs fastest peer ({LABELS.get(fastest, '-')})", "vs bare loop", "every job ran once"], rows)
    summary_rows = []
    c = results.get("conserver")
    if c and "error" not in c:
        met = "n/a" if not fastest_rate else ("met" if c["rate"] >= 5 * fastest_rate else "NOT met")
        summary_rows.append(["conserver / fastest peer", ratio(c["rate"], fastest_rate), ">= 5x", met])
        summary_rows.append(["conserver / bare redis-py loop (the at-least-once floor)", ratio(c["rate"], bare_rate),
                             "", ""])
        summary_rows.append(["conserver clocked from its first claim instead",
                             f"{c['rate_from_first_claim']:,.0f} vCons/s",
                             ratio(c["rate_from_first_claim"], fastest_rate) + " of the fastest peer", ""])
    summary_rows.append(["one serial INCR round trip from the harness (load indicator)", f"{rtt * 1e6:.0f} us", "", ""])
    summary = md_table(["figure", "value", "target", "status"], summary_rows)
    delivery = md_table(["system", "delivery guarantee", "start to first job done (s)",
                         "CPU idle % just before (best round)"],
                        [[LABELS[n], r.get("delivery", ""), f"{r['boot_s']:.2f}" if "boot_s" in r else "",
                          f"{r['cpu_idle_before_pct']:.0f}"] for n, r in results.items()])
    counting = ("one INCR per job" if args.count == "direct" else
                "a per-process count sent with INCRBY every 10 ms (RQ's default Worker: one INCR per job, "
                "its work horse exits after each job)")
    intro = (f"{args.jobs:,} jobs per system ({args.jobs * args.bare_factor:,} for the bare loop, which is that "
             "fast), 2 worker processes each, one private redis-server. All jobs are enqueued in bulk before any "
             "worker starts; the clock runs from the first job done to the last (conserver: from its first "
             "worker's title showing idle/busy to the ingress and processing lists being empty, nothing "
             f"subtracted). A system still running {args.max_seconds:g}s after its first job is stopped and rated "
             f"on what it did. Peer jobs are no-ops that count themselves ({counting}); conserver runs its real "
             "pipeline (fetch body, parse, validate, null store, ack). Systems whose first round took under "
             f"{args.repeat_under:g} s run {args.rounds} rounds in rotating order and the best verified round "
             "counts (other processes on the machine only ever slow a round down). Ratios are to the fastest "
             "peer and to the bare loop measured in this run.")
    notes = ""
    if c and "error" in c:
        notes = f"conserver failed in this run: {c['error'].splitlines()[0]}"
    report("queue", "Queue machinery: conserver vs RQ, Celery, Dramatiq, Huey", info,
           "python -m benchmarks queue" + ("" if argv is None or not argv else " " + " ".join(argv)), intro,
           [t for t in (table, summary, delivery) if t],
           {"jobs": args.jobs, "results": results, "fastest_peer": fastest, "incr_rtt_s": rtt}, notes)
    return 0 if all(r.get("verified") for r in results.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
