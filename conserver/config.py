"""Configuration: read once, validated once, frozen.

Sources, read in this order: the real environment; ``.env`` in the working directory
(python-dotenv), which only fills in what the environment lacks; then the file named by
``--env-file`` or ``CONSERVER_ENV_FILE``, which overrides both: it is the operator's
explicit choice, and SIGHUP re-reads it, so editing it and reloading changes a setting
even when systemd's ``EnvironmentFile=`` put the old value in the environment. Every
variable is documented with its default in ``conf/conserver.env.example``.

A bad value raises :class:`ConfigError`, whose message is one line naming the variable,
the value given and what is allowed; the CLI prints it and exits with code 2.

This module depends on nothing else in the project.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping
from urllib.parse import urlsplit, urlunsplit

START_METHODS = ("fork", "spawn", "forkserver")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
LOG_FORMATS = ("text", "json")
BUILTIN_STORES = ("postgres", "s3", "elasticsearch", "null")
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")
_LIST_NAME = re.compile(r"^[A-Za-z0-9_.:\-]{1,200}$")
_CUSTOM_STORE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


class ConfigError(ValueError):
    """A setting has a value conserver cannot use."""

    def __init__(self, variable: str, value: Any, allowed: str):
        self.variable, self.value, self.allowed = variable, value, allowed
        super().__init__(f"invalid configuration: {variable}={value!r}: allowed {allowed}")


@dataclass(frozen=True)
class PoolConfig:
    """A group of identical workers: how many, which lists (priority order) and which stores."""

    name: str
    workers: int
    ingress_lists: tuple[str, ...]
    storages: tuple[str, ...]
    # list -> weight; empty means strict priority (always the first non-empty list).
    weights: tuple[tuple[str, int], ...] = ()


@dataclass(frozen=True)
class Config:
    # --- process model (supervisor) ---
    workers: int = 1
    workers_setting: str = "1"
    worker_memory_mb: int = 512
    start_method: str = ""  # "" = the platform default
    graceful_timeout: float = 25.0
    job_timeout: float = 300.0
    heartbeat_timeout: float = 60.0
    crash_limit: int = 10
    crash_window: float = 60.0
    min_uptime: float = 10.0
    pipeline: str = "conserver.tasks.pipeline:StorePipeline"
    pools: tuple[PoolConfig, ...] = ()
    enable_scheduler: bool = True
    autoscale: tuple[int, int] | None = None
    autoscale_cooldown: float = 30.0
    max_vcons_per_worker: int = 0
    max_worker_rss_mb: int = 0
    max_worker_age: float = 0.0
    # --- Redis and the queue protocol ---
    redis_url: str = "redis://localhost:6379/0"
    redis_sentinels: tuple[tuple[str, int], ...] = ()
    redis_sentinel_master: str = ""
    ingress_lists: tuple[str, ...] = ("default",)
    tick_interval: float = 1.0  # seconds; the longest a worker blocks on empty lists
    batch_size: int = 50
    max_deliveries: int = 5
    max_retries: int = 3
    retry_backoff: float = 2.0
    retry_backoff_max: float = 300.0
    scheduler_interval: float = 1.0
    worker_heartbeat_ttl: float = 30.0
    max_vcon_bytes: int = 16 * 1024 * 1024
    default_tenant_concurrency: int = 0
    tenant_slot_ttl: float = 300.0
    rate_limits: tuple[tuple[str, float, float], ...] = ()  # (store, per second, burst)
    rate_limit_max: int = 0  # vCons per rate_limit_duration, all workers and hosts together
    rate_limit_duration: float = 60.0
    # --- stores ---
    storages: tuple[str, ...] = ()
    parallel_storage: bool = True
    store_timeout: float = 10.0
    store_retries: int = 3
    store_threads: int = 32
    circuit_breaker_threshold: int = 5
    circuit_breaker_timeout: float = 60.0
    store_retry_backoff: float = 0.2
    store_retry_backoff_max: float = 2.0
    postgres_dsn: str = ""
    postgres_table: str = "vcons"
    postgres_pool_size: int = 4
    s3_bucket: str = ""
    s3_prefix: str = ""
    s3_endpoint_url: str = ""
    s3_create_bucket: bool = False
    s3_lookup_objects: bool = True
    aws_access_key_id: str = ""
    aws_secret_access_key: str = ""
    aws_region: str = "us-east-1"
    elasticsearch_url: str = ""
    elasticsearch_user: str = ""
    elasticsearch_password: str = ""
    elasticsearch_api_key: str = ""
    elasticsearch_index_prefix: str = ""
    elasticsearch_part_indices: bool = True  # vcon-server's per-part indices (storage/elasticsearch_parts.py)
    elasticsearch_vcon_index: bool = False  # conserver's one document per vCon in {prefix}vcons
    elasticsearch_cloud_id: str = ""  # Elastic Cloud; elasticsearch_url is derived from it
    elasticsearch_ca_certs: str = ""  # a CA bundle (PEM) for https; "" = certifi's
    elasticsearch_verify_certs: bool = True
    # --- observability ---
    log_level: str = "INFO"
    log_format: str = "text"
    log_file: str = ""
    metrics_port: int = 0
    metrics_host: str = "127.0.0.1"
    metrics_log_interval: float = 30.0
    # --- where it came from ---
    env_file: str = ""
    extra: Mapping[str, str] = field(default_factory=dict, repr=False, compare=False)

    def replace(self, **changes: Any) -> "Config":
        return dataclasses.replace(self, **changes)

    @property
    def total_workers(self) -> int:
        return sum(p.workers for p in self.pools)

    def redacted(self) -> dict[str, Any]:
        """The effective settings with every secret hidden, for ``check-config`` and logs."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            if f.name == "extra":
                continue
            value = getattr(self, f.name)
            if f.name in _SECRET_FIELDS and value:
                value = "***"
            elif isinstance(value, str) and "://" in value:
                value = redact_url(value)
            elif f.name == "pools":
                value = [dataclasses.asdict(p) for p in value]
            out[f.name] = value
        return out


