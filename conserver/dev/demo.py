"""``conserver demo``: the main job on a local stack it starts itself (the README's ``make run``).

Starts private Redis, PostgreSQL, SeaweedFS (S3) and osmem (OpenSearch API) servers,
writes their settings to ``.env``, runs ``conserver run`` against them, enqueues sample
vCons the way a vcon-server producer does, and shows where they landed. Then it keeps
running (enqueue more with ``conserver enqueue --sample 100``) until Ctrl-C, or exits at
once with ``--once``.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import threading
import time
from typing import Any

import orjson

from conserver.config import config_from_mapping
from conserver.dev.devstack import DevStack


def where_they_landed(cfg: Any, uuids: list[str]) -> dict[str, Any]:
    """Count each sample vCon in each store and show one of them as each store has it."""
    from conserver.storage import load_sinks

    report: dict[str, Any] = {}
    for sink in load_sinks(cfg.storages, cfg):
        sink.open()
        try:
            found = sum(1 for u in uuids if sink.fetch(u) is not None)
            report[sink.name] = {"stored": found, "of": len(uuids), "example": sink.fetch(uuids[0])}
        finally:
            sink.close()
    return report


def wait_drained(queue: Any, timeout: float, stop: threading.Event) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not stop.is_set():
        d = queue.depths()
        if not any(d["lists"].values()) and d["processing"] == 0 and d["delayed"] == 0:
            return True
        stop.wait(0.2)
    return False


def in_foreground_of_a_terminal() -> bool:
    """True when a Ctrl-C in our terminal reaches our whole process group, ``conserver run``
    (our child, in the same group) included."""
    try:
        return os.tcgetpgrp(sys.stdin.fileno()) == os.getpgrp()
    except OSError:  # no terminal
        return False


def stop_child(child: subprocess.Popen, received: list[int], graceful_timeout: float) -> int:
    """Ask ``conserver run`` to drain exactly once, and wait for it.

    The terminal's SIGINT went to the child as well: sending it a SIGTERM too would look
    like a second request (stop at once, SIGKILL every worker), so the demo sends one only
    when the child has not been told (our own SIGTERM, or no terminal in between)."""
    if child.poll() is not None:
        return child.returncode
    if not (received and received[0] == signal.SIGINT and in_foreground_of_a_terminal()):
        child.send_signal(signal.SIGTERM)
    try:
        child.wait(graceful_timeout + 15)
    except subprocess.TimeoutExpired:
        child.kill()
    return child.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="conserver demo", description=__doc__.splitlines()[0])
    parser.add_argument("--state-dir", default=".state/demo")
    parser.add_argument("--env-file", default=".env", help="settings file to write (default .env)")
    parser.add_argument("--sample", type=int, default=500, help="sample vCons to enqueue (default 500)")
    parser.add_argument("--workers", default="2")
    parser.add_argument("--once", action="store_true", help="exit after showing where the vCons landed")
    args = parser.parse_args(argv)

    stop = threading.Event()
    received: list[int] = []

    def on_signal(signum: int, frame: Any) -> None:
        received.append(signum)
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)
    print("starting a private Redis, PostgreSQL, SeaweedFS (S3) and osmem (OpenSearch API)...", flush=True)
    stack = DevStack(args.state_dir).start()
    child: subprocess.Popen | None = None
    cfg = None
    try:
        stack.write_env_file(args.env_file)
        env = {**os.environ, **stack.env(), "CONSERVER_WORKERS": args.workers, "CONSERVER_METRICS_PORT":
               os.environ.get("CONSERVER_METRICS_PORT", "9600"), "CONSERVER_METRICS_LOG_INTERVAL": "10s"}
        cfg = config_from_mapping(env)
        print(f"settings written to {args.env_file}; starting conserver with {args.workers} workers", flush=True)
        child = subprocess.Popen([sys.executable, "-m", "conserver", "run"], env=env)

        from conserver.queue.admin import QueueAdmin
        from conserver.queue.client import make_redis
        from conserver.dev.samples import sample_vcon

        queue = QueueAdmin(make_redis(cfg), cfg.ingress_lists)
        rng = random.Random()
        vcons = [sample_vcon(rng) for _ in range(args.sample)]
        started = time.monotonic()
        queue.enqueue(cfg.ingress_lists[0], [(v["uuid"], orjson.dumps(v)) for v in vcons])
        print(f"enqueued {len(vcons)} sample vCons on {cfg.ingress_lists[0]!r}", flush=True)
        drained = wait_drained(queue, 120, stop)
        if stop.is_set():
            print("interrupted: conserver finishes what it holds and hands back the rest", flush=True)
            return 0 if stop_child(child, received, cfg.graceful_timeout) == 0 else 1
        took = time.monotonic() - started
        report = where_they_landed(cfg, [v["uuid"] for v in vcons])
        print(f"\n{'store':<15} {'stored':>8}  (in {took:.1f} s)")
        for store, r in report.items():
            print(f"{store:<15} {r['stored']:>5}/{r['of']}")
        example = report.get("postgres", {}).get("example") or next(iter(report.values()))["example"]
        print("\none of them, as stored:\n" + orjson.dumps(example, option=orjson.OPT_INDENT_2).decode()[:1500])
        print(f"\nqueues: {queue.depths()}")
        ok = drained and all(r["stored"] == r["of"] for r in report.values())
        if args.once:
            return 0 if ok else 1
        port = env["CONSERVER_METRICS_PORT"]
        print(f"\nconserver keeps running: http://127.0.0.1:{port}/status, /metrics; "
              f"`conserver --env-file {args.env_file} enqueue --sample 100` adds more. Ctrl-C stops everything.",
              flush=True)
        while not stop.is_set() and child.poll() is None:
            stop.wait(0.5)
        return 0 if ok and stop_child(child, received, cfg.graceful_timeout) == 0 else 1
    finally:
        if child is not None:
            stop_child(child, received, cfg.graceful_timeout if cfg is not None else 25.0)
        stack.stop()
