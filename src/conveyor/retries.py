"""Retry policy: whether a failed attempt runs again, and after how long.

The worker that saw the failure decides (it has the exception and the
task's options); the master carries the decision out with a fenced nack,
so a report from an attempt that lost its lease changes nothing.
Options, all per task (``@conveyor.task(...)``) or per submit:

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

import math
import random
from collections.abc import Callable
from typing import Any

from .serde import type_name

RETRY_TYPE = "conveyor.errors.Retry"
EXPLICIT_RETRY_BUDGET = 3
# Retrying cannot help these: the task never ran, or can never be decoded.
NEVER_RETRY = frozenset({"conveyor.errors.UnknownTask", "conveyor.errors.SerializationError"})


def normalise_options(options: dict[str, Any]) -> dict[str, Any]:
    """Validate retry options in place (ValueError naming the field); returns ``options``."""
    if "retries" in options:
        r = options["retries"]
        if isinstance(r, bool) or not isinstance(r, int) or r < 0:
            raise ValueError(f"retries must be a non-negative integer, not {r!r}")
    for field in ("retry_backoff", "retry_backoff_max"):
        if field in options:
            v = options[field]
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise ValueError(f"{field} must be a non-negative number of seconds, not {v!r}")
            options[field] = float(v)
    if "retry_jitter" in options and not isinstance(options["retry_jitter"], bool):
        raise ValueError("retry_jitter must be True or False")
    if "retry_on" in options:
        kinds = options["retry_on"]
        if isinstance(kinds, (type, str)):
            kinds = (kinds,)
        names = []
        for k in kinds:
            if isinstance(k, type) and issubclass(k, BaseException):
                names.append(type_name(k))
            elif isinstance(k, str) and k:
                names.append(k)
            else:
                raise ValueError(f"retry_on must name exception types, not {k!r}")
        options["retry_on"] = names
    return options


def backoff(options: dict[str, Any], retry_number: int, rand: Callable[[], float] = random.random) -> float:
    """The delay before retry number ``retry_number`` (1 for the first)."""
    base = options.get("retry_backoff", 1.0)
    cap = options.get("retry_backoff_max", 300.0)
    delay = min(cap, base * 2 ** (retry_number - 1))
    if options.get("retry_jitter", True):
        delay *= 0.5 + rand() / 2
    return delay


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
    budget = options.get("retries", 0)
    if explicit and not budget:
        budget = EXPLICIT_RETRY_BUDGET
    if budget <= 0:
        return None
    retry_on = options.get("retry_on")
    if not explicit and retry_on is not None:
        mro = set(error.get("mro") or [kind])
        if not mro.intersection(retry_on):
            return None
    used = max(0, failures - int(options.get("retry_base", 0)))
    if used >= budget:
        return {"dead": True}
    delay = error.get("delay") if explicit and error.get("delay") is not None else backoff(options, used + 1, rand)
    return {"delay": float(delay)}
