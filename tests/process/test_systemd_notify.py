"""The test plays systemd: it owns a NOTIFY_SOCKET and reads what the main process says."""
from __future__ import annotations

import signal
import socket
import time

import pytest

from tests.helpers.proc import Conserver


@pytest.fixture
def notify_socket(tmp_path):
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(0.2)
    yield path, sock
    sock.close()


def _read(sock: socket.socket, seconds: float) -> list[str]:
    lines: list[str] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            lines += sock.recv(4096).decode().splitlines()
        except socket.timeout:
            pass
    return lines


def _read_until(sock: socket.socket, done, ceiling: float) -> list[str]:
    """Read until ``done(lines)`` holds; a generous ceiling, not a performance bound
    (benchmarks/lifecycle.py measures how fast)."""
    lines: list[str] = []
    deadline = time.monotonic() + ceiling
    while not done(lines) and time.monotonic() < deadline:
        lines += _read(sock, 0.2)
    return lines


def test_ready_watchdog_stopping_in_order(tmp_path, notify_socket, redis_url):
    path, sock = notify_socket
    c = Conserver(tmp_path, {"CONSERVER_PIPELINE": "tests.helpers.tasks:IdleTask", "CONSERVER_WORKERS": "3",
                             "REDIS_URL": redis_url, "NOTIFY_SOCKET": path, "WATCHDOG_USEC": "1000000",
                             "CONSERVER_GRACEFUL_TIMEOUT": "5"})
    try:
        lines = _read_until(sock, lambda ls: ls.count("WATCHDOG=1") >= 3, 30)
        assert "READY=1" in lines, lines
        ready = lines.index("READY=1")
        # READY only once every process is up: 3 workers, the scheduler and the monitor
        started = [l for l in c.log().splitlines() if "worker started" in l]
        assert sum("[worker " in l for l in started) == 3 and len(started) == 5
        watchdogs = [i for i, l in enumerate(lines) if l == "WATCHDOG=1"]
        assert len(watchdogs) >= 3 and watchdogs[0] > ready  # every 0.5 s: half of WatchdogSec
        assert any(l.startswith("STATUS=3 workers") for l in lines)
        c.signal(signal.SIGTERM)
        after = _read_until(sock, lambda ls: "STOPPING=1" in ls, 10)
        after += _read(sock, 0.6)  # past a watchdog interval: none may follow STOPPING
        assert "STOPPING=1" in after, after
        assert "WATCHDOG=1" not in after[after.index("STOPPING=1"):]
        assert c.wait(10) == 0
    finally:
        c.stop()


def test_watchdog_stops_while_a_worker_hangs(tmp_path, notify_socket, redis_url):
    """WATCHDOG=1 while healthy, none while a worker is stuck past JOB_TIMEOUT: systemd would
    restart us. (JOB_TIMEOUT=3s and CONSERVER_GRACEFUL_TIMEOUT=30: a hang within the test's time,
    and the stuck worker kept alive while we listen.)"""
    path, sock = notify_socket
    c = Conserver(tmp_path, {"CONSERVER_PIPELINE": "tests.helpers.tasks:HangTask", "CONSERVER_WORKERS": "1",
                             "REDIS_URL": redis_url, "NOTIFY_SOCKET": path, "WATCHDOG_USEC": "400000",
                             "JOB_TIMEOUT": "3s", "CONSERVER_GRACEFUL_TIMEOUT": "30"})
    try:
        before = _read_until(sock, lambda ls: "JOB_TIMEOUT 3s: dumping its stack" in c.log(), 20)
        assert "READY=1" in before and before.count("WATCHDOG=1") >= 2, before  # it did beat while healthy
        _read(sock, 0.3)  # drop what was sent before the hang was noticed
        later = _read(sock, 1.5)
        assert "WATCHDOG=1" not in later, later
    finally:
        c.stop()


def test_long_drain_extends_the_stop_timeout(tmp_path, notify_socket, redis_url):
    path, sock = notify_socket
    done = tmp_path / "done"
    done.mkdir()
    c = Conserver(tmp_path, {"CONSERVER_PIPELINE": "tests.helpers.tasks:SlowTask", "CONSERVER_WORKERS": "1",
                             "TEST_DONE_DIR": str(done), "TEST_SLOW_SECONDS": "3", "NOTIFY_SOCKET": path,
                             "REDIS_URL": redis_url})
    try:
        c.wait_workers(1, state="busy")
        c.signal(signal.SIGTERM)
        lines = _read(sock, 2.5)
        extends = [l for l in lines if l.startswith("EXTEND_TIMEOUT_USEC=")]
        assert extends and all(int(l.split("=")[1]) > 5_000_000 for l in extends)
        assert c.wait(10) == 0
    finally:
        c.stop()
