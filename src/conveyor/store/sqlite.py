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
import json
import os
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from .. import serde
from ..errors import StoreError, StoreFull
from ..records import (
    ALL_TASKS,
    ATTEMPT_CANCELLED,
    ATTEMPT_DEFERRED,
    ATTEMPT_FAILED,
    ATTEMPT_LOST,
    ATTEMPT_RELEASED,
    ATTEMPT_RETRIED,
    ATTEMPT_SUCCEEDED,
    ATTEMPTS_KEPT,
    CANCELLED,
    DEAD,
    DELAYED,
    DUPLICATE,
    FAILED,
    LEASED,
    READY,
    RETRIED,
    STALE,
    STATES,
    STORED,
    SUCCEEDED,
    UNKNOWN,
    WAITING,
    AttemptNote,
    AttemptRecord,
    Lease,
    NewTask,
    Outcome,
    QueueStats,
    Result,
    TaskCount,
    TaskFilter,
    TaskInfo,
    TaskPage,
    TaskSummary,
    attempt_record,
    note_of,
    task_id_for_key,
)
from . import paging
from . import schedules as sched
from .base import TOKEN_OFFSET, Store, dependency_failed_error
from .check import classify, corrupt, quick_check
from .sqlite_schema import SCHEMA_VERSION, check, migrate
from .validate import (
    FINISHED_STATES,
    MAX_BATCH,
    MAX_COUNT_CAP,
    check_filter,
    check_int,
    check_limit,
    check_listing,
    check_page,
    finished_states,
)

DB_NAME = "conveyor.db"
#: Bytes a WAL file is cut back to after each checkpoint (PRAGMA journal_size_limit).
WAL_SIZE_LIMIT = 1 << 20
SYNC_MODES = {"normal": "NORMAL", "full": "FULL"}
__all__ = ["DB_NAME", "SCHEMA_VERSION", "SYNC_MODES", "SQLiteStore"]

# The SQL below spells these states literally.
assert (READY, LEASED, DELAYED, DEAD) == ("ready", "leased", "delayed", "dead")
_CHUNK = 500  # ids per IN (...) list
_INSERT_TASK = ("INSERT INTO tasks (id, queue, name, state, priority, created_at, not_before, "
                "payload, codec, options) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")


def _db_token(token: int) -> int | None:
    """A lease token as the token column holds it (token - 2**63); None for a value no
    lease was ever given (out of the 64-bit range): it matches nothing."""
    stored = int(token) - TOKEN_OFFSET
    return stored if -TOKEN_OFFSET <= stored < TOKEN_OFFSET else None


def _task_row(t: NewTask, state: str, now: float) -> tuple[Any, ...]:
    """The values _INSERT_TASK stores for a new task."""
    return (t.id, t.queue, t.name, state, int(t.priority), now, float(t.not_before), bytes(t.payload),
            t.codec, serde.packb(t.options) if t.options else None)

_INFO_COLUMNS = (
    "id, queue, name, state, priority, attempts, created_at, not_before, lease_owner, "
    "lease_deadline, started_at, finished_at, options, errors, result_ok, result_payload, "
    "result_codec"
)  # (get and list_tasks add ", progress, payload, codec")

_RETURN_TO_READY = "state = 'ready', lease_owner = NULL, lease_deadline = NULL"
_SUMMARY_COLUMNS = ("t.seq, t.id, t.queue, t.name, t.state, t.priority, t.attempts, t.errors, "
                    "t.created_at, t.not_before, t.started_at, t.finished_at, t.lease_owner")
_Key = tuple[str, str, str, str]  # ("counts" | "totals", queue, name or "", state or outcome)

def _chunks(seq: Sequence[Any], size: int = _CHUNK) -> Iterator[Sequence[Any]]:
    for i in range(0, len(seq), size):
        yield seq[i:i + size]


def _marks(n: int) -> str:
    return ",".join("?" * n)


def _options(blob: bytes | None) -> dict[str, Any]:
    return serde.unpackb(blob) if blob else {}


def _summary(row: Sequence[Any]) -> tuple[int, TaskSummary]:
    """(seq, summary) from a row of ``_SUMMARY_COLUMNS``."""
    (seq, tid, queue, name, state, priority, attempts, errors, created_at, not_before,
     started_at, finished_at, owner) = row
    return seq, TaskSummary(tid, queue, name, state, priority, attempts,
                            len(serde.unpackb(errors)) if errors else 0, created_at, not_before,
                            started_at, finished_at, owner)


_ATTEMPT_COLUMNS = ("number, owner, worker, leased_at, started_at, finished_at, outcome, error, "
                    "output")


def _attempt_row(task_id: str, a: AttemptRecord) -> tuple[Any, ...]:
    return (task_id, a.number, a.owner, serde.packb(a.worker) if a.worker else None,
            a.leased_at, a.started_at, a.finished_at, a.outcome, a.error, a.output)


