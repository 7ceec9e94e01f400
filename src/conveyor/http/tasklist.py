"""The tasks list: filters that combine, sorting by submit time, pages, bulk selections.

The master's ``tasks`` op filters by one queue and one state and pages by
offset in submit order. The dashboard builds the rest on it, bounded: for each
state asked for it reads at most ``SCAN_LIMIT`` tasks (the newest ones when
sorting newest first, found from the state counts in the status document),
then applies the name, id-prefix and time filters here and merges the states
by submit time. When a window was full the page says the list is truncated,
so a narrower filter is needed; nothing is silently dropped.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from ..client.client import Client
from ..records import STATES

PAGE_SIZE = 50
SCAN_LIMIT = 2000  # tasks read from the master per state and request, at most
BATCH = 1000  # the master's largest page


@dataclass(frozen=True)
class TaskFilter:
    """What the tasks list shows: every field optional; they combine (AND; states OR)."""

    states: tuple[str, ...] = ()
    queue: str | None = None
    name: str | None = None  # substring of the task name
    prefix: str | None = None  # prefix of the task id
    since: float | None = None  # submitted at or after (Unix time)
    until: float | None = None  # submitted before (Unix time)
    newest_first: bool = True
    page: int = 1

    @classmethod
    def from_query(cls, q: Mapping[str, Any], getall: Any = None) -> TaskFilter:
        """Parse a query string (``getall(name)`` gives repeated fields); ValueError names the field."""
        states = tuple(getall("state", [])) if getall is not None else tuple(q.get("states", ()))
        states = tuple(s for s in states if s)
        for s in states:
            if s not in STATES:
                raise ValueError(f"state: {s!r} is not one of {', '.join(STATES)}")
        try:
            page = max(1, int(q.get("page") or 1))
        except ValueError:
            raise ValueError("page: must be a whole number") from None
        order = q.get("order") or "desc"
        if order not in ("asc", "desc"):
            raise ValueError("order: must be asc or desc")
        return cls(states=states, queue=(q.get("queue") or None), name=(q.get("name") or None),
                   prefix=(q.get("prefix") or None), since=_time(q.get("since"), "since"),
                   until=_time(q.get("until"), "until"), newest_first=order == "desc", page=page)

    def query(self, **override: Any) -> list[tuple[str, str]]:
        """This filter as query-string pairs (for links to other pages of it)."""
        pairs = [("state", s) for s in self.states]
        for key in ("queue", "name", "prefix"):
            if getattr(self, key):
                pairs.append((key, getattr(self, key)))
        for key in ("since", "until"):
            value = getattr(self, key)
            if value is not None:
                pairs.append((key, datetime.fromtimestamp(value, UTC).strftime("%Y-%m-%dT%H:%M:%S")))
        pairs.append(("order", "desc" if self.newest_first else "asc"))
        page = override.get("page", self.page)
        if page != 1:
            pairs.append(("page", str(page)))
        return pairs

    def text(self, key: str) -> str:
        """The value of query field ``key`` as a form shows it ('' when unset)."""
        return next((v for k, v in self.query() if k == key), "")

    def matches(self, task: dict[str, Any]) -> bool:
        """True if ``task`` (a brief task document) passes the local filters."""
        if self.states and task.get("state") not in self.states:
            return False
        if self.queue and task.get("queue") != self.queue:
            return False
        if self.name and self.name not in str(task.get("name") or ""):
            return False
        if self.prefix and not str(task.get("id", "")).startswith(self.prefix):
            return False
        created = task.get("created_at") or 0.0
        if self.since is not None and created < self.since:
            return False
        return not (self.until is not None and created >= self.until)


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
    """The tasks a filter selected: one page of them, how many matched, and whether it is capped."""

    tasks: list[dict[str, Any]] = field(default_factory=list)
    matched: int = 0
    scanned: int = 0
    truncated: bool = False  # a state had more tasks than SCAN_LIMIT: the counts are lower bounds
    ids: list[str] = field(default_factory=list)  # every matching id (for bulk actions)


def _count(status: dict[str, Any] | None, queue: str | None, state: str | None) -> int | None:
    """Tasks in ``state`` (None: every state) of ``queue`` (None: every queue), from status."""
    if status is None:
        return None
    queues = status.get("queues", {})
    chosen = [queues.get(queue, {})] if queue else list(queues.values())
    states = [state] if state else list(STATES)
    return sum(int(q.get(s, 0)) for q in chosen for s in states)


def select(client: Client, flt: TaskFilter, status: dict[str, Any] | None,
           scan_limit: int = SCAN_LIMIT) -> Selection:
    """Read the tasks ``flt`` selects from the master, bounded by ``scan_limit`` per state."""
    sel = Selection()
    found: dict[str, dict[str, Any]] = {}
    for state in flt.states or (None,):
        start = 0
        if flt.newest_first:
            total = _count(status, flt.queue, state)
            if total is not None and total > scan_limit:
                start = total - scan_limit
                sel.truncated = True
        read = 0
        while read < scan_limit:
            want = min(BATCH, scan_limit - read)
            page = client.tasks(queue=flt.queue, state=state, limit=want, offset=start + read)
            read += len(page)
            for t in page:
                if flt.matches(t):
                    found[t["id"]] = t
            if len(page) < want:
                break
        else:
            sel.truncated = True
        sel.scanned += read
    ordered = sorted(found.values(), key=lambda t: (t.get("created_at") or 0.0, t["id"]),
                     reverse=flt.newest_first)
    sel.matched = len(ordered)
    sel.ids = [t["id"] for t in ordered]
    first = (flt.page - 1) * PAGE_SIZE
    sel.tasks = ordered[first:first + PAGE_SIZE]
    return sel
