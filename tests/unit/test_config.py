"""Configuration: parsed once, bad values fail with exit 2 and one line naming them."""
from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest

from conserver.config import SETTINGS, Config, ConfigError, config_from_mapping, describe, env_example, load_config, redact_url
from tests.helpers.proc import ROOT


def test_defaults():
    c = config_from_mapping({})
    assert c.workers == 1 and c.start_method == "" and c.parallel_storage is True
    assert c.ingress_lists == ("default",) and c.graceful_timeout == 25 and c.job_timeout == 300
    assert c.tick_interval == 1.0 and c.batch_size == 50 and c.max_deliveries == 5 and c.max_retries == 3
    assert c.circuit_breaker_threshold == 5 and c.circuit_breaker_timeout == 60
    assert [p.name for p in c.pools] == ["default"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.workers = 3  # type: ignore[misc]
    # declared once: a Config built by hand has the same defaults as one read from nothing
    assert Config().replace(pools=c.pools) == c


def test_values_and_units():
    c = config_from_mapping({
        "CONSERVER_WORKERS": "8", "CONSERVER_START_METHOD": "Spawn", "CONSERVER_PARALLEL_STORAGE": "no",
        "CONSERVER_INGRESS_LISTS": "high, normal,low", "TICK_INTERVAL": "250", "JOB_TIMEOUT": "2m",
        "CIRCUIT_BREAKER_TIMEOUT": "60000", "SCHEDULER_INTERVAL": "500ms", "LOG_LEVEL": "debug",
        "CONSERVER_QUEUE_WEIGHTS": "high:6,normal:3,low:1",
    })
    assert c.workers == 8 and c.start_method == "spawn" and c.parallel_storage is False
    assert c.ingress_lists == ("high", "normal", "low")
    assert c.tick_interval == 0.25 and c.job_timeout == 120 and c.circuit_breaker_timeout == 60
    assert c.scheduler_interval == 0.5 and c.log_level == "DEBUG"
    assert c.pools[0].weights == (("high", 6), ("normal", 3), ("low", 1))


def test_auto_workers_is_bounded_by_cpus_and_memory():
    c = config_from_mapping({"CONSERVER_WORKERS": "auto"})
    import os
    assert 1 <= c.workers <= len(os.sched_getaffinity(0))
    huge = config_from_mapping({"CONSERVER_WORKERS": "auto", "CONSERVER_WORKER_MEMORY_MB": str(1 << 20)})
    assert huge.workers == 1  # less than 1 TiB available: memory allows only one


BAD = [
    ("CONSERVER_WORKERS", "0", "1 to 256, or auto"),
    ("CONSERVER_WORKERS", "257", "1 to 256, or auto"),
    ("CONSERVER_WORKERS", "many", "1 to 256, or auto"),
    ("CONSERVER_START_METHOD", "thread", "fork, spawn, forkserver"),
    ("CONSERVER_PARALLEL_STORAGE", "maybe", "true or false"),
    ("REDIS_URL", "http://x", "redis://"),
    ("CONSERVER_INGRESS_LISTS", "a,,a", "distinct names"),
    ("CONSERVER_INGRESS_LISTS", "bad name", "distinct names"),
    ("TICK_INTERVAL", "-5", "a duration"),
    ("LOG_LEVEL", "LOUD", "DEBUG, INFO"),
    ("LOG_FORMAT", "xml", "text, json"),
    ("CONSERVER_GRACEFUL_TIMEOUT", "soon", "a duration"),
    ("JOB_TIMEOUT", "0", "a duration"),
    ("CONSERVER_BATCH_SIZE", "0", "1 to 10000"),
    ("CONSERVER_STORAGES", "postgres,mongo", "package.module:Class"),
    ("CONSERVER_QUEUE_WEIGHTS", "default:0", "list:weight"),
    ("CONSERVER_AUTOSCALE", "4,2", "min,max"),
]


@pytest.mark.parametrize("var,value,allowed", BAD)
def test_bad_values_name_variable_value_and_allowed(var, value, allowed):
    with pytest.raises(ConfigError) as err:
        config_from_mapping({var: value})
    msg = str(err.value)
    assert var in msg and repr(value) in msg and allowed in msg
    assert "\n" not in msg


def test_store_needs_its_settings():
    with pytest.raises(ConfigError, match="POSTGRES_DSN"):
        config_from_mapping({"CONSERVER_STORAGES": "postgres"})


def _cli(args, env, cwd):
    return subprocess.run([sys.executable, "-m", "conserver", *args], env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), **env},
                          cwd=cwd, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("var,value,allowed", [BAD[0], BAD[3], BAD[9], BAD[10]])
def test_cli_exit_code_2_with_one_line(tmp_path, var, value, allowed):
    r = _cli(["run"], {var: value}, tmp_path)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and var in lines[0] and allowed in lines[0]


