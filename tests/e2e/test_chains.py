"""Chains end to end from a vcon-server config.yml as a vcon-server user writes it: real
supervisor and workers, Redis, PostgreSQL, S3, OpenSearch, and a local HTTP server for the
webhook. The first chain's egress list is the second chain's ingress list."""

from __future__ import annotations

import collections
import json
import os
import random
import subprocess
import sys
import textwrap
import urllib.request
from urllib.parse import unquote, urlsplit

import orjson
import pytest

from conserver.config import config_from_mapping
from conserver.dev.devstack import free_port
from conserver.dev.samples import sample_vcon
from conserver.queue.admin import QueueAdmin
from conserver.queue.client import make_redis
from tests.e2e.test_storage import expected_fetch
from tests.helpers.proc import ROOT, wait_for
from tests.helpers.stores import StoreReader, enqueue_samples, wait_drained
from tests.helpers.vcon_server_reads import vcon_server_view
from tests.links.http_stub import StubServer

# vcon-server's example_config.yml, with its storages pointed at the test's servers, the
# webhook at the test's stub, and one link of the user's by module path and one by entry point.
CONFIG_YML = """\
---
ingress_auth:
  test_list: "customer-api-key-12345"
imports:
  requests_import:
    module: requests
links:
  tag:
    module: links.tag
    ingress-lists: []
    egress-lists: []
    options:
      tags:
      - Geddy
      - Alex
      - The Professor
  keep:
    module: links.jq_link
    options:
      filter: '.subject != "drop me"'
  webhook:
    module: links.webhook
    options:
      webhook-urls:
      - {hook}
  stamp:
    module: tests.helpers.links:Stamp
    options:
      name: downstream
  acme:
    module: acme.stamp
  mongo_link_nobody_uses:
    module: custom_link_module
    pip_name: custom-link-package
tracers: {{}}
storages:
  mongo:
    module: storage.mongo
    options:
      url: mongodb://root:example@mongo:27017/
  postgres:
    module: storage.postgres
    options:
      user: {pg_user}
      password: '{pg_password}'
      host: {pg_host}
      port: '{pg_port}'
      database: {pg_database}
  s3:
    module: storage.s3
    options:
      aws_access_key_id: {s3_key}
      aws_secret_access_key: {s3_secret}
      aws_bucket: {s3_bucket}
      aws_region: {s3_region}
      endpoint_url: {s3_endpoint}
  elasticsearch:
    module: storage.elasticsearch
    options:
      url: {es_url}
      index_prefix: {es_prefix}
chains:
  sample_chain:
    links:
    - tag
    - keep
    - webhook
    ingress_lists:
    - test_list
    storages:
    - postgres
    - s3
    - elasticsearch
    egress_lists:
    - test_output
    - audit
    enabled: 1
  downstream_chain:
    links:
    - stamp
    - acme
    ingress_lists:
    - test_output
    storages:
    - postgres
    egress_lists:
    - final_output
    enabled: 1
  custom_chain:
    links:
    - mongo_link_nobody_uses
    ingress_lists:
    - custom_test_list
    storages:
    - mongo
    egress_lists:
    - custom_output
    enabled: 0
"""

ACME = textwrap.dedent("""\
    def run(vcon, ctx, options):
        vcon["acme"] = "by entry point"
        return vcon
""")


def _entry_point_package(site) -> None:
    """What `pip install acme-links` leaves on the path: the module and its entry point."""
    (site / "acme_stamp_link.py").write_text(ACME)
    info = site / "acme_links-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-links\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[conserver.links]\nacme.stamp = acme_stamp_link\n")


def _config_yml(stack_env: dict[str, str], hook: str) -> str:
    pg = urlsplit(stack_env["POSTGRES_DSN"])
    return CONFIG_YML.format(
        hook=hook, pg_user=unquote(pg.username or ""), pg_password=unquote(pg.password or ""), pg_host=pg.hostname,
        pg_port=pg.port, pg_database=pg.path.lstrip("/"), s3_key=stack_env["AWS_ACCESS_KEY_ID"],
        s3_secret=stack_env["AWS_SECRET_ACCESS_KEY"], s3_bucket=stack_env["S3_BUCKET"],
        s3_region=stack_env["AWS_REGION"], s3_endpoint=stack_env["S3_ENDPOINT_URL"],
        es_url=stack_env["ELASTICSEARCH_URL"], es_prefix=stack_env["ELASTICSEARCH_INDEX_PREFIX"])


def _tags(doc: dict) -> list[str]:
    return [t for a in doc.get("attachments", []) if a.get("purpose") == "tags" for t in json.loads(a["body"])]


@pytest.fixture
def chains_env(stack_env, tmp_path):
    """The environment of a vcon-server deployment: Redis, the workers, the config file.
    The stores come from config.yml alone (the table name is the test's own)."""
    site = tmp_path / "site"
    site.mkdir()
    _entry_point_package(site)
    hook = StubServer().bind().serve()
    path = tmp_path / "config.yml"
    path.write_text(_config_yml(stack_env, f"{hook.url}/hook"))
    env = {"REDIS_URL": stack_env["REDIS_URL"], "POSTGRES_TABLE": stack_env["POSTGRES_TABLE"],
           "CONSERVER_CONFIG_FILE": str(path), "CONSERVER_WORKERS": "2", "CONSERVER_VCON_CONCURRENCY": "4",
           "PYTHONPATH": f"{ROOT}{os.pathsep}{site}"}
    yield env, hook, site
    hook.close()


