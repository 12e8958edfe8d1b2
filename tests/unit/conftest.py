"""Fixtures of the unit tests: tasks opened in this process, closed at the end of the test."""

from __future__ import annotations

import pytest


@pytest.fixture
def opened():
    """``opened(task)``: the task after its ``open()``; every one is closed when the test ends."""
    tasks = []

    def open_task(task):
        task.open()
        tasks.append(task)
        return task

    yield open_task
    for task in reversed(tasks):
        task.close()
