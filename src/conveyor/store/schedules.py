"""Periodic schedules in the stores: the ``save_schedule``, ``schedules``,
``remove_schedule`` and ``mark_slot`` methods of :class:`~conveyor.store.base.Store`.

Kept apart from memory.py and sqlite.py (each store class inherits its mixin
here) so the schedule records and the task records stay independent. A
record is a plain dict (see base.py); ``last_slot`` only moves forward, so a
master that looked late can never make an enqueued slot due again.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from .. import serde

COLUMNS = ("name", "task", "queue", "payload", "codec", "cron", "every", "tz", "missed",
           "options", "source", "created_at", "last_slot")

# Schema version 2 added this table; a version-1 file gets it from migrate_v1.
SQLITE_DDL = """
CREATE TABLE IF NOT EXISTS schedules (
    name       TEXT PRIMARY KEY,
    task       TEXT NOT NULL,
    queue      TEXT NOT NULL,
    payload    BLOB NOT NULL,
    codec      TEXT NOT NULL,
    cron       TEXT,
    every      REAL,
    tz         TEXT NOT NULL,
    missed     TEXT NOT NULL,
    options    BLOB,
    source     TEXT NOT NULL,
    created_at REAL NOT NULL,
    last_slot  REAL
);
"""


def normalise(record: dict[str, Any]) -> dict[str, Any]:
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


def _copy(rec: dict[str, Any]) -> dict[str, Any]:
    out = dict(rec)
    out["options"] = dict(rec["options"])
    return out


class MemorySchedules:
    """Schedules for :class:`~conveyor.store.memory.MemoryStore`: a dict by name, under
    the store's lock, rolled back with its transactions (the undo map keeps a
    snapshot under the key ``("schedule", name)``)."""

    def _schedule_map(self) -> dict[str, dict[str, Any]]:
        try:
            return self._schedule_records  # type: ignore[has-type]
        except AttributeError:
            self._schedule_records: dict[str, dict[str, Any]] = {}
            return self._schedule_records

    def _touch_schedule(self, name: str) -> None:
        """Remember schedule ``name`` as it was before this transaction level changed it."""
        key = ("schedule", name)
        top = self._undo[-1]  # type: ignore[attr-defined]
        if key not in top:
            old = self._schedule_map().get(name)
            top[key] = None if old is None else _copy(old)

    def _restore_schedule(self, key: tuple[str, str], snap: dict[str, Any] | None) -> None:
        """Undo a rolled-back change (called by MemoryStore.transaction)."""
        records = self._schedule_map()
        if snap is None:
            records.pop(key[1], None)
        else:
            records[key[1]] = snap

    def save_schedule(self, record: dict[str, Any]) -> None:
        rec = normalise(record)
        with self.transaction():  # type: ignore[attr-defined]
            self._touch_schedule(rec["name"])
            self._schedule_map()[rec["name"]] = rec

    def schedules(self) -> list[dict[str, Any]]:
        with self._lock:  # type: ignore[attr-defined]
            records = self._schedule_map()
            return [_copy(records[name]) for name in sorted(records)]

    def remove_schedule(self, name: str) -> bool:
        with self.transaction():  # type: ignore[attr-defined]
            if name not in self._schedule_map():
                return False
            self._touch_schedule(name)
            del self._schedule_map()[name]
            return True

    def mark_slot(self, name: str, slot: float) -> None:
        with self.transaction():  # type: ignore[attr-defined]
            rec = self._schedule_map().get(name)
            if rec is None or (rec["last_slot"] is not None and rec["last_slot"] >= slot):
                return
            self._touch_schedule(name)
            rec["last_slot"] = float(slot)


def migrate_v1(conn: sqlite3.Connection, to_version: int) -> int:
    """Bring a schema-1 SQLite store to ``to_version`` by adding the schedules table."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version == 1:  # another process may have migrated it since we looked
            conn.execute(SQLITE_DDL)
            conn.execute(f"PRAGMA user_version = {int(to_version)}")
            version = to_version
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
    return version


class SQLiteSchedules:
    """Schedules for :class:`~conveyor.store.sqlite.SQLiteStore`: the ``schedules`` table."""

    def save_schedule(self, record: dict[str, Any]) -> None:
        rec = normalise(record)
        rec["options"] = serde.packb(rec["options"]) if rec["options"] else None
        with self.transaction():  # type: ignore[attr-defined]
            self.conn.execute(  # type: ignore[attr-defined]
                f"INSERT OR REPLACE INTO schedules ({', '.join(COLUMNS)}) "
                f"VALUES ({', '.join('?' * len(COLUMNS))})", [rec[c] for c in COLUMNS])

    def schedules(self) -> list[dict[str, Any]]:
        with self._reading() as conn:  # type: ignore[attr-defined]
            rows = conn.execute(f"SELECT {', '.join(COLUMNS)} FROM schedules ORDER BY name").fetchall()
        out = []
        for row in rows:
            rec = dict(zip(COLUMNS, row))
            rec["options"] = serde.unpackb(rec["options"]) if rec["options"] else {}
            out.append(rec)
        return out

    def remove_schedule(self, name: str) -> bool:
        with self.transaction():  # type: ignore[attr-defined]
            return self.conn.execute(  # type: ignore[attr-defined]
                "DELETE FROM schedules WHERE name = ?", (name,)).rowcount > 0

    def mark_slot(self, name: str, slot: float) -> None:
        with self.transaction():  # type: ignore[attr-defined]
            self.conn.execute(  # type: ignore[attr-defined]
                "UPDATE schedules SET last_slot = ? WHERE name = ? "
                "AND (last_slot IS NULL OR last_slot < ?)", (float(slot), name, float(slot)))
