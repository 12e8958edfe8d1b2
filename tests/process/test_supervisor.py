"""The supervisor with real processes and real signals (no Redis needed: test tasks)."""
from __future__ import annotations

import os
import signal
import time

import psutil
import pytest

from conserver.process.supervisor import DRAIN_REQUEST_GRACE
from tests.helpers.proc import gone, title, wait_for

IDLE = "tests.helpers.tasks:IdleTask"


@pytest.fixture
def start(start_conserver, redis_url):
    """At the defaults, scheduler and monitor included (they need the test's Redis)."""
    return lambda env, args=("run",): start_conserver({"CONSERVER_PIPELINE": IDLE, "REDIS_URL": redis_url, **env}, args)


def busy_on_a_slow_item(start, tmp_path, seconds: float):
    """One worker busy on an item that takes ``seconds``; (conserver, worker, done folder)."""
    done = tmp_path / "done"
    done.mkdir()
    c = start({"CONSERVER_PIPELINE": "tests.helpers.tasks:SlowTask", "CONSERVER_WORKERS": "1",
               "TEST_DONE_DIR": str(done), "TEST_SLOW_SECONDS": str(seconds)})
    return c, c.wait_workers(1, state="busy slow-item")[0], done


@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_start_method_brings_up_workers_with_titles(start, method):
    c = start({"CONSERVER_WORKERS": "3", "CONSERVER_START_METHOD": method})
    workers = c.wait_workers(3, state="idle")
    titles = sorted(title(w.pid) for w in workers)
    assert titles == [f"conserver: worker {i}/3 [default] idle processed=0" for i in (1, 2, 3)]
    wait_for(lambda: title(c.pid).startswith(f"conserver: master [3 workers, {method}]"), 5, what="master title")
    c.wait_log("ready: 3 workers up")
    # The main process holds no socket and no extra thread: nothing unsafe to fork from.
    master = psutil.Process(c.pid)
    assert master.num_threads() == 1
    assert [conn for conn in master.net_connections(kind="inet")] == []
    c.signal(signal.SIGTERM)
    assert c.wait(10) == 0


def test_kill9_of_a_ready_worker_replaces_it_at_once_at_the_defaults(start):
    """At the shipped CONSERVER_MIN_UPTIME (10 s): a kill from outside is no crash. How fast
    the replacement is up is measured by benchmarks/lifecycle.py, not here."""
    c = start({"CONSERVER_WORKERS": "2"})
    victim = c.wait_workers(2, state="idle")[0]
    number = title(victim.pid).split()[2]
    os.kill(victim.pid, signal.SIGKILL)

    def replaced():
        return [w for w in c.workers() if w.pid != victim.pid and title(w.pid).split()[2:3] == [number]
                and "idle" in title(w.pid)]

    wait_for(replaced, 10, what="replacement worker")
    log = c.wait_log(f"pid={victim.pid} was killed by SIGKILL")
    assert "replacing it at once (killed from outside)" in log and "restarting it in" not in log
    assert log.count(f"started worker {number.split('/')[0]}/2") == 2


def test_crash_at_start_backs_off_then_crash_loop_limit_exits_nonzero(start):
    c = start({"CONSERVER_PIPELINE": "tests.helpers.tasks:CrashAtStartTask", "CONSERVER_WORKERS": "1",
               "CONSERVER_CRASH_LIMIT": "4", "CONSERVER_CRASH_WINDOW": "60"})
    code = c.wait(30)
    log = c.log()
    assert code == 4, log
    assert "crash loop" in log and "CONSERVER_CRASH_LIMIT=4" in log
    assert "simulated boot failure" in log and "failed to boot (exit code 3)" in log
    delays = [float(line.split("restarting it in ")[1].split("s ")[0]) for line in log.splitlines()
              if "worker 1 [default]" in line and "restarting it in" in line]
    assert len(delays) >= 4
    # exponential: each delay roughly doubles (jitter is +-20 %)
    for a, b in zip(delays, delays[1:]):
        assert 1.3 < b / a < 3.1, delays
    assert 0.07 <= delays[0] <= 0.13


