"""Worker pools: which lists a group of workers reads and which stores it writes.

A pool is the worker side of what vcon-server calls a chain: ingress lists -> links (steps
that transform a vCon) -> storages -> egress lists. Links and egress lists are declared
here already, always empty for now: when chains land they fill these fields and the
``[pools.NAME]`` tables (or a chains file) gain ``links`` and ``egress_lists`` keys.

Pools come from ``CONSERVER_POOLS_FILE`` (TOML), else ``CONSERVER_POOLS`` (inline), else
one pool ``default`` of CONSERVER_WORKERS workers on CONSERVER_INGRESS_LISTS with
CONSERVER_STORAGES and CONSERVER_QUEUE_WEIGHTS.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass

from conserver.config.parse import MAX_WORKERS, ConfigError, Int, ListNames, Stores

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
    # The room for vcon-server chains (not used yet): links run in order before the stores,
    # and each stored vCon's uuid is pushed on every egress list after them.
    links: tuple[str, ...] = ()
    egress_lists: tuple[str, ...] = ()


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
                storages: tuple[str, ...], queue_weights: str) -> tuple[PoolConfig, ...]:
    """The pools of a configuration, from the first of its three sources that is set."""
    if pools_file:
        return pools_from_toml(pools_file, ingress_lists, storages)
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


def pools_from_toml(path: str, ingress_lists: tuple[str, ...], storages: tuple[str, ...]) -> tuple[PoolConfig, ...]:
    """``[pools.NAME]`` tables with workers, ingress_lists, storages and optional weights."""
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
        pools.append(PoolConfig(name, workers, lists, stores, weights))
    return tuple(pools)