def test_sources_precedence(tmp_path):
    (tmp_path / ".env").write_text("CONSERVER_WORKERS=2\nCONSERVER_BATCH_SIZE=10\nLOG_LEVEL=ERROR\n")
    extra = tmp_path / "extra.env"
    extra.write_text("CONSERVER_BATCH_SIZE=20\nLOG_LEVEL=WARNING\n")
    c = load_config({"LOG_LEVEL": "DEBUG", "CONSERVER_WORKERS": "3"}, env_file=str(extra),
                    dotenv_path=str(tmp_path / ".env"))
    # .env only fills gaps; the environment beats .env; the named file beats both
    assert (c.workers, c.batch_size, c.log_level) == (3, 20, "WARNING")
    c = load_config({"LOG_LEVEL": "DEBUG"}, dotenv_path=str(tmp_path / ".env"))
    assert (c.workers, c.batch_size, c.log_level) == (2, 10, "DEBUG")
    with pytest.raises(ConfigError, match="CONSERVER_ENV_FILE"):
        load_config({}, env_file=str(tmp_path / "missing.env"), dotenv_path=None)


def test_redaction_and_check_config(tmp_path):
    assert redact_url("redis://:s3cret@h:6379/0") == "redis://:***@h:6379/0"
    assert redact_url("postgresql://u:pw@db/x") == "postgresql://u:***@db/x"
    assert redact_url("redis://h:6379") == "redis://h:6379"
    # issue 12: the password as a query parameter, in a URL and in a libpq keyword string
    assert (redact_url("postgresql://u@db:5432/x?sslmode=require&password=pw1&sslpassword=pw2&Sslkey=/k")
            == "postgresql://u@db:5432/x?sslmode=require&password=***&sslpassword=***&Sslkey=***")
    assert redact_url("rediss://:a@h/0?password=p%40ss&db=1") == "rediss://:***@h/0?password=***&db=1"
    assert redact_url("host=db password='a b' sslpassword=x dbname=v") == "host=db password=*** sslpassword=*** dbname=v"
    assert redact_url("redis://u:pw@h:notaport/0") == "redis://u:***@h:notaport/0"
    r = _cli(["check-config"], {"REDIS_URL": "redis://user:s3cret@h:6379/0", "CONSERVER_STORAGES": "s3",
                                "S3_BUCKET": "b", "AWS_SECRET_ACCESS_KEY": "topsecret"}, tmp_path)
    assert r.returncode == 0, r.stderr
    assert "s3cret" not in r.stdout and "topsecret" not in r.stdout
    assert "redis://user:***@h:6379/0" in r.stdout
    r = _cli(["check-config"], {"REDIS_URL": "redis://h:6379/0?password=qs3cret", "CONSERVER_STORAGES": "postgres",
                                "POSTGRES_DSN": "postgresql://u@db/x?password=pgs3cret&sslpassword=keys3cret"}, tmp_path)
    assert r.returncode == 0, r.stderr
    assert "s3cret" not in r.stdout and "POSTGRES_DSN=postgresql://u@db/x?password=***&sslpassword=***" in r.stdout


def test_pools_file(tmp_path):
    f = tmp_path / "pools.toml"
    f.write_text('[pools.high]\nworkers = 3\ningress_lists = ["high"]\n'
                 '[pools.rest]\nworkers = 1\ningress_lists = ["normal", "low"]\nweights = {normal = 3, low = 1}\n')
    c = config_from_mapping({"CONSERVER_POOLS_FILE": str(f)})
    assert [(p.name, p.workers, p.ingress_lists) for p in c.pools] == [("high", 3, ("high",)), ("rest", 1, ("normal", "low"))]
    assert c.total_workers == 4 and c.pools[1].weights == (("normal", 3), ("low", 1))
    f.write_text("[pools.x]\nworkers = 0\n")
    with pytest.raises(ConfigError, match=r"pools.x\]\.workers"):
        config_from_mapping({"CONSERVER_POOLS_FILE": str(f)})


def test_env_example_is_generated_from_the_table():
    import re
    example = (ROOT / "conf" / "conserver.env.example").read_text()
    assert example == env_example(), "regenerate it: python -m conserver.config > conf/conserver.env.example"
    values = dict(re.findall(r"^([A-Z][A-Z0-9_]+)=(.*)$", example, re.M))
    assert list(values) == [s.env for s in SETTINGS]
    assert len({s.field for s in SETTINGS}) == len(SETTINGS)
    # and the documented defaults are the defaults: the example parses to the same config
    assert config_from_mapping(values) == config_from_mapping({})