def test_sigterm_when_idle_ends_every_process(start):
    """Every process, scheduler and monitor included, ends with exit 0. How fast is
    benchmarks/lifecycle.py's figure (idle SIGTERM), not a bound here."""
    c = start({"CONSERVER_WORKERS": "4"})
    c.wait_workers(4, state="idle")
    assert "(and monitor, scheduler)" in c.wait_log("ready: 4 workers up")
    pids = c.all_pids()
    c.signal(signal.SIGTERM)
    assert c.wait(20) == 0
    wait_for(lambda: gone(pids), 10, what="every process gone")
    assert c.log().count("stopped after") == 6  # 4 workers, the scheduler, the monitor: drained, none killed
    assert "SIGKILL" not in c.log()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_drain_lets_a_slow_item_finish(start, tmp_path, sig):
    c, w, done = busy_on_a_slow_item(start, tmp_path, 2)
    c.signal(sig)
    assert c.wait(20) == 0
    assert (done / str(w.pid)).read_text() == "finished"  # the item in hand was finished
    log = c.log()
    assert f"{sig.name}: draining" in log and "stopped after" in log and "SIGKILL" not in log


def test_second_sigterm_stops_at_once(start, tmp_path):
    c, w, done = busy_on_a_slow_item(start, tmp_path, 30)
    c.signal(signal.SIGTERM)
    c.wait_log("draining")
    time.sleep(DRAIN_REQUEST_GRACE + 0.2)  # sooner, it is the same request (a terminal's Ctrl-C and a wrapper)
    c.signal(signal.SIGTERM)
    assert c.wait(10) == 0
    assert "second SIGTERM: stopping at once" in c.log()
    wait_for(lambda: gone([w.pid]), 2, what="worker killed")
    assert not (done / str(w.pid)).exists()


def test_sigkill_of_master_ends_all_workers(start):
    for method in ("fork", "forkserver"):
        c = start({"CONSERVER_WORKERS": "3", "CONSERVER_START_METHOD": method})
        pids = [w.pid for w in c.wait_workers(3, state="idle")]
        c.signal(signal.SIGKILL)
        c.wait(5)
        wait_for(lambda: gone(pids), 2.0, what=f"workers gone after master SIGKILL ({method})")


def test_ttin_ttou_add_and_remove_a_worker(start):
    c = start({"CONSERVER_WORKERS": "2"})
    c.wait_workers(2, state="idle")
    c.signal(signal.SIGTTIN)
    c.wait_workers(3, state="idle")
    c.wait_log("SIGTTIN: pool default now wants 3 workers")
    c.signal(signal.SIGTTOU)  # (one at a time: the kernel merges a signal that is already pending)
    c.wait_workers(2, state="idle")
    c.signal(signal.SIGTTOU)
    c.wait_workers(1, state="idle")
    c.signal(signal.SIGTTOU)  # never below one
    c.wait_log("stays at 1 workers")
    assert len(c.worker_titles()) == 1


def test_sighup_rolls_workers_one_at_a_time(start, tmp_path):
    env_file = tmp_path / "extra.env"
    env_file.write_text("LOG_LEVEL=INFO\n")
    c = start({"CONSERVER_WORKERS": "3", "CONSERVER_ENV_FILE": str(env_file)})
    old = {w.pid for w in c.wait_workers(3, state="idle")}
    env_file.write_text("LOG_LEVEL=DEBUG\n")
    c.signal(signal.SIGHUP)
    most_booting = 0

    def rolled():
        nonlocal most_booting
        ws = c.worker_titles()
        most_booting = max(most_booting, sum("starting" in t for t in ws.values()))
        return not (old & set(ws)) and len(ws) == 3 and all("idle" in t for t in ws.values())

    wait_for(rolled, 20, interval=0.005, what="all workers replaced")
    assert most_booting <= 1, "more than one replacement booting at a time"
    log = c.log()
    assert "configuration re-read" in log
    # each old worker was asked to stop only after its replacement had started
    lines = log.splitlines()
    for n in (1, 2, 3):
        started = [i for i, l in enumerate(lines) if f"started worker {n}/3" in l]
        retired = [i for i, l in enumerate(lines) if f"retiring worker {n} " in l and "(replaced)" in l]
        assert len(started) == 2 and len(retired) == 1 and started[1] < retired[0]
    c.signal(signal.SIGTERM)
    assert c.wait(40) == 0  # a generous ceiling: the drain's speed is the lifecycle benchmark's figure


def test_sighup_with_bad_config_keeps_running(start, tmp_path):
    env_file = tmp_path / "extra.env"
    env_file.write_text("")
    c = start({"CONSERVER_WORKERS": "1", "CONSERVER_ENV_FILE": str(env_file)})
    pid = c.wait_workers(1, state="idle")[0].pid
    env_file.write_text("CONSERVER_BATCH_SIZE=lots\n")
    c.signal(signal.SIGHUP)
    c.wait_log("keeping the running configuration")
    assert list(c.worker_titles()) == [pid]


