"""Tasks for ``conveyor demo`` and the quick start: the tutorial's squares."""

from __future__ import annotations


def square(n: int) -> int:
    """The tutorial's task: n squared."""
    return n * n


def fail(message: str) -> None:
    """A task that always raises, to show how failures travel back."""
    raise ValueError(message)