def test_two_chains_from_a_vcon_server_config_yml(start_conserver, chains_env, monkeypatch):
    env, hook, site = chains_env
    monkeypatch.syspath_prepend(str(site))  # this process reads the config too (the entry point)
    cfg = config_from_mapping(env)
    assert [(p.name, p.workers, p.egress_lists) for p in cfg.pools] == [
        ("sample_chain", 2, ("test_output", "audit")), ("downstream_chain", 2, ("final_output",))]
    queue = QueueAdmin(make_redis(cfg), ("test_list", "test_output"))
    kept = enqueue_samples(queue, 60, "test_list", seed=3)
    rng = random.Random(4)
    dropped = [{**sample_vcon(rng), "subject": "drop me"} for _ in range(10)]
    queue.enqueue("test_list", [(v["uuid"], orjson.dumps(v)) for v in dropped])
    port = free_port()
    c = start_conserver({**env, "CONSERVER_METRICS_PORT": str(port)})
    c.wait_log("ignoring ingress_auth")
    r = queue.redis
    wait_for(lambda: r.llen("final_output") >= len(kept), 90, what="the downstream chain's egress")
    wait_drained(queue, 30)
    kept_ids = {v["uuid"] for v in kept}
    for name in ("audit", "final_output"):  # exactly once per success, nothing for a halted vCon
        pushed = [u.decode() for u in r.lrange(name, 0, -1)]
        assert collections.Counter(pushed) == collections.Counter(kept_ids), name
    posts = [req.body["uuid"] for req in hook.received("/hook")]
    assert collections.Counter(posts) == collections.Counter(kept_ids)  # one POST per success
    assert all(_tags(req.body) == ["Geddy:Geddy", "Alex:Alex", "The Professor:The Professor"]
               for req in hook.received("/hook"))
    reader = StoreReader(cfg)
    try:
        for v in kept[:10]:
            first = {**v, "attachments": v["attachments"] + [
                {"purpose": "tags", "body": json.dumps(["Geddy:Geddy", "Alex:Alex", "The Professor:The Professor"]),
                 "encoding": "json"}]}
            # the stores hold what vcon-server would: legacy field names normalized
            assert reader.fetch("s3", v["uuid"]) == vcon_server_view(first)
            assert reader.fetch("elasticsearch", v["uuid"]) == expected_fetch(reader.sinks["elasticsearch"], first)
            # the downstream chain wrote the same table after the first: its links' changes on top
            assert reader.fetch("postgres", v["uuid"]) == vcon_server_view(
                {**first, "stamps": ["downstream"], "acme": "by entry point"})
            assert orjson.loads(r.get(f"vcon:{v['uuid']}")) == {**first, "stamps": ["downstream"],
                                                                "acme": "by entry point"}
        for v in dropped:
            assert reader.fetch("postgres", v["uuid"]) is None and reader.fetch("s3", v["uuid"]) is None
            # halted by `keep`: the body keeps what `tag` before it did, as vcon-server's links leave it
            assert _tags(orjson.loads(r.get(f"vcon:{v['uuid']}"))) == ["Geddy:Geddy", "Alex:Alex",
                                                                      "The Professor:The Professor"]
    finally:
        reader.close()
    assert queue.depths()["dlq"] == {"test_list": 0, "test_output": 0}
    log = c.log()
    assert "not used by an enabled chain, not loaded: mongo, mongo_link_nobody_uses" in log
    assert "[sample_chain]" in " ".join(c.worker_titles().values())
    metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    for line in ('conserver_chain_vcons_total{chain="sample_chain",outcome="processed"} 60.0',
                 'conserver_chain_vcons_total{chain="sample_chain",outcome="halted"} 10.0',
                 'conserver_chain_vcons_total{chain="downstream_chain",outcome="processed"} 60.0',
                 'conserver_link_calls_total{chain="sample_chain",link="keep",outcome="halted"} 10.0',
                 'conserver_link_calls_total{chain="sample_chain",link="webhook",outcome="ok"} 60.0',
                 'conserver_link_seconds_count{chain="downstream_chain",link="acme"} 60.0'):
        assert line in metrics, line
    status = subprocess.run([sys.executable, "-m", "conserver", "status"], capture_output=True, text=True, timeout=60,
                            env={**os.environ, **env}, cwd=site)
    assert "sample_chain (tag,keep,webhook)" in status.stdout and "downstream_chain (stamp,acme)" in status.stdout


def test_a_config_yml_naming_a_store_conserver_cannot_run_stops_with_exit_2(start_conserver, chains_env):
    env, _, _ = chains_env
    path = env["CONSERVER_CONFIG_FILE"]
    with open(path) as fh:
        text = fh.read()
    with open(path, "w") as fh:
        fh.write(text.replace("    - postgres\n    - s3\n", "    - mongo\n    - s3\n", 1))
    c = start_conserver(env)
    assert c.wait(30) == 2
    assert "storages.mongo (used by chain sample_chain): 'storage.mongo': not a storage conserver can run" in c.log()
