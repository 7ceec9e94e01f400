"""The tasks list: filters that combine, keyset pages, counts and bulk actions.

Everything is the master's: the filter (several states, queue, task name, id
prefix, idempotency key, submitted between) goes to its ``tasks`` op with a
cursor, so a page costs the same at any depth and no window is read and
filtered here. Pages move by cursor: ``cursor`` is where this page starts and
``back`` the starts of the pages before it, so "previous" needs no reverse
scan. How many match comes from the master's ``count`` (exact, or "at least
N" past its cap); bulk actions go to ``retry_matching``/``cancel_matching``,
which the master works through in batches.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from ..client.client import Client
from ..records import CANCELLED, DEAD, FAILED, FINISHED, STATES, TaskCount

PAGE_SIZE = 50
#: Keyset calls one page view makes at most to fill a page (a sparse filter gives
#: short pages with a cursor; past this the page shows what it has and a "next").
MAX_CALLS = 20
#: A count stops here and says "at least".
COUNT_CAP = 100_000
#: The most earlier-page cursors a link carries ("previous" past them goes to the first page).
MAX_BACK = 100
FIRST = "-"  # the start of the first page in ``back``
#: What a bulk retry requeues when the filter names no state (never succeeded tasks).
RETRYABLE = (FAILED, DEAD, CANCELLED)
UNFINISHED = tuple(s for s in STATES if s not in FINISHED)


@dataclass(frozen=True)
class TaskFilter:
    """What the tasks list shows: every field optional; they combine (AND; states OR)."""

    states: tuple[str, ...] = ()
    queue: str | None = None
    name: str | None = None  # the task name, exactly
    prefix: str | None = None  # prefix of the task id
    key: str | None = None  # the idempotency key given at submit
    since: float | None = None  # submitted at or after (Unix time)
    until: float | None = None  # submitted before (Unix time)
    newest_first: bool = True
    cursor: str | None = None  # where this page starts (None: the first page)
    back: tuple[str, ...] = ()  # where the pages before it start (FIRST: the first page)

    @classmethod
    def from_query(cls, q: Mapping[str, Any], getall: Any = None) -> TaskFilter:
        """Parse a query string (``getall(name)`` gives repeated fields); ValueError names the field."""
        states = tuple(getall("state", [])) if getall is not None else tuple(q.get("states", ()))
        states = tuple(s for s in states if s)
        for s in states:
            if s not in STATES:
                raise ValueError(f"state: {s!r} is not one of {', '.join(STATES)}")
        order = q.get("order") or "desc"
        if order not in ("asc", "desc"):
            raise ValueError("order: must be asc or desc")
        cursor = q.get("cursor") or None
        if cursor is not None and not _is_cursor(cursor):
            raise ValueError("cursor: not a cursor from a previous page")
        back = tuple(b for b in str(q.get("back") or "").split(",") if b)
        if len(back) > MAX_BACK or not all(b == FIRST or _is_cursor(b) for b in back):
            raise ValueError("back: not a list of cursors from previous pages")
        return cls(states=states, queue=(q.get("queue") or None), name=(q.get("name") or None),
                   prefix=(q.get("prefix") or None), key=(q.get("key") or None),
                   since=_time(q.get("since"), "since"), until=_time(q.get("until"), "until"),
                   newest_first=order == "desc", cursor=cursor, back=back)

    def query(self, *, paging: bool = True) -> list[tuple[str, str]]:
        """This filter as query-string pairs (``paging``: with where the page starts)."""
        pairs = [("state", s) for s in self.states]
        for key in ("queue", "name", "prefix", "key"):
            if getattr(self, key):
                pairs.append((key, getattr(self, key)))
        for key in ("since", "until"):
            value = getattr(self, key)
            if value is not None:
                pairs.append((key, datetime.fromtimestamp(value, UTC).strftime("%Y-%m-%dT%H:%M:%S")))
        pairs.append(("order", "desc" if self.newest_first else "asc"))
        if paging and self.cursor:
            pairs.append(("cursor", self.cursor))
        if paging and self.back:
            pairs.append(("back", ",".join(self.back)))
        return pairs

    def first_page(self) -> TaskFilter:
        return replace(self, cursor=None, back=())

    def next_page(self, cursor: str) -> TaskFilter:
        """The page starting at ``cursor``, with this one remembered for "previous"."""
        return replace(self, cursor=cursor, back=(*self.back, self.cursor or FIRST)[-MAX_BACK:])

    def previous_page(self) -> TaskFilter:
        if not self.back:
            return self.first_page()
        start = self.back[-1]
        return replace(self, cursor=None if start == FIRST else start, back=self.back[:-1])

    def text(self, key: str) -> str:
        """The value of query field ``key`` as a form shows it ('' when unset)."""
        return next((v for k, v in self.query() if k == key), "")

    def fields(self, states: tuple[str, ...] | None = None) -> dict[str, Any]:
        """The filter as the client's keyword arguments (``states`` overriding its own)."""
        chosen = self.states if states is None else states
        return {"states": list(chosen) or None, "queue": self.queue, "name": self.name,
                "id_prefix": self.prefix, "key": self.key, "created_from": self.since,
                "created_to": self.until}

    def action_states(self, action: str) -> tuple[str, ...]:
        """The states a bulk ``action`` ("retry", "cancel") may touch under this filter."""
        allowed = RETRYABLE if action == "retry" else UNFINISHED
        return tuple(s for s in allowed if not self.states or s in self.states)


