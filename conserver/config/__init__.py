"""Configuration: read once, validated once, frozen.

Sources, read in this order: the real environment; ``.env`` in the working directory
(python-dotenv), which only fills in what the environment lacks; then the file named by
``--env-file`` or ``CONSERVER_ENV_FILE``, which overrides both: it is the operator's
explicit choice, and SIGHUP re-reads it, so editing it and reloading changes a setting
even when systemd's ``EnvironmentFile=`` put the old value in the environment.

Rooms:

- ``settings.py``: the ``SETTINGS`` table, every variable declared once (name, field,
  parser with its bounds, default, doc, aliases);
- ``parse.py``: the value parsers and :class:`ConfigError`;
- ``pools.py``: worker pools, which are chains (lists, links, stores, egress lists);
- ``chains.py``: a vcon-server config.yml read unchanged (CONSERVER_CONFIG_FILE);
- ``modes.py``: the seeds' variables mapped onto chains (WORKER_MODE, WORKER_SCALE_FACTOR, ...);
- this module: :class:`Config`, built from the table, the rules that span settings, and
  the two renderings of the table, ``conf/conserver.env.example`` (``python -m
  conserver.config`` writes it) and ``conserver check-config``.

A bad value raises :class:`ConfigError`, whose message is one line naming the variable,
the value given and what is allowed; the CLI prints it and exits with code 2.

This package depends on nothing else in the project but ``conserver.links`` (loader and
base, which import nothing of it): a chain's links are loaded once here to check them.
"""

from __future__ import annotations

import binascii
import dataclasses
import functools
import os
from typing import Any, Mapping

from conserver.config.chains import read_chains_file
from conserver.config.modes import apply_mode, check_concurrency, scale_workers
from conserver.config.parse import BUILTIN_STORES, ConfigError, redact_url
from conserver.config.pools import LinkConfig, PoolConfig, build_pools
from conserver.config.settings import SECTIONS, SETTINGS, Setting

__all__ = ["BUILTIN_STORES", "Config", "ConfigError", "LinkConfig", "PoolConfig", "SETTINGS", "Setting", "config_from_mapping",
           "describe", "env_example", "load_config", "read_sources", "redact_url"]

STORE_EXTRA_PREFIX = "CONSERVER_STORE_"  # every such variable reaches custom stores as Config.extra


def _resolve_workers(values: Mapping[str, Any]) -> int:
    if values["autoscale"]:  # start at the low end; the monitor adds workers when the backlog asks
        return values["autoscale"][0]
    if values["workers_setting"] == "auto":
        return auto_worker_count(values["worker_memory_mb"])
    return int(values["workers_setting"])


def auto_worker_count(memory_mb_per_worker: int) -> int:
    """``auto``: as many workers as CPUs, but no more than available memory allows (seed 004)."""
    import psutil  # only the main process calls this, and psutil holds no threads or sockets

    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    by_memory = psutil.virtual_memory().available // (memory_mb_per_worker * 1024 * 1024)
    return max(1, min(cpus, int(by_memory), 256))


# Every setting's default, parsed once: Config's field defaults and what an unset variable reads as.
DEFAULTS: dict[str, Any] = {s.field: s.parser.parse(s.env, s.default) for s in SETTINGS}


