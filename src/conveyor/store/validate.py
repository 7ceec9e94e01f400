"""Argument checks every store shares, so each store refuses the same bad input
with the same message (before it touches anything, and without scanning)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from ..records import FINISHED, STATES, TaskFilter

FINISHED_STATES: frozenset[str] = frozenset(FINISHED)
ALL_STATES: frozenset[str] = frozenset(STATES)

#: The most rows one page of a listing may ask for.
MAX_PAGE = 1000
#: The most tasks one batch of a bulk action or a bounded maintenance call may touch.
MAX_BATCH = 10_000
#: The highest cap a count may be asked to count up to.
MAX_COUNT_CAP = 100_000
#: The longest id prefix or key a filter may give (ids are 32-44 characters).
MAX_TEXT = 200


def finished_states(states: Sequence[str], what: str) -> frozenset[str]:
    """``states`` as a set; ValueError unless every one is a finished state.

    ``what`` names the operation in the message ("requeue", "purge").
    """
    wanted = frozenset(states)
    bad = sorted(wanted - FINISHED_STATES)
    if bad:
        raise ValueError(f"cannot {what} {bad[0]} tasks: only finished states "
                         f"({', '.join(FINISHED)})")
    return wanted


def check_page(state: str | None, limit: int, offset: int) -> None:
    """ValueError unless ``state`` (when given) is a state and ``limit``/``offset`` a sane page."""
    if state is not None and state not in ALL_STATES:
        raise ValueError(f"unknown state {state!r}: choose one of {', '.join(STATES)}")
    check_int("limit", limit, 1, MAX_PAGE)
    check_int("offset", offset, 0, None)


def check_int(what: str, value: Any, low: int, high: int | None) -> int:
    """``value`` if it is an int (not a bool) in ``low..high``; else ValueError naming ``what``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{what} must be an integer, not {type(value).__name__}")
    if value < low or (high is not None and value > high):
        span = f"{low}..{high}" if high is not None else f">= {low}"
        raise ValueError(f"{what} must be {span}, not {value}")
    return value


def check_limit(limit: int | None, what: str = "limit") -> int | None:
    """A bounded batch size (1..MAX_BATCH), or None for "no limit" (the old behaviour)."""
    return None if limit is None else check_int(what, limit, 1, MAX_BATCH)


def check_cursor(cursor: Any) -> int | None:
    """The enqueue position a page cursor names (None: the start); ValueError if it is not one.

    A cursor is what a previous page returned: a position in enqueue order, as text.
    """
    if cursor is None:
        return None
    if not isinstance(cursor, str):
        raise ValueError(f"cursor must be a string from a previous page, not {type(cursor).__name__}")
    if not cursor.isascii() or not cursor.isdigit() or len(cursor) > 19:
        raise ValueError(f"cursor {cursor[:40]!r} is not a cursor from a previous page")
    return int(cursor)


def _text(what: str, value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"{what} must be a string, not {type(value).__name__}")
    if not value:
        raise ValueError(f"{what} must not be empty (leave it out to match every task)")
    if len(value) > MAX_TEXT:
        raise ValueError(f"{what} must be at most {MAX_TEXT} characters, not {len(value)}")
    return value


def _time(what: str, value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{what} must be a finite number of seconds, not {value!r}")
    return float(value)


def check_filter(flt: Any) -> TaskFilter:
    """``flt`` if it is a sane :class:`TaskFilter`; ValueError naming the bad field otherwise."""
    if not isinstance(flt, TaskFilter):
        raise ValueError(f"filter must be a TaskFilter, not {type(flt).__name__}")
    states = flt.states
    if isinstance(states, str) or not isinstance(states, tuple | list | frozenset | set):
        raise ValueError(f"states must be a sequence of state names, not {states!r}")
    for state in states:
        if state not in ALL_STATES:
            raise ValueError(f"unknown state {state!r} in states: choose from {', '.join(STATES)}")
    for what in ("queue", "name", "id_prefix", "key"):
        _text(what, getattr(flt, what))
    if flt.id_prefix is not None and not flt.id_prefix.isprintable():
        raise ValueError("id_prefix must be printable text")
    low = _time("created_from", flt.created_from)
    high = _time("created_to", flt.created_to)
    if low is not None and high is not None and low > high:
        raise ValueError(f"created_from ({low}) is after created_to ({high})")
    return flt


def check_listing(flt: Any, limit: Any, cursor: Any, newest_first: Any) -> int | None:
    """Check a listing's arguments; the cursor's position."""
    check_filter(flt)
    check_int("limit", limit, 1, MAX_PAGE)
    if not isinstance(newest_first, bool):
        raise ValueError(f"newest_first must be True or False, not {newest_first!r}")
    return check_cursor(cursor)
