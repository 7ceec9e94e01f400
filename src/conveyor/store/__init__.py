"""Stores: where the master keeps queues, leases and results.

:func:`open_store` picks the implementation from the ``--data`` setting:
``None`` or ``":memory:"`` keeps everything in memory, anything else is a
data directory for the durable SQLite store.
"""

from __future__ import annotations

import os

from .base import (
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
    Store,
    TaskInfo,
)
from .memory import MemoryStore
from .sqlite import SYNC_MODES, SQLiteStore

MEMORY = ":memory:"


def open_store(data: str | os.PathLike[str] | None, *, sync: str = "normal") -> Store:
    """A MemoryStore for None or ``":memory:"``, else a SQLiteStore in directory ``data``."""
    if sync not in SYNC_MODES:
        raise ValueError(f"unknown sync mode {sync!r}: choose one of {', '.join(SYNC_MODES)}")
    if data is None or (isinstance(data, str) and data == MEMORY):
        return MemoryStore()
    return SQLiteStore(data, sync=sync)


__all__ = [
    "CANCELLED", "DEAD", "DELAYED", "DUPLICATE", "FAILED", "FINISHED", "LEASED", "READY",
    "STALE", "STATES", "STORED", "SUCCEEDED", "UNKNOWN", "WAITING", "MEMORY",
    "Lease", "NewTask", "Outcome", "QueueStats", "Result", "Store", "TaskInfo",
    "MemoryStore", "SQLiteStore", "open_store",
]