def _write_attempts(conn: sqlite3.Connection, rows: Sequence[tuple[str, AttemptRecord]]) -> None:
    """Store ended attempts (a late report of the same attempt replaces it) and
    drop each task's attempts older than the last ATTEMPTS_KEPT."""
    if not rows:
        return
    conn.executemany(f"INSERT OR REPLACE INTO attempts (task_id, {_ATTEMPT_COLUMNS}) "
                     f"VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                     [_attempt_row(tid, a) for tid, a in rows])
    conn.executemany("DELETE FROM attempts WHERE task_id = ? AND number <= ?",
                     [(tid, a.number - ATTEMPTS_KEPT) for tid, a in rows
                      if a.number > ATTEMPTS_KEPT])


def _in_row(o: Outcome, holder: bool, attempt: int) -> bool:
    """Whether an outcome's attempt is kept in its task's row (``tasks.attempt``), not as an
    attempts row: a first attempt, holding the lease, that succeeded with no output. Its
    record is then the task's only one and is rebuilt exactly from the row (owner, worker
    and worker-reported start in ``attempt``; leased and finished times in the row's own)."""
    return holder and o.ok and attempt == 1 and not o.output and o.ended is None


def _row_attempt(blob: bytes, leased_at: float | None, finished_at: float) -> AttemptRecord:
    """The record :func:`_in_row` kept in a task's row, as ``attempt_record`` made it."""
    owner, worker, started_at = serde.unpackb(blob)
    return AttemptRecord(1, owner, worker or None, leased_at, started_at, finished_at,
                         ATTEMPT_SUCCEEDED, None, None)


def _attempt(row: Sequence[Any]) -> AttemptRecord:
    number, owner, worker, leased_at, started_at, finished_at, outcome, error, output = row
    return AttemptRecord(number, owner, serde.unpackb(worker) if worker else None, leased_at,
                         started_at, finished_at, outcome, error, output)


def _info(row: Sequence[Any], after: list[str]) -> TaskInfo:
    """A TaskInfo from a row of ``_INFO_COLUMNS, progress, payload, codec`` and the task's
    dependencies (its attempt log is left to ``get``)."""
    (tid, queue, name, state, priority, attempts, created_at, not_before, owner, deadline,
     started_at, finished_at, options, errors, ok, payload, codec, progress, args,
     args_codec) = row
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
        payload=bytes(args), codec=args_codec,
    )


