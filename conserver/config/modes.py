"""The seeds' own variables, mapped onto chains (docs/chains.md has the table).

- Seed 001 ``WORKER_MODE`` reshapes the chains:

  ==================  ==========================================================================
  thin                every chain 1 worker (no chains declared: one chain ``thin`` on the lists)
  default             the chains as declared (none: one chain ``default`` on the lists)
  specialized         a chain per priority: declared chains keep only the lists named in
                      WORKER_PRIORITIES (a chain left with none is not run); none declared: one
                      chain per priority, named after it
  job-specialized     only the chains named in WORKER_JOB_TYPES (none declared: one chain per
                      job type, reading the list of that name)
  scheduler-only      no queue workers, the scheduler only (as ``conserver run --scheduler-only``)
  ==================  ==========================================================================

  "The lists" are WORKER_PRIORITIES, else CONSERVER_INGRESS_LISTS when it is set, else seed
  001's default ``high,normal,low``.
- Seed 003 ``WORKER_SCALE_FACTOR`` multiplies every chain's workers.
- ``WORKER_CONCURRENCY`` is one name with two meanings: seed 001's concurrent jobs inside one
  worker (goroutines: "thin: a single process, 5 goroutines"), seed 004's jobs per instance
  sized by CPUs and memory (min(cpu, memory / 0.5 GiB)). conserver takes seed 001's: the vCons
  one worker runs through their links at once, CONSERVER_VCON_CONCURRENCY (vcon-server's
  name for the same thing). Seed 004's formula is already ``CONSERVER_WORKERS=auto`` (with
  CONSERVER_WORKER_MEMORY_MB=512), so a value that can only mean it (``auto``) is refused
  with that advice, as is a WORKER_CONCURRENCY that contradicts CONSERVER_VCON_CONCURRENCY.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from conserver.config.parse import MAX_WORKERS, ConfigError
from conserver.config.pools import PoolConfig

__all__ = ["apply_mode", "check_concurrency", "scale_workers"]

DEFAULT_PRIORITIES = ("high", "normal", "low")


def _set(env: Mapping[str, str], var: str) -> bool:
    return bool((env.get(var) or "").strip())


def check_concurrency(env: Mapping[str, str]) -> None:
    """Refuse the WORKER_CONCURRENCY values that only seed 004's meaning could explain."""
    raw = (env.get("WORKER_CONCURRENCY") or "").strip()
    if not raw:
        return
    if not raw.isdigit():
        raise ConfigError("WORKER_CONCURRENCY", raw, (
            "a whole number of vCons in flight per worker (seed 001's meaning, CONSERVER_VCON_CONCURRENCY); "
            "for seed 004's min(CPU, memory / 0.5 GiB) worker processes set CONSERVER_WORKERS=auto"))
    other = (env.get("CONSERVER_VCON_CONCURRENCY") or "").strip()
    if other and other != raw:
        raise ConfigError("WORKER_CONCURRENCY", raw, (
            f"the same value as CONSERVER_VCON_CONCURRENCY={other}: both name the vCons in flight per worker; "
            "set one (worker processes are CONSERVER_WORKERS)"))


def _lists(env: Mapping[str, str], priorities: tuple[str, ...], ingress_lists: tuple[str, ...]) -> tuple[str, ...]:
    if priorities and _set(env, "CONSERVER_INGRESS_LISTS") and priorities != ingress_lists:
        raise ConfigError("WORKER_PRIORITIES", ",".join(priorities), (
            f"the same lists as CONSERVER_INGRESS_LISTS={','.join(ingress_lists)}, or only one of the two"))
    if priorities:
        return priorities
    return ingress_lists if _set(env, "CONSERVER_INGRESS_LISTS") else DEFAULT_PRIORITIES


def apply_mode(mode: str, pools: tuple[PoolConfig, ...], *, declared: bool, env: Mapping[str, str],
               priorities: tuple[str, ...], job_types: tuple[str, ...], ingress_lists: tuple[str, ...],
               storages: tuple[str, ...], workers: int) -> tuple[PoolConfig, ...]:
    """The chains under seed 001's ``mode`` (see the module docstring). ``declared``: the
    chains came from a file or CONSERVER_POOLS (else ``pools`` is the one default chain)."""
    if not mode:
        if priorities or job_types:
            var = "WORKER_PRIORITIES" if priorities else "WORKER_JOB_TYPES"
            raise ConfigError(var, ",".join(priorities or job_types), "a value only together with WORKER_MODE")
        return pools
    if job_types and mode != "job-specialized":
        raise ConfigError("WORKER_JOB_TYPES", ",".join(job_types), "a value only with WORKER_MODE=job-specialized")
    lists = _lists(env, priorities, ingress_lists)
    if mode == "scheduler-only":
        return tuple(dataclasses.replace(p, workers=0) for p in pools)
    if mode == "thin":
        if declared:
            return tuple(dataclasses.replace(p, workers=1) for p in pools)
        return (PoolConfig("thin", 1, lists, storages),)
    if mode == "default":
        return pools if declared else (PoolConfig("default", workers, lists, storages),)
    if mode == "specialized":
        if not declared:
            return tuple(PoolConfig(name, workers, (name,), storages) for name in lists)
        kept = []
        for p in pools:
            mine = tuple(name for name in p.ingress_lists if name in lists)
            if mine:
                weights = tuple((n, w) for n, w in p.weights if n in mine)
                kept.append(dataclasses.replace(p, ingress_lists=mine, weights=weights if len(weights) > 1 else ()))
        if not kept:
            raise ConfigError("WORKER_PRIORITIES", ",".join(lists), "lists that some chain reads")
        return tuple(kept)
    # job-specialized
    if not job_types:
        raise ConfigError("WORKER_JOB_TYPES", "", "the chains to run (names), with WORKER_MODE=job-specialized")
    if not declared:
        return tuple(PoolConfig(name, workers, (name,), storages) for name in job_types)
    by_name = {p.name: p for p in pools}
    missing = [name for name in job_types if name not in by_name]
    if missing:
        raise ConfigError("WORKER_JOB_TYPES", ",".join(job_types), f"names of chains ({', '.join(by_name)})")
    return tuple(by_name[name] for name in job_types)


def scale_workers(pools: tuple[PoolConfig, ...], factor: float) -> tuple[PoolConfig, ...]:
    """Seed 003's WORKER_SCALE_FACTOR: every chain's workers times ``factor``, rounded, at
    least 1 (a chain with 0 workers, scheduler-only, stays at 0), at most the worker limit."""
    if factor == 1:
        return pools
    return tuple(dataclasses.replace(p, workers=min(MAX_WORKERS, max(1, round(p.workers * factor))))
                 if p.workers else p for p in pools)
