"""Keyset pages over the enqueue order, with a bound on the work each call does.

Every store numbers its tasks in enqueue order (``seq``; task ids are
time-ordered too, but idempotency keys and caller-chosen ids are not, so the
order is the store's own). A listing reads one or more *streams* — the
tasks of one state, or all tasks — from a cursor onwards in that order, each
examining at most a budget of rows, and merges them here. The merge keeps
only what every stream has certainly covered, so a page never skips a
matching task; when the budget runs out before the page fills, the page is
short (possibly empty) and its cursor resumes where the scan stopped.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from ..records import STATES, TaskFilter

Row = TypeVar("Row")

#: Rows one listing call may examine across its streams (plus each stream's page).
LIST_BUDGET = 20_000
#: Rows one count may examine before it answers "at least".
COUNT_BUDGET = 100_000
#: An id prefix matching at most this many tasks is read through the id index.
PREFIX_FEW = 10_000


@dataclass(slots=True)
class Stream(Generic[Row]):
    """What one stream found after the cursor: ``rows`` (seq, row) in page order, and
    ``reach``: None if the stream was read to its end, else the seq up to which
    every match is known (the last row examined, or the last match kept)."""

    rows: list[tuple[int, Row]]
    reach: int | None


def merge(streams: Sequence[Stream[Row]], limit: int,
          newest_first: bool) -> tuple[list[Row], int | None]:
    """The page (up to ``limit`` rows) and the cursor seq of the next page, or None at the end."""
    reaches = [s.reach for s in streams if s.reach is not None]
    frontier: int | None = None
    if reaches:
        frontier = max(reaches) if newest_first else min(reaches)
    rows = [r for s in streams for r in s.rows]
    if frontier is not None:
        rows = [r for r in rows if (r[0] >= frontier if newest_first else r[0] <= frontier)]
    rows.sort(key=lambda r: r[0], reverse=newest_first)
    if len(rows) >= limit:
        rows = rows[:limit]
        return [r[1] for r in rows], rows[-1][0]
    return [r[1] for r in rows], frontier


def stream_states(flt: TaskFilter) -> list[str | None]:
    """The streams a filter reads: one per state asked for, or one of every task (None)."""
    if not flt.states or set(flt.states) >= set(STATES):
        return [None]
    return [s for s in STATES if s in flt.states]  # fixed order, duplicates dropped


def prefix_range(prefix: str) -> tuple[str, str]:
    """(low, high): the ids starting with ``prefix`` are exactly low <= id < high."""
    last = prefix[-1]
    return prefix, prefix[:-1] + chr(ord(last) + 1)


def share(budget: int, streams: int) -> int:
    """Each stream's part of a call's ``budget`` of examined rows (at least one row)."""
    return max(1, budget // streams)
