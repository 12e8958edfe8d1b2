"""The ``conserver`` command.

``run`` starts the supervisor; the other commands are operator tools that talk to Redis
or the stores directly and never start workers.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import sys
from typing import Any, Callable

from conserver.config import Config, ConfigError, load_config

log = logging.getLogger("conserver.cli")


def _load(args: argparse.Namespace) -> Config:
    return load_config(env_file=args.env_file, pools_file=getattr(args, "pools", None))


def cmd_run(args: argparse.Namespace, cfg: Config) -> int:
    from conserver.observability import setup_logging
    from conserver.supervisor import Supervisor

    if args.scheduler_only:
        # 001's scheduler-only mode: no queue workers, just the leader-elected scheduler.
        cfg = cfg.replace(pools=tuple(p.__class__(p.name, 0, p.ingress_lists, p.storages, p.weights)
                                      for p in cfg.pools), enable_scheduler=True)
    setup_logging(cfg.log_level, cfg.log_format, cfg.log_file, role="master")
    return Supervisor(cfg, reload=functools.partial(_load, args)).run()


def cmd_check_config(args: argparse.Namespace, cfg: Config) -> int:
    doc = cfg.redacted()
    if args.json:
        print(json.dumps(doc, indent=2, default=str))
    else:
        for key, value in doc.items():
            print(f"{key} = {value}")
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace, Config], int]] = {
    "run": cmd_run,
    "check-config": cmd_check_config,
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="conserver", description=__doc__.splitlines()[0])
    parser.add_argument("--env-file", help="read settings from this file too (also CONSERVER_ENV_FILE)")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="start the supervisor and its workers")
    run.add_argument("--scheduler-only", action="store_true", help="run only the scheduler (delayed retries, orphan sweep)")
    run.add_argument("--pools", help="a TOML file of worker pools (also CONSERVER_POOLS_FILE)")
    check = sub.add_parser("check-config", help="print the effective configuration, secrets redacted")
    check.add_argument("--json", action="store_true")
    check.add_argument("--pools", help="a TOML file of worker pools")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "dev":
        return COMMANDS["dev"](args, None)  # type: ignore[arg-type]
    try:
        cfg = _load(args)
    except ConfigError as exc:
        print(f"conserver: {exc}", file=sys.stderr)
        return 2
    return COMMANDS[args.command](args, cfg)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
