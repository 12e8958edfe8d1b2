"""Worker pools, which are chains: which lists a group of workers reads, which links each vCon
runs through, which stores it goes to, and which lists its uuid goes on afterwards.

A pool is what vcon-server calls a chain (one model, not two): ingress lists in priority
order -> links in order -> storages -> egress lists. Chains come from the first source set:
a vcon-server config.yml (``CONSERVER_CONFIG_FILE``, ``chains.py``), ``CONSERVER_POOLS_FILE``
(TOML: ``[pools.NAME]`` tables, which may name ``links`` declared in ``[links.NAME]`` tables
and ``egress_lists``), ``CONSERVER_POOLS`` (inline), else one chain ``default`` of
CONSERVER_WORKERS workers on CONSERVER_INGRESS_LISTS with CONSERVER_STORAGES and
CONSERVER_QUEUE_WEIGHTS. Seed 001's WORKER_MODE then reshapes them (``modes.py``).
A pool's name is its chain's name: process titles, metrics and ``conserver status`` show it.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from conserver.config.parse import MAX_WORKERS, ConfigError, Int, ListNames, Stores, config_problem

_POOL_NAME = re.compile(r"^[A-Za-z0-9_-]{1,60}$")
_WORKERS, _LISTS, _STORES = Int(1, MAX_WORKERS), ListNames(), Stores()


@dataclass(frozen=True)
class PoolConfig:
    """A group of identical workers: how many, which lists (priority order) and which stores."""

    name: str
    workers: int
    ingress_lists: tuple[str, ...]
    storages: tuple[str, ...]
    # list -> weight; empty means strict priority (always the first non-empty list).
    weights: tuple[tuple[str, int], ...] = ()
    # The chain: links run in order before the stores, and each stored vCon's uuid goes on
    # every egress list in the same atomic step as its ack (after every store committed it).
    links: tuple["LinkConfig", ...] = ()
    egress_lists: tuple[str, ...] = ()


@dataclass(frozen=True)
class LinkConfig:
    """One link of a chain as declared (config.yml ``links.NAME``, TOML ``[links.NAME]``).
    Plain data, so a spawned worker gets it pickled and loads the module itself
    (``conserver.links.configure_link``); the main process loaded it once already to check it."""

    name: str
    module: str
    options: Mapping[str, Any] = field(default_factory=dict)  # as written, ``conserver:`` policy included
    pip_name: str = ""
    policy_defaults: Mapping[str, Any] = field(default_factory=dict)  # deployment-wide (environment)


def link_configs(where: str, names: Any, declared: Mapping[str, Any],
                 policy_defaults: Mapping[str, Any]) -> tuple[LinkConfig, ...]:
    """A chain's ``links`` (names of declared links) -> LinkConfigs, each loaded once to check
    that conserver can run it: a ConfigError naming the link, its module and the chain if not."""
    from conserver.links.base import LinkLoadError  # conserver.links imports nothing of config
    from conserver.links.loader import configure_link

    if names is None:
        return ()
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ConfigError(f"{where}.links", names, "a list of link names")
    out = []
    for name in names:
        decl = declared.get(name)
        if not isinstance(decl, Mapping) or not isinstance(decl.get("module"), str):
            raise ConfigError(f"{where}.links", name, "names of links declared with a module under links:")
        options = decl.get("options") or {}
        link = LinkConfig(name, decl["module"], dict(options) if isinstance(options, Mapping) else options,
                          str(decl.get("pip_name") or ""), dict(policy_defaults))
        try:
            configure_link(name, link.module, link.options, pip_name=link.pip_name or None,
                           policy_defaults=link.policy_defaults)
        except LinkLoadError as exc:
            raise config_problem(f"{where} link {name!r}", link.module, f"not a link conserver can run: {exc}") from None
        out.append(link)
    return tuple(out)


def parse_weights(var: str, raw: str, lists: tuple[str, ...]) -> tuple[tuple[str, int], ...]:
    """``high:6,normal:3,low:1`` -> (("high", 6), ...); every list needs a positive weight."""
    allowed = "list:weight pairs with weights 1..1000 for every ingress list, e.g. high:6,normal:3,low:1"
    pairs: dict[str, int] = {}
    for item in (i.strip() for i in raw.split(",") if i.strip()):
        name, sep, weight = item.rpartition(":")
        if not sep or not weight.isdigit() or not 1 <= int(weight) <= 1000:
            raise ConfigError(var, raw, allowed)
        pairs[name] = int(weight)
    if set(pairs) != set(lists):
        raise ConfigError(var, raw, allowed)
    return tuple((name, pairs[name]) for name in lists)


def build_pools(*, pools_file: str, pools: str, workers: int, ingress_lists: tuple[str, ...],
                storages: tuple[str, ...], queue_weights: str,
                policy_defaults: Mapping[str, Any] | None = None) -> tuple[PoolConfig, ...]:
    """The pools of a configuration, from the first of its three sources that is set."""
    if pools_file:
        return pools_from_toml(pools_file, ingress_lists, storages, policy_defaults)
    if pools:
        return parse_pools("CONSERVER_POOLS", pools, storages)
    weights = parse_weights("CONSERVER_QUEUE_WEIGHTS", queue_weights, ingress_lists) if queue_weights else ()
    return (PoolConfig("default", workers, ingress_lists, storages, weights),)


def parse_pools(var: str, raw: str, storages: tuple[str, ...]) -> tuple[PoolConfig, ...]:
    """``high=3:high; bulk=2:normal,low:s3,postgres`` -> pools (name=workers:lists[:stores])."""
    allowed = "name=workers:list,list[:store,store] pools separated by ';', e.g. high=3:high;rest=1:normal,low"
    pools = []
    for part in (p.strip() for p in raw.split(";") if p.strip()):
        name, eq, rest = part.partition("=")
        fields = rest.split(":")
        if not eq or not _POOL_NAME.match(name.strip()) or len(fields) not in (2, 3):
            raise ConfigError(var, raw, allowed)
        workers = _WORKERS.parse(f"{var}[{name}] workers", fields[0])
        lists = _LISTS.parse(f"{var}[{name}] lists", fields[1])
        stores = _STORES.parse(f"{var}[{name}] stores", fields[2]) if len(fields) == 3 else storages
        pools.append(PoolConfig(name.strip(), workers, lists, stores))
    if not pools or len({p.name for p in pools}) != len(pools):
        raise ConfigError(var, raw, allowed)
    return tuple(pools)


def pools_from_toml(path: str, ingress_lists: tuple[str, ...], storages: tuple[str, ...],
                    policy_defaults: Mapping[str, Any] | None = None) -> tuple[PoolConfig, ...]:
    """``[pools.NAME]`` tables with workers, ingress_lists, storages and optional weights,
    links (names of ``[links.NAME]`` tables: module, options) and egress_lists."""
    policy_defaults = policy_defaults or {}
    var = "CONSERVER_POOLS_FILE"
    try:
        with open(path, "rb") as fh:
            doc = tomllib.load(fh)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(var, path, f"a readable TOML file ({exc})") from None
    tables = doc.get("pools")
    if not isinstance(tables, dict) or not tables:
        raise ConfigError(var, path, "a TOML file with at least one [pools.NAME] table")
    pools = []
    for name, t in tables.items():
        where = f"{path}[pools.{name}]"
        lists = _LISTS.parse(f"{where}.ingress_lists", ",".join(t.get("ingress_lists", ingress_lists)))
        stores = _STORES.parse(f"{where}.storages", ",".join(t.get("storages", storages)))
        workers = _WORKERS.parse(f"{where}.workers", str(t.get("workers", 1)))
        w = t.get("weights")
        weights = parse_weights(f"{where}.weights", ",".join(f"{k}:{v}" for k, v in w.items()), lists) if w else ()
        links = link_configs(where, t.get("links"), doc.get("links") or {}, policy_defaults)
        egress = _LISTS.parse(f"{where}.egress_lists", ",".join(t["egress_lists"])) if t.get("egress_lists") else ()
        pools.append(PoolConfig(name, workers, lists, stores, weights, links, egress))
    return tuple(pools)
