"""A vcon-server ``config.yml``, read unchanged: its chains become conserver's pools.

::

    links:     NAME: {module, options, pip_name}     -> LinkConfig (checked: exit 2 if not runnable)
    storages:  NAME: {module: storage.postgres|s3|elasticsearch|..., options}
                                                      -> store settings (POSTGRES_DSN, S3_BUCKET, ...)
    chains:    NAME: {links, ingress_lists, storages, egress_lists, enabled}
                                                      -> PoolConfig, one per enabled chain
    ingress_auth, tracers, imports                    -> accepted, one INFO line: not a worker's business

Only what an enabled chain uses must be runnable: a link or storage module conserver cannot
run, named by such a chain, is a :class:`ConfigError` (exit 2) naming it and the chain;
declarations no enabled chain uses are only noted.

vcon-server configures stores in config.yml, conserver in settings (one store of each kind
per deployment). A storage's options become the settings of its kind, under the
environment: a variable that is set wins (a secret injected by the deployment), config.yml
fills in the rest. Two storages of one kind with different options cannot both be run.

Where vcon-server guesses, conserver says no: an ingress list read by two enabled chains
(vcon-server gives it silently to the last one) is a ConfigError. A chain may say how many
workers it gets (``workers``, conserver's own key, which vcon-server ignores); the default
is CONSERVER_WORKERS per chain, because a chain here is a pool of its own.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from conserver.config.parse import BUILTIN_STORES, MAX_WORKERS, ConfigError, Int, ListNames, Stores, config_problem
from conserver.config.pools import PoolConfig, link_configs

__all__ = ["IGNORED_SECTIONS", "ChainsFile", "read_chains_file"]

IGNORED_SECTIONS = {
    "ingress_auth": "API keys are the API's business, not a worker's",
    "tracers": "conserver has no tracers; /metrics and the logs say what happened",
    "imports": "conserver never installs or pre-imports modules; links are imported by name",
}
_CHAIN_KEYS = {"links", "ingress_lists", "storages", "egress_lists", "enabled", "workers", "tracers", "timeout"}
_CHAIN_NAME = re.compile(r"^[A-Za-z0-9_-]{1,60}$")
_LISTS, _WORKERS = ListNames(), Int(1, MAX_WORKERS)

# vcon-server's option name -> conserver's setting, per store kind (postgres is built apart).
_S3_OPTIONS = {"aws_access_key_id": "AWS_ACCESS_KEY_ID", "aws_secret_access_key": "AWS_SECRET_ACCESS_KEY",
               "aws_bucket": "S3_BUCKET", "aws_region": "AWS_REGION", "endpoint_url": "S3_ENDPOINT_URL",
               "s3_path": "S3_PREFIX"}
_ES_OPTIONS = {"url": "ELASTICSEARCH_URL", "username": "ELASTICSEARCH_USER", "password": "ELASTICSEARCH_PASSWORD",
               "api_key": "ELASTICSEARCH_API_KEY", "index_prefix": "ELASTICSEARCH_INDEX_PREFIX"}
_PG_OPTIONS = ("user", "password", "host", "port", "database")
_NOT_SUPPORTED = {
    "ca_certs": "conserver verifies TLS with the system's CA store; add the CA there",
    "cloud_id": "give the cluster's url instead",
}


@dataclass(frozen=True)
class ChainsFile:
    """What a config.yml gives the configuration."""

    path: str
    settings: dict[str, str]  # store settings from the storages' options, as env text
    doc: dict[str, Any]
    notes: tuple[str, ...]  # INFO lines: what is ignored and why

    def pools(self, workers: int, policy_defaults: Mapping[str, Any]) -> tuple[PoolConfig, ...]:
        """One pool per enabled chain with at least one ingress list."""
        return _pools(self, workers, policy_defaults)


def _load_yaml(path: str) -> dict[str, Any]:
    import yaml

    try:
        with open(path, encoding="utf-8") as fh:
            doc = yaml.safe_load(fh)
    except OSError as exc:
        raise ConfigError("CONSERVER_CONFIG_FILE", path, f"a readable config.yml ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        raise ConfigError("CONSERVER_CONFIG_FILE", path, f"a YAML file ({' '.join(str(exc).split())})") from None
    if doc is None:
        doc = {}
    if not isinstance(doc, dict):
        raise ConfigError("CONSERVER_CONFIG_FILE", path, "a YAML mapping with links, storages and chains")
    for section in ("links", "storages", "chains"):
        if doc.get(section) is not None and not isinstance(doc[section], dict):
            raise config_problem(f"{path} {section}", type(doc[section]).__name__, "a mapping of names")
    return doc


def _enabled(path: str, name: str, chain: Mapping[str, Any]) -> bool:
    value = chain.get("enabled", 1)
    if value in (1, True, "1", "true", "yes"):
        return True
    if value in (0, False, "0", "false", "no"):
        return False
    raise config_problem(f"{path} chains.{name}.enabled", value, "1 or 0")


def _names(where: str, value: Any) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise config_problem(where, value, "a list of names")
    return value


def _active_chains(path: str, doc: dict[str, Any]) -> dict[str, Mapping[str, Any]]:
    chains = doc.get("chains") or {}
    out = {}
    for name, chain in chains.items():
        if not isinstance(chain, Mapping):
            raise config_problem(f"{path} chains.{name}", type(chain).__name__, "a mapping")
        if _enabled(path, name, chain):
            out[str(name)] = chain
    return out


def _store_kind(path: str, chain: str, name: str, decl: Any) -> str:
    """A storage declaration -> conserver's store name, or a ConfigError naming it and the chain."""
    where = f"{path} storages.{name} (used by chain {chain})"
    if not isinstance(decl, Mapping) or not isinstance(decl.get("module"), str):
        raise config_problem(where, decl, "a mapping with a module")
    module = decl["module"]
    kind = module.removeprefix("storage.") if module.startswith("storage.") else module
    if kind in BUILTIN_STORES or (":" in kind and Stores.is_store(kind)):
        return kind
    runnable = ", ".join(f"storage.{k}" for k in BUILTIN_STORES)
    raise config_problem(where, module, f"not a storage conserver can run (it runs {runnable}, "
                         "or package.module:Class naming a conserver Sink)")


