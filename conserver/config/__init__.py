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
- ``pools.py``: worker pools (which lists, which stores), the room for vcon-server chains;
- this module: :class:`Config`, built from the table, the rules that span settings, and
  the two renderings of the table, ``conf/conserver.env.example`` (``python -m
  conserver.config`` writes it) and ``conserver check-config``.

A bad value raises :class:`ConfigError`, whose message is one line naming the variable,
the value given and what is allowed; the CLI prints it and exits with code 2.

This package depends on nothing else in the project.
"""

from __future__ import annotations

import binascii
import dataclasses
import functools
import os
from typing import Any, Mapping

from conserver.config.parse import BUILTIN_STORES, ConfigError, redact_url
from conserver.config.pools import PoolConfig, build_pools
from conserver.config.settings import SECTIONS, SETTINGS, Setting

__all__ = ["BUILTIN_STORES", "Config", "ConfigError", "PoolConfig", "SETTINGS", "Setting", "config_from_mapping",
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
    and four derived from them: ``workers`` (CONSERVER_WORKERS resolved), ``pools``,
    ``env_file`` (the file read) and ``extra`` (every CONSERVER_STORE_* variable, for
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
                dotenv_path: str | None = ".env", pools_file: str | None = None) -> Config:
    """Read every source and return the validated, frozen configuration."""
    settings, used = read_sources(environ, env_file, dotenv_path)
    return config_from_mapping(settings, env_file=used, pools_file=pools_file)


def _read(setting: Setting, env: Mapping[str, str]) -> Any:
    """The first of the setting's names with a non-blank value, parsed; else the default."""
    for var in setting.names:
        raw = env.get(var)
        if raw is not None and raw.strip():
            return setting.parser.parse(var, raw)
    return DEFAULTS[setting.field]


def config_from_mapping(env: Mapping[str, str], env_file: str = "", pools_file: str | None = None) -> Config:
    """Validate a flat mapping of variables. Pure: the tests drive it directly."""
    values = {s.field: _read(s, env) for s in SETTINGS}
    if pools_file:  # `--pools` on the command line
        values["pools_file"] = pools_file
    if values["redis_sentinels"] and not values["redis_sentinel_master"]:
        raise ConfigError("REDIS_SENTINEL_MASTER", "", "the master's name when REDIS_SENTINELS is set")
    _resolve_elasticsearch(values)
    workers = _resolve_workers(values)
    pools = build_pools(pools_file=values["pools_file"], pools=values["pools_inline"], workers=workers,
                        ingress_lists=values["ingress_lists"], storages=values["storages"],
                        queue_weights=values["queue_weights"])
    cfg = Config(**values, workers=workers, pools=pools, env_file=env_file,
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
        lines.append(f"# pool {p.name}: workers {p.workers}, lists {','.join(p.ingress_lists)}, "
                     f"stores {','.join(p.storages) or 'none'}"
                     + (f", weights {','.join(f'{n}:{w}' for n, w in p.weights)}" if p.weights else ""))
    return "\n".join(lines) + "\n"
