"""The ``conserver`` command.

``run`` starts the supervisor; the other commands are operator tools that talk to Redis
or the stores directly and never start workers.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import logging
import os
import sys
from typing import Callable

from conserver.config import Config, ConfigError, describe, load_config
from conserver.errors import ExitCode

log = logging.getLogger("conserver.cli")


def _seed_000_flags(args: argparse.Namespace) -> dict[str, str]:
    """Seed 000's ``queue:work --tries --max-time --sleep`` as the settings they mean here."""
    out = {}
    if getattr(args, "tries", None) is not None:  # attempts in all: the first one and MAX_RETRIES more
        out["MAX_RETRIES"] = str(max(0, args.tries - 1))
    if getattr(args, "max_time", None) is not None:  # a worker is replaced after this long
        out["CONSERVER_MAX_WORKER_AGE"] = f"{args.max_time}s"
    if getattr(args, "sleep", None) is not None:  # the longest wait on empty lists (a vCon wakes it at once)
        out["TICK_INTERVAL"] = f"{args.sleep}s"
    return out


def _load(args: argparse.Namespace) -> Config:
    return load_config(env_file=args.env_file, pools_file=getattr(args, "pools", None),
                       config_file=getattr(args, "config", None), overrides=_seed_000_flags(args))


_SECRET_OPTION = ("key", "token", "secret", "password", "authorization")


def _redacted_options(value):
    """Link options for check-config: values under secret-looking keys hidden, at any depth."""
    if isinstance(value, dict):
        return {k: "***" if any(w in str(k).lower() for w in _SECRET_OPTION) and v else _redacted_options(v)
                for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_redacted_options(v) for v in value]
    return value


def cmd_run(args: argparse.Namespace, cfg: Config) -> int:
    from conserver.observability.logging import setup_logging
    from conserver.process.supervisor import Supervisor

    if args.scheduler_only:
        # 001's scheduler-only mode: no queue workers, just the leader-elected scheduler.
        cfg = cfg.replace(pools=tuple(dataclasses.replace(p, workers=0) for p in cfg.pools), enable_scheduler=True)
    setup_logging(cfg.log_level, cfg.log_format, cfg.log_file, role="master")
    for note in cfg.notes:  # what a config.yml has that a worker pool does not use
        log.info("%s", note)
    return Supervisor(cfg, reload=functools.partial(_load, args)).run()


def cmd_check_config(args: argparse.Namespace, cfg: Config) -> int:
    if args.json:
        doc = {"settings": cfg.redacted(), "workers": cfg.total_workers, "env_file": cfg.env_file,
               "chains": [_redacted_options(dataclasses.asdict(p)) for p in cfg.pools], "notes": list(cfg.notes)}
        print(json.dumps(doc, indent=2))
    else:
        print(describe(cfg), end="")
    return 0


def _queue(cfg: Config, list_name: str | None = None):
    from conserver.queue.admin import QueueAdmin
    from conserver.queue.client import make_redis

    # CONSERVER_INGRESS_LISTS too: `enqueue` writes to its first list by default
    lists = tuple(dict.fromkeys((*cfg.ingress_lists, *cfg.ingress_lists_used, *((list_name,) if list_name else ()))))
    return QueueAdmin(make_redis(cfg, client_name="conserver-cli"), lists)


def _read_vcons(paths: list[str]):
    """(uuid, json bytes) from files, folders of *.json/*.vcon, or - (stdin); JSON or JSON lines."""
    import orjson

    def docs(raw: bytes, where: str):
        try:
            yield orjson.loads(raw)
        except orjson.JSONDecodeError:
            for n, line in enumerate(raw.splitlines(), 1):
                if line.strip():
                    try:
                        yield orjson.loads(line)
                    except orjson.JSONDecodeError as exc:
                        raise SystemExit(f"conserver enqueue: {where}:{n}: not JSON ({exc})")

    for path in paths:
        if path == "-":
            sources = [("stdin", sys.stdin.buffer.read())]
        elif os.path.isdir(path):
            names = sorted(n for n in os.listdir(path) if n.endswith((".json", ".vcon", ".jsonl")))
            sources = [(os.path.join(path, n), open(os.path.join(path, n), "rb").read()) for n in names]
        else:
            sources = [(path, open(path, "rb").read())]
        for where, raw in sources:
            for doc in docs(raw, where):
                if not isinstance(doc, dict) or not isinstance(doc.get("uuid"), str):
                    raise SystemExit(f"conserver enqueue: {where}: a vCon needs a string uuid")
                yield doc["uuid"], orjson.dumps(doc)


