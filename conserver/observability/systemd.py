"""The systemd notify protocol (READY, WATCHDOG, STOPPING, EXTEND_TIMEOUT_USEC), without libsystemd."""

from __future__ import annotations

import os
import socket


def sd_notify(*lines: str) -> bool:
    """Send ``READY=1``-style lines to systemd's NOTIFY_SOCKET; a no-op when not under systemd."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address or not lines:
        return False
    if address.startswith("@"):  # abstract namespace
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto("\n".join(lines).encode(), address)
        return True
    except OSError:
        return False


def watchdog_interval() -> float | None:
    """Half of systemd's WatchdogSec when it asks for pings (and asks this process), else None."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        return int(usec) / 2_000_000
    except ValueError:
        return None
