"""The shared-memory board: one slot per process, plus the supervisor's own facts.

Three kinds of process use it, each field with one writer:

- the supervisor allocates the board before the first fork, fills a slot's identity
  (role, pool, number) when it starts a process, and writes its own counters;
- a worker writes its slot: state, heartbeat, what it is busy with and since when, how
  many vCons it finished, and a request to be recycled;
- the monitor reads everything, and writes the one number it decides (``autoscale_target``).

Plain stores, no lock: a torn read only delays a decision by one loop turn. Writing a
few doubles costs nothing on a worker's hot path and needs no pipe the master must drain.
"""

from __future__ import annotations

import ctypes

# Slot states, written by the worker (the supervisor writes STARTING and EMPTY).
EMPTY, STARTING, IDLE, BUSY, DRAINING, EXITED = range(6)
STATE_NAMES = {EMPTY: "empty", STARTING: "starting", IDLE: "idle", BUSY: "busy",
               DRAINING: "draining", EXITED: "exited"}

MAX_SLOTS = 1024


class WorkerSlot(ctypes.Structure):
    """What one process reports to the supervisor and the monitor."""

    _fields_ = [
        ("pid", ctypes.c_int64),
        ("state", ctypes.c_int32),
        ("started", ctypes.c_double),  # wall-clock times, comparable across processes
        ("heartbeat", ctypes.c_double),
        ("busy_since", ctypes.c_double),
        ("processed", ctypes.c_uint64),
        ("failed", ctypes.c_uint64),
        ("busy_seconds", ctypes.c_double),
        ("recycle", ctypes.c_int32),  # the worker asks to be replaced (recycling limits)
        ("current", ctypes.c_char * 64),
        ("ident", ctypes.c_char * 160),
        # written by the supervisor when it starts the process, for the monitor
        ("role", ctypes.c_char * 16),
        ("pool", ctypes.c_char * 64),
        ("number", ctypes.c_int32),
    ]

    def reset(self, role: str, pool: str, number: int, now: float) -> None:
        """The supervisor's first write to a slot it gives a new process: no stale counters."""
        ctypes.memset(ctypes.addressof(self), 0, ctypes.sizeof(self))
        self.state = STARTING
        self.heartbeat = now
        self.role, self.pool, self.number = role.encode()[:15], pool.encode()[:63], number

    @property
    def current_text(self) -> str:
        """The item it is busy with, or ``""``."""
        return self.current.decode(errors="replace")

    @property
    def ident_text(self) -> str:
        """Its queue identity (the worker id its claims are filed under), or ``""``."""
        return self.ident.decode(errors="replace")


class Board(ctypes.Structure):
    """The shared-memory notice board: the supervisor's facts and one slot per process."""

    _fields_ = [
        ("master_pid", ctypes.c_int64),
        ("started", ctypes.c_double),
        ("restarts", ctypes.c_uint64),
        ("processed_by_dead", ctypes.c_uint64),
        ("target_workers", ctypes.c_int32),
        ("draining", ctypes.c_int32),
        ("autoscale_target", ctypes.c_int32),  # written by the monitor, followed by the supervisor
        ("start_method", ctypes.c_char * 16),
        ("slots", WorkerSlot * MAX_SLOTS),
    ]


class SlotPool:
    """Which board slots are free. Only the supervisor allocates; a slot is reused after
    its process was reaped, so MAX_SLOTS bounds processes alive at once, not restarts."""

    def __init__(self, size: int = MAX_SLOTS):
        self._free = list(range(size - 1, -1, -1))  # pop() hands out the lowest first

    def take(self) -> int:
        return self._free.pop()

    def give_back(self, index: int) -> None:
        self._free.append(index)