def cmd_enqueue(args: argparse.Namespace, cfg: Config) -> int:
    import random as _random

    from conserver.dev.samples import sample_vcon

    list_name = args.list or cfg.ingress_lists[0]
    queue = _queue(cfg, list_name)
    if args.sample:
        rng = _random.Random(args.seed)
        items = ((v["uuid"], v) for v in (sample_vcon(rng) for _ in range(args.sample)))
    else:
        if not args.paths:
            print("conserver enqueue: give FILE, DIR or - (or --sample N)", file=sys.stderr)
            return ExitCode.CONFIG_ERROR
        items = _read_vcons(args.paths)
    # As vcon-server's API writes, when the server has RedisJSON; plain strings otherwise.
    from conserver.queue.admin import VconServerBodies

    redisjson = VconServerBodies(cfg.vcon_redis_expiry, cfg.vcon_sorted_set_name) if queue.has_redisjson() else None
    total, chunk = 0, []
    for item in items:
        chunk.append(item)
        if len(chunk) == 1000:
            total += queue.enqueue(list_name, chunk, redisjson=redisjson)
            chunk = []
    total += queue.enqueue(list_name, chunk, redisjson=redisjson) if chunk else 0
    how = (f"as RedisJSON (JSON.SET, EXPIRE {cfg.vcon_redis_expiry}s, ZADD {cfg.vcon_sorted_set_name}), as vcon-server's "
           "API writes them" if redisjson else "as strings (SET): this Redis has no RedisJSON module")
    print(f"enqueued {total} vCons on {list_name} {how}")
    return 0


def cmd_queues(args: argparse.Namespace, cfg: Config) -> int:
    d = _queue(cfg).depths()
    if args.json:
        print(json.dumps(d, indent=2))
        return 0
    print(f"{'list':<24} {'waiting':>10} {'dead letters':>13}")
    for name, n in d["lists"].items():
        print(f"{name:<24} {n:>10} {d['dlq'].get(name, 0):>13}")
    print(f"processing (claimed by workers): {d['processing']}   delayed retries: {d['delayed']}   workers: {d['workers']}")
    return 0


def cmd_dlq(args: argparse.Namespace, cfg: Config) -> int:
    queue = _queue(cfg, args.list)
    if args.action == "list":
        entries = queue.dlq_list(args.list, limit=args.limit)
        if args.json:
            print(json.dumps(entries, indent=2))
        for e in entries if not args.json else []:
            print(f"{e.get('uuid') or e.get('item_id')}  list={e.get('list')} reason={e.get('reason')} "
                  f"attempts={e.get('attempts', '')} at={e.get('time', '')}  {str(e.get('error', ''))[:120]}")
        return 0
    if args.action == "show":
        if not args.uuid:
            print("conserver dlq show: give a UUID", file=sys.stderr)
            return ExitCode.CONFIG_ERROR
        entry = queue.dlq_show(args.uuid, args.list)
        if entry is None:
            print(f"conserver dlq show: {args.uuid} is not a dead letter", file=sys.stderr)
            return ExitCode.FAILED
        print(json.dumps(entry, indent=2))
        return 0
    if args.action == "requeue":
        if not args.uuid and not args.all:
            print("conserver dlq requeue: give a UUID or --all", file=sys.stderr)
            return ExitCode.CONFIG_ERROR
        n = queue.dlq_requeue(args.uuid, all=args.all, list_name=args.list)
        print(f"requeued {n} dead letters")
        return ExitCode.OK if n or args.all else ExitCode.FAILED
    n = queue.dlq_purge(args.list)
    print(f"purged {n} dead letters")
    return 0


def cmd_migrate(args: argparse.Namespace, cfg: Config) -> int:
    """Create what is missing and bring what an earlier conserver wrote to vcon-server's layout,
    saying what changes (with --dry-run: what would)."""
    from conserver.storage import load_sinks

    for sink in load_sinks(cfg.stores_used, cfg):
        sink.open()
        try:
            changes = sink.migrate(apply=not args.dry_run)
        finally:
            sink.close()
        for change in changes:
            print(f"{sink.name}: {'to do' if args.dry_run else 'done'}: {change}")
        if not changes:
            print(f"{sink.name}: ready, nothing to change")
    return 0