_SECRET_FIELDS = {"aws_secret_access_key", "elasticsearch_password", "elasticsearch_api_key"}


def redact_url(url: str) -> str:
    """``redis://user:secret@host/0`` -> ``redis://user:***@host/0``; other strings unchanged."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    if not parts.password:
        return url
    userinfo = (parts.username or "") + ":***"
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{userinfo}@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


# ----------------------------------------------------------------------------------------
# value parsers: each takes (variable, raw) and raises ConfigError naming what is allowed
# ----------------------------------------------------------------------------------------


def parse_bool(var: str, raw: str) -> bool:
    low = raw.strip().lower()
    if low in _TRUE:
        return True
    if low in _FALSE:
        return False
    raise ConfigError(var, raw, "true or false (also 1/0, yes/no, on/off)")


def parse_int(var: str, raw: str, lo: int, hi: int) -> int:
    try:
        value = int(raw.strip())
    except ValueError:
        raise ConfigError(var, raw, f"an integer from {lo} to {hi}") from None
    if not lo <= value <= hi:
        raise ConfigError(var, raw, f"an integer from {lo} to {hi}")
    return value


def parse_duration(var: str, raw: str, bare_unit: str, lo: float, hi: float) -> float:
    """A duration in seconds. ``500ms``, ``2s``, ``5m``, ``1h``; a bare number is in ``bare_unit``."""
    m = _DURATION.match(raw)
    allowed = f"a duration from {_fmt_seconds(lo)} to {_fmt_seconds(hi)} (e.g. 500ms, 30s, 5m; a bare number is in {bare_unit})"
    if not m:
        raise ConfigError(var, raw, allowed)
    seconds = float(m.group(1)) * _UNIT_SECONDS[m.group(2) or bare_unit]
    if not lo <= seconds <= hi:
        raise ConfigError(var, raw, allowed)
    return seconds


def _fmt_seconds(s: float) -> str:
    return f"{s * 1000:g}ms" if s < 1 else f"{s:g}s"


def parse_choice(var: str, raw: str, choices: tuple[str, ...], *, upper: bool = False) -> str:
    value = raw.strip().upper() if upper else raw.strip().lower()
    if value not in choices:
        raise ConfigError(var, raw, "one of " + ", ".join(choices))
    return value


def parse_list_names(var: str, raw: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in raw.split(",") if n.strip())
    if not names or any(not _LIST_NAME.match(n) for n in names) or len(set(names)) != len(names):
        raise ConfigError(var, raw, "a comma-separated list of distinct names of letters, digits and _.:-")
    return names


def parse_storages(var: str, raw: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in raw.split(",") if n.strip())
    for n in names:
        if n not in BUILTIN_STORES and not _CUSTOM_STORE.match(n):
            raise ConfigError(var, raw, "a comma list of " + ", ".join(BUILTIN_STORES) + " or package.module:Class")
    if len(set(names)) != len(names):
        raise ConfigError(var, raw, "each store named once")
    return names


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


def parse_rate_limits_setting(var: str, raw: str) -> tuple[tuple[str, float, float], ...]:
    """``elasticsearch:200/400,s3:50``: per store, vCons per second and an optional burst."""
    out = []
    for item in (i.strip() for i in raw.split(",") if i.strip()):
        store, sep, spec = item.rpartition(":")
        rate, _, burst = spec.partition("/")
        try:
            r, b = float(rate), float(burst or rate)
        except ValueError:
            raise ConfigError(var, raw, "store:rate[/burst] entries, e.g. elasticsearch:200/400,s3:50") from None
        if not sep or not store or not (0 < r < 1e9) or not (0 < b < 1e9):
            raise ConfigError(var, raw, "store:rate[/burst] entries with positive numbers, e.g. elasticsearch:200/400")
        out.append((store, r, b))
    return tuple(out)


def parse_sentinels(var: str, raw: str) -> tuple[tuple[str, int], ...]:
    out = []
    for item in (i.strip() for i in raw.split(",") if i.strip()):
        host, sep, port = item.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(var, raw, "a comma list of host:port")
        out.append((host, int(port)))
    return tuple(out)


def parse_url(var: str, raw: str, schemes: tuple[str, ...]) -> str:
    value = raw.strip()
    scheme = urlsplit(value).scheme
    if scheme not in schemes or not urlsplit(value).netloc and scheme not in ("unix",):
        raise ConfigError(var, redact_url(raw), "a URL with scheme " + " or ".join(f"{s}://" for s in schemes))
    return value


def parse_autoscale(var: str, raw: str) -> tuple[int, int]:
    lo, sep, hi = raw.partition(",")
    if not sep or not lo.strip().isdigit() or not hi.strip().isdigit():
        raise ConfigError(var, raw, "min,max with 1 <= min <= max <= 256")
    a, b = int(lo), int(hi)
    if not 1 <= a <= b <= 256:
        raise ConfigError(var, raw, "min,max with 1 <= min <= max <= 256")
    return a, b


def auto_worker_count(memory_mb_per_worker: int) -> int:
    """``auto``: as many workers as CPUs, but no more than available memory allows (seed 004)."""
    import psutil  # only the main process calls this, and psutil holds no threads or sockets

    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    by_memory = psutil.virtual_memory().available // (memory_mb_per_worker * 1024 * 1024)
    return max(1, min(cpus, int(by_memory), 256))


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


def config_from_mapping(env: Mapping[str, str], env_file: str = "", pools_file: str | None = None) -> Config:
    """Validate a flat mapping of variables. Pure: the tests drive it directly."""

    def get(var: str, default: str) -> str:
        value = env.get(var)
        return default if value is None or value.strip() == "" else value

    def opt(var: str, parse: Callable[[str, str], Any], default: Any) -> Any:
        value = env.get(var)
        return default if value is None or value.strip() == "" else parse(var, value)

    c: dict[str, Any] = {"env_file": env_file}
    # --- process model ---
    c["worker_memory_mb"] = parse_int("CONSERVER_WORKER_MEMORY_MB", get("CONSERVER_WORKER_MEMORY_MB", "512"), 16, 1 << 20)
    workers_raw = get("CONSERVER_WORKERS", "1").strip().lower()
    c["workers_setting"] = workers_raw
    if workers_raw == "auto":
        c["workers"] = auto_worker_count(c["worker_memory_mb"])
    else:
        try:
            c["workers"] = parse_int("CONSERVER_WORKERS", workers_raw, 1, 256)
        except ConfigError:
            raise ConfigError("CONSERVER_WORKERS", env.get("CONSERVER_WORKERS"), "an integer from 1 to 256, or auto") from None
    method = get("CONSERVER_START_METHOD", "").strip().lower()
    if method and method not in START_METHODS:
        raise ConfigError("CONSERVER_START_METHOD", env.get("CONSERVER_START_METHOD"),
                          "fork, spawn, forkserver, or empty for the platform default")
    c["start_method"] = method
    c["graceful_timeout"] = parse_duration("CONSERVER_GRACEFUL_TIMEOUT", get("CONSERVER_GRACEFUL_TIMEOUT", "25"), "s", 0, 3600)
    c["job_timeout"] = parse_duration("JOB_TIMEOUT", get("JOB_TIMEOUT", "5m"), "s", 0.1, 86400)
    c["heartbeat_timeout"] = parse_duration("CONSERVER_HEARTBEAT_TIMEOUT", get("CONSERVER_HEARTBEAT_TIMEOUT", "60"), "s", 1, 3600)
    c["crash_limit"] = parse_int("CONSERVER_CRASH_LIMIT", get("CONSERVER_CRASH_LIMIT", "10"), 1, 10000)
    c["crash_window"] = parse_duration("CONSERVER_CRASH_WINDOW", get("CONSERVER_CRASH_WINDOW", "60"), "s", 1, 86400)
    c["min_uptime"] = parse_duration("CONSERVER_MIN_UPTIME", get("CONSERVER_MIN_UPTIME", "10"), "s", 0, 3600)
    pipeline = get("CONSERVER_PIPELINE", "conserver.tasks.pipeline:StorePipeline").strip()
    if not _CUSTOM_STORE.match(pipeline):
        raise ConfigError("CONSERVER_PIPELINE", pipeline, "an import path package.module:Class")
    c["pipeline"] = pipeline
    c["enable_scheduler"] = parse_bool("CONSERVER_ENABLE_SCHEDULER",
                                       get("CONSERVER_ENABLE_SCHEDULER", get("ENABLE_SCHEDULER", "true")))
    c["autoscale"] = opt("CONSERVER_AUTOSCALE", parse_autoscale, None)
    c["autoscale_cooldown"] = parse_duration("CONSERVER_AUTOSCALE_COOLDOWN", get("CONSERVER_AUTOSCALE_COOLDOWN", "30s"), "s", 0, 86400)
    if c["autoscale"]:  # start at the low end; the monitor adds workers when the backlog asks
        c["workers"] = c["autoscale"][0]
    c["max_vcons_per_worker"] = parse_int("CONSERVER_MAX_VCONS_PER_WORKER", get("CONSERVER_MAX_VCONS_PER_WORKER", "0"), 0, 1 << 40)
    c["max_worker_rss_mb"] = parse_int("CONSERVER_MAX_WORKER_RSS_MB", get("CONSERVER_MAX_WORKER_RSS_MB", "0"), 0, 1 << 20)
    c["max_worker_age"] = parse_duration("CONSERVER_MAX_WORKER_AGE", get("CONSERVER_MAX_WORKER_AGE", "0"), "s", 0, 365 * 86400)
    # --- Redis and queue ---
    c["redis_url"] = parse_url("REDIS_URL", get("REDIS_URL", "redis://localhost:6379/0"), ("redis", "rediss", "unix"))
    c["redis_sentinels"] = opt("REDIS_SENTINELS", parse_sentinels, ())
    c["redis_sentinel_master"] = get("REDIS_SENTINEL_MASTER", "")
    if c["redis_sentinels"] and not c["redis_sentinel_master"]:
        raise ConfigError("REDIS_SENTINEL_MASTER", "", "the master's name when REDIS_SENTINELS is set")
    c["ingress_lists"] = parse_list_names("CONSERVER_INGRESS_LISTS", get("CONSERVER_INGRESS_LISTS", "default"))
    c["tick_interval"] = parse_duration("TICK_INTERVAL", get("TICK_INTERVAL", "1000"), "ms", 0.01, 60)
    c["batch_size"] = parse_int("CONSERVER_BATCH_SIZE", get("CONSERVER_BATCH_SIZE", "50"), 1, 10000)
    c["max_deliveries"] = parse_int("CONSERVER_MAX_DELIVERIES", get("CONSERVER_MAX_DELIVERIES", "5"), 1, 1000)
    c["max_retries"] = parse_int("MAX_RETRIES", get("MAX_RETRIES", "3"), 0, 100)
    c["retry_backoff"] = parse_duration("CONSERVER_RETRY_BACKOFF", get("CONSERVER_RETRY_BACKOFF", "2s"), "s", 0.01, 3600)
    c["retry_backoff_max"] = parse_duration("CONSERVER_RETRY_BACKOFF_MAX", get("CONSERVER_RETRY_BACKOFF_MAX", "5m"), "s", 0.01, 86400)
    c["scheduler_interval"] = parse_duration("SCHEDULER_INTERVAL", get("SCHEDULER_INTERVAL", "1s"), "s", 0.1, 60)
    c["worker_heartbeat_ttl"] = parse_duration("CONSERVER_WORKER_HEARTBEAT_TTL", get("CONSERVER_WORKER_HEARTBEAT_TTL", "30s"), "s", 1, 3600)
    c["max_vcon_bytes"] = parse_int("CONSERVER_MAX_VCON_BYTES", get("CONSERVER_MAX_VCON_BYTES", str(16 * 1024 * 1024)), 1024, 512 * 1024 * 1024)
    c["default_tenant_concurrency"] = parse_int("DEFAULT_TENANT_CONCURRENCY", get("DEFAULT_TENANT_CONCURRENCY", "0"), 0, 1 << 20)
    c["tenant_slot_ttl"] = parse_duration("CONSERVER_TENANT_SLOT_TTL", get("CONSERVER_TENANT_SLOT_TTL", "5m"), "s", 1, 86400)
    c["rate_limits"] = opt("CONSERVER_RATE_LIMITS", parse_rate_limits_setting, ())
    c["rate_limit_max"] = parse_int("RATE_LIMIT_MAX", get("RATE_LIMIT_MAX", "0"), 0, 1 << 40)
    # Seed 004 writes this in milliseconds (60000 = one minute).
    c["rate_limit_duration"] = parse_duration("RATE_LIMIT_DURATION", get("RATE_LIMIT_DURATION", "60000"), "ms", 0.001, 86400)
    # --- stores ---
    c["storages"] = parse_storages("CONSERVER_STORAGES", get("CONSERVER_STORAGES", ""))
    c["parallel_storage"] = parse_bool("CONSERVER_PARALLEL_STORAGE", get("CONSERVER_PARALLEL_STORAGE", "true"))
    c["store_timeout"] = parse_duration("CONSERVER_STORE_TIMEOUT", get("CONSERVER_STORE_TIMEOUT", "10s"), "s", 0.1, 600)
    c["store_retries"] = parse_int("CONSERVER_STORE_RETRIES", get("CONSERVER_STORE_RETRIES", "3"), 0, 20)
    c["store_retry_backoff"] = parse_duration("CONSERVER_STORE_RETRY_BACKOFF", get("CONSERVER_STORE_RETRY_BACKOFF", "200ms"), "s", 0.001, 60)
    c["store_retry_backoff_max"] = parse_duration("CONSERVER_STORE_RETRY_BACKOFF_MAX", get("CONSERVER_STORE_RETRY_BACKOFF_MAX", "2s"), "s", 0.001, 600)
    c["store_threads"] = parse_int("CONSERVER_STORE_THREADS", get("CONSERVER_STORE_THREADS", "32"), 1, 256)
    c["circuit_breaker_threshold"] = parse_int("CIRCUIT_BREAKER_THRESHOLD", get("CIRCUIT_BREAKER_THRESHOLD", "5"), 1, 10000)
    # Seed 004 writes this in milliseconds (60000), so a bare number is milliseconds.
    c["circuit_breaker_timeout"] = parse_duration("CIRCUIT_BREAKER_TIMEOUT", get("CIRCUIT_BREAKER_TIMEOUT", "60s"), "ms", 0.1, 86400)
    dsn = get("POSTGRES_DSN", get("DATABASE_URL", ""))
    c["postgres_dsn"] = parse_url("POSTGRES_DSN", dsn, ("postgresql", "postgres")) if dsn else ""
    table = get("POSTGRES_TABLE", "vcons")
    if not re.match(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$", table):
        raise ConfigError("POSTGRES_TABLE", table, "an SQL identifier of letters, digits and _ (at most 63)")
    c["postgres_table"] = table
    c["postgres_pool_size"] = parse_int("POSTGRES_POOL_SIZE", get("POSTGRES_POOL_SIZE", "4"), 1, 100)
    c["s3_bucket"] = get("S3_BUCKET", "")
    c["s3_prefix"] = get("S3_PREFIX", "")
    endpoint = get("S3_ENDPOINT_URL", "")
    c["s3_endpoint_url"] = parse_url("S3_ENDPOINT_URL", endpoint, ("http", "https")) if endpoint else ""
    c["s3_create_bucket"] = parse_bool("S3_CREATE_BUCKET", get("S3_CREATE_BUCKET", "false"))
    c["s3_lookup_objects"] = parse_bool("S3_LOOKUP_OBJECTS", get("S3_LOOKUP_OBJECTS", "true"))
    c["aws_access_key_id"] = get("AWS_ACCESS_KEY_ID", "")
    c["aws_secret_access_key"] = get("AWS_SECRET_ACCESS_KEY", "")
    c["aws_region"] = get("AWS_REGION", get("AWS_DEFAULT_REGION", "us-east-1"))
    es = get("ELASTICSEARCH_URL", "")
    c["elasticsearch_url"] = parse_url("ELASTICSEARCH_URL", es, ("http", "https")) if es else ""
    c["elasticsearch_user"] = get("ELASTICSEARCH_USER", get("ELASTICSEARCH_USERNAME", ""))
    c["elasticsearch_password"] = get("ELASTICSEARCH_PASSWORD", "")
    c["elasticsearch_api_key"] = get("ELASTICSEARCH_API_KEY", "")
    c["elasticsearch_index_prefix"] = get("ELASTICSEARCH_INDEX_PREFIX", "")
    c["elasticsearch_part_indices"] = parse_bool("ELASTICSEARCH_PART_INDICES", get("ELASTICSEARCH_PART_INDICES", "true"))
    c["elasticsearch_vcon_index"] = parse_bool("ELASTICSEARCH_VCON_INDEX", get("ELASTICSEARCH_VCON_INDEX", "false"))
    if not (c["elasticsearch_part_indices"] or c["elasticsearch_vcon_index"]):
        raise ConfigError("ELASTICSEARCH_PART_INDICES", "false", "true, or ELASTICSEARCH_VCON_INDEX=true (one layout at least)")
    c["elasticsearch_cloud_id"] = cloud_id = get("ELASTICSEARCH_CLOUD_ID", "").strip()
    if cloud_id:  # name:base64(host[:port]$es_uuid$kibana_uuid), decoded as elastic_transport's parse_cloud_id
        import binascii

        try:
            host, es_uuid = binascii.a2b_base64(cloud_id.partition(":")[2].encode()).decode().split("$")[:2]
            host, _, port = host.rpartition(":") if ":" in host else (host, "", "443")
            port = str(int(port))
        except (ValueError, UnicodeError):
            raise ConfigError("ELASTICSEARCH_CLOUD_ID", cloud_id, "an Elastic Cloud id, name:base64") from None
        if not host or not es_uuid or c["elasticsearch_url"]:
            raise ConfigError("ELASTICSEARCH_CLOUD_ID", cloud_id, "an Elastic Cloud id naming a host and an "
                              "Elasticsearch uuid, and no ELASTICSEARCH_URL with it")
        c["elasticsearch_url"] = f"https://{es_uuid}.{host}:{port}"
    c["elasticsearch_ca_certs"] = ca_certs = get("ELASTICSEARCH_CA_CERTS", "")
    if ca_certs and not os.path.isfile(ca_certs):
        raise ConfigError("ELASTICSEARCH_CA_CERTS", ca_certs, "the path of a readable PEM file")
    c["elasticsearch_verify_certs"] = parse_bool("ELASTICSEARCH_VERIFY_CERTS", get("ELASTICSEARCH_VERIFY_CERTS", "true"))
    # --- observability ---
    c["log_level"] = parse_choice("LOG_LEVEL", get("LOG_LEVEL", "INFO"), LOG_LEVELS, upper=True)
    c["log_format"] = parse_choice("LOG_FORMAT", get("LOG_FORMAT", "text"), LOG_FORMATS)
    c["log_file"] = get("LOG_FILE", "")
    c["metrics_port"] = parse_int("CONSERVER_METRICS_PORT", get("CONSERVER_METRICS_PORT", "0"), 0, 65535)
    c["metrics_host"] = get("CONSERVER_METRICS_HOST", "127.0.0.1")
    c["metrics_log_interval"] = parse_duration("CONSERVER_METRICS_LOG_INTERVAL", get("CONSERVER_METRICS_LOG_INTERVAL", "30s"), "s", 0, 86400)

    weights_raw = get("CONSERVER_QUEUE_WEIGHTS", "")
    weights = parse_weights("CONSERVER_QUEUE_WEIGHTS", weights_raw, c["ingress_lists"]) if weights_raw else ()
    pools_file = pools_file or get("CONSERVER_POOLS_FILE", "")
    if pools_file:
        c["pools"] = _pools_from_toml(pools_file, c)
    elif get("CONSERVER_POOLS", ""):
        c["pools"] = parse_pools("CONSERVER_POOLS", get("CONSERVER_POOLS", ""), c)
    else:
        c["pools"] = (PoolConfig("default", c["workers"], c["ingress_lists"], c["storages"], weights),)
    _check_store_settings(c)
    c["extra"] = {k: v for k, v in env.items() if k.startswith("CONSERVER_STORE_")}
    return Config(**c)


def _check_store_settings(c: dict[str, Any]) -> None:
    """A store named in CONSERVER_STORAGES must have what it needs to connect."""
    needs = {"postgres": ("POSTGRES_DSN", "postgres_dsn"), "s3": ("S3_BUCKET", "s3_bucket"),
             "elasticsearch": ("ELASTICSEARCH_URL", "elasticsearch_url")}
    for store in dict.fromkeys(s for p in c["pools"] for s in p.storages):
        if store in needs and not c[needs[store][1]]:
            raise ConfigError(needs[store][0], "", f"a value when CONSERVER_STORAGES includes {store}")


def parse_pools(var: str, raw: str, c: dict[str, Any]) -> tuple[PoolConfig, ...]:
    """``high=3:high; bulk=2:normal,low:s3,postgres`` -> pools (name=workers:lists[:stores])."""
    allowed = "name=workers:list,list[:store,store] pools separated by ';', e.g. high=3:high;rest=1:normal,low"
    pools = []
    for part in (p.strip() for p in raw.split(";") if p.strip()):
        name, eq, rest = part.partition("=")
        fields = rest.split(":")
        if not eq or not re.match(r"^[A-Za-z0-9_-]{1,60}$", name.strip()) or len(fields) not in (2, 3):
            raise ConfigError(var, raw, allowed)
        workers = parse_int(f"{var}[{name}] workers", fields[0], 1, 256)
        lists = parse_list_names(f"{var}[{name}] lists", fields[1])
        storages = parse_storages(f"{var}[{name}] stores", fields[2]) if len(fields) == 3 else c["storages"]
        pools.append(PoolConfig(name.strip(), workers, lists, storages))
    if not pools or len({p.name for p in pools}) != len(pools):
        raise ConfigError(var, raw, allowed)
    return tuple(pools)


def _pools_from_toml(path: str, c: dict[str, Any]) -> tuple[PoolConfig, ...]:
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
        lists = parse_list_names(f"{where}.ingress_lists", ",".join(t.get("ingress_lists", c["ingress_lists"])))
        storages = parse_storages(f"{where}.storages", ",".join(t.get("storages", c["storages"])))
        workers = parse_int(f"{where}.workers", str(t.get("workers", 1)), 1, 256)
        w = t.get("weights")
        weights = parse_weights(f"{where}.weights", ",".join(f"{k}:{v}" for k, v in w.items()), lists) if w else ()
        pools.append(PoolConfig(name, workers, lists, storages, weights))
    return tuple(pools)
