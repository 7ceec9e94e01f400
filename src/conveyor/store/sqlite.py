"""A durable store in one SQLite file (WAL mode) inside a data directory.

``sync="normal"`` (PRAGMA synchronous=NORMAL) keeps every committed
transaction across a killed process: it is in the WAL before the commit
returns. ``sync="full"`` also fsyncs the WAL on every commit, so commits
survive a power loss too. Group many calls into one commit (one fsync) with
``with store.transaction():``.

Every task is one row of ``tasks``; ``seq`` (the rowid) is the enqueue order.
Partial indexes cover the hot paths: the ready set per queue in lease order,
leases by owner and by deadline, delayed tasks by due time and finished tasks
by finish time.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from .. import serde
from ..errors import StoreError
from .base import (
    DEAD,
    DELAYED,
    DUPLICATE,
    FAILED,
    FINISHED,
    LEASED,
    READY,
    STALE,
    STORED,
    SUCCEEDED,
    UNKNOWN,
    Lease,
    NewTask,
    Outcome,
    QueueStats,
    Result,
    Store,
    TaskInfo,
)

DB_NAME = "conveyor.db"
SCHEMA_VERSION = 1
SYNC_MODES = {"normal": "NORMAL", "full": "FULL"}

_FINISHED = frozenset(FINISHED)
# The SQL below spells these states literally.
assert (READY, LEASED, DELAYED, DEAD) == ("ready", "leased", "delayed", "dead")
_CHUNK = 500  # ids per IN (...) list

# State names are spelled literally in the SQL below (not bound as parameters)
# so that SQLite can match each query to its partial index. The ready and
# delayed indexes also carry ``state`` so the lease subquery and next_due are
# answered from the index alone (SQLite 3.40 does not infer it from the WHERE).
_SCHEMA = f"""
CREATE TABLE tasks (
    seq            INTEGER PRIMARY KEY,
    id             TEXT    NOT NULL UNIQUE,
    queue          TEXT    NOT NULL,
    name           TEXT,
    state          TEXT    NOT NULL,
    priority       INTEGER NOT NULL DEFAULT 0,
    attempts       INTEGER NOT NULL DEFAULT 0,
    created_at     REAL    NOT NULL,
    not_before     REAL    NOT NULL DEFAULT 0,
    lease_owner    TEXT,
    lease_deadline REAL,
    started_at     REAL,
    finished_at    REAL,
    payload        BLOB    NOT NULL,
    codec          TEXT    NOT NULL,
    options        BLOB,
    errors         BLOB,
    result_ok      INTEGER,
    result_payload BLOB,
    result_codec   TEXT
);
CREATE INDEX tasks_ready ON tasks (queue, priority DESC, seq, state) WHERE state = '{READY}';
CREATE INDEX tasks_owner ON tasks (lease_owner) WHERE state = '{LEASED}';
CREATE INDEX tasks_deadline ON tasks (lease_deadline) WHERE state = '{LEASED}';
CREATE INDEX tasks_delayed ON tasks (not_before, state) WHERE state = '{DELAYED}';
CREATE INDEX tasks_finished ON tasks (finished_at) WHERE finished_at IS NOT NULL;
PRAGMA user_version = {SCHEMA_VERSION};
"""

_INFO_COLUMNS = (
    "id, queue, name, state, priority, attempts, created_at, not_before, lease_owner, "
    "lease_deadline, started_at, finished_at, options, errors, result_ok, result_payload, "
    "result_codec"
)

_RETURN_TO_READY = "state = 'ready', lease_owner = NULL, lease_deadline = NULL"


def _chunks(seq: Sequence[Any], size: int = _CHUNK) -> Iterator[Sequence[Any]]:
    for i in range(0, len(seq), size):
        yield seq[i:i + size]


def _marks(n: int) -> str:
    return ",".join("?" * n)


def _options(blob: bytes | None) -> dict[str, Any]:
    return serde.unpackb(blob) if blob else {}


class SQLiteStore(Store):
    """The durable :class:`Store`: one SQLite database ``conveyor.db`` in ``path``."""

    def __init__(self, path: str | os.PathLike[str], *, sync: str = "normal") -> None:
        if sync not in SYNC_MODES:
            raise ValueError(f"unknown sync mode {sync!r}: choose one of {', '.join(SYNC_MODES)}")
        self.directory = Path(path)
        self.path = self.directory / DB_NAME
        self.sync = sync
        self._lock = threading.RLock()
        self._depth = 0  # open transaction() levels
        self._conn: sqlite3.Connection | None = None
        if self.directory.exists() and not self.directory.is_dir():
            raise StoreError(f"cannot open store at {self.path}: {self.directory} is not a directory")
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot open store at {self.path}: cannot create directory "
                             f"{self.directory} ({exc.strerror or exc})") from exc
        if not os.access(self.directory, os.W_OK | os.X_OK):
            raise StoreError(f"cannot open store at {self.path}: directory {self.directory} is not writable")
        if self.path.exists() and not os.access(self.path, os.R_OK | os.W_OK):
            raise StoreError(f"cannot open store at {self.path}: file is not readable and writable")
        conn = None
        try:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                                   timeout=10.0)
            self._setup(conn)
        except BaseException as exc:
            if conn is not None:
                conn.close()
            if isinstance(exc, sqlite3.Error):
                raise StoreError(f"cannot open store at {self.path}: {exc}") from exc
            raise
        self._conn = conn

    def _setup(self, conn: sqlite3.Connection) -> None:
        # Reading the schema first detects a file that is not a database at all.
        tables = {row[0] for row in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table'")}
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise StoreError(f"cannot open store at {self.path}: WAL journal mode unavailable ({mode})")
        conn.execute(f"PRAGMA synchronous = {SYNC_MODES[self.sync]}")
        conn.execute("PRAGMA foreign_keys = OFF")
        conn.execute("PRAGMA temp_store = MEMORY")
        conn.execute("PRAGMA cache_size = -16000")  # 16 MiB page cache
        if version == 0 and not tables:
            conn.execute("BEGIN IMMEDIATE")
            try:
                # Another process may have created it since we looked: look again, locked.
                tables = {row[0] for row in conn.execute(
                    "SELECT name FROM sqlite_master WHERE type = 'table'")}
                version = conn.execute("PRAGMA user_version").fetchone()[0]
                if version == 0 and not tables:
                    for statement in _SCHEMA.split(";"):
                        if statement.strip():
                            conn.execute(statement)
                    tables, version = {"tasks"}, SCHEMA_VERSION
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"cannot open store at {self.path}: it has schema version {version}, "
                f"newer than this conveyor's {SCHEMA_VERSION}; upgrade conveyor"
            )
        elif version != SCHEMA_VERSION or "tasks" not in tables:
            raise StoreError(
                f"cannot open store at {self.path}: the file is an SQLite database "
                "but not a conveyor store"
            )
        # A cheap read through the tasks table catches a damaged schema or index root.
        conn.execute("SELECT seq FROM tasks ORDER BY seq DESC LIMIT 1").fetchall()

    # -- transactions ------------------------------------------------------

    @property
    def conn(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreError(f"store at {self.path} is closed")
        return self._conn

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """One commit for every call inside; nested blocks join the outer one.

        An exception rolls the block back (an inner block back to where it
        began) and is re-raised; SQLite errors surface as StoreError.
        """
        with self._lock:
            conn = self.conn
            depth = self._depth
            try:
                conn.execute("BEGIN IMMEDIATE" if depth == 0 else f"SAVEPOINT sp{depth}")
            except sqlite3.Error as exc:
                raise self._error(exc) from exc
            self._depth = depth + 1
            try:
                yield
            except BaseException as exc:
                self._depth = depth
                try:
                    if depth == 0:
                        if conn.in_transaction:
                            conn.execute("ROLLBACK")
                    else:
                        conn.execute(f"ROLLBACK TO sp{depth}")
                        conn.execute(f"RELEASE sp{depth}")
                except sqlite3.Error:
                    pass  # the original error matters more
                if isinstance(exc, sqlite3.Error):
                    raise self._error(exc) from exc
                raise
            else:
                self._depth = depth
                try:
                    conn.execute("COMMIT" if depth == 0 else f"RELEASE sp{depth}")
                except sqlite3.Error as exc:
                    if depth == 0 and conn.in_transaction:
                        with contextlib.suppress(sqlite3.Error):
                            conn.execute("ROLLBACK")
                    raise self._error(exc) from exc

    @contextlib.contextmanager
    def _reading(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            try:
                yield self.conn
            except sqlite3.Error as exc:
                raise self._error(exc) from exc

    def _error(self, exc: sqlite3.Error) -> StoreError:
        return StoreError(f"store at {self.path} failed: {exc}")

    def close(self) -> None:
        """Close the connection (idempotent)."""
        with self._lock:
            if self._conn is not None:
                with contextlib.suppress(sqlite3.Error):
                    if self._conn.in_transaction:
                        self._conn.execute("ROLLBACK")
                self._conn.close()
                self._conn = None

    def __repr__(self) -> str:
        return f"SQLiteStore({str(self.directory)!r}, sync={self.sync!r})"

    # -- the Store interface -------------------------------------------------

    def enqueue(self, tasks: Sequence[NewTask], now: float) -> list[bool]:
        """Insert tasks; False for ids that exist already (nothing changes)."""
        if not tasks:
            return []
        with self.transaction():
            conn = self.conn
            existing: set[str] = set()
            ids = [t.id for t in tasks]
            for part in _chunks(ids):
                existing.update(row[0] for row in conn.execute(
                    f"SELECT id FROM tasks WHERE id IN ({_marks(len(part))})", part))
            out: list[bool] = []
            rows = []
            for t in tasks:
                if t.id in existing:
                    out.append(False)
                    continue
                existing.add(t.id)
                out.append(True)
                rows.append((
                    t.id, t.queue, t.name, DELAYED if t.not_before > now else READY,
                    int(t.priority), now, float(t.not_before), bytes(t.payload), t.codec,
                    serde.packb(t.options) if t.options else None,
                ))
            conn.executemany(
                "INSERT INTO tasks (id, queue, name, state, priority, created_at, not_before, "
                "payload, codec, options) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
        return out

    def lease(self, queue: str, limit: int, owner: str, now: float, lease_for: float) -> list[Lease]:
        """Lease up to ``limit`` ready tasks, highest priority first, FIFO within one."""
        if limit <= 0:
            return []
        with self.transaction():
            rows = self.conn.execute(
                "UPDATE tasks SET state = 'leased', attempts = attempts + 1, lease_owner = ?, "
                "lease_deadline = ?, started_at = ? WHERE seq IN ("
                " SELECT seq FROM tasks WHERE state = 'ready' AND queue = ?"
                " ORDER BY priority DESC, seq LIMIT ?) "
                "RETURNING priority, seq, id, queue, name, payload, codec, attempts, options",
                (owner, now + lease_for, now, queue, int(limit)),
            ).fetchall()
        rows.sort(key=lambda r: (-r[0], r[1]))  # RETURNING order is unspecified
        return [Lease(r[2], r[3], r[4], r[5], r[6], r[7], _options(r[8])) for r in rows]

    def complete(self, outcomes: Sequence[Outcome], now: float) -> list[str]:
        """Store results; STORED, DUPLICATE, STALE or UNKNOWN for each outcome."""
        if not outcomes:
            return []
        with self.transaction():
            conn = self.conn
            current: dict[str, list[Any]] = {}  # id -> [seq, state, attempts]
            ids = list({o.id: None for o in outcomes})
            for part in _chunks(ids):
                for seq, task_id, state, attempts in conn.execute(
                        f"SELECT seq, id, state, attempts FROM tasks "
                        f"WHERE id IN ({_marks(len(part))})", part):
                    current[task_id] = [seq, state, attempts]
            out: list[str] = []
            updates = []
            for o in outcomes:
                cur = current.get(o.id)
                if cur is None:
                    out.append(UNKNOWN)
                    continue
                seq, state, attempts = cur
                if state in _FINISHED:
                    out.append(DUPLICATE)
                    continue
                if o.ok and 1 <= o.token <= attempts:
                    cur[1] = SUCCEEDED
                elif not o.ok and state == LEASED and o.token == attempts:
                    cur[1] = FAILED
                else:
                    out.append(STALE)
                    continue
                out.append(STORED)
                updates.append((cur[1], 1 if o.ok else 0, bytes(o.payload), o.codec, now, seq))
            conn.executemany(
                "UPDATE tasks SET state = ?, result_ok = ?, result_payload = ?, result_codec = ?, "
                "finished_at = ?, lease_owner = NULL, lease_deadline = NULL WHERE seq = ?",
                updates)
        return out

    def nack(self, task_id: str, token: int, now: float, *, delay: float = 0.0,
             error: bytes | None = None, dead: bool = False) -> bool:
        """Give a leased task back to ready, delayed or dead; False if ``token`` is stale."""
        with self.transaction():
            conn = self.conn
            row = conn.execute(
                "SELECT seq, errors FROM tasks WHERE id = ? AND state = 'leased' AND attempts = ?",
                (task_id, token)).fetchone()
            if row is None:
                return False
            seq, blob = row
            errors: list[bytes] = serde.unpackb(blob) if blob else []
            if error is not None:
                errors.append(bytes(error))
                blob = serde.packb(errors)
            if dead:
                conn.execute(
                    "UPDATE tasks SET state = 'dead', errors = ?, result_ok = 0, result_payload = ?,"
                    " result_codec = 'msgpack', finished_at = ?, lease_owner = NULL,"
                    " lease_deadline = NULL WHERE seq = ?",
                    (blob, errors[-1] if errors else b"", now, seq))
            elif delay > 0:
                conn.execute(
                    "UPDATE tasks SET state = 'delayed', errors = ?, not_before = ?,"
                    " lease_owner = NULL, lease_deadline = NULL WHERE seq = ?",
                    (blob, now + delay, seq))
            else:
                conn.execute(f"UPDATE tasks SET {_RETURN_TO_READY}, errors = ? WHERE seq = ?",
                             (blob, seq))
            return True

    def release(self, leases: Sequence[tuple[str, int]], now: float) -> int:
        """Hand back the leases whose token still holds; how many did."""
        if not leases:
            return 0
        with self.transaction():
            cur = self.conn.executemany(
                f"UPDATE tasks SET {_RETURN_TO_READY} "
                "WHERE id = ? AND state = 'leased' AND attempts = ?",
                [(task_id, int(token)) for task_id, token in leases])
            return cur.rowcount

    def release_owner(self, owner: str, now: float) -> list[str]:
        """Hand back every task leased to ``owner``; their ids in enqueue order."""
        with self.transaction():
            rows = self.conn.execute(
                f"UPDATE tasks SET {_RETURN_TO_READY} "
                "WHERE state = 'leased' AND lease_owner = ? RETURNING seq, id",
                (owner,)).fetchall()
        rows.sort()
        return [r[1] for r in rows]

    def release_all(self, now: float) -> int:
        """Hand back every leased task; how many."""
        with self.transaction():
            return self.conn.execute(
                f"UPDATE tasks SET {_RETURN_TO_READY} WHERE state = 'leased'").rowcount

    def extend_owner(self, owner: str, now: float, lease_for: float) -> int:
        """Set the deadline of every lease ``owner`` holds to ``now + lease_for``."""
        with self.transaction():
            return self.conn.execute(
                "UPDATE tasks SET lease_deadline = ? WHERE state = 'leased' AND lease_owner = ?",
                (now + lease_for, owner)).rowcount

    def expire_leases(self, now: float) -> list[str]:
        """Hand back every task whose lease deadline is at or before ``now``."""
        with self.transaction():
            rows = self.conn.execute(
                f"UPDATE tasks SET {_RETURN_TO_READY} "
                "WHERE state = 'leased' AND lease_deadline <= ? RETURNING seq, id",
                (now,)).fetchall()
        rows.sort()
        return [r[1] for r in rows]

    def promote_due(self, now: float) -> list[str]:
        """Make delayed tasks with ``not_before <= now`` ready; their queues, deduplicated."""
        with self.transaction():
            rows = self.conn.execute(
                "UPDATE tasks SET state = 'ready' WHERE state = 'delayed' AND not_before <= ? "
                "RETURNING seq, queue", (now,)).fetchall()
        rows.sort()
        return list({r[1]: None for r in rows})

    def next_due(self) -> float | None:
        """The earliest ``not_before`` of any delayed task, or None."""
        with self._reading() as conn:
            row = conn.execute(
                "SELECT not_before FROM tasks WHERE state = 'delayed' "
                "ORDER BY not_before LIMIT 1").fetchone()
        return None if row is None else row[0]

    def results(self, ids: Sequence[str]) -> dict[str, Result]:
        """Stored results of the finished tasks among ``ids``."""
        out: dict[str, Result] = {}
        with self._reading() as conn:
            unique = list(dict.fromkeys(ids))
            for part in _chunks(unique):
                for task_id, ok, payload, codec, state, finished_at in conn.execute(
                        "SELECT id, result_ok, result_payload, result_codec, state, finished_at "
                        f"FROM tasks WHERE id IN ({_marks(len(part))}) "
                        "AND finished_at IS NOT NULL", part):
                    out[task_id] = Result(task_id, bool(ok), payload or b"", codec or "msgpack",
                                          state, finished_at)
        return out

    def get(self, task_id: str) -> TaskInfo | None:
        """Everything stored about one task, or None."""
        with self._reading() as conn:
            row = conn.execute(f"SELECT {_INFO_COLUMNS} FROM tasks WHERE id = ?",
                               (task_id,)).fetchone()
        if row is None:
            return None
        (tid, queue, name, state, priority, attempts, created_at, not_before, owner, deadline,
         started_at, finished_at, options, errors, ok, payload, codec) = row
        result = None
        if state in _FINISHED:
            result = Result(tid, bool(ok), payload or b"", codec or "msgpack", state, finished_at)
        return TaskInfo(
            id=tid, queue=queue, name=name, state=state, priority=priority, attempts=attempts,
            created_at=created_at, not_before=not_before, lease_owner=owner,
            lease_deadline=deadline, started_at=started_at, finished_at=finished_at,
            options=_options(options), errors=serde.unpackb(errors) if errors else [],
            result=result,
        )

    def purge_finished(self, before: float) -> int:
        """Delete finished tasks that finished before ``before``; how many."""
        with self.transaction():
            return self.conn.execute(
                "DELETE FROM tasks WHERE finished_at < ?", (before,)).rowcount

    def pending_counts(self, queue: str) -> tuple[int, int, int]:
        """(ready, delayed, leased) counts of one queue, each from its partial index."""
        with self._reading() as conn:
            return tuple(  # type: ignore[return-value]
                conn.execute(f"SELECT count(*) FROM tasks WHERE state = '{state}' AND queue = ?",
                             (queue,)).fetchone()[0]
                for state in (READY, DELAYED, LEASED))

    def stats(self) -> dict[str, QueueStats]:
        """Counts by state for every queue that has tasks."""
        out: dict[str, QueueStats] = {}
        with self._reading() as conn:
            rows = conn.execute(
                "SELECT queue, state, count(*) FROM tasks GROUP BY queue, state").fetchall()
        for queue, state, n in sorted(rows):
            stats = out.setdefault(queue, QueueStats())
            if hasattr(stats, state):
                setattr(stats, state, n)
        return out

