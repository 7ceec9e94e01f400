"""Periodic schedules in the stores: the records behind ``save_schedule``,
``schedules``, ``remove_schedule`` and ``mark_slot`` of
:class:`~conveyor.store.base.Store`.

Kept apart from memory.py and sqlite.py so the schedule records and the task
records stay independent: :class:`MemorySchedules` is an object the memory
store owns, and the ``sql_*`` functions run on the SQLite store's connection
inside its transactions. A record is a plain dict (see base.py);
``last_slot`` only moves forward, so a master that looked late can never make
an enqueued slot due again.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from .. import serde

#: A schedule record: name, task, queue, payload, codec, cron, every, tz, missed,
#: options, source, created_at, last_slot.
ScheduleRecord = dict[str, Any]

COLUMNS = ("name", "task", "queue", "payload", "codec", "cron", "every", "tz", "missed",
           "options", "source", "created_at", "last_slot")


def normalise(record: ScheduleRecord) -> ScheduleRecord:
    """A copy of ``record`` with every column, in the types the stores keep."""
    missing = [c for c in ("name", "task", "queue", "payload", "created_at") if record.get(c) is None]
    if missing:
        raise ValueError(f"schedule record lacks {', '.join(missing)}")
    every = record.get("every")
    last = record.get("last_slot")
    return {
        "name": str(record["name"]), "task": str(record["task"]), "queue": str(record["queue"]),
        "payload": bytes(record["payload"]), "codec": record.get("codec") or serde.MSGPACK,
        "cron": record.get("cron"), "every": None if every is None else float(every),
        "tz": record.get("tz") or "UTC", "missed": record.get("missed") or "run_once",
        "options": dict(record.get("options") or {}), "source": record.get("source") or "cli",
        "created_at": float(record["created_at"]), "last_slot": None if last is None else float(last),
    }


def _copy(rec: ScheduleRecord) -> ScheduleRecord:
    out = dict(rec)
    out["options"] = dict(rec["options"])
    return out


class MemorySchedules:
    """The schedules of a :class:`~conveyor.store.memory.MemoryStore`: a dict by name.

    The store calls these under its lock, inside a transaction; each change
    first records the schedule as it was in ``undo`` (the open transaction
    level's schedule snapshots: name -> record, None for "did not exist"), and
    :meth:`restore` puts those snapshots back when the level is rolled back.
    """

    def __init__(self) -> None:
        self._records: dict[str, ScheduleRecord] = {}

    def _remember(self, name: str, undo: dict[str, ScheduleRecord | None]) -> None:
        if name not in undo:
            old = self._records.get(name)
            undo[name] = None if old is None else _copy(old)

    def save(self, record: ScheduleRecord, undo: dict[str, ScheduleRecord | None]) -> None:
        """Insert or replace the schedule ``record["name"]``."""
        rec = normalise(record)
        self._remember(rec["name"], undo)
        self._records[rec["name"]] = rec

    def all(self) -> list[ScheduleRecord]:
        """Copies of every record, by name."""
        return [_copy(self._records[name]) for name in sorted(self._records)]

    def remove(self, name: str, undo: dict[str, ScheduleRecord | None]) -> bool:
        """Delete schedule ``name``; False if there was none."""
        if name not in self._records:
            return False
        self._remember(name, undo)
        del self._records[name]
        return True

    def mark_slot(self, name: str, slot: float, undo: dict[str, ScheduleRecord | None]) -> None:
        """Move ``last_slot`` of ``name`` forward to ``slot`` (never back)."""
        rec = self._records.get(name)
        if rec is None or (rec["last_slot"] is not None and rec["last_slot"] >= slot):
            return
        self._remember(name, undo)
        rec["last_slot"] = float(slot)

    def restore(self, undo: dict[str, ScheduleRecord | None]) -> None:
        """Put back the snapshots of a rolled-back transaction level."""
        for name, snap in undo.items():
            if snap is None:
                self._records.pop(name, None)
            else:
                self._records[name] = snap


# -- the SQLite store's ``schedules`` table (created by store/sqlite_schema.py) --


def sql_save(conn: sqlite3.Connection, record: ScheduleRecord) -> None:
    """Insert or replace the schedule ``record["name"]``."""
    rec = normalise(record)
    rec["options"] = serde.packb(rec["options"]) if rec["options"] else None
    conn.execute(f"INSERT OR REPLACE INTO schedules ({', '.join(COLUMNS)}) "
                 f"VALUES ({', '.join('?' * len(COLUMNS))})", [rec[c] for c in COLUMNS])


def sql_all(conn: sqlite3.Connection) -> list[ScheduleRecord]:
    """Every record, by name."""
    rows = conn.execute(f"SELECT {', '.join(COLUMNS)} FROM schedules ORDER BY name").fetchall()
    out = []
    for row in rows:
        rec = dict(zip(COLUMNS, row))
        rec["options"] = serde.unpackb(rec["options"]) if rec["options"] else {}
        out.append(rec)
    return out


def sql_remove(conn: sqlite3.Connection, name: str) -> bool:
    """Delete schedule ``name``; False if there was none."""
    return conn.execute("DELETE FROM schedules WHERE name = ?", (name,)).rowcount > 0


def sql_mark_slot(conn: sqlite3.Connection, name: str, slot: float) -> None:
    """Move ``last_slot`` of ``name`` forward to ``slot`` (never back)."""
    conn.execute("UPDATE schedules SET last_slot = ? WHERE name = ? "
                 "AND (last_slot IS NULL OR last_slot < ?)", (float(slot), name, float(slot)))
