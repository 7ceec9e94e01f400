"""Stores: where the master keeps queues, leases and results.

:func:`open_store` picks the implementation from the ``--data`` setting:
``None`` or ``":memory:"`` keeps everything in memory, a ``postgresql://``
URL names a PostgreSQL database (psycopg, the ``postgres`` extra), and
anything else is a data directory for the durable SQLite store.

The names below are loaded on first use (PEP 562): importing this package
(or ``conveyor.store.base``) does not load sqlite3 until a SQLite store is asked for, nor psycopg until a
PostgreSQL store is.
"""

from __future__ import annotations

import importlib
import os
from typing import TYPE_CHECKING, Any

MEMORY = ":memory:"

# public name -> the module (relative to this package) that defines it
_LAZY: dict[str, str] = {
    **{name: "..records" for name in (  # the records every layer shares, re-exported here
        "CANCELLED", "DEAD", "DELAYED", "DUPLICATE", "FAILED", "FINISHED", "LEASED", "READY",
        "STALE", "STATES", "STORED", "SUCCEEDED", "UNKNOWN", "WAITING",
        "Lease", "NewTask", "Outcome", "QueueStats", "Result", "TaskInfo",
    )},
    "Store": ".base",
    "MemoryStore": ".memory",
    "SQLiteStore": ".sqlite",
    "PostgresStore": ".postgres",
    "SYNC_MODES": ".sqlite",
}


def open_store(data: str | os.PathLike[str] | None, *, sync: str = "normal") -> Store:
    """A MemoryStore for None or ``":memory:"``, a PostgresStore for a ``postgresql://``
    URL, else a SQLiteStore in directory ``data``.

    ``sync`` is SQLite's setting; PostgreSQL's durability is the server's
    ``synchronous_commit`` (on by default: a commit waits for the WAL flush).
    """
    from .dsn import is_postgres
    from .sqlite import SYNC_MODES, SQLiteStore

    if sync not in SYNC_MODES:
        raise ValueError(f"unknown sync mode {sync!r}: choose one of {', '.join(SYNC_MODES)}")
    if is_postgres(data):
        assert isinstance(data, str)
        try:
            from .postgres import PostgresStore
        except ImportError as exc:
            from ..errors import StoreError

            raise StoreError(f"a PostgreSQL store needs psycopg: pip install 'conveyor[postgres]' "
                             f"({exc})") from None
        return PostgresStore(data)
    if data is None or (isinstance(data, str) and data == MEMORY):
        from .memory import MemoryStore

        return MemoryStore()
    return SQLiteStore(data, sync=sync)


def __getattr__(name: str) -> Any:
    """Import a public name's module on first access and cache the name here."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [  # the names of _LAZY, MEMORY and open_store, spelled out for linters and readers
    "CANCELLED", "DEAD", "DELAYED", "DUPLICATE", "FAILED", "FINISHED", "LEASED", "READY",
    "STALE", "STATES", "STORED", "SUCCEEDED", "UNKNOWN", "WAITING", "MEMORY", "SYNC_MODES",
    "Lease", "NewTask", "Outcome", "QueueStats", "Result", "Store", "TaskInfo",
    "MemoryStore", "PostgresStore", "SQLiteStore", "open_store",
]

if TYPE_CHECKING:
    from ..records import (
        CANCELLED,
        DEAD,
        DELAYED,
        DUPLICATE,
        FAILED,
        FINISHED,
        LEASED,
        READY,
        STALE,
        STATES,
        STORED,
        SUCCEEDED,
        UNKNOWN,
        WAITING,
        Lease,
        NewTask,
        Outcome,
        QueueStats,
        Result,
        TaskInfo,
    )
    from .base import Store
    from .memory import MemoryStore
    from .postgres import PostgresStore
    from .sqlite import SYNC_MODES, SQLiteStore
