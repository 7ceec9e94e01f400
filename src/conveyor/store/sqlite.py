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
from collections import deque
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from .. import serde
from ..errors import StoreError
from ..records import (
    CANCELLED,
    DEAD,
    DELAYED,
    DUPLICATE,
    FAILED,
    LEASED,
    READY,
    STALE,
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
from . import schedules as sched
from .base import Store, dependency_failed_error
from .sqlite_schema import SCHEMA_VERSION, check, migrate
from .validate import FINISHED_STATES, check_page, finished_states

DB_NAME = "conveyor.db"
SYNC_MODES = {"normal": "NORMAL", "full": "FULL"}
__all__ = ["DB_NAME", "SCHEMA_VERSION", "SYNC_MODES", "SQLiteStore"]

# The SQL below spells these states literally.
assert (READY, LEASED, DELAYED, DEAD) == ("ready", "leased", "delayed", "dead")
_CHUNK = 500  # ids per IN (...) list
_INSERT_TASK = ("INSERT INTO tasks (id, queue, name, state, priority, created_at, not_before, "
                "payload, codec, options) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")


def _task_row(t: NewTask, state: str, now: float) -> tuple[Any, ...]:
    """The values _INSERT_TASK stores for a new task."""
    return (t.id, t.queue, t.name, state, int(t.priority), now, float(t.not_before), bytes(t.payload),
            t.codec, serde.packb(t.options) if t.options else None)

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


def _info(row: Sequence[Any], after: list[str]) -> TaskInfo:
    """A TaskInfo from a row of ``_INFO_COLUMNS, progress`` and the task's dependencies."""
    (tid, queue, name, state, priority, attempts, created_at, not_before, owner, deadline,
     started_at, finished_at, options, errors, ok, payload, codec, progress) = row
    result = None
    if state in FINISHED_STATES:
        result = Result(tid, bool(ok), payload or b"", codec or "msgpack", state, finished_at)
    return TaskInfo(
        id=tid, queue=queue, name=name, state=state, priority=priority, attempts=attempts,
        created_at=created_at, not_before=not_before, lease_owner=owner,
        lease_deadline=deadline, started_at=started_at, finished_at=finished_at,
        options=_options(options), errors=serde.unpackb(errors) if errors else [],
        result=result, after=after,
        progress=serde.unpackb(progress) if progress is not None else None,
    )


class SQLiteStore(Store):
    """The durable :class:`Store`: one SQLite database ``conveyor.db`` in ``path``.

    ``exclusive`` (the default) keeps the file locked by this connection from
    its first use to :meth:`close` (SQLite's exclusive locking mode): the
    master is the file's only user, and a commit then takes no file locks
    and keeps the WAL index in memory (a one-task enqueue and its commit:
    26 -> 21 us here). ``exclusive=False`` lets other processes read the file while it
    is open, for tests and inspection.
    """

    def __init__(self, path: str | os.PathLike[str], *, sync: str = "normal",
                 exclusive: bool = True) -> None:
        if sync not in SYNC_MODES:
            raise ValueError(f"unknown sync mode {sync!r}: choose one of {', '.join(SYNC_MODES)}")
        self.directory = Path(path)
        self.path = self.directory / DB_NAME
        self.sync = sync
        self.exclusive = exclusive
        self.cheap_commits = sync != "full"  # only "full" pays an fsync per commit
        self._lock = threading.RLock()
        self._depth = 0  # open transaction() levels
        self._bare = False  # the open transaction was begun with savepoints=False
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
        where = str(self.path)
        check(conn, where)  # before anything else: a foreign or newer file is left as it is
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise StoreError(f"cannot open store at {self.path}: WAL journal mode unavailable ({mode})")
        conn.execute(f"PRAGMA synchronous = {SYNC_MODES[self.sync]}")
        conn.execute("PRAGMA foreign_keys = OFF")
        conn.execute("PRAGMA temp_store = MEMORY")
        conn.execute("PRAGMA cache_size = -16000")  # 16 MiB page cache
        if self.exclusive:
            conn.execute("PRAGMA locking_mode = EXCLUSIVE")
        migrate(conn, where)
        # A cheap read through the tasks table catches a damaged schema or index root.
        conn.execute("SELECT seq FROM tasks ORDER BY seq DESC LIMIT 1").fetchall()
        # Whether any task has dependencies: complete/nack/cancel skip the deps lookups
        # while none has. Once true it stays true (a rolled-back insert only costs needless
        # lookups); only this store writes deps rows (the master is the store's one writer).
        self._has_deps = conn.execute("SELECT EXISTS (SELECT 1 FROM deps)").fetchone()[0] == 1

    # -- transactions ------------------------------------------------------

    @property
    def conn(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreError(f"store at {self.path} is closed")
        return self._conn

    @contextlib.contextmanager
    def transaction(self, durable: bool = True, savepoints: bool = True) -> Iterator[None]:
        """One commit for every call inside; nested blocks join the outer one.

        An exception rolls the block back (an inner block back to where it
        began) and is re-raised; SQLite errors surface as StoreError. With
        sync "full", ``durable=False`` commits without the fsync (WAL frames
        are ordered, so the next durable commit's fsync covers them).
        ``savepoints=False`` (outermost block only) spares the blocks directly
        inside it their savepoints: for a block that one call fills, where
        any error rolls the whole transaction back anyway.
        """
        with self._lock:
            conn = self.conn
            depth = self._depth
            relax = not durable and depth == 0 and self.sync == "full"
            bare = depth == 1 and self._bare  # inside a savepoints=False block
            try:
                if relax:
                    conn.execute("PRAGMA synchronous = NORMAL")
                if depth == 0:
                    conn.execute("BEGIN IMMEDIATE")
                    self._bare = not savepoints
                elif not bare:
                    conn.execute(f"SAVEPOINT sp{depth}")
                self._depth = depth + 1
                try:
                    yield
                except BaseException:
                    self._depth = depth
                    try:
                        if depth == 0:
                            if conn.in_transaction:
                                conn.execute("ROLLBACK")
                        elif not bare:
                            conn.execute(f"ROLLBACK TO sp{depth}")
                            conn.execute(f"RELEASE sp{depth}")
                    except sqlite3.Error:
                        pass  # the original error matters more
                    raise
                self._depth = depth
                try:
                    if depth == 0:
                        conn.execute("COMMIT")
                    elif not bare:
                        conn.execute(f"RELEASE sp{depth}")
                except sqlite3.Error:
                    if depth == 0 and conn.in_transaction:
                        with contextlib.suppress(sqlite3.Error):
                            conn.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:
                raise self._error(exc) from exc
            finally:
                if relax:
                    with contextlib.suppress(sqlite3.Error):
                        conn.execute(f"PRAGMA synchronous = {SYNC_MODES[self.sync]}")

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
            if len(tasks) == 1 and not tasks[0].after:  # the common submit: one statement
                t = tasks[0]
                cur = conn.execute(_INSERT_TASK + " ON CONFLICT (id) DO NOTHING",
                                   _task_row(t, DELAYED if t.not_before > now else READY, now))
                return [cur.rowcount == 1]
            existing: set[str] = set()
            ids = [t.id for t in tasks]
            for part in _chunks(ids):
                existing.update(row[0] for row in conn.execute(
                    f"SELECT id FROM tasks WHERE id IN ({_marks(len(part))})", part))
            if any(t.after for t in tasks):
                return self._enqueue_linked(conn, tasks, existing, now)
            out: list[bool] = []
            rows = []
            for t in tasks:
                if t.id in existing:
                    out.append(False)
                    continue
                existing.add(t.id)
                out.append(True)
                rows.append(_task_row(t, DELAYED if t.not_before > now else READY, now))
            conn.executemany(_INSERT_TASK, rows)
        return out

    def _enqueue_linked(self, conn: sqlite3.Connection, tasks: Sequence[NewTask],
                        existing: set[str], now: float) -> list[bool]:
        """enqueue for a batch where some task has dependencies (inside its transaction)."""
        # The state of every dependency, from the store or from earlier in the batch.
        states: dict[str, str] = {}
        wanted = list({d: None for t in tasks for d in t.after})
        for part in _chunks(wanted):
            states.update(conn.execute(
                f"SELECT id, state FROM tasks WHERE id IN ({_marks(len(part))})", part).fetchall())
        seen: set[str] = set()
        for t in tasks:  # validate everything before inserting anything
            if t.id in existing or t.id in seen:
                continue
            for dep in t.after:
                if dep not in states and dep not in seen:
                    raise ValueError(f"unknown dependency {dep}")
            seen.add(t.id)
        out: list[bool] = []
        rows = []
        links: list[tuple[str, str]] = []
        failed: list[tuple[bytes, float, str]] = []
        for t in tasks:
            if t.id in existing:
                out.append(False)
                continue
            existing.add(t.id)
            out.append(True)
            state = DELAYED if t.not_before > now else READY
            if t.after:
                after = list(dict.fromkeys(t.after))
                links.extend((t.id, dep) for dep in after)
                bad = next((d for d in after if states[d] in FINISHED_STATES and states[d] != SUCCEEDED),
                           None)
                if bad is not None:
                    state = FAILED
                    failed.append((dependency_failed_error(bad, states[bad]), now, t.id))
                elif any(states[d] != SUCCEEDED for d in after):
                    state = WAITING
            states[t.id] = state
            rows.append(_task_row(t, state, now))
        conn.executemany(_INSERT_TASK, rows)
        conn.executemany("INSERT OR IGNORE INTO deps (task_id, depends_on) VALUES (?, ?)", links)
        conn.executemany(
            "UPDATE tasks SET result_ok = 0, result_payload = ?, result_codec = 'msgpack', "
            "finished_at = ? WHERE id = ?", failed)
        if links:
            self._has_deps = True
        return out

    def _settle(self, conn: sqlite3.Connection, ended: Sequence[tuple[str, str]],
                now: float) -> None:
        """Tasks just finished (id, state): free or fail the tasks waiting for them.

        A success makes each waiting dependent whose dependencies have all
        succeeded ready (or delayed); any other end fails every waiting
        dependent, and theirs in turn (breadth first, in enqueue order).
        """
        if not self._has_deps or not ended:
            return
        having: set[str] = set()
        for part in _chunks([task_id for task_id, _ in ended]):
            having.update(row[0] for row in conn.execute(
                f"SELECT DISTINCT depends_on FROM deps WHERE depends_on IN ({_marks(len(part))})",
                part))
        work = deque(e for e in ended if e[0] in having)
        while work:
            dep_id, dep_state = work.popleft()
            rows = conn.execute(
                "SELECT t.seq, t.id, t.not_before FROM deps d JOIN tasks t ON t.id = d.task_id "
                "WHERE d.depends_on = ? AND t.state = 'waiting' ORDER BY t.seq",
                (dep_id,)).fetchall()
            for seq, task_id, not_before in rows:
                if dep_state != SUCCEEDED:
                    conn.execute(
                        "UPDATE tasks SET state = 'failed', result_ok = 0, result_payload = ?, "
                        "result_codec = 'msgpack', finished_at = ? WHERE seq = ?",
                        (dependency_failed_error(dep_id, dep_state), now, seq))
                    work.append((task_id, FAILED))
                elif conn.execute(
                        "SELECT 1 FROM deps d JOIN tasks t ON t.id = d.depends_on "
                        "WHERE d.task_id = ? AND t.state != 'succeeded' LIMIT 1",
                        (task_id,)).fetchone() is None:
                    conn.execute("UPDATE tasks SET state = ? WHERE seq = ?",
                                 (DELAYED if not_before > now else READY, seq))

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
                "RETURNING priority, seq, id, queue, name, payload, codec, attempts, options, errors",
                (owner, now + lease_for, now, queue, int(limit)),
            ).fetchall()
        rows.sort(key=lambda r: (-r[0], r[1]))  # RETURNING order is unspecified
        return [Lease(r[2], r[3], r[4], r[5], r[6], r[7], _options(r[8]),
                      len(serde.unpackb(r[9])) if r[9] else 0) for r in rows]

    def take(self, queue: str, limit: int, owner: str, now: float) -> list[Lease]:
        """Lease and acknowledge in one UPDATE (see Store.take)."""
        if limit <= 0:
            return []
        if self._has_deps:  # a dependent may wait on a plain-queue item: settle through complete
            return super().take(queue, limit, owner, now)
        with self.transaction():
            rows = self.conn.execute(
                "UPDATE tasks SET state = 'succeeded', attempts = attempts + 1, started_at = ?, "
                "finished_at = ?, result_ok = 1, result_payload = X'', result_codec = 'msgpack' "
                "WHERE seq IN ("
                " SELECT seq FROM tasks WHERE state = 'ready' AND queue = ?"
                " ORDER BY priority DESC, seq LIMIT ?) "
                "RETURNING priority, seq, id, queue, name, payload, codec, attempts, options, errors",
                (now, now, queue, int(limit)),
            ).fetchall()
        rows.sort(key=lambda r: (-r[0], r[1]))  # RETURNING order is unspecified
        return [Lease(r[2], r[3], r[4], r[5], r[6], r[7], _options(r[8]),
                      len(serde.unpackb(r[9])) if r[9] else 0) for r in rows]

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
            linked = self._has_deps  # dependents to settle afterwards, if any task has some
            ended: list[tuple[str, str]] = []
            for o in outcomes:
                cur = current.get(o.id)
                if cur is None:
                    out.append(UNKNOWN)
                    continue
                seq, state, attempts = cur
                if state in FINISHED_STATES:
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
                if linked:
                    ended.append((o.id, cur[1]))
            conn.executemany(
                "UPDATE tasks SET state = ?, result_ok = ?, result_payload = ?, result_codec = ?, "
                "finished_at = ?, lease_owner = NULL, lease_deadline = NULL WHERE seq = ?",
                updates)
            if ended:
                self._settle(conn, ended, now)
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
                self._settle(conn, [(task_id, DEAD)], now)
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

    def _return_to_ready(self, condition: str, params: tuple[Any, ...]) -> list[str]:
        """Hand back the leased tasks matching ``condition``; their ids in enqueue order."""
        with self.transaction():
            rows = self.conn.execute(
                f"UPDATE tasks SET {_RETURN_TO_READY} "
                f"WHERE state = 'leased' AND {condition} RETURNING seq, id", params).fetchall()
        rows.sort()
        return [r[1] for r in rows]

    def release_owner(self, owner: str, now: float) -> list[str]:
        """Hand back every task leased to ``owner``; their ids in enqueue order."""
        return self._return_to_ready("lease_owner = ?", (owner,))

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
        return self._return_to_ready("lease_deadline <= ?", (now,))

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
            row = conn.execute(f"SELECT {_INFO_COLUMNS}, progress FROM tasks WHERE id = ?",
                               (task_id,)).fetchone()
            if row is None:
                return None
            after = [r[0] for r in conn.execute(
                "SELECT depends_on FROM deps WHERE task_id = ? ORDER BY rowid", (task_id,))]
        return _info(row, after)

    def cancel(self, task_id: str, now: float, error: bytes) -> tuple[str, str | None] | None:
        """Cancel an unfinished task; (its state before, its lease owner) or None if unknown."""
        with self.transaction():
            conn = self.conn
            row = conn.execute("SELECT seq, state, lease_owner FROM tasks WHERE id = ?",
                               (task_id,)).fetchone()
            if row is None:
                return None
            seq, state, owner = row
            if state in FINISHED_STATES:
                return state, None
            conn.execute(
                "UPDATE tasks SET state = 'cancelled', result_ok = 0, result_payload = ?, "
                "result_codec = 'msgpack', finished_at = ?, lease_owner = NULL, "
                "lease_deadline = NULL WHERE seq = ?", (bytes(error), now, seq))
            self._settle(conn, [(task_id, CANCELLED)], now)
            return state, owner if state == LEASED else None

    def requeue(self, now: float, *, ids: Sequence[str] = (), queue: str | None = None,
                states: Sequence[str] = (DEAD,)) -> list[str]:
        """Send finished tasks in ``states`` back to ready; their ids in enqueue order."""
        wanted = finished_states(states, "requeue")
        if not wanted or (not ids and queue is None):
            return []
        columns = "seq, id, queue, state, not_before, options, errors"
        with self.transaction():
            conn = self.conn
            rows: list[Any] = []
            if ids:
                for part in _chunks(list(dict.fromkeys(ids))):
                    rows.extend(conn.execute(
                        f"SELECT {columns} FROM tasks WHERE id IN ({_marks(len(part))})", part))
                rows.sort()
            else:
                rows = conn.execute(
                    f"SELECT {columns} FROM tasks WHERE queue = ? "
                    f"AND state IN ({_marks(len(wanted))}) ORDER BY seq",
                    (queue, *wanted)).fetchall()
            out: list[str] = []
            for seq, task_id, task_queue, state, not_before, options, errors in rows:
                if state not in wanted or (queue is not None and task_queue != queue):
                    continue
                target = DELAYED if not_before > now else READY
                if self._has_deps:
                    dep_states = {r[0] for r in conn.execute(
                        "SELECT t.state FROM deps d JOIN tasks t ON t.id = d.depends_on "
                        "WHERE d.task_id = ?", (task_id,))}
                    dep_states.discard(SUCCEEDED)
                    if dep_states & FINISHED_STATES:
                        continue  # it would fail again at once: retry the dependency too
                    if dep_states:
                        target = WAITING
                opts = _options(options)
                opts["retry_base"] = len(serde.unpackb(errors)) if errors else 0
                conn.execute(
                    "UPDATE tasks SET state = ?, options = ?, result_ok = NULL, "
                    "result_payload = NULL, result_codec = NULL, finished_at = NULL, "
                    "progress = NULL WHERE seq = ?", (target, serde.packb(opts), seq))
                out.append(task_id)
            return out

    def _delete_where(self, where: str, params: Sequence[Any]) -> int:
        """Delete the tasks ``WHERE where`` and every dependency row naming them; how many."""
        conn = self.conn
        if self._has_deps:
            conn.execute(f"DELETE FROM deps WHERE task_id IN (SELECT id FROM tasks WHERE {where})",
                         params)
            conn.execute(
                f"DELETE FROM deps WHERE depends_on IN (SELECT id FROM tasks WHERE {where})",
                params)
        return conn.execute(f"DELETE FROM tasks WHERE {where}", params).rowcount

    def purge(self, *, queue: str | None = None, states: Sequence[str] = (DEAD,)) -> int:
        """Delete every task in ``states`` (of ``queue``, or of every queue); how many."""
        wanted = finished_states(states, "purge")
        if not wanted:
            return 0
        where = f"state IN ({_marks(len(wanted))})"
        params: list[Any] = sorted(wanted)
        if queue is not None:
            where += " AND queue = ?"
            params.append(queue)
        with self.transaction():
            return self._delete_where(where, params)

    def list_tasks(self, *, queue: str | None = None, state: str | None = None,
                   limit: int = 50, offset: int = 0) -> list[TaskInfo]:
        """Tasks filtered by queue and/or state, in enqueue order, paged."""
        check_page(state, limit, offset)
        where, params = [], []
        if queue is not None:
            where.append("queue = ?")
            params.append(queue)
        if state is not None:
            where.append("state = ?")
            params.append(state)
        sql = f"SELECT {_INFO_COLUMNS}, progress FROM tasks"
        if where:
            sql += " WHERE " + " AND ".join(where)
        with self._reading() as conn:
            rows = conn.execute(sql + " ORDER BY seq LIMIT ? OFFSET ?",
                                (*params, int(limit), int(offset))).fetchall()
            after: dict[str, list[str]] = {}
            for part in _chunks([r[0] for r in rows]):
                for task_id, dep in conn.execute(
                        f"SELECT task_id, depends_on FROM deps WHERE task_id IN "
                        f"({_marks(len(part))}) ORDER BY rowid", part):
                    after.setdefault(task_id, []).append(dep)
        return [_info(row, after.get(row[0], [])) for row in rows]

    def set_progress(self, task_id: str, token: int, progress: dict[str, Any]) -> bool:
        """Record the progress report of the attempt holding the lease; False if stale."""
        with self.transaction():
            return self.conn.execute(
                "UPDATE tasks SET progress = ? WHERE id = ? AND state = 'leased' AND attempts = ?",
                (serde.packb(progress), task_id, int(token))).rowcount == 1

    def purge_finished(self, before: float) -> int:
        """Delete finished tasks that finished before ``before``; how many."""
        with self.transaction():
            return self._delete_where("finished_at < ?", (before,))

    def pending_counts(self, queue: str) -> tuple[int, int, int]:
        """(ready, delayed, leased) counts of one queue, each from its partial index."""
        with self._reading() as conn:
            ready, delayed, leased = (
                int(conn.execute(f"SELECT count(*) FROM tasks WHERE state = '{state}' AND queue = ?",
                                 (queue,)).fetchone()[0])
                for state in (READY, DELAYED, LEASED))
        return ready, delayed, leased

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

    # -- periodic schedules (store/schedules.py) -----------------------------

    def save_schedule(self, record: dict[str, Any]) -> None:
        """Insert or replace the schedule ``record["name"]``."""
        with self.transaction():
            sched.sql_save(self.conn, record)

    def schedules(self) -> list[dict[str, Any]]:
        """Every schedule record, by name."""
        with self._reading() as conn:
            return sched.sql_all(conn)

    def remove_schedule(self, name: str) -> bool:
        """Delete a schedule; False if there was none by that name."""
        with self.transaction():
            return sched.sql_remove(self.conn, name)

    def mark_slot(self, name: str, slot: float) -> None:
        """Record that ``slot`` of ``name`` was enqueued (``last_slot`` only moves forward)."""
        with self.transaction():
            sched.sql_mark_slot(self.conn, name, slot)