class _ConfigAPI:
    """The validated, frozen configuration: one field per ``SETTINGS`` entry (its ``field``)
    and five derived from them: ``workers`` (CONSERVER_WORKERS resolved), ``pools`` (the
    chains), ``env_file`` (the file read), ``notes`` (INFO lines for the log: what a
    config.yml has that is ignored) and ``extra`` (every CONSERVER_STORE_* variable, for
    custom stores)."""

    def replace(self, **changes: Any) -> "Config":
        return dataclasses.replace(self, **changes)

    @property
    def total_workers(self) -> int:
        return sum(p.workers for p in self.pools)

    @functools.cached_property
    def ingress_lists_used(self) -> tuple[str, ...]:
        """Every list some pool reads, in pool order; CONSERVER_INGRESS_LISTS without pools."""
        return tuple(dict.fromkeys(name for p in self.pools for name in p.ingress_lists)) or self.ingress_lists

    @functools.cached_property
    def stores_used(self) -> tuple[str, ...]:
        """Every store some pool writes, in pool order; CONSERVER_STORAGES without pools."""
        return tuple(dict.fromkeys(name for p in self.pools for name in p.storages)) or self.storages

    @property
    def vcon_rate(self) -> float:
        """RATE_LIMIT_MAX vCons per RATE_LIMIT_DURATION, per second (0.0: no limit). The
        burst that goes with it is RATE_LIMIT_MAX: a whole duration's worth at once."""
        return self.rate_limit_max / self.rate_limit_duration

    def redacted(self) -> dict[str, str]:
        """Each setting as an env file would write it, secrets hidden: ``{variable: text}``."""
        out = {}
        for s in SETTINGS:
            text = s.parser.format(getattr(self, s.field))
            out[s.env] = "***" if s.secret and text else redact_url(text) if "://" in text else text
        return out


Config = dataclasses.make_dataclass(
    "Config",
    [(s.field, Any if DEFAULTS[s.field] is None else type(DEFAULTS[s.field]),
      dataclasses.field(default=DEFAULTS[s.field])) for s in SETTINGS]
    + [("workers", int, dataclasses.field(default=_resolve_workers(DEFAULTS))),
       ("pools", tuple, dataclasses.field(default=())),
       ("env_file", str, dataclasses.field(default="")),
       ("notes", tuple, dataclasses.field(default=(), compare=False)),
       ("extra", Mapping, dataclasses.field(default_factory=dict, repr=False, compare=False))],
    bases=(_ConfigAPI,), frozen=True)
Config.__module__, Config.__doc__ = __name__, _ConfigAPI.__doc__  # pickled by name into spawned workers


# ----------------------------------------------------------------------------------------
# reading the sources
# ----------------------------------------------------------------------------------------


def read_sources(environ: Mapping[str, str] | None = None, env_file: str | None = None,
                 dotenv_path: str | None = ".env") -> tuple[dict[str, str], str]:
    """Merge .env < the real environment < --env-file. Returns (settings, env_file used)."""
    from dotenv import dotenv_values

    environ = dict(os.environ if environ is None else environ)
    merged: dict[str, str] = {}
    if dotenv_path and os.path.isfile(dotenv_path):
        merged.update({k: v for k, v in dotenv_values(dotenv_path).items() if v is not None})
    merged.update(environ)
    env_file = env_file or environ.get("CONSERVER_ENV_FILE") or ""
    if env_file:
        if not os.path.isfile(env_file):
            raise ConfigError("CONSERVER_ENV_FILE", env_file, "a path to a readable file")
        merged.update({k: v for k, v in dotenv_values(env_file).items() if v is not None})
    return merged, env_file


def load_config(environ: Mapping[str, str] | None = None, env_file: str | None = None,
                dotenv_path: str | None = ".env", pools_file: str | None = None,
                config_file: str | None = None, overrides: Mapping[str, str] | None = None) -> Config:
    """Read every source and return the validated, frozen configuration. ``overrides``:
    variables set on the command line (``conserver run --tries 3``), over every source."""
    settings, used = read_sources(environ, env_file, dotenv_path)
    settings.update(overrides or {})
    return config_from_mapping(settings, env_file=used, pools_file=pools_file, config_file=config_file)


def _read(setting: Setting, env: Mapping[str, str]) -> Any:
    """The first of the setting's names with a non-blank value, parsed; else the default."""
    for var in setting.names:
        raw = env.get(var)
        if raw is not None and raw.strip():
            return setting.parser.parse(var, raw)
    return DEFAULTS[setting.field]


