"""The HTTP links (webhook, analyze) and the policy around them, against local HTTP servers
the tests start and a real private Redis: one POST per URL per call, the analysis entry as
vcon-server writes it, a rate limit shared by 4 processes, the breaker, retries."""

from __future__ import annotations

import copy
import multiprocessing
import threading
import time

import pytest
import redis

from conserver.limits import SharedTokenBucket
from conserver.links import LinkFailed
from tests.links.http_stub import StubServer, chat_answer
from tests.links.helpers import TRANSCRIPT, call_vcon, runner

CTX = multiprocessing.get_context("fork")
SUMMARY = "The customer was charged twice; the agent refunded one charge."


@pytest.fixture
def openai_env(monkeypatch):
    """The API key from the environment, as the issue asks; no base URL from it."""
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-env")
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)


def analyze_options(stub: StubServer, **policy) -> dict:
    options = {"prompt": "Summarize this call.", "model": "gpt-4o-mini", "base_url": stub.url + "/v1"}
    if policy:
        options["conserver"] = policy
    return options


# --- webhook -----------------------------------------------------------------------------

def test_webhook_posts_the_vcon_once_per_url_with_the_headers(r):
    with StubServer() as stub:
        link = runner(r, "links.webhook", {"webhook-urls": [stub.url + "/a", stub.url + "/b"],
                                           "headers": {"Authorization": "Bearer tok", "x-conserver-api-token": "k"}})
        vcons = [call_vcon() for _ in range(3)]
        for vcon in vcons:
            assert link.run(vcon) == vcon
        for path in ("/a", "/b"):
            got = stub.received(path)
            assert [req.body for req in got] == vcons
            assert all(req.headers["Authorization"] == "Bearer tok" and req.headers["x-conserver-api-token"] == "k"
                       and req.headers["Content-Type"] == "application/json" for req in got)


def test_webhook_goes_on_after_a_4xx_and_without_urls(r):
    with StubServer(lambda req: (404, {"error": "no such hook"})) as stub:
        vcon = call_vcon()
        assert runner(r, "links.webhook", {"webhook-urls": [stub.url]}).run(vcon) == vcon
        assert len(stub.received()) == 1
    assert runner(r, "links.webhook", {}).run(vcon) == vcon


def test_webhook_retries_5xx_then_fails_transient(r):
    # retry_backoff 0.01 s (default 1 s) so three tries take milliseconds; the retry count is the default (2)
    with StubServer(lambda req: (502, {"error": "bad gateway"})) as stub:
        link = runner(r, "links.webhook", {"webhook-urls": [stub.url], "conserver": {"retry_backoff": 0.01}})
        with pytest.raises(LinkFailed) as failed:
            link.run(call_vcon())
        assert len(stub.received()) == 3
    assert failed.value.transient and failed.value.link_name == "webhook" and "502" in failed.value.detail


def test_webhook_connection_refused_is_transient(r):
    stub = StubServer().bind()
    url = stub.url
    stub.close()  # nothing listens there now
    link = runner(r, "links.webhook", {"webhook-urls": [url], "conserver": {"retries": 0}})  # retries 0: fail at once
    with pytest.raises(LinkFailed) as failed:
        link.run(call_vcon())
    assert failed.value.transient and "ConnectionError" in failed.value.detail


# --- analyze -----------------------------------------------------------------------------

