"""Every setting conserver reads, declared once: the ``SETTINGS`` table.

Each :class:`Setting` names its environment variable, the ``Config`` field it fills, the
parser (which carries its bounds or choices), its default as an env file would write it,
its documentation, and the other names that mean the same (vcon-server's, older ones).
``Config``, the checks, ``conf/conserver.env.example`` and ``conserver check-config`` are
all built from this table; a setting added here appears in all of them.

This module depends on nothing else in the project but the parsers.
"""

from __future__ import annotations

from dataclasses import dataclass

from conserver.config.parse import (MAX_WORKERS, Autoscale, Bool, Choice, Duration, Identifier, ImportPath, Int,
                                    ListNames, Number, OptionalNames, Parser, RateLimits, Sentinels, Stores, Text, Url, WorkerCount)

START_METHODS = ("fork", "spawn", "forkserver")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
LOG_FORMATS = ("text", "json")
WORKER_MODES = ("thin", "default", "specialized", "job-specialized", "scheduler-only")
DAY = 86400


@dataclass(frozen=True)
class Setting:
    env: str  # the variable
    field: str  # the Config attribute it fills
    parser: Parser  # text -> value, with the bounds or choices it allows
    default: str  # as an env file writes it; parsed once for Config's default
    doc: str = ""  # for conf/conserver.env.example; lines separated by \n
    aliases: tuple[str, ...] = ()  # other variables read, in order, when ``env`` is unset
    secret: bool = False  # hidden by check-config
    needed_by: str = ""  # a store that cannot work without a value here

    @property
    def names(self) -> tuple[str, ...]:
        return (self.env, *self.aliases)


