"""The PostgreSQL store's schema and its versioned migrations.

The version lives in the one-row table ``conveyor_schema_version``. Each entry
of :data:`MIGRATIONS` takes a database from the version before it to its own;
:func:`migrate` applies the steps a database lacks, in order, in one
transaction (all of them or none) that first takes a transaction-level
advisory lock: masters starting at once on one database queue on that lock,
and each looks at the version again once it holds it, so exactly one of them
migrates and the others find the work done. A database at a newer version than
:data:`SCHEMA_VERSION` was made by a newer conveyor: it is refused, naming both
versions, and nothing in it changes.

To change the schema, append a step (never edit a released one). Step 4 is
for several masters on one database: a ``masters`` table with heartbeats,
and ``tasks.lease_master`` naming the master whose session holds a lease
(``tasks.lease_owner`` names that worker session).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import StoreError

if TYPE_CHECKING:
    import psycopg

#: The advisory lock key migrations hold (a constant: "conveyor" in ASCII, as a bigint).
MIGRATION_LOCK = 0x636F6E7665796F72
#: The session-level advisory lock the leader master holds ("conveyoL"): released
#: by the server when the leader's connection ends, so another master takes over.
LEADER_LOCK = 0x636F6E7665796F4C

VERSION_TABLE = "conveyor_schema_version"

# States are spelled literally so the planner matches each query to its partial index.
# ``seq`` is the enqueue order (FIFO within a priority); ``errors`` is the error history,
# one msgpack blob per failed attempt, so nack appends in SQL without reading it first.
_V1 = f"""
CREATE TABLE {VERSION_TABLE} (
    version integer NOT NULL
);
INSERT INTO {VERSION_TABLE} (version) VALUES (0);
CREATE TABLE tasks (
    seq            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id             text    NOT NULL UNIQUE,
    queue          text    NOT NULL,
    name           text,
    state          text    NOT NULL,
    priority       integer NOT NULL DEFAULT 0,
    attempts       integer NOT NULL DEFAULT 0,
    created_at     double precision NOT NULL,
    not_before     double precision NOT NULL DEFAULT 0,
    lease_owner    text,
    lease_deadline double precision,
    started_at     double precision,
    finished_at    double precision,
    payload        bytea   NOT NULL,
    codec          text    NOT NULL,
    options        bytea,
    errors         bytea[] NOT NULL DEFAULT '{{}}',
    result_ok      boolean,
    result_payload bytea,
    result_codec   text,
    progress       bytea
);
CREATE INDEX tasks_ready ON tasks (queue, priority DESC, seq) WHERE state = 'ready';
CREATE INDEX tasks_owner ON tasks (lease_owner) WHERE state = 'leased';
CREATE INDEX tasks_deadline ON tasks (lease_deadline) WHERE state = 'leased';
CREATE INDEX tasks_delayed ON tasks (not_before) WHERE state = 'delayed';
CREATE INDEX tasks_finished ON tasks (finished_at) WHERE finished_at IS NOT NULL;
CREATE INDEX tasks_queue_state ON tasks (queue, state, seq);
CREATE TABLE deps (
    seq        bigint GENERATED ALWAYS AS IDENTITY,
    task_id    text NOT NULL,
    depends_on text NOT NULL,
    PRIMARY KEY (task_id, depends_on)
);
CREATE INDEX deps_on ON deps (depends_on, task_id);
CREATE TABLE schedules (
    name       text PRIMARY KEY,
    task       text NOT NULL,
    queue      text NOT NULL,
    payload    bytea NOT NULL,
    codec      text NOT NULL,
    cron       text,
    every      double precision,
    tz         text NOT NULL,
    missed     text NOT NULL,
    options    bytea,
    source     text NOT NULL,
    created_at double precision NOT NULL,
    last_slot  double precision
)
"""

# Counts kept in the transactions that change task states, so stats() and
# pending_counts() read a few rows instead of counting tasks (as SQLite's schema 4).
# ``counts``: tasks now in each (queue, task name, state), '' naming a plain queue
# item; ``totals``: the monotonic outcome counters per (queue, task name, outcome)
# that metrics read, which purges never decrease. The store adds each
# transaction's changes to both at its COMMIT (PostgresStore._flush_counts). Both
# are built here from one scan of the tasks a version-1 database holds. The (state,
# seq) index serves listings, counts and bounded batches by state; the deadline, due
# and finish indexes gain ``seq`` so a bounded batch takes ties oldest first, read
# in index order with no sort. ``unsettled``
# holds finished tasks whose dependents a bounded cascade has not settled yet, with
# the last dependent id settled of each (PostgresStore.settle_pending). Task ids
# compare bytewise (COLLATE "C") so an id prefix is one range of the id index
# whatever the database's collation; the deps columns follow, so joins agree.
_V2 = """
ALTER TABLE tasks ALTER COLUMN id TYPE text COLLATE "C";
ALTER TABLE deps ALTER COLUMN task_id TYPE text COLLATE "C";
ALTER TABLE deps ALTER COLUMN depends_on TYPE text COLLATE "C";
CREATE TABLE counts (
    queue text   NOT NULL,
    name  text   NOT NULL,
    state text   NOT NULL,
    n     bigint NOT NULL,
    PRIMARY KEY (queue, name, state)
);
CREATE TABLE totals (
    queue   text   NOT NULL,
    name    text   NOT NULL,
    outcome text   NOT NULL,
    n       bigint NOT NULL,
    PRIMARY KEY (queue, name, outcome)
);
CREATE INDEX tasks_state ON tasks (state, seq);
DROP INDEX tasks_deadline;
CREATE INDEX tasks_deadline ON tasks (lease_deadline, seq) WHERE state = 'leased';
DROP INDEX tasks_delayed;
CREATE INDEX tasks_delayed ON tasks (not_before, seq) WHERE state = 'delayed';
DROP INDEX tasks_finished;
CREATE INDEX tasks_finished ON tasks (finished_at, seq) WHERE finished_at IS NOT NULL;
CREATE TABLE unsettled (
    seq      bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    task_id  text COLLATE "C" NOT NULL,
    state    text NOT NULL,
    after_id text COLLATE "C" NOT NULL DEFAULT ''
);
INSERT INTO counts SELECT queue, coalesce(name, ''), state, count(*) FROM tasks GROUP BY 1, 2, 3;
INSERT INTO totals SELECT queue, coalesce(name, ''), state, count(*) FROM tasks
    WHERE state IN ('succeeded', 'failed', 'dead', 'cancelled') GROUP BY 1, 2, 3