def test_analyze_appends_vcon_servers_analysis_entry(r, openai_env):
    with StubServer(chat_answer(SUMMARY)) as stub:
        link = runner(r, "links.analyze", analyze_options(stub))
        vcon = call_vcon()
        out = link.run(vcon)
        expected = copy.deepcopy(vcon)
        expected["analysis"].append({"type": "summary", "dialog": 0, "vendor": "openai", "body": SUMMARY,
                                     "encoding": "none",
                                     "vendor_schema": {"model": "gpt-4o-mini", "prompt": "Summarize this call."}})
        assert out == expected
        [request] = stub.received()
        assert request.path == "/v1/chat/completions"
        assert request.headers["Authorization"] == "Bearer sk-test-env"
        assert request.body == {"model": "gpt-4o-mini", "temperature": 0, "messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "Summarize this call.\n\n" + TRANSCRIPT}]}
        assert link.run(out) == out  # the dialog has its summary now: no second request
        assert len(stub.received()) == 1


def test_analyze_only_if_and_the_options_key(r, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with StubServer(chat_answer(SUMMARY)) as stub:
        options = analyze_options(stub) | {"OPENAI_API_KEY": "sk-from-options",
                                           "only_if": {"section": "attachments", "purpose": "tenant",
                                                       "includes": "acme"}}
        assert runner(r, "links.analyze", options).run(call_vcon())["analysis"][-1]["body"] == SUMMARY
        assert stub.received()[0].headers["Authorization"] == "Bearer sk-from-options"
        options["only_if"]["includes"] = "globex"
        vcon = call_vcon()
        assert runner(r, "links.analyze", options).run(vcon) == vcon
        assert len(stub.received()) == 1


def test_analyze_without_a_key_fails_permanently(r, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(LinkFailed) as failed:
        runner(r, "links.analyze", {"base_url": "http://127.0.0.1:9/v1"}).run(call_vcon())
    assert not failed.value.transient and "OPENAI_API_KEY" in failed.value.detail


def test_analyze_retries_429_then_succeeds_and_a_400_is_permanent(r, openai_env):
    answers = iter([429, 503, 200, 400])
    succeed = chat_answer(SUMMARY)

    def answer(request):
        status = next(answers)
        return succeed(request) if status == 200 else (status, {"error": {"message": f"status {status}"}})

    with StubServer(answer) as stub:
        # retry_backoff 0.01 s (default 1 s) so the retries take milliseconds
        link = runner(r, "links.analyze", analyze_options(stub, retry_backoff=0.01, rate_limit="100/s"))
        assert link.run(call_vcon())["analysis"][-1]["body"] == SUMMARY
        assert len(stub.received()) == 3
        # the 429 and the 503 told every worker's shared bucket to slow down (halved once: one volley)
        assert SharedTokenBucket(r, "link.analyze", 100, 100).state()["rate"] == pytest.approx(50, rel=0.05)
        with pytest.raises(LinkFailed) as failed:
            link.run(call_vcon())
        assert len(stub.received()) == 4  # a 400 is not retried
    assert not failed.value.transient and "400" in failed.value.detail


def test_analyze_breaker_opens_on_repeated_503s_and_recovers(r, openai_env):
    healthy = threading.Event()
    succeed = chat_answer(SUMMARY)
    # retries 0: each call is one request, so the count is exact; circuit_breaker_reset 1 s
    # (default 30 s) so the test waits one second for the probe
    with StubServer(lambda req: succeed(req) if healthy.is_set() else (503, {"error": "overloaded"})) as stub:
        link = runner(r, "links.analyze", analyze_options(stub, retries=0, circuit_breaker_failures=3,
                                                          circuit_breaker_reset=1.0))
        for _ in range(3):
            with pytest.raises(LinkFailed) as failed:
                link.run(call_vcon())
            assert failed.value.transient and "503" in failed.value.detail
        assert link.breaker.state == "open"
        with pytest.raises(LinkFailed) as failed:
            link.run(call_vcon())
        assert failed.value.transient and "circuit breaker open" in failed.value.detail
        assert len(stub.received()) == 3  # open: the service was spared
        healthy.set()
        time.sleep(1.1)
        assert link.run(call_vcon())["analysis"][-1]["body"] == SUMMARY  # the probe
        assert link.breaker.state == "closed"
        assert link.run(call_vcon())["analysis"][-1]["body"] == SUMMARY
        assert len(stub.received()) == 5


# --- a shared rate limit: 2 req/s, burst 5, 4 processes ----------------------------------

PROCS, PER_PROC, RATE, BURST = 4, 3, 2.0, 5


def _analyze_in_a_worker(redis_url: str, base_url: str, go, results) -> None:
    client = redis.Redis.from_url(redis_url)  # made in the child, after fork
    options = {"model": "gpt-4o-mini", "base_url": base_url,
               "conserver": {"rate_limit": f"{RATE:g}/s", "rate_limit_burst": BURST}}
    link = runner(client, "links.analyze", options)
    go.wait(30)
    done = 0
    for _ in range(PER_PROC):
        done += link.run(call_vcon())["analysis"][-1]["body"] == SUMMARY
    link.close()
    client.close()
    results.put(done)


def test_analyze_respects_a_rate_limit_shared_by_four_processes(r, redis_url, openai_env):
    stub = StubServer(chat_answer(SUMMARY)).bind()
    go, results = CTX.Event(), CTX.Queue()
    # fork first, threads after: forking a process that has threads can deadlock (gh-90622)
    procs = [CTX.Process(target=_analyze_in_a_worker, args=(redis_url, stub.url + "/v1", go, results))
             for _ in range(PROCS)]
    for p in procs:
        p.start()
    stub.serve()
    try:
        go.set()
        done = sum(results.get(timeout=60) for _ in procs)
        for p in procs:
            p.join(10)
    finally:
        stub.close()
    total = PROCS * PER_PROC
    assert done == total
    times = sorted(req.at for req in stub.received())
    assert len(times) == total
    # the burst may go at once, the rest at 2/s: (12 - 5) / 2 = 3.5 s at least; 20 % slack for jitter
    assert times[-1] - times[0] >= (total - BURST) / RATE * 0.8
    # and no stretch of requests beats burst + rate * its length (one extra for clock granularity)
    for i in range(total):
        for j in range(i + 1, total):
            assert j - i + 1 <= BURST + RATE * (times[j] - times[i]) + 1, (i, j, times[j] - times[i])