class _IdTaken(Exception):
    """A batch's fast insert met an id that exists: undo it and take the careful path."""


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
        # Count changes of each open transaction level, innermost last: (table, queue,
        # name, state) -> delta, written to ``counts``/``totals`` just before COMMIT.
        self._deltas: list[dict[_Key, int]] = []
        self._conn: sqlite3.Connection | None = None
        self._reclaimed = 0.0  # monotonic time of the last WAL checkpoint after a full disk
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
                raise classify(exc, self.path, f"cannot open store at {self.path}") from None
            raise
        self._conn = conn

    def _setup(self, conn: sqlite3.Connection) -> None:
        where = str(self.path)
        check(conn, where)  # before anything else: a foreign or newer file is left as it is
        # Damage is caught here, not by the first request that meets it: a master that
        # started would spin on it (quick at any size: see store/check.py).
        report = quick_check(conn, self.path)
        if not report.ok:
            raise corrupt(self.path, "; ".join(report.problems[:3]), f"cannot open store at {self.path}")
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise StoreError(f"cannot open store at {self.path}: WAL journal mode unavailable ({mode})")
        # A WAL left by a killed master holds up to ~4 MiB of pages (the autocheckpoint size)
        # that new commits could only append to: on a nearly full disk every commit after the
        # restart failed. Fold it into the database and truncate it before anything writes;
        # journal_size_limit also gives the space back after every later checkpoint.
        conn.execute(f"PRAGMA journal_size_limit = {WAL_SIZE_LIMIT}")
        with contextlib.suppress(sqlite3.OperationalError):  # disk still too full: commits will say so
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
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
                    self._deltas = []
                elif not bare:
                    conn.execute(f"SAVEPOINT sp{depth}")
                self._depth = depth + 1
                self._deltas.append({})
                try:
                    yield
                except BaseException:
                    self._depth = depth
                    undone = self._deltas.pop()
                    if bare:  # no savepoint: its changes stay until the whole transaction ends
                        self._merge(undone)
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
                done = self._deltas.pop()
                try:
                    if depth == 0:
                        self._flush_counts(conn, done)
                        conn.execute("COMMIT")
                    else:
                        self._merge(done)
                        if not bare:
                            conn.execute(f"RELEASE sp{depth}")
                except sqlite3.Error:
                    if depth == 0 and conn.in_transaction:
                        with contextlib.suppress(sqlite3.Error):
                            conn.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:
                error = self._error(exc)
                if depth == 0 and isinstance(error, StoreFull):
                    self._reclaim(conn)
                raise error from exc
            finally:
                if relax:
                    with contextlib.suppress(sqlite3.Error):
                        conn.execute(f"PRAGMA synchronous = {SYNC_MODES[self.sync]}")

    def _merge(self, deltas: dict[_Key, int]) -> None:
        """Add a finished inner level's count changes to the level around it."""
        outer = self._deltas[-1]
        for key, n in deltas.items():
            outer[key] = outer.get(key, 0) + n

    @staticmethod
    def _flush_counts(conn: sqlite3.Connection, deltas: dict[_Key, int]) -> None:
        """Write a transaction's count changes (inside it, just before its COMMIT)."""
        for table in ("counts", "totals"):
            rows = [(q, name, state, n) for (t, q, name, state), n in deltas.items()
                    if t == table and n]
            sql = f"INSERT INTO {table} VALUES (?, ?, ?, ?) ON CONFLICT DO UPDATE SET n = n + excluded.n"
            if len(rows) == 1:  # the common one-task commit: execute is cheaper than executemany
                conn.execute(sql, rows[0])
            elif rows:
                conn.executemany(sql, rows)

    def _note(self, queue: str, name: str | None, old: str | None, new: str | None,
              n: int = 1) -> None:
        """Count ``n`` tasks of (queue, name) going from state ``old`` to ``new`` (None: they
        did not exist / no longer exist) in the open transaction level."""
        deltas = self._deltas[-1]
        name = name or ""
        if old is not None:
            key = ("counts", queue, name, old)
            deltas[key] = deltas.get(key, 0) - n
        if new is not None:
            key = ("counts", queue, name, new)
            deltas[key] = deltas.get(key, 0) + n
            if new in FINISHED_STATES and old not in FINISHED_STATES:
                key = ("totals", queue, name, new)
                deltas[key] = deltas.get(key, 0) + n
            elif old in FINISHED_STATES and new not in FINISHED_STATES:
                self._note_retry(queue, name, n)

    def _note_rows(self, queue: str, rows: Sequence[Sequence[Any]], old: str, new: str) -> None:
        """Count the rows a lease or take moved (a row's name at index 4), one note per name."""
        names: dict[str | None, int] = {}
        for r in rows:
            names[r[4]] = names.get(r[4], 0) + 1
        for name, n in names.items():
            self._note(queue, name, old, new, n)

    def _note_retry(self, queue: str, name: str | None, n: int = 1) -> None:
        """Count ``n`` retries of (queue, name) in the open transaction level."""
        key = ("totals", queue, name or "", RETRIED)
        deltas = self._deltas[-1]
        deltas[key] = deltas.get(key, 0) + n

    @contextlib.contextmanager
    def _reading(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            try:
                yield self.conn
            except sqlite3.Error as exc:
                raise self._error(exc) from exc

    def _reclaim(self, conn: sqlite3.Connection) -> None:
        """After a commit failed on a full disk: fold the WAL into the database and truncate it.

        The WAL holds every page changed since the last checkpoint, often many versions of
        the same page; once folded, its space is free again and the next commit can fit.
        (Fails quietly when even the database cannot grow: the next commit says so.) At most
        once a second: while the disk stays full, every commit fails.
        """
        now = time.monotonic()
        if now - self._reclaimed < 1.0:
            return
        self._reclaimed = now
        with contextlib.suppress(sqlite3.Error):
            if not conn.in_transaction:
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()

    def _error(self, exc: sqlite3.Error) -> StoreError:
        # Classified (StoreFull, StoreIOError, StoreCorrupt): the master treats each its own way.
        return classify(exc, self.path)

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
                state = DELAYED if t.not_before > now else READY
                cur = conn.execute(_INSERT_TASK + " ON CONFLICT (id) DO NOTHING",
                                   _task_row(t, state, now))
                if cur.rowcount == 1:
                    self._note(t.queue, t.name, None, state)
                return [cur.rowcount == 1]
            if not any(t.after for t in tasks) and self._insert_all_new(tasks, now):
                return [True] * len(tasks)
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
                state = DELAYED if t.not_before > now else READY
                rows.append(_task_row(t, state, now))
                self._note(t.queue, t.name, None, state)
            conn.executemany(_INSERT_TASK, rows)
        return out

    def _insert_all_new(self, tasks: Sequence[NewTask], now: float) -> bool:
        """Insert a batch whose ids are all new (the common case) without looking them up
        first; False, with nothing changed, if any id was there already (or twice in it)."""
        rows = [_task_row(t, DELAYED if t.not_before > now else READY, now) for t in tasks]
        try:
            with self.transaction():  # nested, so a savepoint: undone if an id was taken
                inserted = self.conn.executemany(_INSERT_TASK + " ON CONFLICT (id) DO NOTHING", rows).rowcount
                if inserted != len(rows):
                    raise _IdTaken
                for t, row in zip(tasks, rows):
                    self._note(t.queue, t.name, None, row[3])
        except _IdTaken:
            return False
        return True

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
            self._note(t.queue, t.name, None, state)
        conn.executemany(_INSERT_TASK, rows)
        conn.executemany("INSERT OR IGNORE INTO deps (task_id, depends_on) VALUES (?, ?)", links)
        conn.executemany(
            "UPDATE tasks SET result_ok = 0, result_payload = ?, result_codec = 'msgpack', "
            "finished_at = ? WHERE id = ?", failed)
        if links:
            self._has_deps = True
        return out

    def _settle(self, conn: sqlite3.Connection, ended: Sequence[tuple[str, str]],
                now: float, budget: int | None = None, resume: dict[str, str] | None = None) -> int:
        """Tasks just finished (id, state): free or fail the tasks waiting for them.

        A success makes each waiting dependent whose dependencies have all
        succeeded ready (or delayed); any other end fails every waiting
        dependent, and theirs in turn (breadth first, in enqueue order).

        ``budget`` (default: :attr:`cascade_limit`) bounds the dependents settled
        here; the cascade's rest goes to the ``unsettled`` table for
        :meth:`settle_pending` (in id order then, not enqueue order: no sort of
        every dependent), each with the last dependent id done (``resume`` gives
        those back), so a task with very many dependents is walked once, not
        again from its start on every call. How many dependents it settled.
        """
        if budget is None:
            budget = self.cascade_limit
        if not self._has_deps or not ended:
            return 0
        having = self._with_dependents(conn, [task_id for task_id, _ in ended])
        resume = resume or {}
        work = deque((i, st, resume.get(i, "")) for i, st in ended if i in having)
        steps = 0
        while work:
            if budget is not None and steps >= budget:
                some = self._with_dependents(conn, [w[0] for w in work])
                conn.executemany(
                    "INSERT INTO unsettled (task_id, state, after_id) VALUES (?, ?, ?)",
                    [w for w in work if w[0] in some])
                break
            dep_id, dep_state, after_id = work.popleft()
            if budget is None:
                rows = conn.execute(
                    "SELECT t.seq, t.id, t.not_before, t.queue, t.name FROM deps d "
                    "JOIN tasks t ON t.id = d.task_id "
                    "WHERE d.depends_on = ? AND t.state = 'waiting' ORDER BY t.seq",
                    (dep_id,)).fetchall()
            else:
                rows = conn.execute(
                    "SELECT t.seq, t.id, t.not_before, t.queue, t.name FROM deps d "
                    "JOIN tasks t ON t.id = d.task_id WHERE d.depends_on = ? AND d.task_id > ? "
                    "AND t.state = 'waiting' ORDER BY d.task_id LIMIT ?",
                    (dep_id, after_id, budget - steps)).fetchall()
                if len(rows) == budget - steps:  # it may have more: from the last one on
                    work.appendleft((dep_id, dep_state, rows[-1][1]))
            error = dependency_failed_error(dep_id, dep_state) if dep_state != SUCCEEDED else b""
            for seq, task_id, not_before, queue, name in rows:
                steps += 1
                if dep_state != SUCCEEDED:
                    self._note(queue, name, WAITING, FAILED)
                    conn.execute(
                        "UPDATE tasks SET state = 'failed', result_ok = 0, result_payload = ?, "
                        "result_codec = 'msgpack', finished_at = ? WHERE seq = ?",
                        (error, now, seq))
                    work.append((task_id, FAILED, ""))
                elif conn.execute(
                        "SELECT 1 FROM deps d JOIN tasks t ON t.id = d.depends_on "
                        "WHERE d.task_id = ? AND t.state != 'succeeded' LIMIT 1",
                        (task_id,)).fetchone() is None:
                    target = DELAYED if not_before > now else READY
                    conn.execute("UPDATE tasks SET state = ? WHERE seq = ?", (target, seq))
                    self._note(queue, name, WAITING, target)
        return steps

    @staticmethod
    def _with_dependents(conn: sqlite3.Connection, ids: Sequence[str]) -> set[str]:
        """The ids among ``ids`` that some task depends on."""
        # One index probe per id (EXISTS), never a walk over all of a task's dependents.
        return {row[0] for row in conn.execute(
            "SELECT x.value FROM json_each(?) AS x "
            "WHERE EXISTS (SELECT 1 FROM deps WHERE depends_on = x.value)",
            (json.dumps(list(ids)),))}

    def settle_pending(self, now: float, *, limit: int = 1000) -> bool:
        """Continue dependency cascades that :attr:`cascade_limit` cut short: settle up
        to about ``limit`` more dependents, in one transaction. True while more remain."""
        check_int("limit", limit, 1, MAX_BATCH)
        if not self._has_deps:
            return False
        with self.transaction():
            conn = self.conn
            rows = conn.execute(
                "SELECT seq, task_id, state, after_id FROM unsettled ORDER BY seq LIMIT ?",
                (limit,)).fetchall()
            if not rows:
                return False
            conn.execute("DELETE FROM unsettled WHERE seq <= ?", (rows[-1][0],))
            self._settle(conn, [(r[1], r[2]) for r in rows], now, budget=limit,
                         resume={r[1]: r[3] for r in rows if r[3]})
            return bool(conn.execute("SELECT EXISTS (SELECT 1 FROM unsettled)").fetchone()[0])

    def lease(self, queue: str, limit: int, owner: str, now: float, lease_for: float) -> list[Lease]:
        """Lease up to ``limit`` ready tasks, highest priority first, FIFO within one."""
        if limit <= 0:
            return []
        with self.transaction():
            rows = self.conn.execute(
                # random(): SQLite's CSPRNG (ChaCha20, seeded by the OS), 64 bits per lease.
                "UPDATE tasks SET state = 'leased', attempts = attempts + 1, token = random(), "
                "lease_owner = ?, lease_deadline = ?, started_at = ? WHERE seq IN ("
                " SELECT seq FROM tasks WHERE state = 'ready' AND queue = ?"
                " ORDER BY priority DESC, seq LIMIT ?) "
                "RETURNING priority, seq, id, queue, name, payload, codec, token, options, errors",
                (owner, now + lease_for, now, queue, int(limit)),
            ).fetchall()
            self._note_rows(queue, rows, READY, LEASED)
        rows.sort(key=lambda r: (-r[0], r[1]))  # RETURNING order is unspecified
        return [Lease(r[2], r[3], r[4], r[5], r[6], r[7] + TOKEN_OFFSET, _options(r[8]),
                      len(serde.unpackb(r[9])) if r[9] else 0) for r in rows]

    def take(self, queue: str, limit: int, owner: str, now: float) -> list[Lease]:
        """Lease and acknowledge in one UPDATE (see Store.take)."""
        if limit <= 0:
            return []
        if self._has_deps:  # a dependent may wait on a plain-queue item: settle through complete
            return super().take(queue, limit, owner, now)
        with self.transaction():
            rows = self.conn.execute(
                "UPDATE tasks SET state = 'succeeded', attempts = attempts + 1, token = random(), "
                "started_at = ?, finished_at = ?, result_ok = 1, result_payload = X'', "
                "result_codec = 'msgpack' WHERE seq IN ("
                " SELECT seq FROM tasks WHERE state = 'ready' AND queue = ?"
                " ORDER BY priority DESC, seq LIMIT ?) "
                "RETURNING priority, seq, id, queue, name, payload, codec, token, options, errors",
                (now, now, queue, int(limit)),
            ).fetchall()
            self._note_rows(queue, rows, READY, SUCCEEDED)
        rows.sort(key=lambda r: (-r[0], r[1]))  # RETURNING order is unspecified
        return [Lease(r[2], r[3], r[4], r[5], r[6], r[7] + TOKEN_OFFSET, _options(r[8]),
                      len(serde.unpackb(r[9])) if r[9] else 0) for r in rows]

    def complete(self, outcomes: Sequence[Outcome], now: float) -> list[str]:
        """Store results; STORED, DUPLICATE, STALE or UNKNOWN for each outcome."""
        if not outcomes:
            return []
        with self.transaction():
            conn = self.conn
            # id -> [seq, state, attempts, queue, name, lease owner, leased at, token]
            current: dict[str, list[Any]] = {}
            ids = list({o.id: None for o in outcomes})
            for part in _chunks(ids):
                for seq, task_id, state, attempts, queue, name, owner, leased_at, tok in conn.execute(
                        f"SELECT seq, id, state, attempts, queue, name, lease_owner, started_at, token "
                        f"FROM tasks WHERE id IN ({_marks(len(part))})", part):
                    current[task_id] = [seq, state, attempts, queue, name, owner, leased_at, tok]
            ended_attempts: list[tuple[str, AttemptRecord]] = []
            out: list[str] = []
            updates = []
            linked = self._has_deps  # dependents to settle afterwards, if any task has some
            ended: list[tuple[str, str]] = []
            moved: dict[tuple[str, str | None, str, str], int] = {}  # counted after the loop
            for o in outcomes:
                cur = current.get(o.id)
                if cur is None:
                    out.append(UNKNOWN)
                    continue
                seq, state, attempts, queue, name, owner, leased_at, tok = cur
                if state in FINISHED_STATES:
                    out.append(DUPLICATE)
                    continue
                mine = tok is not None and o.token == tok + TOKEN_OFFSET  # the last lease's token
                if o.ok and mine:
                    cur[1] = SUCCEEDED
                elif not o.ok and state == LEASED and mine:
                    cur[1] = FAILED
                else:
                    out.append(STALE)
                    continue
                out.append(STORED)
                holder = state == LEASED  # else the last lease's late success: it was handed back
                in_row = None
                if _in_row(o, holder, attempts):
                    in_row = serde.packb([owner, o.worker or None, o.started_at])
                else:
                    ended_attempts.append((o.id, attempt_record(
                        attempts, owner if holder else None, leased_at if holder else None, now,
                        ATTEMPT_SUCCEEDED if o.ok else ATTEMPT_FAILED, note_of(o),
                        None if o.ok else o.payload)))
                moved[(queue, name, state, cur[1])] = moved.get((queue, name, state, cur[1]), 0) + 1
                updates.append((cur[1], 1 if o.ok else 0, bytes(o.payload), o.codec, now, in_row, seq))
                if linked:
                    ended.append((o.id, cur[1]))
            conn.executemany(
                "UPDATE tasks SET state = ?, result_ok = ?, result_payload = ?, result_codec = ?, "
                "finished_at = ?, lease_owner = NULL, lease_deadline = NULL, attempt = ? WHERE seq = ?",
                updates)
            _write_attempts(conn, ended_attempts)
            for (queue, name, state, new), n in moved.items():
                self._note(queue, name, state, new, n)
            if ended:
                self._settle(conn, ended, now)
        return out

    def nack(self, task_id: str, token: int, now: float, *, delay: float = 0.0,
             error: bytes | None = None, dead: bool = False,
             note: AttemptNote | None = None) -> bool:
        """Give a leased task back to ready, delayed or dead; False if ``token`` is stale."""
        with self.transaction():
            conn = self.conn
            stored = _db_token(token)
            row = None if stored is None else conn.execute(
                "SELECT seq, errors, queue, name, lease_owner, started_at, attempts FROM tasks "
                "WHERE id = ? AND state = 'leased' AND token = ?",
                (task_id, stored)).fetchone()
            if row is None:
                return False
            seq, blob, queue, name, owner, leased_at, attempts = row
            ended = ATTEMPT_FAILED if dead else ATTEMPT_DEFERRED if error is None else ATTEMPT_RETRIED
            if error is not None or note is not None or dead:  # a bare deferral never ran
                _write_attempts(conn, [(task_id, attempt_record(attempts, owner, leased_at, now,
                                                                ended, note, error))])
            self._note(queue, name, LEASED, DEAD if dead else DELAYED if delay > 0 else READY)
            if error is not None and not dead:
                self._note_retry(queue, name)
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

    def release(self, leases: Sequence[tuple[str, int]], now: float, *,
                note: AttemptNote | None = None) -> int:
        """Hand back the leases whose token still holds; how many did."""
        if not leases:
            return 0
        n = 0
        with self.transaction():
            for task_id, token in leases:
                stored = _db_token(token)
                if stored is not None:
                    n += len(self._return_to_ready(
                        "id = ? AND token = ?", (task_id, stored), now, ATTEMPT_RELEASED,
                        lambda _owner: note))
        return n

    def adopt(self, pairs: Sequence[tuple[str, int]], owner: str, now: float,
              lease_for: float) -> list[str]:
        """Pass the leases whose token still holds (leased, or handed back and not leased
        since) to ``owner``; their ids."""
        out: list[str] = []
        if not pairs:
            return out
        with self.transaction():
            conn = self.conn
            for task_id, token in pairs:
                stored = _db_token(token)
                if stored is None or task_id in out:
                    continue
                row = conn.execute(
                    "SELECT seq, state, queue, name FROM tasks WHERE id = ? AND token = ? "
                    "AND state IN ('leased', 'ready')", (task_id, stored)).fetchone()
                if row is None:
                    continue
                seq, state, queue, name = row
                if state == LEASED:
                    conn.execute("UPDATE tasks SET lease_owner = ?, lease_deadline = ? WHERE seq = ?",
                                 (owner, now + lease_for, seq))
                else:  # handed back when its session dropped: leased again, same attempt
                    conn.execute("UPDATE tasks SET state = 'leased', lease_owner = ?, "
                                 "lease_deadline = ?, started_at = ? WHERE seq = ?",
                                 (owner, now + lease_for, now, seq))
                    self._note(queue, name, READY, LEASED)
                out.append(task_id)
        return out

    def _return_to_ready(self, condition: str, params: tuple[Any, ...], now: float,
                         outcome: str = ATTEMPT_LOST,
                         note_for: Any = None) -> list[str]:
        """Hand back the leased tasks matching ``condition``, ending their attempts
        with ``outcome`` (``note_for(owner)``: what the master knows of each);
        their ids in enqueue order."""
        with self.transaction():
            conn = self.conn
            rows = conn.execute(
                f"SELECT seq, id, queue, name, attempts, lease_owner, started_at FROM tasks "
                f"WHERE state = 'leased' AND {condition}", params).fetchall()
            for part in _chunks(rows):
                conn.execute(f"UPDATE tasks SET {_RETURN_TO_READY} "
                             f"WHERE seq IN ({_marks(len(part))})", [r[0] for r in part])
            for r in rows:
                self._note(r[2], r[3], LEASED, READY)
            _write_attempts(conn, [(r[1], attempt_record(
                r[4], r[5], r[6], now, outcome, note_for(r[5]) if note_for else None))
                for r in rows])
        rows.sort()
        return [r[1] for r in rows]

    def release_owner(self, owner: str, now: float, *,
                      note: AttemptNote | None = None) -> list[str]:
        """Hand back every task leased to ``owner``; their ids in enqueue order."""
        return self._return_to_ready("lease_owner = ?", (owner,), now, ATTEMPT_LOST,
                                     lambda _owner: note)

    def release_all(self, now: float, *, limit: int | None = None) -> int:
        """Hand back every leased task (at most ``limit``); how many.

        With a limit, call again until it returns less than the limit: each call
        is one bounded transaction.
        """
        check_limit(limit)
        condition = "1"
        if limit is not None:
            condition = (f"seq IN (SELECT seq FROM tasks INDEXED BY tasks_deadline "
                         f"WHERE state = 'leased' ORDER BY lease_deadline LIMIT {int(limit)})")
        return len(self._return_to_ready(condition, (), now))

    def extend_owner(self, owner: str, now: float, lease_for: float) -> int:
        """Set the deadline of every lease ``owner`` holds to ``now + lease_for``."""
        with self.transaction():
            return self.conn.execute(
                "UPDATE tasks SET lease_deadline = ? WHERE state = 'leased' AND lease_owner = ?",
                (now + lease_for, owner)).rowcount

    def expire_leases(self, now: float, *, limit: int | None = None,
                      workers: Mapping[str, dict[str, Any]] | None = None) -> list[str]:
        """Hand back every task whose lease deadline is at or before ``now`` (the ``limit``
        earliest, when given: call again until fewer come back); their ids."""
        check_limit(limit)

        def note_for(owner: str | None) -> AttemptNote | None:
            worker = workers.get(owner or "") if workers else None
            return AttemptNote(worker) if worker else None

        if limit is None:
            return self._return_to_ready("lease_deadline <= ?", (now,), now, ATTEMPT_LOST, note_for)
        return self._return_to_ready(
            "seq IN (SELECT seq FROM tasks INDEXED BY tasks_deadline "
            "WHERE state = 'leased' AND lease_deadline <= ? "
            f"ORDER BY lease_deadline LIMIT {int(limit)})", (now,), now, ATTEMPT_LOST, note_for)

    def promote_due(self, now: float, *, limit: int | None = None) -> list[str]:
        """Make delayed tasks with ``not_before <= now`` ready (at most ``limit``, earliest
        first); their queues, deduplicated."""
        check_limit(limit)
        due = "state = 'delayed' AND not_before <= ?"
        if limit is not None:
            due = (f"seq IN (SELECT seq FROM tasks INDEXED BY tasks_delayed WHERE {due} "
                   f"ORDER BY not_before LIMIT {int(limit)})")
        with self.transaction():
            rows = self.conn.execute(
                f"UPDATE tasks SET state = 'ready' WHERE {due} "
                "RETURNING seq, queue, name", (now,)).fetchall()
            for r in rows:
                self._note(r[1], r[2], DELAYED, READY)
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
            row = conn.execute(f"SELECT {_INFO_COLUMNS}, progress, payload, codec, attempt FROM tasks "
                               f"WHERE id = ?", (task_id,)).fetchone()
            if row is None:
                return None
            after = [r[0] for r in conn.execute(
                "SELECT depends_on FROM deps WHERE task_id = ? ORDER BY rowid", (task_id,))]
            log = [_attempt(r) for r in conn.execute(
                f"SELECT {_ATTEMPT_COLUMNS} FROM attempts WHERE task_id = ? ORDER BY number",
                (task_id,))]
        *row, in_row = row
        info = _info(row, after)
        if in_row is not None:  # the only attempt, kept in the row (see _in_row)
            log = [_row_attempt(in_row, info.started_at, info.finished_at or 0.0), *log]
        info.attempt_log = log
        return info

    def dependents(self, task_id: str, limit: int = 100) -> list[str]:
        """Ids of at most ``limit`` tasks waiting on ``task_id`` (the deps_on index)."""
        check_int("limit", limit, 1, MAX_BATCH)
        with self._reading() as conn:
            return [r[0] for r in conn.execute(
                "SELECT task_id FROM deps WHERE depends_on = ? ORDER BY task_id LIMIT ?",
                (task_id, int(limit)))]

    def cancel(self, task_id: str, now: float, error: bytes) -> tuple[str, str | None] | None:
        """Cancel an unfinished task; (its state before, its lease owner) or None if unknown."""
        with self.transaction():
            conn = self.conn
            row = conn.execute("SELECT seq, state, lease_owner, queue, name, attempts, started_at "
                               "FROM tasks WHERE id = ?", (task_id,)).fetchone()
            if row is None:
                return None
            seq, state, owner, queue, name, attempts, leased_at = row
            if state in FINISHED_STATES:
                return state, None
            if state == LEASED:
                _write_attempts(conn, [(task_id, attempt_record(
                    attempts, owner, leased_at, now, ATTEMPT_CANCELLED, None))])
            self._note(queue, name, state, CANCELLED)
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
        columns = "seq, id, queue, state, not_before, options, errors, name, attempt, started_at, finished_at"
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
            for (seq, task_id, task_queue, state, not_before, options, errors, name, in_row, leased_at,
                 finished_at) in rows:
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
                if in_row is not None:  # its first attempt, kept in the row: an attempts row now
                    _write_attempts(conn, [(task_id, _row_attempt(in_row, leased_at, finished_at))])
                conn.execute(
                    "UPDATE tasks SET state = ?, options = ?, result_ok = NULL, "
                    "result_payload = NULL, result_codec = NULL, finished_at = NULL, "
                    "progress = NULL, attempt = NULL WHERE seq = ?", (target, serde.packb(opts), seq))
                self._note(task_queue, name, state, target)
                out.append(task_id)
            return out

    def _delete_where(self, where: str, params: Sequence[Any]) -> int:
        """Delete the tasks ``WHERE where`` and every dependency row naming them; how many.

        ``where`` is evaluated once: the doomed rows are read first, then deleted by seq.
        """
        conn = self.conn
        doomed = conn.execute(f"SELECT seq, id FROM tasks WHERE {where}", params).fetchall()
        for part in _chunks(doomed):
            ids = [r[1] for r in part]
            marks = _marks(len(ids))
            conn.execute(f"DELETE FROM attempts WHERE task_id IN ({marks})", ids)
            if self._has_deps:
                conn.execute(f"DELETE FROM deps WHERE task_id IN ({marks})", ids)
                conn.execute(f"DELETE FROM deps WHERE depends_on IN ({marks})", ids)
            for queue, name, state in conn.execute(
                    f"DELETE FROM tasks WHERE seq IN ({_marks(len(part))}) "
                    "RETURNING queue, name, state", [r[0] for r in part]):
                self._note(queue, name, state, None)
        return len(doomed)

    def purge(self, *, queue: str | None = None, states: Sequence[str] = (DEAD,),
              limit: int | None = None) -> int:
        """Delete every task in ``states`` (of ``queue``, or of every queue); how many.

        With a ``limit``, at most that many per call: call again until it returns
        less than the limit.
        """
        wanted = finished_states(states, "purge")
        check_limit(limit)
        if not wanted:
            return 0
        where = f"state IN ({_marks(len(wanted))})"
        params: list[Any] = sorted(wanted)
        if queue is not None:
            where += " AND queue = ?"
            params.append(queue)
        if limit is not None:  # in index order (by state, then seq): no sort of every match
            where = f"seq IN (SELECT seq FROM tasks WHERE {where} LIMIT {int(limit)})"
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
        sql = f"SELECT {_INFO_COLUMNS}, progress, payload, codec FROM tasks"
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

    # -- listings, counts and bulk actions by filter (the dashboard) ----------

    @staticmethod
    def _filter_sql(flt: TaskFilter) -> tuple[list[str], list[Any]]:
        """SQL conditions on ``tasks t`` for every field of ``flt`` but its states."""
        where: list[str] = []
        params: list[Any] = []
        if flt.queue is not None:
            where.append("t.queue = ?")
            params.append(flt.queue)
        if flt.name is not None:
            where.append("t.name = ?")
            params.append(flt.name)
        if flt.id_prefix is not None:
            low, high = paging.prefix_range(flt.id_prefix)
            where.append("t.id >= ? AND t.id < ?")
            params += [low, high]
        if flt.key is not None:
            where.append("t.id = ?")
            params.append(task_id_for_key(flt.key))
        if flt.created_from is not None:
            where.append("t.created_at >= ?")
            params.append(flt.created_from)
        if flt.created_to is not None:
            where.append("t.created_at < ?")
            params.append(flt.created_to)
        return where, params

    def _few_by_id(self, conn: sqlite3.Connection, flt: TaskFilter) -> list[int] | None:
        """The seqs of the tasks ``flt``'s id prefix or key names, read through the id
        index, when they are few (<= paging.PREFIX_FEW); None otherwise."""
        if flt.key is not None:
            row = conn.execute("SELECT seq FROM tasks WHERE id = ?",
                               (task_id_for_key(flt.key),)).fetchone()
            return [] if row is None else [row[0]]
        if flt.id_prefix is None:
            return None
        low, high = paging.prefix_range(flt.id_prefix)
        seqs = [r[0] for r in conn.execute(
            "SELECT seq FROM tasks WHERE id >= ? AND id < ? LIMIT ?",
            (low, high, paging.PREFIX_FEW + 1))]
        return seqs if len(seqs) <= paging.PREFIX_FEW else None

    def _stream(self, conn: sqlite3.Connection, state: str | None, where: list[str],
                params: list[Any], start: int | None, newest_first: bool, limit: int,
                budget: int) -> paging.Stream[TaskSummary]:
        """Up to ``limit`` matches of one state (or of all tasks) after ``start``,
        examining at most ``budget`` rows of the (state, seq) index or the table."""
        order = "DESC" if newest_first else "ASC"
        scan: list[str] = []
        scan_params: list[Any] = []
        if state is not None:
            scan.append("state = ?")
            scan_params.append(state)
        if start is not None:
            scan.append(f"seq {'<' if newest_first else '>'} ?")
            scan_params.append(start)
        scan_sql = f"SELECT seq FROM tasks {'WHERE ' + ' AND '.join(scan) if scan else ''} " \
                   f"ORDER BY seq {order}"
        if not where:  # nothing to skip: the index walk stops at the page's end
            rows = conn.execute(
                f"SELECT {_SUMMARY_COLUMNS} FROM ({scan_sql} LIMIT ?) AS w "
                f"JOIN tasks t ON t.seq = w.seq ORDER BY t.seq {order}",
                (*scan_params, limit)).fetchall()
            found = [_summary(r) for r in rows]
            return paging.Stream(found, found[-1][0] if len(found) == limit else None)
        rows = conn.execute(
            f"SELECT {_SUMMARY_COLUMNS} FROM ({scan_sql} LIMIT ?) AS w "
            f"JOIN tasks t ON t.seq = w.seq WHERE {' AND '.join(where)} "
            f"ORDER BY t.seq {order} LIMIT ?", (*scan_params, budget, *params, limit)).fetchall()
        found = [_summary(r) for r in rows]
        if len(found) == limit:
            return paging.Stream(found, found[-1][0])
        last = conn.execute(f"{scan_sql} LIMIT 1 OFFSET ?", (*scan_params, budget - 1)).fetchone()
        return paging.Stream(found, None if last is None else last[0])

    def list_page(self, flt: TaskFilter = ALL_TASKS, *, limit: int = 50,
                  cursor: str | None = None, newest_first: bool = True) -> TaskPage:
        """A page of the tasks ``flt`` selects, newest (or oldest) first, and the next cursor.

        Keyset paging on the enqueue order: no OFFSET; each call examines a bounded
        number of rows (see :class:`TaskPage` for what a short page means).
        """
        start = check_listing(flt, limit, cursor, newest_first)
        where, params = self._filter_sql(flt)
        with self._reading() as conn:
            few = self._few_by_id(conn, flt)
            if few is not None:
                stream = self._listed(conn, few, flt, where, params, start, newest_first)
                rows, nxt = paging.merge([stream], limit, newest_first)
            else:
                states = paging.stream_states(flt)
                budget = paging.share(paging.LIST_BUDGET, len(states))
                streams = [self._stream(conn, state, where, params, start, newest_first, limit,
                                        budget) for state in states]
                rows, nxt = paging.merge(streams, limit, newest_first)
        return TaskPage(rows, None if nxt is None else str(nxt))

    def _listed(self, conn: sqlite3.Connection, seqs: list[int], flt: TaskFilter,
                where: list[str], params: list[Any], start: int | None,
                newest_first: bool) -> paging.Stream[TaskSummary]:
        """The matches among a few known seqs, as one stream read to its end."""
        if start is not None:
            seqs = [q for q in seqs if (q < start if newest_first else q > start)]
        cond = list(where)
        cond_params = list(params)
        if flt.states:
            cond.append(f"t.state IN ({_marks(len(set(flt.states)))})")
            cond_params += sorted(set(flt.states))
        found: list[tuple[int, TaskSummary]] = []
        for part in _chunks(seqs):
            found += [_summary(r) for r in conn.execute(
                f"SELECT {_SUMMARY_COLUMNS} FROM tasks t WHERE t.seq IN ({_marks(len(part))}) "
                f"AND {' AND '.join(cond) if cond else '1'}", (*part, *cond_params))]
        found.sort(key=lambda r: r[0], reverse=newest_first)
        return paging.Stream(found, None)

    def count_tasks(self, flt: TaskFilter = ALL_TASKS, *, cap: int = MAX_COUNT_CAP) -> TaskCount:
        """How many tasks ``flt`` selects: exact from the counts table when it filters by
        state, queue and name only; else counted up to ``cap`` over a bounded scan."""
        check_filter(flt)
        check_int("cap", cap, 1, MAX_COUNT_CAP)
        states = set(flt.states) or set(STATES)
        if flt.id_prefix is None and flt.key is None and flt.created_from is None \
                and flt.created_to is None:
            n = sum(c for (q, name, state), c in self._table("counts").items()
                    if state in states and (flt.queue is None or q == flt.queue)
                    and (flt.name is None or name == flt.name))
            return TaskCount(n, True)
        where, params = self._filter_sql(flt)
        with self._reading() as conn:
            few = self._few_by_id(conn, flt)
            if few is not None:
                stream = self._listed(conn, few, flt, where, params, None, False)
                return TaskCount(min(len(stream.rows), cap), len(stream.rows) <= cap)
            sizes: dict[str, int] = {}
            for (_, _, state), c in self._table("counts").items():
                sizes[state] = sizes.get(state, 0) + c
            chosen = paging.stream_states(flt)
            budget = paging.share(paging.COUNT_BUDGET, len(chosen))
            n, exact = 0, True
            for one in chosen:
                scan = "SELECT seq FROM tasks" + (" WHERE state = ?" if one else "")
                n += conn.execute(
                    f"SELECT count(*) FROM (SELECT t.seq FROM ({scan} ORDER BY seq LIMIT ?) AS w "
                    f"JOIN tasks t ON t.seq = w.seq WHERE {' AND '.join(where)} LIMIT ?)",
                    (*([one] if one else []), budget, *params, cap + 1)).fetchone()[0]
                size = sizes.get(one, 0) if one else sum(sizes.values())
                exact = exact and size <= budget
        if n > cap:
            return TaskCount(cap, False)
        return TaskCount(n, exact)

    def set_progress(self, task_id: str, token: int, progress: dict[str, Any]) -> bool:
        """Record the progress report of the attempt holding the lease; False if stale."""
        with self.transaction():
            return self.conn.execute(
                "UPDATE tasks SET progress = ? WHERE id = ? AND state = 'leased' AND token = ?",
                (serde.packb(progress), task_id, _db_token(token))).rowcount == 1

    def purge_finished(self, before: float, *, limit: int | None = None) -> int:
        """Delete finished tasks that finished before ``before``; how many.

        With a ``limit``, at most that many (earliest finished first) per call:
        call again until it returns less than the limit.
        """
        check_limit(limit)
        where = "finished_at < ?"
        if limit is not None:
            where = (f"seq IN (SELECT seq FROM tasks WHERE finished_at < ? "
                     f"ORDER BY finished_at LIMIT {int(limit)})")
        with self.transaction():
            return self._delete_where(where, (before,))

    def pending_counts(self, queue: str) -> tuple[int, int, int]:
        """(ready, delayed, leased) counts of one queue, from the counts table."""
        by_state: dict[str, int] = {}
        for (_, _, state), n in self._table("counts", "WHERE queue = ?", (queue,)).items():
            by_state[state] = by_state.get(state, 0) + n
        return by_state.get(READY, 0), by_state.get(DELAYED, 0), by_state.get(LEASED, 0)

    def stats(self) -> dict[str, QueueStats]:
        """Counts by state for every queue that has tasks (from the counts table: O(queues))."""
        out: dict[str, QueueStats] = {}
        for (queue, _, state), n in sorted(self._table("counts").items()):
            if n:
                stats = out.setdefault(queue, QueueStats())
                setattr(stats, state, getattr(stats, state) + n)
        return out

    def task_counts(self) -> dict[tuple[str, str | None, str], int]:
        """Tasks now in each (queue, task name, state) that has any: O(queues x names)."""
        return {(q, name or None, state): n for (q, name, state), n
                in sorted(self._table("counts").items()) if n}

    def outcome_totals(self) -> dict[tuple[str, str | None, str], int]:
        """The outcome counters: (queue, task name, outcome) -> how many ever (see OUTCOMES)."""
        return {(q, name or None, outcome): n for (q, name, outcome), n
                in sorted(self._table("totals").items()) if n}

    def _table(self, table: str, where: str = "", params: Sequence[Any] = ()
               ) -> dict[tuple[str, str, str], int]:
        """Rows of ``counts`` or ``totals`` matching ``where``, plus the changes of the
        open transaction not written yet (filtered by the caller's key when it reads
        one queue)."""
        with self._reading() as conn:
            out = {(q, name, key): n for q, name, key, n in
                   conn.execute(f"SELECT queue, name, {'state' if table == 'counts' else 'outcome'},"
                                f" n FROM {table} {where}", params)}
            if self._depth:
                wanted = params[0] if params else None
                for level in self._deltas:
                    for (t, q, name, key), n in level.items():
                        if t == table and (wanted is None or q == wanted):
                            out[(q, name, key)] = out.get((q, name, key), 0) + n
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