def test_job_timeout_dumps_stack_then_kills_and_replaces(start):
    c = start({"CONSERVER_PIPELINE": "tests.helpers.tasks:HangTask", "CONSERVER_WORKERS": "1",
               "JOB_TIMEOUT": "1s", "CONSERVER_GRACEFUL_TIMEOUT": "1", "CONSERVER_MIN_UPTIME": "0"})
    first = c.wait_workers(1, state="busy stuck-item")[0].pid
    log = c.wait_log(f"pid={first} was killed by SIGKILL", timeout=10)
    assert "JOB_TIMEOUT 1s: dumping its stack" in log
    assert 'File "' in log and "tests/helpers/tasks.py" in log and "in run_once" in log  # faulthandler's dump
    wait_for(lambda: [w for w in c.workers() if w.pid != first], 5, what="replacement")


def test_sigusr1_reopens_log_file(start, tmp_path):
    log_file = tmp_path / "conserver.log"
    c = start({"CONSERVER_WORKERS": "1", "LOG_FILE": str(log_file)})
    c.wait_workers(1, state="idle")
    wait_for(lambda: log_file.exists() and "ready" in log_file.read_text(), 5, what="log file")
    rotated = tmp_path / "conserver.log.1"
    log_file.rename(rotated)
    c.signal(signal.SIGUSR1)
    wait_for(lambda: log_file.exists() and "log files reopened" in log_file.read_text(), 5, what="reopened log")


def test_json_logs_one_object_per_line(start):
    import json

    c = start({"CONSERVER_WORKERS": "2", "LOG_FORMAT": "json"})
    c.wait_workers(2, state="idle")
    c.wait_log('"ready: 2 workers up')
    c.signal(signal.SIGTERM)
    assert c.wait(10) == 0
    docs = [json.loads(line) for line in c.log().splitlines() if line.strip()]
    assert {d["role"] for d in docs} == {"master", "worker", "scheduler", "monitor"}  # the defaults
    assert all({"ts", "level", "logger", "pid", "msg"} <= set(d) for d in docs)
    assert sorted({d["worker"] for d in docs if d["role"] == "worker"}) == [1, 2]
    assert any(d["msg"].startswith("SIGTERM: draining") for d in docs)


def test_an_idle_worker_silent_past_the_heartbeat_timeout_is_killed_and_replaced(start):
    # CONSERVER_HEARTBEAT_TIMEOUT=2s: the default 60 s is longer than the test may take
    c = start({"CONSERVER_PIPELINE": "tests.helpers.tasks:SilentTask", "CONSERVER_WORKERS": "1",
               "CONSERVER_HEARTBEAT_TIMEOUT": "2s", "CONSERVER_GRACEFUL_TIMEOUT": "1"})
    first = c.wait_workers(1, state="idle")[0].pid
    log = c.wait_log(f"pid={first} was killed by SIGKILL", timeout=20)
    assert "no heartbeat for" in log and "(state idle)" in log
    assert "replacing it at once (killed from outside)" in log  # the supervisor's own kill is no crash
    wait_for(lambda: [pid for pid in c.worker_titles() if pid != first], 10, what="replacement")


def test_stragglers_are_killed_after_the_graceful_timeout(start):
    # CONSERVER_GRACEFUL_TIMEOUT=2: the default 25 s is longer than the test may take
    c = start({"CONSERVER_PIPELINE": "tests.helpers.tasks:HangTask", "CONSERVER_WORKERS": "2",
               "CONSERVER_GRACEFUL_TIMEOUT": "2"})
    stuck = [w.pid for w in c.wait_workers(2, state="busy stuck-item")]
    c.signal(signal.SIGTERM)
    assert c.wait(20) == 0
    log = c.log()
    # the two stuck workers are among those killed (on a loaded machine the scheduler or the
    # monitor may not finish its drain within 2 s either: then it is killed beside them)
    line = next(x for x in log.splitlines() if "graceful timeout: killing" in x)
    killed = {int(p) for p in line.rpartition("[")[2].rstrip("]").split(",")}
    assert set(stuck) <= killed
    for pid in stuck:
        assert f"pid={pid} was killed by SIGKILL" in log
    wait_for(lambda: gone(stuck), 5, what="stuck workers gone")


def test_sigquit_stops_at_once(start, tmp_path):
    c, w, done = busy_on_a_slow_item(start, tmp_path, 30)
    pids = c.all_pids()
    c.signal(signal.SIGQUIT)
    assert c.wait(15) == 0
    assert "SIGQUIT: stopping at once" in c.log()
    wait_for(lambda: gone(pids), 5, what="every process gone")
    assert not (done / str(w.pid)).exists()  # not drained: killed mid-item