"""

# One row per ended attempt of a task (the last ATTEMPTS_KEPT of each are kept),
# written in the transaction that ends the attempt and deleted with the task
# (as SQLite's schema 5). ``worker`` is msgpack (name, host, pid) or NULL.
_V3 = """
CREATE TABLE attempts (
    task_id     text COLLATE "C" NOT NULL,
    number      integer NOT NULL,
    owner       text,
    worker      bytea,
    leased_at   double precision,
    started_at  double precision,
    finished_at double precision NOT NULL,
    outcome     text NOT NULL,
    error       bytea,
    output      text,
    PRIMARY KEY (task_id, number)
)
"""

# Several masters on one database. ``masters``: one row per running master, its
# heartbeat on the database's clock (clock skew between masters decides nothing);
# ``info`` is msgpack (pid, host, version, settings, its sessions' counts).
# ``tasks.lease_master``: the master whose session holds a lease. A trigger sets it
# from the session setting ``conveyor.master`` whenever ``lease_owner`` changes, so
# every statement that leases, adopts or ends a lease (whoever writes it, in any
# later version) keeps it right without naming it; a lease taken on a connection
# without that setting (a tool, a test) names no master. Only the leases of a
# master whose heartbeat stopped are handed back (never every lease, as one master's
# start used to do).
_V5_STATEMENTS = (
    "CREATE TABLE masters ("
    " id text PRIMARY KEY, address text NOT NULL, info bytea,"
    " started_at double precision NOT NULL,"
    " heartbeat_at timestamptz NOT NULL DEFAULT clock_timestamp())",
    "ALTER TABLE tasks ADD COLUMN lease_master text",
    "CREATE INDEX tasks_master ON tasks (lease_master) WHERE state = 'leased'",
    "CREATE FUNCTION conveyor_lease_master() RETURNS trigger LANGUAGE plpgsql AS $$ "
    "BEGIN "
    "  IF NEW.lease_owner IS NULL THEN NEW.lease_master := NULL; "
    "  ELSE NEW.lease_master := nullif(current_setting('conveyor.master', true), ''); END IF; "
    "  RETURN NEW; "
    "END $$",
    "CREATE TRIGGER tasks_lease_master BEFORE UPDATE OF lease_owner ON tasks FOR EACH ROW "
    "WHEN (NEW.lease_owner IS DISTINCT FROM OLD.lease_owner) "
    "EXECUTE FUNCTION conveyor_lease_master()",
    # Rate limits shared by every master: one token bucket per (task name, rate), its
    # tokens as of ``stamp`` (the database's clock, epoch seconds).
    "CREATE TABLE buckets (name text PRIMARY KEY, tokens double precision NOT NULL,"
    " stamp double precision NOT NULL, granted integer NOT NULL DEFAULT 0)",
    # A queue's declared maxsize, so every master bounds it alike; a bounded put locks
    # the queue's row while it counts and inserts.
    "CREATE TABLE queues (name text PRIMARY KEY, maxsize integer NOT NULL)",
)

#: Every table the store owns (tests empty them between tests).
TABLES = ("tasks", "deps", "schedules", "counts", "totals", "unsettled", "attempts", "masters",
          "buckets", "queues")


def _run(cur: psycopg.Cursor[tuple[Any, ...]], script: str) -> None:
    for statement in script.split(";"):
        if statement.strip():
            cur.execute(statement.encode())


def _to_v1(cur: psycopg.Cursor[tuple[Any, ...]]) -> None:
    _run(cur, _V1)


def _to_v2(cur: psycopg.Cursor[tuple[Any, ...]]) -> None:
    _run(cur, _V2)


def _to_v3(cur: psycopg.Cursor[tuple[Any, ...]]) -> None:
    _run(cur, _V3)


def _to_v4(cur: psycopg.Cursor[tuple[Any, ...]]) -> None:
    # The lease token: 64 random bits per lease, stored as token - 2**63 (a bigint).
    # NULL until a task is first leased: a lease taken before this version can no
    # longer settle; it expires and its task runs again.
    cur.execute("ALTER TABLE tasks ADD COLUMN IF NOT EXISTS token bigint")


def _to_v5(cur: psycopg.Cursor[tuple[Any, ...]]) -> None:
    for statement in _V5_STATEMENTS:  # one by one: the function body holds semicolons
        cur.execute(statement.encode())


@dataclass(frozen=True)
class Migration:
    """One step: ``apply`` takes a database at ``version - 1`` to ``version``."""

    version: int
    what: str
    apply: Callable[[psycopg.Cursor[tuple[Any, ...]]], None]


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "tasks, deps, schedules and the version table", _to_v1),
    Migration(2, "counts and totals tables (built from one scan), the (state, seq) index, "
                 "unsettled, bytewise ids", _to_v2),
    Migration(3, "the attempts table (each task's last attempts: worker, times, outcome, output)",
              _to_v3),
    Migration(4, "tasks.token: each lease's random token (stored as token - 2**63)", _to_v4),
    Migration(5, "the masters table (heartbeats on the database clock) and each lease's master "
                 "(tasks.lease_master, kept by a trigger), shared rate-limit buckets and queue sizes",
              _to_v5),
)
SCHEMA_VERSION: int = MIGRATIONS[-1].version
assert [m.version for m in MIGRATIONS] == list(range(1, SCHEMA_VERSION + 1))


def version(cur: psycopg.Cursor[tuple[Any, ...]], where: str) -> int:
    """The database's schema version (0: no conveyor tables yet); StoreError if newer than ours."""
    # pg_tables read with the statement's snapshot (not to_regclass, whose cached catalog
    # lookups may miss a table another master committed while this one waited on the lock).
    cur.execute("SELECT %s = ANY(array_agg(tablename)), 'tasks' = ANY(array_agg(tablename)) "
                "FROM pg_catalog.pg_tables WHERE schemaname = current_schema()",
                (VERSION_TABLE,))
    row = cur.fetchone()
    assert row is not None
    has_version, has_tasks = bool(row[0]), bool(row[1])
    if not has_version:
        if has_tasks:
            raise StoreError(f"cannot open store at {where}: it has a tasks table but no "
                             f"{VERSION_TABLE}: not a conveyor database")
        return 0
    cur.execute(f"SELECT max(version) FROM {VERSION_TABLE}")
    got = cur.fetchone()
    found = int(got[0]) if got is not None and got[0] is not None else 0
    if found > SCHEMA_VERSION:
        raise StoreError(
            f"cannot open store at {where}: it has schema version {found}, "
            f"newer than this conveyor's {SCHEMA_VERSION}; upgrade conveyor")
    return found


def migrate(conn: psycopg.Connection[tuple[Any, ...]], where: str) -> int:
    """Bring the database to :data:`SCHEMA_VERSION` in one transaction; the version before.

    ``conn`` must be in autocommit mode with no open transaction. ``where`` (the
    redacted connection string) names the database in error messages.
    """
    with conn.cursor() as cur:
        if version(cur, where) == SCHEMA_VERSION:
            return SCHEMA_VERSION
    with conn.transaction(), conn.cursor() as cur:
        # Several masters may start at once: one migrates, the others wait here and
        # then find the version up to date (looked at again, under the lock).
        cur.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
        before = version(cur, where)
        for step in MIGRATIONS[before:]:
            step.apply(cur)
        cur.execute(f"UPDATE {VERSION_TABLE} SET version = %s", (SCHEMA_VERSION,))
    return before