def _link_policy_defaults(env: Mapping[str, str]) -> dict[str, Any]:
    """Seed 004's CIRCUIT_BREAKER_* set in the environment: every link's breaker too, under
    each link's own ``conserver:`` options (unset, links keep their own defaults)."""
    out: dict[str, Any] = {}
    by_field = {s.field: s for s in SETTINGS}
    for var, field, policy in (("CIRCUIT_BREAKER_THRESHOLD", "circuit_breaker_threshold", "circuit_breaker_failures"),
                               ("CIRCUIT_BREAKER_TIMEOUT", "circuit_breaker_timeout", "circuit_breaker_reset")):
        if (env.get(var) or "").strip():
            out[policy] = _read(by_field[field], env)
    return out


def config_from_mapping(env: Mapping[str, str], env_file: str = "", pools_file: str | None = None,
                        config_file: str | None = None) -> Config:
    """Validate a flat mapping of variables. Pure: the tests drive it directly."""
    check_concurrency(env)
    config_file = config_file or (env.get("CONSERVER_CONFIG_FILE") or "").strip()
    chains_file = read_chains_file(config_file) if config_file else None
    if chains_file is not None:  # config.yml's store options, under what the environment sets
        env = {**chains_file.settings, **{k: v for k, v in env.items() if v is not None and v.strip()},
               "CONSERVER_CONFIG_FILE": config_file}
    values = {s.field: _read(s, env) for s in SETTINGS}
    if pools_file:  # `--pools` on the command line
        values["pools_file"] = pools_file
    if values["redis_sentinels"] and not values["redis_sentinel_master"]:
        raise ConfigError("REDIS_SENTINEL_MASTER", "", "the master's name when REDIS_SENTINELS is set")
    _resolve_elasticsearch(values)
    workers = _resolve_workers(values)
    policy_defaults = _link_policy_defaults(env)
    if chains_file is not None:
        if values["pools_file"] or values["pools_inline"]:
            raise ConfigError("CONSERVER_CONFIG_FILE", config_file, (
                "either a config.yml or CONSERVER_POOLS_FILE / CONSERVER_POOLS: both describe the chains"))
        pools = chains_file.pools(workers, policy_defaults)
    else:
        pools = build_pools(pools_file=values["pools_file"], pools=values["pools_inline"], workers=workers,
                            ingress_lists=values["ingress_lists"], storages=values["storages"],
                            queue_weights=values["queue_weights"], policy_defaults=policy_defaults)
    declared = chains_file is not None or bool(values["pools_file"] or values["pools_inline"])
    pools = apply_mode(values["worker_mode"], pools, declared=declared, env=env, priorities=values["worker_priorities"],
                       job_types=values["worker_job_types"], ingress_lists=values["ingress_lists"],
                       storages=values["storages"], workers=workers)
    pools = scale_workers(pools, values["worker_scale_factor"])
    if values["worker_mode"] == "scheduler-only":
        values["enable_scheduler"] = True
    cfg = Config(**values, workers=workers, pools=pools, env_file=env_file,
                 notes=chains_file.notes if chains_file is not None else (),
                 extra={k: v for k, v in env.items() if k.startswith(STORE_EXTRA_PREFIX)})
    for s in SETTINGS:  # a store in use must have what it needs to connect
        if s.needed_by and s.needed_by in cfg.stores_used and not getattr(cfg, s.field):
            raise ConfigError(s.env, "", f"a value when CONSERVER_STORAGES includes {s.needed_by}")
    return cfg