def _is_cursor(text: str) -> bool:
    return text.isascii() and text.isdigit() and len(text) <= 19


def _time(text: Any, name: str) -> float | None:
    """A ``datetime-local`` value (read as UTC) or Unix seconds, as Unix time."""
    if not text:
        return None
    text = str(text).strip()
    try:
        return float(text)
    except ValueError:
        pass
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{name}: not a date and time (YYYY-MM-DDTHH:MM, UTC)") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()


@dataclass
class Selection:
    """One page of the tasks a filter selects, how many match, and the next page's start."""

    tasks: list[dict[str, Any]] = field(default_factory=list)
    count: TaskCount = TaskCount(0, True)
    cursor: str | None = None  # where the next page starts (None: this is the last)

    @property
    def matched(self) -> str:
        """The count as the page says it: "12" or "at least 100000"."""
        return str(self.count.n) if self.count.exact else f"at least {self.count.n}"


def select(client: Client, flt: TaskFilter, *, page_size: int = PAGE_SIZE) -> Selection:
    """A page of what ``flt`` selects, from its cursor, and the count of all of it."""
    sel = Selection(count=client.count_tasks(**flt.fields(), cap=COUNT_CAP))
    cursor = flt.cursor
    for _ in range(MAX_CALLS):
        page = client.task_page(**flt.fields(), limit=page_size - len(sel.tasks), cursor=cursor,
                                newest_first=flt.newest_first)
        sel.tasks.extend(page.tasks)
        cursor = page.cursor
        if cursor is None or len(sel.tasks) >= page_size:
            break
    sel.cursor = cursor
    return sel


def count_for(client: Client, flt: TaskFilter, action: str) -> TaskCount:
    """How many tasks a bulk ``action`` under ``flt`` would touch (exact, or at least)."""
    states = flt.action_states(action)
    if not states:
        return TaskCount(0, True)
    return client.count_tasks(**flt.fields(states), cap=COUNT_CAP)


def apply(client: Client, flt: TaskFilter, action: str) -> int:
    """Run a bulk ``action`` ("retry", "cancel") on what ``flt`` selects; how many it touched."""
    states = flt.action_states(action)
    if not states:
        return 0
    act = client.retry_matching if action == "retry" else client.cancel_matching
    return int(act(**flt.fields(states))["n"])
