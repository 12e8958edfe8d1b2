"""Finding links (built-in, dotted import path, entry point), the errors the config layer turns
into exit 2, the ``conserver:`` policy options, and the runner's contract: deadline, copies,
return values, halting, concurrent use."""

from __future__ import annotations

import textwrap
import threading
import time

import pytest

from conserver.links import (BUILTIN_LINKS, ENTRY_POINT_GROUP, LinkFailed, LinkLoadError, LinkPolicy, configure_link,
                             load_link, run_links)
from conserver.links.policy import parse_policy, parse_rate
from tests.links.http_stub import StubServer
from tests.links.helpers import call_vcon, runner


USER_LINK = '''
default_options = {"mask": "***", "fields": ["tel"]}

def run(vcon, ctx, options):
    for party in vcon.get("parties", []):
        for field in options["fields"]:
            if field in party:
                party[field] = options["mask"]
    vcon.setdefault("attachments", []).append({"purpose": "seen_by", "body": ctx.link_name, "encoding": "none"})
    return vcon
'''


def _write(root, relpath: str, text: str) -> None:
    path = root / relpath
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))


def test_every_builtin_loads_under_vcon_servers_name():
    assert sorted(BUILTIN_LINKS) == sorted(f"links.{n}" for n in (
        "tag", "sampler", "jq_link", "expire_vcon", "tag_router", "webhook", "diet", "analyze"))
    for name in BUILTIN_LINKS:
        link = load_link(name)
        assert callable(link.run) and isinstance(getattr(link, "default_options", {}), dict)


def test_a_user_link_by_dotted_path(r, tmp_path, monkeypatch):
    _write(tmp_path, "acme_links/redact.py", USER_LINK)
    _write(tmp_path, "acme_links/__init__.py", "")
    monkeypatch.syspath_prepend(str(tmp_path))
    vcon = call_vcon()
    out = runner(r, "acme_links.redact", {"mask": "[x]"}, name="redact").run(vcon)
    assert [p.get("tel") for p in out["parties"]] == ["[x]", None]
    assert out["attachments"][-1] == {"purpose": "seen_by", "body": "redact", "encoding": "none"}
    assert vcon["parties"][0]["tel"] == "+15551230000"


