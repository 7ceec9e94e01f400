"""Task listings, counts and bulk actions by filter, as both clients send them.

A filter is every field of :class:`conveyor.records.TaskFilter`, sent flat in
the request; the master checks them (a bad one is an error naming it) before
any store call. Listings page by keyset cursor: a page may be short, even
empty, and still have a cursor (the master examines a bounded number of rows
per call); ``cursor`` None means the listing is at its end.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

#: How long a bulk action may take before the client stops waiting for its reply
#: (the master works through it in batches, serving other requests between them).
BULK_TIMEOUT = 3600.0


@dataclass(slots=True)
class TaskListing:
    """One page of a task listing: task documents and the cursor of the next page
    (None at the end)."""

    tasks: list[dict[str, Any]]
    cursor: str | None


def filter_fields(*, states: Iterable[str] | None = None, queue: str | None = None, name: str | None = None,
                  id_prefix: str | None = None, key: str | None = None, created_from: float | None = None,
                  created_to: float | None = None) -> dict[str, Any]:
    """The request fields of a task filter (only those given)."""
    fields: dict[str, Any] = {"states": list(states) if states is not None else None, "queue": queue,
                              "name": name, "id_prefix": id_prefix, "key": key,
                              "created_from": created_from, "created_to": created_to}
    return {k: v for k, v in fields.items() if v is not None}


def page_fields(flt: dict[str, Any], limit: int, cursor: str | None, newest_first: bool) -> dict[str, Any]:
    """A keyset ``tasks`` request: the filter, the page size, the cursor (None: the first page)."""
    return {**flt, "limit": limit, "cursor": cursor, "newest_first": newest_first}
