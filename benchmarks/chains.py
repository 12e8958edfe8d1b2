"""Chain throughput with a webhook link whose endpoint answers in 50 ms (vCons/s; ratios).

    .venv/bin/python -m benchmarks chains [--workers 2] [--latency-ms 50]

One chain, ``links.webhook`` then the null store, its uuid on an egress list, from a
vcon-server config.yml. Measured in the same run, against the same local endpoint:

- conserver at CONSERVER_VCON_CONCURRENCY 1 and 16: a worker claims a batch of 50 and runs
  that many vCons' links at once, then stores the batch, then acks it with the egress pushes;
- vcon-server's loop shape (conserver/main.py, CONSERVER_VCON_CONCURRENCY=1, its default):
  each worker process BLPOPs one uuid, GETs the body, runs the link (one POST with
  requests), then the storages (the null store: nothing), RPUSHes the egress list, and
  BLPOPs the next; at most once, as BLPOP is.

The endpoint is a threaded HTTP server in this process that sleeps ``--latency-ms`` per
request, so the link's wait, not the CPU, is what is measured. Self-contained: it starts
its own redis-server. Each run's clock runs from the first claim to the last ack (conserver)
or to the last egress push (the loop).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import signal
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from benchmarks.common import (Conserver, VconFactory, base_env, enqueue_vcons, log, machine_info, md_table, ratio,
                               redis_client, remove_scratch, report, scratch_dir, start_redis, watch_drain)


class SlowEndpoint:
    """A webhook that answers 200 after ``latency`` seconds; counts the POSTs."""

    def __init__(self, latency: float):
        self.posts = 0
        lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self):
                super().setup()
                # headers and body go out as two writes: without this, Nagle's algorithm and the
                # client's delayed ACK add ~40 ms to every answer
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

            def do_POST(self):
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                time.sleep(latency)
                with lock:
                    outer.posts += 1
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.server.request_queue_size = 256
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _loop_worker(redis_url: str, url: str, stop_key: str) -> None:
    """vcon-server's loop with one chain: BLPOP, GET, the webhook link, storages, egress."""
    import redis
    import requests

    signal.signal(signal.SIGTERM, lambda *_: None)
    r = redis.Redis.from_url(redis_url)
    session = requests.Session()
    while not r.exists(stop_key):
        popped = r.blpop(["baseline"], timeout=1)
        if not popped:
            continue
        uuid = popped[1].decode()
        vcon = json.loads(r.get(f"vcon:{uuid}"))
        session.post(url, json=vcon, timeout=30)  # links.webhook
        r.rpush("baseline_out", uuid)  # _wrap_up: egress first, then the storages (null here)


def run_loop(server, client, workers: int, count: int, url: str, factory: VconFactory) -> dict[str, Any]:
    client.flushall()
    enqueue_vcons(client, "baseline", count, factory)
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_loop_worker, args=(server.url, url, "baseline_stop")) for _ in range(workers)]
    for p in procs:
        p.start()
    started = None
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        left = client.llen("baseline")
        if started is None and left < count:
            started = time.perf_counter()
        if client.llen("baseline_out") >= count:
            break
        time.sleep(0.005)
    seconds = time.perf_counter() - (started or time.perf_counter())
    client.set("baseline_stop", 1)
    for p in procs:
        p.join(10)
    return {"system": "vcon-server loop", "concurrency": 1, "vcons": count, "seconds": seconds,
            "rate": count / seconds, "egress": client.llen("baseline_out")}


def run_conserver(server, client, workers: int, concurrency: int, count: int, url: str, factory: VconFactory,
                  workdir: Path) -> dict[str, Any]:
    client.flushall()
    enqueue_vcons(client, "default", count, factory)
    config = workdir / f"config-{concurrency}.yml"
    config.write_text(
        "links:\n  webhook:\n    module: links.webhook\n    options:\n      webhook-urls:\n"
        f"      - {url}\nstorages:\n  nothing:\n    module: storage.null\n"
        "chains:\n  bench:\n    links: [webhook]\n    ingress_lists: [default]\n    storages: [nothing]\n"
        "    egress_lists: [out]\n    enabled: 1\n")
    env = base_env(server.url, workers=workers, storages="", CONSERVER_CONFIG_FILE=str(config),
                   CONSERVER_VCON_CONCURRENCY=concurrency)
    c = Conserver(env, workdir, f"chains-{concurrency}")
    try:
        w = watch_drain(client, ["default"], count, timeout=900, poll=0.005, on_fail=c.log_tail)
    finally:
        c.stop()
    seconds = w["drained"] - w["first_claim"]
    return {"system": "conserver", "concurrency": concurrency, "vcons": count, "seconds": seconds,
            "rate": count / seconds, "egress": client.llen("out")}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks chains", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workers", type=int, default=2, help="worker processes, both systems")
    p.add_argument("--latency-ms", type=float, default=50.0, help="the webhook's answer time")
    p.add_argument("--seconds", type=float, default=8.0, help="about how long each run lasts (sizes the runs)")
    args = p.parse_args(argv)
    latency = args.latency_ms / 1000
    serial = max(50, int(args.seconds * args.workers / latency))  # one vCon per latency per worker
    sizes = {1: serial, 16: max(200, serial * 16)}
    info = machine_info()
    server = start_redis()
    client = redis_client(server)
    endpoint = SlowEndpoint(latency)
    workdir = scratch_dir("bench-chains-")
    factory = VconFactory(seed=5)
    ok = False
    runs: list[dict[str, Any]] = []
    try:
        log(f"vcon-server loop: {serial} vCons, {args.workers} processes")
        runs.append(run_loop(server, client, args.workers, serial, endpoint.url, factory))
        for concurrency in (1, 16):
            log(f"conserver CONSERVER_VCON_CONCURRENCY={concurrency}: {sizes[concurrency]} vCons")
            runs.append(run_conserver(server, client, args.workers, concurrency, sizes[concurrency], endpoint.url,
                                      factory, workdir))
            log(f"  {runs[-1]['rate']:,.1f} vCons/s")
        ok = all(r["egress"] == r["vcons"] for r in runs)
    finally:
        endpoint.close()
        client.close()
        server.close()
        remove_scratch(workdir, ok)
    base = runs[0]["rate"]
    rows = [[r["system"], r["concurrency"], f"{r['vcons']:,}", f"{r['seconds']:.2f}", f"{r['rate']:,.1f}",
             ratio(r["rate"], base), f"{r['rate'] * latency / args.workers:.2f}", "yes" if r["egress"] == r["vcons"] else "NO"]
            for r in runs]
    table = md_table(["system", "vCons in flight per worker", "vCons", "seconds", "vCons/s", "vs vcon-server loop",
                      "vCons/s x latency / workers", "every uuid on egress"], rows)
    intro = (f"One chain from config.yml: `links.webhook` (endpoint answering in {args.latency_ms:g} ms, in the "
             f"harness), the null store, an egress list; {args.workers} worker processes each; sample vCons of "
             f"{factory.mean_bytes / 1000:.1f} KB. The column `vCons/s x latency / workers` is the vCons each worker "
             "has waiting on the endpoint at once, on average (1.0 = one at a time, all the time).")
    report("chains", "Chains: a webhook link at 50 ms, conserver against vcon-server's loop", info,
           "python -m benchmarks chains" + ("" if not argv else " " + " ".join(argv)), intro, [table],
           {"runs": runs, "args": vars(args)})
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