def _store_settings(where: str, kind: str, options: Mapping[str, Any]) -> dict[str, str]:
    options = {k: v for k, v in options.items() if v is not None}
    for key in options:
        if key in _NOT_SUPPORTED:
            raise config_problem(f"{where} options.{key}", options[key], f"not supported: {_NOT_SUPPORTED[key]}")
    if kind == "postgres":
        known = _PG_OPTIONS
    else:
        known = tuple({"s3": _S3_OPTIONS, "elasticsearch": _ES_OPTIONS}.get(kind, {}))
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise config_problem(f"{where} options", ",".join(unknown), f"options of {kind}: {', '.join(known) or 'none'}")
    if not options:
        return {}  # the store is configured by the environment alone
    if kind == "postgres":
        user = quote(str(options.get("user", "")), safe="")
        password = quote(str(options.get("password", "")), safe="")
        auth = f"{user}:{password}@" if password else f"{user}@" if user else ""
        dsn = (f"postgresql://{auth}{options.get('host', 'localhost')}:{options.get('port', 5432)}/"
               f"{quote(str(options.get('database', 'postgres')), safe='')}")
        return {"POSTGRES_DSN": dsn}
    table = _S3_OPTIONS if kind == "s3" else _ES_OPTIONS
    out = {table[k]: str(v) for k, v in options.items()}
    if out.get("S3_PREFIX"):  # vcon-server: s3_path.rstrip('/') + '/' before the date path
        out["S3_PREFIX"] = out["S3_PREFIX"].rstrip("/") + "/"
    if kind == "elasticsearch":
        out["ELASTICSEARCH_PART_INDICES"] = "true"  # vcon-server's per-part indices
    return out


