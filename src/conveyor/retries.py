"""Retry policy: whether a failed attempt runs again, and after how long.

The worker that saw the failure decides (it has the exception and the
task's options); the master carries the decision out with a fenced nack,
so a report from an attempt that lost its lease changes nothing.
Options, all per task (``@conveyor.task(...)``) or per submit, declared in
:mod:`conveyor.options` (read here through :func:`conveyor.options.retry_policy_of`):

- ``retries``: how many times a failed attempt runs again (default 0);
- ``retry_backoff``: first delay in seconds (default 1), doubled each retry;
- ``retry_backoff_max``: the cap on the delay (default 300);
- ``retry_jitter``: scale each delay by a random factor in [0.5, 1] (default True);
- ``retry_on``: exception types (or their names) that retry; others fail at once.

A task that raises :class:`conveyor.Retry` retries whatever ``retry_on``
says, after ``Retry(delay=...)`` if given, within ``retries`` (3 if unset).
When the budget is spent the task is *dead*: ``conveyor retry`` sends it back.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from .options import retry_policy_of, validate

RETRY_TYPE = "conveyor.errors.Retry"
EXPLICIT_RETRY_BUDGET = 3
# Retrying cannot help these: the task never ran, or can never be decoded.
NEVER_RETRY = frozenset({"conveyor.errors.UnknownTask", "conveyor.errors.SerializationError"})


RETRY_OPTIONS = ("retries", "retry_backoff", "retry_backoff_max", "retry_jitter", "retry_on")


def normalise_options(options: dict[str, Any]) -> dict[str, Any]:
    """Check the retry options in ``options`` in place with their validators in
    :mod:`conveyor.options` (ValueError naming the field); returns ``options``."""
    for name in RETRY_OPTIONS:
        if name in options:
            options[name] = validate(name, options[name])
    return options


def backoff(options: dict[str, Any], retry_number: int, rand: Callable[[], float] = random.random) -> float:
    """The delay before retry number ``retry_number`` (1 for the first)."""
    policy = retry_policy_of(options)
    delay = min(policy.backoff_max, policy.backoff * 2 ** (retry_number - 1))
    if policy.jitter:
        delay *= 0.5 + rand() / 2
    return float(delay)


def decide(options: dict[str, Any], failures: int, error: dict[str, Any],
           rand: Callable[[], float] = random.random) -> dict[str, Any] | None:
    """What to do with a failed attempt: ``{"delay": s}`` to retry, ``{"dead": True}``
    when the budget is spent, or None for a plain failure (no retries asked).

    ``failures`` is how many earlier attempts failed.
    """
    kind = error.get("type", "")
    if kind in NEVER_RETRY:
        return None
    explicit = kind == RETRY_TYPE
    policy = retry_policy_of(options)
    budget = policy.retries
    if explicit and not budget:
        budget = EXPLICIT_RETRY_BUDGET
    if budget <= 0:
        return None
    if not explicit and policy.retry_on is not None:
        mro = set(error.get("mro") or [kind])
        if not mro.intersection(policy.retry_on):
            return None
    used = max(0, failures - policy.base)
    if used >= budget:
        return {"dead": True}
    asked = error.get("delay") if explicit else None
    return {"delay": float(asked) if isinstance(asked, (int, float)) else backoff(options, used + 1, rand)}
