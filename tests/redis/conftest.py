"""Fixtures of the queue tests: a client of the session's private Redis (emptied per test)
and factories for each side of the queue on it."""

from __future__ import annotations

import uuid as uuid_mod

import pytest
import redis

from conserver.queue.admin import QueueAdmin
from conserver.queue.claims import WorkerClaims
from conserver.queue.recovery import Recovery
from tests.redis.helpers import settings


@pytest.fixture
def r(redis_url):
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture
def make_claims(r):
    """A worker's side of the queue; ``batch_size`` 10 unless the test says otherwise."""
    def make(lists=("default",), worker_id=None, **kw) -> WorkerClaims:
        kw.setdefault("batch_size", 10)
        return WorkerClaims(r, settings(lists, **kw), worker_id or f"test:{uuid_mod.uuid4().hex[:8]}:1")
    return make


@pytest.fixture
def admin(r):
    def make(lists=("default",)) -> QueueAdmin:
        return QueueAdmin(r, lists)
    return make


@pytest.fixture
def recovery(r):
    def make(lists=("default",)) -> Recovery:
        return Recovery(r, lists)
    return make