def read_chains_file(path: str) -> ChainsFile:
    """Read and check a config.yml: the sections, the storages enabled chains use (and the
    settings they give). Links are checked when the pools are built (:meth:`ChainsFile.pools`)."""
    doc = _load_yaml(path)
    notes = []
    ignored = [s for s in IGNORED_SECTIONS if doc.get(s)]
    if ignored:
        notes.append(f"{path}: ignoring " + "; ".join(f"{s} ({IGNORED_SECTIONS[s]})" for s in ignored))
    unknown = sorted(set(doc) - {"links", "storages", "chains", *IGNORED_SECTIONS})
    if unknown:
        notes.append(f"{path}: ignoring unknown sections {', '.join(unknown)}")
    declared = doc.get("storages") or {}
    settings: dict[str, str] = {}
    owner: dict[str, str] = {}  # setting -> the storage that gave it
    used_stores, used_links = set(), set()
    for chain_name, chain in _active_chains(path, doc).items():
        used_links.update(_names(f"{path} chains.{chain_name}.links", chain.get("links")))
        for name in _names(f"{path} chains.{chain_name}.storages", chain.get("storages")):
            if name not in declared:
                raise config_problem(f"{path} chains.{chain_name}.storages", name, "names of storages declared under storages:")
            kind = _store_kind(path, chain_name, name, declared[name])
            used_stores.add(name)
            where = f"{path} storages.{name}"
            options = declared[name].get("options") or {}
            if not isinstance(options, Mapping):
                raise config_problem(f"{where} options", options, "a mapping")
            for var, value in _store_settings(where, kind, options).items():
                if var in settings and settings[var] != value and owner[var] != name:
                    raise config_problem(where, name, f"one store of each kind: storages.{owner[var]} configures {kind} "
                                 "differently, and conserver runs one of each")
                settings[var], owner[var] = value, name
    unused = sorted(set(declared) - used_stores) + sorted(set(doc.get("links") or {}) - used_links)
    if unused:
        notes.append(f"{path}: not used by an enabled chain, not loaded: {', '.join(unused)}")
    return ChainsFile(path, settings, doc, tuple(notes))


def _pools(cf: ChainsFile, workers: int, policy_defaults: Mapping[str, Any]) -> tuple[PoolConfig, ...]:
    path, doc = cf.path, cf.doc
    declared_stores = doc.get("storages") or {}
    readers: dict[str, str] = {}  # ingress list -> the chain reading it
    pools = []
    for name, chain in _active_chains(path, doc).items():
        where = f"{path} chains.{name}"
        if not _CHAIN_NAME.match(name):
            raise config_problem(where, name, "a chain name of letters, digits, _ and - (at most 60)")
        extra = sorted(set(chain) - _CHAIN_KEYS)
        if extra:
            raise config_problem(where, ",".join(extra), f"chain keys: {', '.join(sorted(_CHAIN_KEYS))}")
        lists = _names(f"{where}.ingress_lists", chain.get("ingress_lists"))
        if not lists:
            raise config_problem(f"{where}.ingress_lists", lists, "at least one ingress list (or enabled: 0)")
        ingress = _LISTS.parse(f"{where}.ingress_lists", ",".join(lists))
        for lst in ingress:
            if lst in readers:
                raise config_problem(f"{where}.ingress_lists", lst, (
                    f"a list only one enabled chain reads; chain {readers[lst]} reads it too "
                    "(vcon-server would give it to the last chain alone, silently)"))
            readers[lst] = name
        egress_names = _names(f"{where}.egress_lists", chain.get("egress_lists"))
        egress = _LISTS.parse(f"{where}.egress_lists", ",".join(egress_names)) if egress_names else ()
        stores = tuple(_store_kind(path, name, s, declared_stores[s])
                       for s in _names(f"{where}.storages", chain.get("storages")))
        if len(set(stores)) != len(stores):
            raise config_problem(f"{where}.storages", ",".join(stores), "each kind of store once")
        n = _WORKERS.parse(f"{where}.workers", str(chain["workers"])) if "workers" in chain else workers
        links = link_configs(where, chain.get("links"), doc.get("links") or {}, policy_defaults)
        pools.append(PoolConfig(name, n, ingress, stores, (), links, egress))
    if not pools:
        raise ConfigError("CONSERVER_CONFIG_FILE", path, "a config.yml with at least one enabled chain")
    return tuple(pools)
