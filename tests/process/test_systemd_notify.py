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


def test_ready_watchdog_stopping_in_order(tmp_path, notify_socket):
    path, sock = notify_socket
    c = Conserver(tmp_path, {"CONSERVER_PIPELINE": "tests.helpers.tasks:IdleTask", "CONSERVER_WORKERS": "3",
                             "NOTIFY_SOCKET": path, "WATCHDOG_USEC": "1000000", "CONSERVER_GRACEFUL_TIMEOUT": "5"})
    try:
        lines = _read(sock, 3.0)
        assert "READY=1" in lines, lines
        ready = lines.index("READY=1")
        # READY only once every worker is up
        workers_up = [l for l in c.log().splitlines() if "worker started" in l]
        assert len(workers_up) == 3
        watchdogs = [i for i, l in enumerate(lines) if l == "WATCHDOG=1"]
        assert len(watchdogs) >= 3 and watchdogs[0] > ready  # every 0.5 s: half of WatchdogSec
        assert any(l.startswith("STATUS=3 workers") for l in lines)
        c.signal(signal.SIGTERM)
        after = _read(sock, 1.5)
        assert "STOPPING=1" in after, after
        assert "WATCHDOG=1" not in after[after.index("STOPPING=1"):]
        assert c.wait(10) == 0
    finally:
        c.stop()


def test_watchdog_stops_while_a_worker_hangs(tmp_path, notify_socket):
    """No WATCHDOG=1 while a worker is stuck past JOB_TIMEOUT: systemd would restart us."""
    path, sock = notify_socket
    c = Conserver(tmp_path, {"CONSERVER_PIPELINE": "tests.helpers.tasks:HangTask", "CONSERVER_WORKERS": "1",
                             "NOTIFY_SOCKET": path, "WATCHDOG_USEC": "400000", "JOB_TIMEOUT": "1s",
                             "CONSERVER_GRACEFUL_TIMEOUT": "30"})
    try:
        c.wait_log("JOB_TIMEOUT 1s: dumping its stack", timeout=10)
        _read(sock, 0.3)  # drop what was sent before the hang was noticed
        later = _read(sock, 1.5)
        assert "WATCHDOG=1" not in later, later
    finally:
        c.stop()


def test_long_drain_extends_the_stop_timeout(tmp_path, notify_socket):
    path, sock = notify_socket
    done = tmp_path / "done"
    done.mkdir()
    c = Conserver(tmp_path, {"CONSERVER_PIPELINE": "tests.helpers.tasks:SlowTask", "CONSERVER_WORKERS": "1",
                             "TEST_DONE_DIR": str(done), "TEST_SLOW_SECONDS": "3", "NOTIFY_SOCKET": path})
    try:
        c.wait_workers(1, state="busy")
        c.signal(signal.SIGTERM)
        lines = _read(sock, 2.5)
        extends = [l for l in lines if l.startswith("EXTEND_TIMEOUT_USEC=")]
        assert extends and all(int(l.split("=")[1]) > 5_000_000 for l in extends)
        assert c.wait(10) == 0
    finally:
        c.stop()