def test_check_config_output_reads_back_to_the_same_config():
    import re
    c = config_from_mapping({
        "CONSERVER_WORKERS": "3", "CONSERVER_START_METHOD": "spawn", "JOB_TIMEOUT": "2m", "TICK_INTERVAL": "250",
        "CONSERVER_INGRESS_LISTS": "high,normal", "CONSERVER_QUEUE_WEIGHTS": "high:3,normal:1",
        "CONSERVER_RATE_LIMITS": "elasticsearch:200/400,s3:0.5", "REDIS_SENTINELS": "h1:26379,h2:26380",
        "REDIS_SENTINEL_MASTER": "main", "CONSERVER_AUTOSCALE": "2,5", "CONSERVER_STORAGES": "null,tests.x:Store",
        "POSTGRES_TABLE": "t", "LOG_LEVEL": "warning", "S3_PREFIX": "p/", "CONSERVER_STORE_RETRY_BACKOFF": "150ms",
        "RATE_LIMIT_DURATION": "1500", "CONSERVER_MAX_WORKER_AGE": "1h", "DATABASE_URL": "postgresql://db/x",
        "CONSERVER_ENABLE_SCHEDULER": "off",
    })
    text = describe(c)
    assert "POSTGRES_DSN=postgresql://db/x" in text and "# chain default: workers 2, lists high,normal" in text
    assert config_from_mapping(dict(re.findall(r"^([A-Z][A-Z0-9_]+)=(.*)$", text, re.M))) == c


def test_aliases_fill_in_when_the_main_name_is_unset():
    assert config_from_mapping({"DATABASE_URL": "postgresql://db/a"}).postgres_dsn == "postgresql://db/a"
    both = {"POSTGRES_DSN": "postgresql://db/main", "DATABASE_URL": "postgresql://db/alias"}
    assert config_from_mapping(both).postgres_dsn == "postgresql://db/main"
    assert config_from_mapping({"ENABLE_SCHEDULER": "false"}).enable_scheduler is False
    assert config_from_mapping({"AWS_DEFAULT_REGION": "eu-west-3"}).aws_region == "eu-west-3"
    assert config_from_mapping({"ELASTICSEARCH_USERNAME": "u"}).elasticsearch_user == "u"
    with pytest.raises(ConfigError, match="DATABASE_URL='mysql://db/x'"):  # the name that held the bad value
        config_from_mapping({"DATABASE_URL": "mysql://db/x"})


def test_rate_limits_zero_is_unlimited():
    def limits(raw):
        return config_from_mapping({"CONSERVER_RATE_LIMITS": raw}).rate_limits

    assert limits("elasticsearch:200/400,s3:50") == (("elasticsearch", 200.0, 400.0), ("s3", 50.0, 50.0))
    assert limits(" postgres : 0.5 / 2 , ") == (("postgres", 0.5, 2.0),)
    assert limits(" ,") == ()
    assert limits("elasticsearch:0") == (("elasticsearch", 0.0, 0.0),)  # 0: unlimited, as SharedTokenBucket
    assert limits("tests.helpers.faulty_store:FaultyStore:50/10") == (("tests.helpers.faulty_store:FaultyStore", 50.0, 10.0),)
    for bad in ("s3", "s3:", ":5", "s3:abc", "s3:-1", "s3:nan", "s3:inf", "s3:5/x", "s3:5/0", "s3:5/", "e s:5",
                "s3:1,s3:2", "mongo:5"):
        with pytest.raises(ConfigError) as err:
            limits(bad)
        assert "CONSERVER_RATE_LIMITS" in str(err.value) and "store:rate[/burst]" in str(err.value), bad
    c = config_from_mapping({"RATE_LIMIT_MAX": "5", "RATE_LIMIT_DURATION": "60000"})  # vcon-server's ms
    assert c.vcon_rate == pytest.approx(5 / 60) and config_from_mapping({}).vcon_rate == 0.0
    for var, value in (("RATE_LIMIT_MAX", "-1"), ("RATE_LIMIT_MAX", "1.5"), ("RATE_LIMIT_DURATION", "0")):
        with pytest.raises(ConfigError, match=var):
            config_from_mapping({var: value})


def test_lists_and_stores_used_are_the_union_over_pools():
    c = config_from_mapping({"CONSERVER_POOLS": "a=1:x,y:null;b=2:y,z:null,s3", "S3_BUCKET": "b",
                             "CONSERVER_STORAGES": "postgres"})  # no pool uses postgres: no POSTGRES_DSN needed
    assert c.ingress_lists_used == ("x", "y", "z") and c.stores_used == ("null", "s3")
    with pytest.raises(ConfigError, match="S3_BUCKET"):
        config_from_mapping({"CONSERVER_POOLS": "a=1:x:null;b=1:y:s3"})
    assert (c.total_workers, c.pools[0].links, c.pools[0].egress_lists) == (3, (), ())
    assert Config(ingress_lists=("q",), storages=("null",)).ingress_lists_used == ("q",)
    assert Config(storages=("null",)).stores_used == ("null",)