# (section title, its settings) in the order of conf/conserver.env.example
SECTIONS: tuple[tuple[str, tuple[Setting, ...]], ...] = (
    ("processes", (
        Setting("CONSERVER_WORKERS", "workers_setting", WorkerCount(), "1",
                f"Worker processes: 1..{MAX_WORKERS}, or auto = min(CPU count, available memory / "
                "CONSERVER_WORKER_MEMORY_MB)."),
        Setting("CONSERVER_WORKER_MEMORY_MB", "worker_memory_mb", Int(16, 1 << 20), "512",
                "What one worker may use, for auto and autoscaling."),
        Setting("CONSERVER_START_METHOD", "start_method", Choice(START_METHODS, empty="the platform default"), "",
                "How workers start; the platform default is fork on Linux."),
        Setting("CONSERVER_GRACEFUL_TIMEOUT", "graceful_timeout", Duration("s", 0, 3600), "25",
                "SIGTERM: how long workers may take to finish what they hold before SIGKILL."),
        Setting("JOB_TIMEOUT", "job_timeout", Duration("s", 0.1, DAY), "5m",
                "A worker busy on one batch longer than this gets its stack dumped, SIGTERM, then SIGKILL."),
        Setting("CONSERVER_HEARTBEAT_TIMEOUT", "heartbeat_timeout", Duration("s", 1, 3600), "60",
                "An idle worker silent for this long is treated as hung."),
        Setting("CONSERVER_MIN_UPTIME", "min_uptime", Duration("s", 0, 3600), "10",
                "A worker that dies before it reported ready, exits with the boot-error code, or ends itself\n"
                "with an error within CONSERVER_MIN_UPTIME counts as an early crash and is restarted with\n"
                "backoff (0.1 s doubling to 30 s). More than CONSERVER_CRASH_LIMIT early crashes within\n"
                "CONSERVER_CRASH_WINDOW stop the supervisor with exit code 4, so systemd/compose restart it.\n"
                "A ready worker killed from outside (SIGKILL, the OOM killer) is replaced at once, uncounted."),
        Setting("CONSERVER_CRASH_LIMIT", "crash_limit", Int(1, 10000), "10"),
        Setting("CONSERVER_CRASH_WINDOW", "crash_window", Duration("s", 1, DAY), "60"),
        Setting("CONSERVER_PIPELINE", "pipeline", ImportPath(), "conserver.tasks.pipeline:StorePipeline",
                "The step each worker runs (a conserver.process.worker.WorkerTask)."),
        Setting("CONSERVER_ENABLE_SCHEDULER", "enable_scheduler", Bool(), "true",
                "Run the leader-elected scheduler (delayed retries, orphan sweep) in this instance.\n"
                "`conserver run --scheduler-only` runs only that.", aliases=("ENABLE_SCHEDULER",)),
        Setting("CONSERVER_POOLS_FILE", "pools_file", Text(), "",
                "Worker pools described in TOML (see conf/conserver.toml and conf/modes/); without it one\n"
                "pool \"default\" of CONSERVER_WORKERS workers on CONSERVER_INGRESS_LISTS with CONSERVER_STORAGES."),
        Setting("CONSERVER_POOLS", "pools_inline", Text(), "",
                "The same inline: name=workers:list,list[:store,store]; ... e.g. high=3:high;rest=1:normal,low"),
        Setting("CONSERVER_AUTOSCALE", "autoscale", Autoscale(), "",
                "Add workers while the backlog grows, retire idle ones after a cool-down."),
        Setting("CONSERVER_AUTOSCALE_COOLDOWN", "autoscale_cooldown", Duration("s", 0, DAY), "30s",
                "Quiet time (empty lists, idle workers) before autoscaling retires a worker."),
        Setting("CONSERVER_MAX_VCONS_PER_WORKER", "max_vcons_per_worker", Int(0, 1 << 40), "0",
                "Recycling: replace a worker after this many vCons (with +-10 % jitter), this RSS, this age. "
                "0 = never."),
        Setting("CONSERVER_MAX_WORKER_RSS_MB", "max_worker_rss_mb", Int(0, 1 << 20), "0"),
        Setting("CONSERVER_MAX_WORKER_AGE", "max_worker_age", Duration("s", 0, 365 * DAY), "0"),
    )),
    # ------------------------------------------------------------------ chains (issue 15): one block
    ("chains: vcon-server config.yml, links, egress, seed 001 modes", (
        Setting("CONSERVER_CONFIG_FILE", "config_file", Text(), "",
                "A vcon-server config.yml, read unchanged (also `conserver run --config FILE`): its chains\n"
                "become the worker pools (links, ingress_lists, storages, egress_lists, enabled). Empty: none\n"
                "(vcon-server defaults to ./example_config.yml; conserver reads no file unless told). See docs/chains.md."),
        Setting("CONSERVER_VCON_CONCURRENCY", "vcon_concurrency", Int(1, 1000), "1",
                "vCons of a batch whose links run at once in one worker (links keep their order within a vCon).\n"
                "Seed 001's WORKER_CONCURRENCY means the same here (see docs/chains.md).",
                aliases=("WORKER_CONCURRENCY",)),
        Setting("WORKER_MODE", "worker_mode", Choice(WORKER_MODES, empty="no mode: the pools as configured"), "",
                "Seed 001's modes, mapped onto chains: thin, default, specialized, job-specialized, scheduler-only."),
        Setting("WORKER_PRIORITIES", "worker_priorities", OptionalNames(), "",
                "Seed 001: the ingress lists by priority (high,normal,low when WORKER_MODE is set)."),
        Setting("WORKER_JOB_TYPES", "worker_job_types", OptionalNames(), "",
                "Seed 001's job-specialized mode: the chains this instance runs, by name."),
        Setting("WORKER_SCALE_FACTOR", "worker_scale_factor", Number(0.01, 256), "1",
                "Seed 003: every chain's worker count is multiplied by this (rounded, at least 1)."),
    )),
    ("Redis and the queue", (
        Setting("REDIS_URL", "redis_url", Url("redis", "rediss", "unix"), "redis://localhost:6379/0"),
        Setting("REDIS_SENTINELS", "redis_sentinels", Sentinels(), "",
                "Optional Sentinel: host:port,host:port and the master's name (then REDIS_URL gives db/password)."),
        Setting("REDIS_SENTINEL_MASTER", "redis_sentinel_master", Text(), ""),
        Setting("CONSERVER_INGRESS_LISTS", "ingress_lists", ListNames(), "default",
                "Ingress lists in priority order: a worker always takes from the first non-empty one."),
        Setting("CONSERVER_QUEUE_WEIGHTS", "queue_weights", Text(), "",
                "Optional weights instead of strict priority, one per ingress list, e.g. high:6,normal:3,low:1."),
        Setting("TICK_INTERVAL", "tick_interval", Duration("ms", 0.01, 60), "1000",
                "The longest a worker blocks on empty lists."),
        Setting("CONSERVER_BATCH_SIZE", "batch_size", Int(1, 10000), "50", "vCons claimed in one atomic step."),
        Setting("CONSERVER_MAX_DELIVERIES", "max_deliveries", Int(1, 1000), "5",
                "A vCon claimed more often than this (it kills its worker every time) is dead-lettered as poison."),
        Setting("MAX_RETRIES", "max_retries", Int(0, 100), "3",
                "Store failures that survive the store's own retries: retried later this many times, "
                "then dead-lettered."),
        Setting("CONSERVER_RETRY_BACKOFF", "retry_backoff", Duration("s", 0.01, 3600), "2s"),
        Setting("CONSERVER_RETRY_BACKOFF_MAX", "retry_backoff_max", Duration("s", 0.01, DAY), "5m"),
        Setting("SCHEDULER_INTERVAL", "scheduler_interval", Duration("s", 0.1, 60), "1s",
                "How often the scheduler moves due retries back."),
        Setting("CONSERVER_WORKER_HEARTBEAT_TTL", "worker_heartbeat_ttl", Duration("s", 1, 3600), "30s",
                "Worker heartbeat key TTL in Redis; after it expires the orphan sweep requeues the worker's vCons."),
        # vcon-server's names and defaults (common/settings.py), in seconds
        Setting("VCON_REDIS_EXPIRY", "vcon_redis_expiry", Int(0, 3650 * DAY), "3600",
                "`conserver enqueue` into RedisJSON: the body's TTL, as vcon-server's API sets it (0 = none)."),
        Setting("VCON_DLQ_EXPIRY", "vcon_dlq_expiry", Int(0, 3650 * DAY), "604800",
                "A dead-lettered vCon's body gets this TTL, as in vcon-server (0 = it keeps its own)."),
        Setting("VCON_SORTED_SET_NAME", "vcon_sorted_set_name", Text(), "vcons",
                "`conserver enqueue` into RedisJSON adds vcon:{uuid} here, scored by created_at (vcon-server's API)."),
        Setting("CONSERVER_MAX_VCON_BYTES", "max_vcon_bytes", Int(1024, 512 << 20), str(16 << 20),
                "Larger vCons are dead-lettered with reason too_large."),
        Setting("CONSERVER_STRICT_VCON", "strict_vcon", Bool(), "false",
                "true: dead-letter vCons that break a rule of draft-ietf-vcon-vcon-core (the rule is the reason);\n"
                "false: store them and count them in conserver_vcon_nonconforming_total{rule}."),
        Setting("CONSERVER_SUPPORTED_EXTENSIONS", "supported_extensions", OptionalNames(), "",
                "Extensions a vCon's `critical` list may name (draft §4.1.4); any other is refused as\n"
                "unsupported_critical."),
        Setting("DEFAULT_TENANT_CONCURRENCY", "default_tenant_concurrency", Int(0, 1 << 20), "0",
                "In-flight vCons per tenant across all workers and hosts (0 = no cap). The tenant is the id\n"
                "in the body of the attachment whose purpose is \"tenant\". A dead worker's slots expire\n"
                "after CONSERVER_TENANT_SLOT_TTL. Over the cap a vCon is deferred, never dropped."),
        Setting("CONSERVER_TENANT_SLOT_TTL", "tenant_slot_ttl", Duration("s", 1, DAY), "5m"),
        Setting("CONSERVER_RATE_LIMITS", "rate_limits", RateLimits(), "",
                "Rate limits shared by every worker and host through Redis (token buckets). Per store:\n"
                "store:rate-per-second[/burst]; a store answering 429/503 slows everyone down, then recovers."),
        Setting("RATE_LIMIT_MAX", "rate_limit_max", Int(0, 1 << 40), "0",
                "And for all vCons together: at most RATE_LIMIT_MAX per RATE_LIMIT_DURATION. 0 = none."),
        # vcon-server writes this one in milliseconds (60000 = one minute)
        Setting("RATE_LIMIT_DURATION", "rate_limit_duration", Duration("ms", 0.001, DAY), "60000"),
    )),
    ("stores", (
        Setting("CONSERVER_STORAGES", "storages", Stores(), ""),
        Setting("CONSERVER_PARALLEL_STORAGE", "parallel_storage", Bool(), "true",
                "true: write a batch to all stores at once; false: one after another."),
        Setting("CONSERVER_STORE_TIMEOUT", "store_timeout", Duration("s", 0.1, 600), "10s",
                "Every store call has this deadline, enforced by the fan-out (a hung store is abandoned and\n"
                "counts as a failure); transient failures are retried CONSERVER_STORE_RETRIES times with backoff."),
        Setting("CONSERVER_STORE_RETRIES", "store_retries", Int(0, 20), "3"),
        Setting("CONSERVER_STORE_THREADS", "store_threads", Int(1, 256), "32",
                "Threads per store in each worker: S3 PUTs (two per vCon with lookup objects) run\n"
                "concurrently on them, so with a remote S3 the batch takes ceil(PUTs / threads) round trips."),
        Setting("CONSERVER_STORE_RETRY_BACKOFF", "store_retry_backoff", Duration("s", 0.001, 60), "200ms",
                "Pause between those retries: doubling from ..._BACKOFF up to ..._BACKOFF_MAX, with jitter."),
        Setting("CONSERVER_STORE_RETRY_BACKOFF_MAX", "store_retry_backoff_max", Duration("s", 0.001, 600), "2s"),
        Setting("CIRCUIT_BREAKER_THRESHOLD", "circuit_breaker_threshold", Int(1, 10000), "5",
                "Consecutive failures that open a store's circuit breaker, and how long it stays open."),
        # vcon-server writes this one in milliseconds (60000)
        Setting("CIRCUIT_BREAKER_TIMEOUT", "circuit_breaker_timeout", Duration("ms", 0.1, DAY), "60s"),
    )),
    ("PostgreSQL", (
        Setting("POSTGRES_DSN", "postgres_dsn", Url("postgresql", "postgres", optional=True), "",
                aliases=("DATABASE_URL",), needed_by="postgres"),
        Setting("POSTGRES_TABLE", "postgres_table", Identifier(), "vcons"),
        Setting("POSTGRES_POOL_SIZE", "postgres_pool_size", Int(1, 100), "4"),
    )),
    ("S3", (
        Setting("S3_BUCKET", "s3_bucket", Text(), "",
                "Any S3 API: AWS, SeaweedFS, MinIO... Objects: {S3_PREFIX}YYYY/MM/DD/{uuid}.vcon",
                needed_by="s3"),
        Setting("S3_PREFIX", "s3_prefix", Text(), ""),
        Setting("S3_ENDPOINT_URL", "s3_endpoint_url", Url("http", "https", optional=True), ""),
        Setting("S3_CREATE_BUCKET", "s3_create_bucket", Bool(), "false"),
        Setting("S3_LOOKUP_OBJECTS", "s3_lookup_objects", Bool(), "true",
                "Also write vcon-server's pointer objects {S3_PREFIX}lookup/{uuid}.txt (costs a second PUT)."),
        Setting("AWS_ACCESS_KEY_ID", "aws_access_key_id", Text(), ""),
        Setting("AWS_SECRET_ACCESS_KEY", "aws_secret_access_key", Text(), "", secret=True),
        Setting("AWS_REGION", "aws_region", Text(), "us-east-1", aliases=("AWS_DEFAULT_REGION",)),
    )),
    ("Elasticsearch", (
        Setting("ELASTICSEARCH_URL", "elasticsearch_url", Url("http", "https", optional=True), "",
                "Elasticsearch 8/9 or OpenSearch 2/3. Index: {prefix}vcons.", needed_by="elasticsearch"),
        Setting("ELASTICSEARCH_USER", "elasticsearch_user", Text(), "", aliases=("ELASTICSEARCH_USERNAME",)),
        Setting("ELASTICSEARCH_PASSWORD", "elasticsearch_password", Text(), "", secret=True),
        Setting("ELASTICSEARCH_API_KEY", "elasticsearch_api_key", Text(), "", secret=True),
        Setting("ELASTICSEARCH_INDEX_PREFIX", "elasticsearch_index_prefix", Text(), ""),
        Setting("ELASTICSEARCH_PART_INDICES", "elasticsearch_part_indices", Bool(), "true",
                "vcon-server's per-part indices (vcon_parties_{role}, vcon_dialog, ...): its layout, the default."),
        Setting("ELASTICSEARCH_VCON_INDEX", "elasticsearch_vcon_index", Bool(), "false",
                "Also (or instead) conserver's one document per vCon in {prefix}vcons."),
        Setting("CONSERVER_ES_MAX_DERIVED_INDICES", "es_max_derived_indices", Int(1, 100000), "100",
                "Part indices named after content (a role, an attachment purpose, an analysis type) at most;\n"
                "past it a kind's new names go to {prefix}vcon_{kind}_overflow (a WARNING and a metric)."),
        Setting("ELASTICSEARCH_CLOUD_ID", "elasticsearch_cloud_id", Text(), "",
                "Elastic Cloud id (name:base64); ELASTICSEARCH_URL is derived from it (set only one)."),
        Setting("ELASTICSEARCH_CA_CERTS", "elasticsearch_ca_certs", Text(), "",
                "A PEM bundle to verify https against; empty: certifi's bundle."),
        Setting("ELASTICSEARCH_VERIFY_CERTS", "elasticsearch_verify_certs", Bool(), "true",
                "false turns certificate verification off (logged as a warning)."),
    )),
    ("observability", (
        Setting("LOG_LEVEL", "log_level", Choice(LOG_LEVELS, upper=True), "INFO"),
        Setting("LOG_FORMAT", "log_format", Choice(LOG_FORMATS), "text"),
        Setting("LOG_FILE", "log_file", Text(), "", "Empty: stderr. A file is reopened on SIGUSR1 (logrotate)."),
        Setting("CONSERVER_METRICS_PORT", "metrics_port", Int(0, 65535), "0",
                "Prometheus /metrics, /healthz, /readyz and /status (0 = off)."),
        Setting("CONSERVER_METRICS_HOST", "metrics_host", Text(), "127.0.0.1"),
        Setting("CONSERVER_ADMIN_TOKEN", "admin_token", Text(), "",
                "Lets the status page requeue and purge dead letters: each such POST must carry this token\n"
                "(header X-Conserver-Token or form field token). Empty: the page is read-only.", secret=True),
        Setting("CONSERVER_METRICS_LOG_INTERVAL", "metrics_log_interval", Duration("s", 0, DAY), "30s",
                "A metrics log line this often (0 = off)."),
    )),
)

SETTINGS: tuple[Setting, ...] = tuple(s for _, group in SECTIONS for s in group)
