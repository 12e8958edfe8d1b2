"""Chains in the configuration: a vcon-server config.yml read unchanged, its errors (exit 2),
the TOML pools with links, and the seeds' variables (WORKER_MODE, WORKER_CONCURRENCY,
WORKER_SCALE_FACTOR, --tries/--max-time/--sleep) mapped onto chains."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import yaml

from conserver import cli
from conserver.config import ConfigError, config_from_mapping

EXAMPLE = {
    "ingress_auth": {"customer_data": "customer-api-key-12345"},
    "imports": {"custom_utility": {"module": "custom_utils", "pip_name": "custom-utils-package"}},
    "links": {"tag": {"module": "links.tag", "ingress-lists": [], "options": {"tags": ["Geddy"]}},
              "webhook": {"module": "links.webhook", "options": {"webhook-urls": ["http://127.0.0.1:9/h"],
                                                                 "headers": {"Authorization": "Bearer s3cret"}}},
              "custom_pypi_link": {"module": "custom_link_module", "pip_name": "custom-link-package"}},
    "tracers": {"jlinc": {"module": "tracers.jlinc"}},
    "storages": {"mongo": {"module": "storage.mongo", "options": {"url": "mongodb://mongo:27017/"}},
                 "postgres": {"module": "storage.postgres", "options": {"user": "u", "password": "p@ss", "host": "db",
                                                                        "port": "5432", "database": "vcons"}},
                 "s3": {"module": "storage.s3", "options": {"aws_bucket": "b", "aws_region": "eu-west-1",
                                                            "s3_path": "vcons", "endpoint_url": None}},
                 "es": {"module": "storage.elasticsearch", "options": {"url": "http://es:9200", "index_prefix": "p_"}}},
    "chains": {"sample_chain": {"links": ["tag", "webhook"], "ingress_lists": ["test_list"],
                                "storages": ["postgres", "s3", "es"], "egress_lists": ["test_output"], "enabled": 1},
               "second": {"ingress_lists": ["test_output"], "storages": ["postgres"], "workers": 3, "enabled": 1},
               "custom_chain": {"links": ["custom_pypi_link"], "ingress_lists": ["custom_test_list"],
                                "storages": ["mongo"], "enabled": 0}},
}


@pytest.fixture
def write(tmp_path):
    def write_doc(doc, name="config.yml") -> str:
        path = tmp_path / name
        path.write_text(doc if isinstance(doc, str) else yaml.safe_dump(doc))
        return str(path)
    return write_doc


def test_an_example_config_yml_becomes_chains_and_store_settings(write):
    path = write(EXAMPLE)
    cfg = config_from_mapping({"CONSERVER_CONFIG_FILE": path, "CONSERVER_WORKERS": "2"})
    main, second = cfg.pools
    assert (main.name, main.workers, main.ingress_lists, main.storages, main.egress_lists) == (
        "sample_chain", 2, ("test_list",), ("postgres", "s3", "elasticsearch"), ("test_output",))
    assert [(link.name, link.module) for link in main.links] == [("tag", "links.tag"), ("webhook", "links.webhook")]
    assert (second.workers, second.links, second.storages) == (3, (), ("postgres",))
    assert cfg.postgres_dsn == "postgresql://u:p%40ss@db:5432/vcons"
    assert (cfg.s3_bucket, cfg.aws_region, cfg.s3_prefix, cfg.s3_endpoint_url) == ("b", "eu-west-1", "vcons/", "")
    assert (cfg.elasticsearch_url, cfg.elasticsearch_index_prefix, cfg.elasticsearch_part_indices) == (
        "http://es:9200", "p_", True)
    notes = " ".join(cfg.notes)
    assert "ignoring ingress_auth" in notes and "tracers" in notes and "imports" in notes
    assert "not used by an enabled chain, not loaded: mongo, custom_pypi_link" in notes


def test_the_environment_wins_over_config_yml_store_options(write):
    cfg = config_from_mapping({"CONSERVER_CONFIG_FILE": write(EXAMPLE), "POSTGRES_DSN": "postgresql://env/x",
                               "AWS_REGION": "us-east-2"})
    assert (cfg.postgres_dsn, cfg.aws_region, cfg.s3_bucket) == ("postgresql://env/x", "us-east-2", "b")


def _broken(change) -> dict:
    doc = yaml.safe_load(yaml.safe_dump(EXAMPLE))
    change(doc)
    return doc


@pytest.mark.parametrize("change, message", [
    (lambda d: d["chains"]["sample_chain"]["storages"].append("mongo"),
     "storages.mongo (used by chain sample_chain): 'storage.mongo': not a storage conserver can run"),
    (lambda d: d["links"]["tag"].update(module="links.transcribe"),
     "chains.sample_chain link 'tag': 'links.transcribe': not a link conserver can run"),
    (lambda d: d["chains"]["sample_chain"]["links"].append("nope"), "'nope': allowed names of links declared"),
    (lambda d: d["chains"]["second"]["ingress_lists"].append("test_list"), "chain sample_chain reads it too"),
    (lambda d: d["storages"].update(pg2={"module": "storage.postgres", "options": {"host": "other"}})
     or d["chains"]["second"].update(storages=["pg2"]), "one store of each kind"),
    (lambda d: d["storages"]["es"]["options"].update(ca_certs="/ca.pem"), "system's CA store"),
    (lambda d: d["storages"]["s3"]["options"].update(bucket="x"), "options of s3: aws_access_key_id"),
    (lambda d: d["chains"]["second"].update(ingress_lists=[]), "at least one ingress list"),
    (lambda d: d["chains"]["second"].update(enabled="maybe"), "1 or 0"),
])
def test_a_config_yml_conserver_cannot_run_is_a_config_error_naming_it(write, change, message):
    with pytest.raises(ConfigError, match=None) as err:
        config_from_mapping({"CONSERVER_CONFIG_FILE": write(_broken(change))})
    assert message in str(err.value)


@pytest.mark.parametrize("text, message", [
    ("chains: [1\n", "a YAML file"), ("- a list\n", "a YAML mapping"), ("chains: {}\n", "at least one enabled chain")])
def test_config_yml_parse_errors(write, text, message):
    with pytest.raises(ConfigError, match=message):
        config_from_mapping({"CONSERVER_CONFIG_FILE": write(text)})


def test_a_bad_config_yml_exits_2_from_the_command_line(write, tmp_path):
    path = write("chains: [1\n")
    for args in (["check-config", "--config", path], ["run", "--config", path]):
        done = subprocess.run([sys.executable, "-m", "conserver", *args], cwd=tmp_path, capture_output=True, text=True,
                              timeout=60, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": ":".join(sys.path)})
        assert done.returncode == 2 and "CONSERVER_CONFIG_FILE" in done.stderr


def test_toml_pools_with_links_and_egress_are_chains(write):
    path = write(textwrap.dedent("""\
        [links.tag]
        module = "links.tag"
        options = { tags = ["x"] }
        [pools.main]
        workers = 2
        ingress_lists = ["high", "low"]
        links = ["tag"]
        egress_lists = ["done"]
    """), "pools.toml")
    (pool,) = config_from_mapping({"CONSERVER_POOLS_FILE": path}).pools
    assert (pool.links[0].options, pool.egress_lists) == ({"tags": ["x"]}, ("done",))
    with pytest.raises(ConfigError, match="both describe the chains"):
        config_from_mapping({"CONSERVER_POOLS_FILE": path, "CONSERVER_CONFIG_FILE": write(EXAMPLE)})


def _chains(env) -> list[tuple[str, int, tuple[str, ...]]]:
    return [(p.name, p.workers, p.ingress_lists) for p in config_from_mapping(env).pools]


@pytest.mark.parametrize("env, chains", [
    ({"WORKER_MODE": "thin"}, [("thin", 1, ("high", "normal", "low"))]),
    ({"WORKER_MODE": "default", "CONSERVER_WORKERS": "3"}, [("default", 3, ("high", "normal", "low"))]),
    ({"WORKER_MODE": "default", "CONSERVER_INGRESS_LISTS": "a,b"}, [("default", 1, ("a", "b"))]),
    ({"WORKER_MODE": "specialized", "WORKER_PRIORITIES": "high"}, [("high", 1, ("high",))]),
    ({"WORKER_MODE": "specialized"}, [("high", 1, ("high",)), ("normal", 1, ("normal",)), ("low", 1, ("low",))]),
    ({"WORKER_MODE": "job-specialized", "WORKER_JOB_TYPES": "reports,uploads", "CONSERVER_WORKERS": "2"},
     [("reports", 2, ("reports",)), ("uploads", 2, ("uploads",))]),
    ({"WORKER_MODE": "scheduler-only"}, [("default", 0, ("default",))]),
    ({"WORKER_SCALE_FACTOR": "2.5", "CONSERVER_WORKERS": "3"}, [("default", 8, ("default",))]),
    ({"CONSERVER_POOLS": "hi=2:high;rest=4:normal,low", "WORKER_MODE": "specialized", "WORKER_PRIORITIES": "low"},
     [("rest", 4, ("low",))]),
    ({"CONSERVER_POOLS": "hi=2:high;rest=4:normal,low", "WORKER_MODE": "thin"}, [("hi", 1, ("high",)),
                                                                                 ("rest", 1, ("normal", "low"))]),
])
def test_seed_001_modes_and_the_scale_factor_shape_the_chains(env, chains):
    assert _chains(env) == chains


def test_modes_select_declared_chains_by_name(write):
    env = {"CONSERVER_CONFIG_FILE": write(EXAMPLE), "WORKER_MODE": "job-specialized", "WORKER_JOB_TYPES": "second"}
    assert _chains(env) == [("second", 3, ("test_output",))]
    assert config_from_mapping({"WORKER_MODE": "scheduler-only"}).enable_scheduler is True
    with pytest.raises(ConfigError, match="names of chains"):
        config_from_mapping({**env, "WORKER_JOB_TYPES": "third"})


@pytest.mark.parametrize("env, message", [
    ({"WORKER_PRIORITIES": "high"}, "only together with WORKER_MODE"),
    ({"WORKER_MODE": "specialized", "WORKER_PRIORITIES": "high", "CONSERVER_INGRESS_LISTS": "low"},
     "the same lists as CONSERVER_INGRESS_LISTS"),
    ({"WORKER_MODE": "job-specialized"}, "the chains to run"),
    ({"WORKER_MODE": "turbo"}, "thin, default, specialized"),
    ({"WORKER_CONCURRENCY": "auto"}, "CONSERVER_WORKERS=auto"),
    ({"WORKER_CONCURRENCY": "5", "CONSERVER_VCON_CONCURRENCY": "8"}, "set one"),
])
def test_what_the_seeds_variables_cannot_mean_is_refused(env, message):
    with pytest.raises(ConfigError, match=message):
        config_from_mapping(env)


def test_worker_concurrency_is_the_vcons_in_flight_per_worker():
    assert config_from_mapping({"WORKER_CONCURRENCY": "20"}).vcon_concurrency == 20
    assert config_from_mapping({}).vcon_concurrency == 1  # vcon-server's default
    assert config_from_mapping({}).vcon_dlq_expiry == 604800


def test_seed_004_breaker_settings_reach_the_links_when_set(write):
    cfg = config_from_mapping({"CONSERVER_CONFIG_FILE": write(EXAMPLE), "CIRCUIT_BREAKER_THRESHOLD": "7",
                               "CIRCUIT_BREAKER_TIMEOUT": "15000"})
    assert cfg.pools[0].links[0].policy_defaults == {"circuit_breaker_failures": 7, "circuit_breaker_reset": 15.0}
    assert config_from_mapping({"CONSERVER_CONFIG_FILE": write(EXAMPLE)}).pools[0].links[0].policy_defaults == {}


def test_seed_000_flags_of_run(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    args = cli.build_parser().parse_args(["run", "--tries", "3", "--max-time", "3600", "--sleep", "3"])
    cfg = cli._load(args)
    assert (cfg.max_retries, cfg.max_worker_age, cfg.tick_interval) == (2, 3600.0, 3.0)


def test_check_config_json_hides_link_secrets(write, capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["check-config", "--json", "--config", write(EXAMPLE)]) == 0
    out = capsys.readouterr().out
    assert "s3cret" not in out and '"Authorization": "***"' in out and '"name": "sample_chain"' in out
