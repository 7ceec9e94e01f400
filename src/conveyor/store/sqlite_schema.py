"""The SQLite store's schema and its one versioned migration mechanism.

The schema version is the database's ``PRAGMA user_version``. Each entry of
:data:`MIGRATIONS` takes a database from the version before it to its own;
:func:`migrate` applies the steps a file lacks, in order, in one transaction
(all of them or none), and sets ``user_version`` in that same transaction. A
new file runs every step from version 0. A file at a newer version than
:data:`SCHEMA_VERSION` was made by a newer conveyor: it is refused, naming
both versions, and nothing in it changes.

To change the schema, append a step (never edit a released one) and tests
that open a file made at the previous version.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from dataclasses import dataclass

from ..errors import StoreError
from ..records import CANCELLED, DEAD, DELAYED, FAILED, LEASED, READY, SUCCEEDED

# State names are spelled literally in the SQL (not bound as parameters) so that
# SQLite can match each query to its partial index. The ready and delayed indexes
# also carry ``state`` so the lease subquery and next_due are answered from the
# index alone (SQLite 3.40 does not infer it from the WHERE).
_TASKS = f"""
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
CREATE INDEX tasks_finished ON tasks (finished_at) WHERE finished_at IS NOT NULL
"""

_SCHEDULES = """
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
)
"""

# ``deps`` has one row per (task, dependency), in the order ``after`` named them
# (rowid); ``deps_on`` finds the dependents of a finished task. IF NOT EXISTS:
# conveyor before schema 3 added these to files at version 2 without a version
# bump, so a version-2 file may have them already.
_DEPS = """
CREATE TABLE IF NOT EXISTS deps (
    task_id    TEXT NOT NULL,
    depends_on TEXT NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS deps_task ON deps (task_id, depends_on);
CREATE INDEX IF NOT EXISTS deps_on ON deps (depends_on, task_id)
"""


# Counts kept in the transactions that change task states, so that stats() and
# pending_counts() read a few rows instead of counting tasks. ``counts`` holds the
# number of tasks now in each (queue, task name, state) ('' is the name of a plain
# queue item); ``totals`` the monotonic outcome counters per (queue, task name,
# outcome) that metrics read, which purges never decrease. The store adds each
# transaction's changes to both just before it commits (SQLiteStore._flush_counts).
# Built here from one scan of an existing file (IF NOT EXISTS and rebuilt: tests
# make "older" files by lowering the version of a current one). The (state, seq) index serves
# listings, counts and bounded batches by state. ``unsettled`` holds finished tasks
# whose dependents a bounded cascade has not settled yet, and the last dependent id
# it settled of each (SQLiteStore.settle_pending).
_FIN = f"('{SUCCEEDED}', '{FAILED}', '{DEAD}', '{CANCELLED}')"
_COUNTS = f"""
CREATE TABLE IF NOT EXISTS counts (
    queue TEXT NOT NULL,
    name  TEXT NOT NULL,
    state TEXT NOT NULL,
    n     INTEGER NOT NULL,
    PRIMARY KEY (queue, name, state)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS totals (
    queue   TEXT NOT NULL,
    name    TEXT NOT NULL,
    outcome TEXT NOT NULL,
    n       INTEGER NOT NULL,
    PRIMARY KEY (queue, name, outcome)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS tasks_state ON tasks (state, seq);
CREATE TABLE IF NOT EXISTS unsettled (
    seq     INTEGER PRIMARY KEY,
    task_id  TEXT NOT NULL,
    state    TEXT NOT NULL,
    after_id TEXT NOT NULL DEFAULT ''
);
DELETE FROM counts;
DELETE FROM totals;
INSERT INTO counts SELECT queue, coalesce(name, ''), state, count(*) FROM tasks GROUP BY 1, 2, 3;
INSERT INTO totals SELECT queue, coalesce(name, ''), state, count(*) FROM tasks
    WHERE state IN {_FIN} GROUP BY 1, 2, 3
"""


# One row per ended attempt of a task (the last ATTEMPTS_KEPT of each are kept),
# written in the transaction that ends the attempt; deleted with the task.
# ``worker`` is msgpack (name, host, pid) or NULL when the master did not know it.
_ATTEMPTS = """
CREATE TABLE IF NOT EXISTS attempts (
    task_id     TEXT    NOT NULL,
    number      INTEGER NOT NULL,
    owner       TEXT,
    worker      BLOB,
    leased_at   REAL,
    started_at  REAL,
    finished_at REAL    NOT NULL,
    outcome     TEXT    NOT NULL,
    error       BLOB,
    output      TEXT,
    PRIMARY KEY (task_id, number)
) WITHOUT ROWID
"""


def _run(conn: sqlite3.Connection, script: str) -> None:
    """Execute each statement of ``script`` (executescript would commit the transaction)."""
    for statement in script.split(";"):
        if statement.strip():
            conn.execute(statement)


def _to_v1(conn: sqlite3.Connection) -> None:
    _run(conn, _TASKS)


def _to_v2(conn: sqlite3.Connection) -> None:
    _run(conn, _SCHEDULES)


def _to_v3(conn: sqlite3.Connection) -> None:
    columns = {row[1] for row in conn.execute("PRAGMA table_info(tasks)")}
    if "progress" not in columns:
        conn.execute("ALTER TABLE tasks ADD COLUMN progress BLOB")
    _run(conn, _DEPS)


def _to_v4(conn: sqlite3.Connection) -> None:
    _run(conn, _COUNTS)


def _to_v5(conn: sqlite3.Connection) -> None:
    _run(conn, _ATTEMPTS)


def _to_v6(conn: sqlite3.Connection) -> None:
    # A first attempt that succeeded with no output is kept in its task's row
    # (msgpack [owner, worker, started_at]) instead of an attempts row: the one
    # B-tree insert per task that a no-op task's throughput felt most.
    columns = {row[1] for row in conn.execute("PRAGMA table_info(tasks)")}
    if "attempt" not in columns:
        conn.execute("ALTER TABLE tasks ADD COLUMN attempt BLOB")


def _to_v7(conn: sqlite3.Connection) -> None:
    # The lease token: 64 random bits per lease, stored as token - 2**63 (a signed
    # 64-bit INTEGER). NULL until a task is first leased; leases of an older file
    # are voided at every master start anyway, so no existing row needs one.
    if "token" not in {row[1] for row in conn.execute("PRAGMA table_info(tasks)")}:
        conn.execute("ALTER TABLE tasks ADD COLUMN token INTEGER")


@dataclass(frozen=True)
class Migration:
    """One step: ``apply`` takes a database at ``version - 1`` to ``version``."""

    version: int
    what: str
    apply: Callable[[sqlite3.Connection], None]


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "the tasks table and its partial indexes", _to_v1),
    Migration(2, "the schedules table", _to_v2),
    Migration(3, "task dependencies (deps) and tasks.progress", _to_v3),
    Migration(4, "counts and totals tables (built from one scan), the (state, seq) index, unsettled", _to_v4),
    Migration(5, "the attempts table (each task's last attempts: worker, times, outcome, output)", _to_v5),
    Migration(6, "tasks.attempt: a first attempt's success kept in its task's row", _to_v6),
    Migration(7, "tasks.token: each lease's random token (stored as token - 2**63)", _to_v7),
)
SCHEMA_VERSION: int = MIGRATIONS[-1].version
assert [m.version for m in MIGRATIONS] == list(range(1, SCHEMA_VERSION + 1))


def check(conn: sqlite3.Connection, where: str) -> int:
    """The file's schema version; StoreError for a foreign database or a newer version.

    Reading the schema is also what detects a file that is not a database at
    all (sqlite3.DatabaseError, for the caller to report). ``where`` names the
    file in error messages.
    """
    tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    version = int(conn.execute("PRAGMA user_version").fetchone()[0])
    if version > SCHEMA_VERSION:
        raise StoreError(
            f"cannot open store at {where}: it has schema version {version}, "
            f"newer than this conveyor's {SCHEMA_VERSION}; upgrade conveyor")
    if (version == 0 and tables) or (version > 0 and "tasks" not in tables):
        raise StoreError(
            f"cannot open store at {where}: the file is an SQLite database but not a conveyor store")
    return version


def migrate(conn: sqlite3.Connection, where: str) -> int:
    """Bring the database to :data:`SCHEMA_VERSION` in one transaction; the version before.

    ``conn`` must be in autocommit mode (``isolation_level=None``) with no open
    transaction. ``where`` names the file in error messages.
    """
    before = check(conn, where)
    if before == SCHEMA_VERSION:
        return before
    conn.execute("BEGIN IMMEDIATE")
    try:
        # Another process may have migrated it since we looked: look again, locked.
        before = check(conn, where)
        for step in MIGRATIONS[before:]:
            step.apply(conn)
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
    return before
