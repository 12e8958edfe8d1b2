"""What a store did with a vCon (Outcome), and what the worker does next (decide -> Verdict).

Pure values, no I/O: the fan-out (fanout.py) produces outcomes, the worker acts on verdicts.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Mapping

__all__ = ["ALREADY_DONE", "Action", "BREAKER_OPEN", "Outcome", "Status", "Verdict", "decide"]


class Status(enum.Enum):
    OK = "ok"  # committed (now, or by an earlier delivery: attempts == 0)
    TRANSIENT = "transient"  # failed, may pass later: retry the vCon later
    PERMANENT = "permanent"  # refused for its content: dead-letter
    BREAKER_OPEN = "breaker_open"  # not tried, the store's breaker is open: defer, not the vCon's fault


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one store did with one vCon. ``attempts`` counts the store calls it was part of."""

    status: Status
    error: BaseException | None = None
    attempts: int = 0

    @property
    def ok(self) -> bool:
        return self.status is Status.OK


ALREADY_DONE = Outcome(Status.OK)
BREAKER_OPEN = Outcome(Status.BREAKER_OPEN)


class Action(enum.Enum):
    ACK = "ack"
    DEFER = "defer"
    DEAD_LETTER = "dead_letter"


@dataclass(frozen=True, slots=True)
class Verdict:
    """The worker's next step for one vCon.

    ``count_attempt`` is False when a deferral is only because breakers were open (the vCon
    was not tried, so it must not use up its retries). ``done`` names the stores that hold
    the vCon now: the worker records them so a later delivery skips them. ``errors`` maps a
    store to its error.
    """

    action: Action
    count_attempt: bool
    done: frozenset[str]
    errors: Mapping[str, BaseException]


def decide(outcomes: Mapping[str, Outcome]) -> Verdict:
    """Any permanent -> dead-letter; else any transient or breaker-open -> defer; else ack."""
    statuses = {o.status for o in outcomes.values()}
    done = frozenset(store for store, o in outcomes.items() if o.status is Status.OK)
    errors = {store: o.error for store, o in outcomes.items() if o.error is not None}
    if Status.PERMANENT in statuses:
        return Verdict(Action.DEAD_LETTER, True, done, errors)
    if Status.TRANSIENT in statuses:
        return Verdict(Action.DEFER, True, done, errors)
    if Status.BREAKER_OPEN in statuses:
        return Verdict(Action.DEFER, False, done, errors)
    return Verdict(Action.ACK, True, done, errors)