def cmd_status(args: argparse.Namespace, cfg: Config) -> int:
    from conserver.observability.status import status_report

    report = status_report(_queue(cfg))
    if args.json:
        print(json.dumps(report, indent=2, default=str))
        return 0
    print(f"{'worker':<44} {'chain':<16} {'state':<8} {'processed':>10}  current")
    for wid, info in report["workers"].items():
        if info is None:
            print(f"{wid:<44} {'':<16} {'gone':<8}")
            continue
        chain = info.get("pool", "") + (f" ({info['links']})" if info.get("links") else "")
        print(f"{wid:<44} {chain:<16} {info.get('state', '?'):<8} {info.get('processed', 0):>10}  "
              f"{info.get('current', '')}")
    d = report["queues"]
    for name, n in d["lists"].items():
        print(f"list {name}: {n} waiting, {d['dlq'].get(name, 0)} dead letters")
    print(f"processing: {d['processing']}  delayed: {d['delayed']}")
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace, Config], int]] = {
    "run": cmd_run,
    "check-config": cmd_check_config,
    "enqueue": cmd_enqueue,
    "queues": cmd_queues,
    "dlq": cmd_dlq,
    "migrate": cmd_migrate,
    "status": cmd_status,
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="conserver", description=__doc__.splitlines()[0])
    parser.add_argument("--env-file", help="read settings from this file too (also CONSERVER_ENV_FILE)")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="start the supervisor and its workers")
    run.add_argument("--scheduler-only", action="store_true", help="run only the scheduler (delayed retries, orphan sweep)")
    run.add_argument("--pools", help="a TOML file of worker pools (also CONSERVER_POOLS_FILE)")
    run.add_argument("--config", help="a vcon-server config.yml: its chains (also CONSERVER_CONFIG_FILE)")
    run.add_argument("--tries", type=int, help="seed 000: attempts per vCon in all (MAX_RETRIES = tries - 1)")
    run.add_argument("--max-time", type=int, metavar="SECONDS", help="seed 000: replace a worker after this long "
                     "(CONSERVER_MAX_WORKER_AGE)")
    run.add_argument("--sleep", type=float, metavar="SECONDS", help="seed 000: the longest wait on empty lists "
                     "(TICK_INTERVAL)")
    check = sub.add_parser("check-config", help="print the effective configuration and chains, secrets redacted")
    check.add_argument("--json", action="store_true")
    check.add_argument("--pools", help="a TOML file of worker pools")
    check.add_argument("--config", help="a vcon-server config.yml")
    enq = sub.add_parser("enqueue", help="store vCons in Redis and push their uuids (one transaction)")
    enq.add_argument("paths", nargs="*", help="FILE, DIR or - for stdin (JSON or JSON lines)")
    enq.add_argument("--list", help="ingress list (default: the first of CONSERVER_INGRESS_LISTS)")
    enq.add_argument("--sample", type=int, metavar="N", help="generate N realistic sample vCons instead")
    enq.add_argument("--seed", type=int, help="random seed for --sample")
    q = sub.add_parser("queues", help="depth of each list, processing, delayed and dead letters")
    q.add_argument("--json", action="store_true")
    dlq = sub.add_parser("dlq", help="dead letters: list, show UUID, requeue [UUID|--all], purge")
    dlq.add_argument("action", choices=("list", "show", "requeue", "purge"))
    dlq.add_argument("uuid", nargs="?")
    dlq.add_argument("--all", action="store_true")
    dlq.add_argument("--list", help="only this ingress list")
    dlq.add_argument("--limit", type=int, default=100)
    dlq.add_argument("--json", action="store_true")
    mig = sub.add_parser("migrate", help="create the table, bucket and index templates when missing; bring an "
                         "earlier conserver's layout to vcon-server's, saying what changes")
    mig.add_argument("--dry-run", action="store_true", help="only say what would change")
    st = sub.add_parser("status", help="workers of every host, queue depths, dead letters (from Redis)")
    st.add_argument("--json", action="store_true")
    sub.add_parser("dev", help="run private Redis, PostgreSQL, S3 and OpenSearch servers (see --help)", add_help=False)
    sub.add_parser("demo", help="the local stack + conserver + sample vCons, and where they landed", add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] in (["dev"], ["demo"]):  # they parse their own options
        from conserver.dev import demo, devstack

        return (devstack.main_dev if argv[0] == "dev" else demo.main)(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        cfg = _load(args)
    except ConfigError as exc:
        print(f"conserver: {exc}", file=sys.stderr)
        return ExitCode.CONFIG_ERROR
    return COMMANDS[args.command](args, cfg)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
