"""Memory of the process tree: PSS (psutil ``memory_full_info().pss``) of the master, every
worker and, for forkserver/spawn, multiprocessing's helper processes (the forkserver, the
resource tracker: reported separately and included in the total), for 1, 2, 4 and 8
workers with fork, forkserver and spawn.

    .venv/bin/python -m benchmarks memory [--workers 1,2,4,8] [--stores null,real]

Before each measurement the tree processes 100 vCons per worker (so the clients are
connected and the parse path has run) and then idles for a moment. ``real`` runs the
postgres, s3 and elasticsearch stores against private servers (conserver.dev.devstack); it is
skipped with a note if those servers cannot start. The figure that matters is the slope:
PSS added per worker (least squares over the worker counts). Baselines: the target of 30 MB
per fork worker, the seed's quoted 200 MB per worker, and fork in the same run.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from benchmarks.common import (remove_scratch, scratch_dir, WORKER_TITLE, Conserver, VconFactory, base_env, enqueue_vcons, log, machine_info,
                               md_table, ratio, redis_client, report, slope, start_redis, title, watch_drain)

METHODS = ("fork", "forkserver", "spawn")
TARGET_MB = 30.0
SEED_MB = 200.0
MB = 1024 * 1024


def classify(pid: int, master: int) -> str:
    if pid == master:
        return "master"
    t = title(pid)
    if WORKER_TITLE.match(t):
        return "worker"
    if "forkserver" in t:
        return "forkserver"
    if "resource_tracker" in t:
        return "resource_tracker"
    return "other"


def measure_tree(c: Conserver) -> dict[str, Any]:
    import psutil

    parts: dict[str, list[dict[str, float]]] = {}
    for pid in c.pids():
        try:
            mi = psutil.Process(pid).memory_full_info()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        parts.setdefault(classify(pid, c.pid), []).append({"pid": pid, "pss": mi.pss / MB, "uss": mi.uss / MB,
                                                           "rss": mi.rss / MB})
    total = sum(p["pss"] for ps in parts.values() for p in ps)
    return {"total_pss": total, "parts": parts}


def one(server, client, method: str, n: int, store_env: dict[str, str], workdir: Path, factory: VconFactory,
        settle: float) -> dict[str, Any]:
    client.flushall()
    warm = 100 * n
    enqueue_vcons(client, "default", warm, factory)
    env = base_env(server.url, workers=n, method=method, **store_env)
    c = Conserver(env, workdir, f"memory-{method}-{n}")
    try:
        c.wait_workers(n, ("idle", "busy"), timeout=180)
        watch_drain(client, ["default"], warm, timeout=300, poll=0.02, on_fail=c.log_tail)
        c.wait_workers(n, "idle", timeout=60)
        time.sleep(settle)
        m = measure_tree(c)
    finally:
        c.stop()
    return m


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks memory", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workers", default="1,2,4,8")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--stores", default="null,real", help="null, real (postgres+s3+elasticsearch on private servers)")
    p.add_argument("--settle", type=float, default=1.0, help="seconds idle before measuring")
    args = p.parse_args(argv)
    counts = [int(x) for x in args.workers.split(",")]
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    store_sets = [s.strip() for s in args.stores.split(",") if s.strip()]
    info = machine_info()
    server = start_redis()
    client = redis_client(server)
    workdir = scratch_dir("bench-memory-")
    ok = False
    factory = VconFactory(seed=5, pool=500)
    results: dict[str, dict[str, dict[int, Any]]] = {}
    notes = []
    stack = None
    try:
        for stores in store_sets:
            if stores == "null":
                store_env = {"storages": "null"}
            elif stores == "real":
                from conserver.dev.devstack import DevStack

                try:
                    log("real stores: starting private PostgreSQL, S3 (SeaweedFS) and OpenSearch")
                    stack = DevStack(workdir / "stack", only=["postgres", "s3", "elasticsearch"]).start(timeout=180)
                except Exception as exc:
                    notes.append(f"real stores skipped: the private servers did not start ({str(exc).splitlines()[0]})")
                    log(notes[-1])
                    stack = None
                    continue
                senv = stack.env()
                store_env = {"storages": senv.pop("CONSERVER_STORAGES"), **senv, "S3_CREATE_BUCKET": "true"}
            else:
                p.error(f"unknown store set {stores!r}")
            results[stores] = {}
            for m in methods:
                results[stores][m] = {}
                for n in counts:
                    log(f"{stores} stores, {m}, {n} workers")
                    r = one(server, client, m, n, store_env, workdir, factory, args.settle)
                    results[stores][m][n] = r
                    w = r["parts"].get("worker", [])
                    log(f"  total PSS {r['total_pss']:.1f} MB, mean worker PSS "
                        f"{sum(x['pss'] for x in w) / max(1, len(w)):.1f} MB")
            if stack is not None:
                stack.stop()
                stack = None
        ok = True
    finally:
        if stack is not None:
            stack.stop()
        client.close()
        server.close()
        remove_scratch(workdir, ok)

    def mb(x: float) -> str:
        return f"{x:.1f}"

    tables = []
    slopes: dict[str, dict[str, float]] = {}
    for stores, by_method in results.items():
        slopes[stores] = {}
        rows = []
        for m, by_n in by_method.items():
            xs = sorted(by_n)
            b, a = slope(xs, [by_n[n]["total_pss"] for n in xs])
            slopes[stores][m] = b
        for m, by_n in by_method.items():
            xs = sorted(by_n)
            b = slopes[stores][m]
            rows.append([m, *(mb(by_n[n]["total_pss"]) for n in xs), mb(b), ratio(b, TARGET_MB), ratio(b, SEED_MB),
                         ratio(b, slopes[stores].get("fork"))])
        xs = sorted(next(iter(by_method.values())))
        what = "null store" if stores == "null" else "postgres + s3 + elasticsearch stores"
        tables.append(f"Total PSS of the tree (MB), {what}:\n\n" + md_table(
            ["start method", *(f"{n} worker{'s' if n > 1 else ''}" for n in xs), "MB per added worker (slope)",
             "slope / target 30 MB", "slope / seed's 200 MB", "slope vs fork"], rows))
        rows = []
        top = max(xs)
        for m, by_n in by_method.items():
            parts = by_n[top]["parts"]
            w = parts.get("worker", [])
            helpers = [x for k in ("forkserver", "resource_tracker", "other") for x in parts.get(k, [])]
            rows.append([m, mb(sum(x["pss"] for x in parts.get("master", []))),
                         mb(sum(x["pss"] for x in parts.get("forkserver", []))),
                         mb(sum(x["pss"] for x in helpers) - sum(x["pss"] for x in parts.get("forkserver", []))),
                         mb(sum(x["pss"] for x in w) / max(1, len(w))), mb(sum(x["uss"] for x in w) / max(1, len(w))),
                         mb(sum(x["rss"] for x in w) / max(1, len(w)))])
        tables.append(f"Breakdown at {top} workers, {what} (MB):\n\n" + md_table(
            ["start method", "master PSS", "forkserver PSS", "other helpers PSS (resource tracker)",
             "mean worker PSS", "mean worker USS", "mean worker RSS"], rows))
    intro = ("PSS counts a page shared by k processes as 1/k in each, so the sum over the tree is the memory the "
             "tree really uses; USS is what a worker alone holds. Each point: a fresh conserver that processed "
             f"100 vCons per worker, then idled {args.settle:g} s. Slope = least-squares MB per added worker over "
             f"{', '.join(map(str, counts))} workers. Ratios to the 30 MB target, the seed's 200 MB per worker, and "
             "fork in this run.")
    report("memory", "Memory: PSS per worker and start method", info,
           "python -m benchmarks memory" + ("" if not argv else " " + " ".join(argv)), intro, tables,
           {"results": results, "slopes_mb": slopes, "target_mb": TARGET_MB, "seed_mb": SEED_MB},
           "\n".join(notes))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
