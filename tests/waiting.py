"""Waiting on a condition instead of sleeping: the one polling helper every test uses.

A test that must see something happen polls for it with a generous deadline, so it
passes as soon as the thing happens on a fast machine and still passes on a loaded one.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(predicate: Callable[[], object], timeout: float = 30.0, interval: float = 0.05) -> bool:
    """Poll ``predicate`` until it is true (return True) or ``timeout`` seconds pass (return False)."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def wait_for(produce: Callable[[], T], timeout: float = 30.0, what: str = "a condition",
             interval: float = 0.05) -> T:
    """Poll ``produce`` until it returns a true value and return that value; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = produce()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)