def test_a_user_link_by_entry_point(r, tmp_path, monkeypatch):
    # what `pip install acme-links` leaves on sys.path: the code and a dist-info naming the entry point
    _write(tmp_path, "acme_ep/__init__.py", USER_LINK + textwrap.dedent('''
        class Stamp:
            default_options = {"stamp": "checked"}
            def run(self, vcon, ctx, options):
                vcon["subject"] = options["stamp"]
                return vcon
        '''))
    _write(tmp_path, "acme_links-1.0.dist-info/METADATA", "Metadata-Version: 2.1\nName: acme-links\nVersion: 1.0\n")
    _write(tmp_path, "acme_links-1.0.dist-info/entry_points.txt",
           f"[{ENTRY_POINT_GROUP}]\nacme.redact = acme_ep\nacme.stamp = acme_ep:Stamp\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    vcon = call_vcon()
    assert runner(r, "acme.redact", {}).run(vcon)["parties"][0]["tel"] == "***"
    assert runner(r, "acme.stamp", {}).run(vcon)["subject"] == "checked"


@pytest.mark.parametrize("module, files, message", [
    ("links.transcribe_everything", {}, "no such module"),
    ("acme_bad_needs_dep.m", {"acme_bad_needs_dep/__init__.py": "",
                              "acme_bad_needs_dep/m.py": "import not_installed_xyz\n"},
     "it imports 'not_installed_xyz'"),
    ("acme_bad_legacy.m", {"acme_bad_legacy/__init__.py": "", "acme_bad_legacy/m.py":
                         "def run(vcon_uuid, link_name, opts=None):\n    return vcon_uuid\n"}, "is a vcon-server link"),
    ("acme_bad_norun.m", {"acme_bad_norun/__init__.py": "", "acme_bad_norun/m.py": "x = 1\n"}, "has no run"),
    ("acme_bad_twoargs.m", {"acme_bad_twoargs/__init__.py": "",
                            "acme_bad_twoargs/m.py": "def run(vcon, ctx):\n    return vcon\n"},
     "three arguments"),
    ("acme_bad_broken.m", {"acme_bad_broken/__init__.py": "", "acme_bad_broken/m.py": "raise RuntimeError('boom')\n"},
     "RuntimeError: boom"),
    ("acme_bad_opts.m", {"acme_bad_opts/__init__.py": "", "acme_bad_opts/m.py":
                       "default_options = ['a']\ndef run(vcon, ctx, options):\n    return vcon\n"}, "mapping"),
])
def test_a_module_that_is_not_a_link_is_a_load_error_naming_it(tmp_path, monkeypatch, module, files, message):
    for relpath, text in files.items():
        _write(tmp_path, relpath, text)
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(LinkLoadError) as failed:
        configure_link("step", module, {}, pip_name="acme-links")
    assert failed.value.module == module and message in str(failed.value)
    assert module in str(failed.value)


def test_policy_options(tmp_path):
    spec = configure_link("ai", "links.analyze", {"model": "m", "conserver": {
        "timeout": "45", "retries": 1, "rate_limit": "120/min", "circuit_breaker_failures": 0}})
    assert "conserver" not in spec.options and spec.options["model"] == "m"
    assert spec.policy == LinkPolicy(timeout=45.0, retries=1, rate_limit=2.0, rate_limit_per="request",
                                     circuit_breaker_failures=0)
    assert spec.policy.burst == 2 and spec.policy.bucket_name("ai") == "link.ai"
    assert configure_link("t", "links.tag", {}).policy == LinkPolicy()  # no module defaults for tag
    assert [parse_rate(v) for v in ("2/s", "3/m", "7200/hour", 4, "0.5")] == [2.0, 0.05, 2.0, 4.0, 0.5]
    assert parse_policy({"retries": 5}, {"retries": 1}).retries == 1  # later layers win
    for bad in ({"retry": 1}, {"retries": 1.5}, {"rate_limit": "fast"}, {"timeout": -1},
                {"rate_limit_per": "vcon"}, {"retries": True}):
        with pytest.raises(LinkLoadError, match="link 't'"):
            configure_link("t", "links.tag", {"conserver": bad})


# --- the runner's contract ---------------------------------------------------------------

SLOW_LINK = '''
import time
def run(vcon, ctx, options):
    time.sleep(options["sleep"])
    vcon["subject"] = "late"
    ctx.http().post(options["url"], json={"late": True})  # refused: the call was given up
    return vcon
'''


def test_a_call_past_its_deadline_fails_transient_and_leaves_no_trace(r, tmp_path, monkeypatch):
    _write(tmp_path, "acme_slow.py", SLOW_LINK)
    monkeypatch.syspath_prepend(str(tmp_path))
    with StubServer() as stub:
        # timeout 0.3 s (default 120 s) and retries 0 so the deadline passes quickly, once
        link = runner(r, "acme_slow", {"sleep": 0.8, "url": stub.url, "conserver": {"timeout": 0.3, "retries": 0}})
        vcon = call_vcon()
        started = time.monotonic()
        with pytest.raises(LinkFailed) as failed:
            link.run(vcon)
        assert time.monotonic() - started < 0.75
        assert failed.value.transient and "no result in 0.3s" in failed.value.detail
        time.sleep(1.0)  # the abandoned call wakes up, changes its copy, tries to post
        assert "subject" not in vcon and stub.received() == []
        link.close()


def test_a_rate_limit_per_call(r):
    # rate_limit 4/s with burst 2 on a link that makes no request: one token per call
    link = runner(r, "links.tag", {"tags": ["x"], "conserver": {"rate_limit": "4/s", "rate_limit_burst": 2}})
    started = time.monotonic()
    for _ in range(6):
        link.run(call_vcon())
    assert time.monotonic() - started >= (6 - 2) / 4 * 0.8
    assert r.exists("conserver:bucket:link.tag") == 1  # the bucket lives in Redis, shared by every worker


def test_a_link_must_return_a_vcon_or_none(r, tmp_path, monkeypatch):
    _write(tmp_path, "acme_uuid.py", "def run(vcon, ctx, options):\n    return vcon['uuid']\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(LinkFailed) as failed:
        runner(r, "acme_uuid", {}).run(call_vcon())
    assert not failed.value.transient and "returned str" in failed.value.detail


def test_run_links_in_order_halts_and_reports_change(r):
    tag = runner(r, "links.tag", {"tags": ["a"]})
    halt = runner(r, "links.jq_link", {"filter": ".subject == \"refund\""}, name="only_refunds")
    vcon = call_vcon()
    outcome = run_links([tag, runner(r, "links.expire_vcon", {"seconds": 60})], vcon)
    assert outcome.changed and outcome.halted_by is None and outcome.vcon["attachments"][-1]["purpose"] == "tags"
    assert run_links([runner(r, "links.sampler", {"value": 100})], vcon).changed is False
    outcome = run_links([tag, halt, runner(r, "links.tag", {"tags": ["never"]})], vcon)
    assert outcome.vcon is None and outcome.halted_by == "only_refunds"


def test_one_runner_serves_many_threads(r):
    link = runner(r, "links.tag", {"tags": ["x", "y"]})
    results, errors = [], []

    def work():
        try:
            for _ in range(50):
                results.append(link.run(call_vcon())["attachments"][-1]["body"])
        except Exception as exc:  # collected: a thread's failure must fail the test
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert errors == [] and results == ['["x:x", "y:y"]'] * 400
    link.close()
