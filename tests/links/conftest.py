"""Fixtures of the link tests."""

from __future__ import annotations

import pytest
import redis


@pytest.fixture
def r(redis_url):
    """A client of the test's (emptied) private Redis."""
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()