def _resolve_elasticsearch(values: dict[str, Any]) -> None:
    """One layout at least; the URL from an Elastic Cloud id; a CA bundle that exists."""
    if not (values["elasticsearch_part_indices"] or values["elasticsearch_vcon_index"]):
        raise ConfigError("ELASTICSEARCH_PART_INDICES", "false", "true, or ELASTICSEARCH_VCON_INDEX=true (one layout at least)")
    cloud_id = values["elasticsearch_cloud_id"] = values["elasticsearch_cloud_id"].strip()
    if cloud_id:  # name:base64(host[:port]$es_uuid$kibana_uuid), decoded as elastic_transport's parse_cloud_id
        try:
            host, es_uuid = binascii.a2b_base64(cloud_id.partition(":")[2].encode()).decode().split("$")[:2]
            host, _, port = host.rpartition(":") if ":" in host else (host, "", "443")
            port = str(int(port))
        except (ValueError, UnicodeError, binascii.Error):
            raise ConfigError("ELASTICSEARCH_CLOUD_ID", cloud_id, "an Elastic Cloud id, name:base64") from None
        if not host or not es_uuid or values["elasticsearch_url"]:
            raise ConfigError("ELASTICSEARCH_CLOUD_ID", cloud_id, "an Elastic Cloud id naming a host and an "
                              "Elasticsearch uuid, and no ELASTICSEARCH_URL with it")
        values["elasticsearch_url"] = f"https://{es_uuid}.{host}:{port}"
    ca_certs = values["elasticsearch_ca_certs"]
    if ca_certs and not os.path.isfile(ca_certs):
        raise ConfigError("ELASTICSEARCH_CA_CERTS", ca_certs, "the path of a readable PEM file")


# ----------------------------------------------------------------------------------------
# the table, written out
# ----------------------------------------------------------------------------------------

_EXAMPLE_HEADER = """\
# conserver settings, with their defaults. Copy to /etc/conserver/conserver.env (systemd),
# .env (docker compose, `conserver run` in this folder) or pass --env-file / CONSERVER_ENV_FILE.
# Precedence: --env-file / CONSERVER_ENV_FILE > the real environment > .env (re-read on
# SIGHUP, so edit the file and reload). Durations take ms, s, m or h
# (a bare number is in the unit named beside it). `conserver check-config` prints the result.
# Generated from conserver/config/settings.py by `python -m conserver.config`: edit the table.
"""


def _render(values: Mapping[str, str], *, docs: bool) -> list[str]:
    lines = []
    for title, group in SECTIONS:
        lines += ["", f"# {'-' * 64} {title}"]
        for s in group:
            if docs:
                lines += [f"# {line}" for line in s.doc.splitlines()]
                if s.aliases:
                    lines.append(f"# Also read from {' or '.join(s.aliases)} when {s.env} is unset.")
                if s.parser.allowed:
                    lines.append(f"# allowed: {s.parser.allowed}")
            lines.append(f"{s.env}={values[s.env]}")
    return lines


def env_example() -> str:
    """The text of ``conf/conserver.env.example``: every setting, its doc and its default."""
    return _EXAMPLE_HEADER + "\n".join(_render({s.env: s.default for s in SETTINGS}, docs=True)) + "\n"


def describe(cfg: Config) -> str:
    """``conserver check-config``: the effective settings as an env file (secrets hidden),
    then what they resolve to. Reading it back gives the same configuration."""
    source = f"{cfg.env_file} and the environment" if cfg.env_file else "the environment"
    lines = [f"# conserver: the effective settings from {source}, secrets hidden", *_render(cfg.redacted(), docs=False),
             "", f"# {'-' * 64} resolved", f"# workers: {cfg.total_workers}"]
    for p in cfg.pools:
        lines.append(f"# chain {p.name}: workers {p.workers}, lists {','.join(p.ingress_lists)}, "
                     f"links {','.join(f'{k.name}({k.module})' for k in p.links) or 'none'}, "
                     f"stores {','.join(p.storages) or 'none'}, egress {','.join(p.egress_lists) or 'none'}"
                     + (f", weights {','.join(f'{n}:{w}' for n, w in p.weights)}" if p.weights else ""))
    lines += [f"# {note}" for note in cfg.notes]
    return "\n".join(lines) + "\n"
