"""A durable store in a PostgreSQL database (psycopg 3, synchronous API).

The promises map onto PostgreSQL's own primitives:

* idempotent enqueue: the unique ``id`` and ``INSERT ... ON CONFLICT DO NOTHING``;
* leasing: ``FOR UPDATE SKIP LOCKED`` over the ready rows of a queue in priority
  then enqueue order (``seq``), so concurrent lessors never take one task twice;
* the fence: every change to a leased task is ``UPDATE ... WHERE state = 'leased'
  AND token = %s`` (the lease's random token, stored as token - 2**63);
* first result wins: complete locks the rows it settles (``FOR UPDATE``) and stores
  a result only on a row that has none, dependents settled in the same transaction;
* schedule slots: ``last_slot`` only moves forward, in one conditional UPDATE;
* counts in O(1) (``stats``, ``pending_counts``, ``task_counts``, ``outcome_totals``):
  each statement that moves tasks between states returns their queue and name, the
  store adds up the changes per transaction level in memory (a rolled-back savepoint
  drops its own), and the commit adds them to the ``counts`` and ``totals`` rows with
  ``INSERT ... ON CONFLICT DO UPDATE SET n = n + excluded.n``, pipelined with the
  COMMIT. Deltas at commit rather than per statement (or a trigger): a hot counts row
  is locked only for the commit's one round trip, not for the whole transaction,
  and every writer locks the rows it adds to in one order (counts then totals, each
  by key), so masters committing at once queue on a row and never deadlock; the
  update adds to the committed value, so none is lost;
* listings: keyset pages on ``seq`` through the (state, seq) index or the primary
  key, a bounded number of rows examined per call (:mod:`.paging`).

The store is reached over the network, so it says ``blocking_io = True``: the
master's StoreRunner runs its calls on one thread of their own, off the event
loop, each batch in one transaction (group commit). One connection serves the
store; a lock makes it safe from several threads (the conformance suite leases
from four at once). A connection found broken when a new transaction begins is
opened again: nothing of a transaction that did not commit was acknowledged.

The database failing over: ``dsn`` may name several hosts (``host=a,b
target_session_attrs=read-write``, or ``postgresql://a:5432,b:5433/db?...``); libpq
connects to the first that accepts writes. A lost connection (the server restarted,
the primary died) fails the call that met it and every call until a new connection
opens, each with a StoreError (so nothing uncommitted is ever acknowledged); new
connections are tried with a backoff (:data:`RECONNECT_MIN` doubling to
:data:`RECONNECT_MAX`) and land on whichever host is read-write by then, a promoted
standby included. The LISTEN and leader-lock connections come back the same way.
Loss and recovery are logged, rate-limited.

Clocks: as every store, this one takes ``now`` from its caller (the master's wall
clock), so the conformance suite can drive time by hand. With several masters on
one database, their clocks must not decide deadlines; the plan is that the master
passes ``now=None`` (or a store flag ``db_clock=True`` set at open) and each
transaction reads ``extract(epoch from clock_timestamp())`` once at its start
and uses that value wherever ``now`` is used here: lease deadlines, delays,
expiry and finish times then come from one clock whatever master writes them.
Every use of ``now`` below is a bound parameter, so that change is local to
:meth:`PostgresStore.transaction` and the ``now`` each method binds.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import psycopg
from psycopg.pq import TransactionStatus

from .. import serde
from ..errors import StoreError
from ..ratelimit_log import RateLimitedLog
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
from .base import (
    CANCEL_CHANNEL,
    CHANNELS,
    DUE_CHANNEL,
    PROGRESS_CHANNEL,
    RESULTS_CHANNEL,
    SPACE_CHANNEL,
    TOKEN_OFFSET,
    WORK_CHANNEL,
    Store,
    dependency_failed_error,
)
from .dsn import redact, scrub
from .postgres_schema import LEADER_LOCK, SCHEMA_VERSION, TABLES, migrate
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

__all__ = ["SCHEMA_VERSION", "PostgresStore"]

#: Inserts after which the store's connection first re-plans its statements (then at each doubling).
REPLAN_FIRST = 1000
#: Payload bytes per notification: PostgreSQL refuses 8000 and more.
NOTIFY_BUDGET = 7000
#: The states a bounded put counts against the queue's maxsize (Store.enqueue_bounded).
_COUNTED = (READY, DELAYED)
#: One notification naming the bounded ones among the queues items left (those with a row in
#: ``queues``), or ``[master id, null]`` when their names would not fit; nothing if none is.
_SPACE_NOTIFY = (
    b"SELECT pg_notify(%(channel)s, json_build_array(%(me)s::text, CASE WHEN "
    b"sum(octet_length(to_json(name)::text) + 1) > %(budget)s THEN NULL ELSE json_agg(name ORDER BY name) "
    b"END)::text) FROM queues WHERE name = ANY(%(queues)s::text[]) AND maxsize > 0 HAVING count(*) > 0")

# The SQL below spells these states literally.
assert (READY, LEASED, DELAYED, DEAD, WAITING) == ("ready", "leased", "delayed", "dead", "waiting")

_Row = tuple[Any, ...]
_FINISHED_SQL = "('succeeded', 'failed', 'dead', 'cancelled')"
_INFO_COLUMNS = (
    "id, queue, name, state, priority, attempts, created_at, not_before, lease_owner, "
    "lease_deadline, started_at, finished_at, options, errors, result_ok, result_payload, "
    "result_codec, progress, payload, codec"
)
_Key = tuple[str, str, str, str]  # ("counts" | "totals", queue, name or "", state or outcome)
_SUMMARY_COLUMNS = ("t.seq, t.id, t.queue, t.name, t.state, t.priority, t.attempts, "
                    "cardinality(t.errors), t.created_at, t.not_before, t.started_at, "
                    "t.finished_at, t.lease_owner")
# A transaction's count changes, added at its COMMIT. Rows go in in key order (the
# caller sorts them; WITH ORDINALITY keeps that order), so two masters committing
# at once lock the rows they share in one order: they queue, never deadlock, and
# ON CONFLICT ... n + excluded.n adds to the committed value, losing no update.
_FLUSH = ("INSERT INTO {table} SELECT q, nm, k, n FROM unnest(%s::text[], %s::text[], "
          "%s::text[], %s::bigint[]) WITH ORDINALITY AS u(q, nm, k, n, i) ORDER BY i "
          "ON CONFLICT ({key}) DO UPDATE SET n = {table}.n + excluded.n")
# A bounded batch: the first ``limit`` tasks of a partial index in (column, seq) order,
# kept while ``column`` is due. Taking the index's first rows and filtering them after
# (they are a prefix of the due ones) leaves the planner one plan, the index walk that
# stops at the limit, whatever it estimates: never a sort of every due task.
_FIRST_DUE = ("seq IN (SELECT seq FROM (SELECT seq, {col} FROM tasks WHERE {part} "
              "ORDER BY {col}, seq LIMIT %s) AS f WHERE {col} {op} %s)")
_LEASE_RETURNING = ("RETURNING t.priority, t.seq, t.id, t.queue, t.name, t.payload, t.codec, "
                    "t.token, t.options, cardinality(t.errors)")
# A new lease token (stored as token - 2**63): 64 bits of md5 over a version 4 UUID
# (122 bits from the server's strong random source), new for every row.
_NEW_TOKEN = "('x' || substr(md5(gen_random_uuid()::text), 1, 16))::bit(64)::bigint"
_RETURN_TO_READY = "state = 'ready', lease_owner = NULL, lease_deadline = NULL"
# One statement inserts a whole batch: one array per column, unnested row by row.
_INSERT_TASKS = (
    "INSERT INTO tasks (id, queue, name, state, priority, created_at, not_before, payload, "
    "codec, options) SELECT * FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[], "
    "%s::int[], %s::float8[], %s::float8[], %s::bytea[], %s::text[], %s::bytea[]) "
    "ON CONFLICT (id) DO NOTHING RETURNING id, queue, name, state"
)
_COLUMNS_SQL = ", ".join(sched.COLUMNS)
# The tasks waiting on some finished tasks (a WHERE on d.depends_on follows).
_DEPENDENTS = ("d.depends_on, t.seq, t.id, t.not_before, t.queue, t.name FROM deps d "
               "JOIN tasks t ON t.id = d.task_id AND t.state = 'waiting'")
# complete() in one statement (distinct ids; see PostgresStore._complete_at_once): rows
# ('o', seq, id, old state, attempts, queue, name, lease owner, started_at, token, stored, -,
# has dependents) for the outcomes' tasks, then (unbounded cascades only) ('d', seq, id,
# depends_on, -, queue, name, ..., not_before, -) for the waiting dependents of those it
# stored, locked in seq order.
_COMPLETE_AT_ONCE = (
    "WITH u AS (SELECT * FROM unnest(%s::text[], %s::bigint[], %s::bool[], %s::bytea[], "
    "%s::text[]) AS u(id, token, ok, payload, codec)), "
    "old AS (SELECT t.seq, t.id, t.state, t.attempts, t.queue, t.name, t.lease_owner, "
    "t.started_at, t.token FROM tasks t WHERE t.id = ANY(%s::text[]) ORDER BY t.seq "
    "FOR UPDATE SKIP LOCKED), "
    "done AS (UPDATE tasks t SET state = CASE WHEN u.ok THEN 'succeeded' ELSE 'failed' END, "
    "result_ok = u.ok, result_payload = u.payload, result_codec = u.codec, finished_at = %s, "
    "lease_owner = NULL, lease_deadline = NULL FROM old JOIN u ON u.id = old.id "
    f"WHERE t.seq = old.seq AND old.state NOT IN {_FINISHED_SQL} AND old.token = u.token "
    "AND (u.ok OR old.state = 'leased') RETURNING t.id){dep} "
    "SELECT 'o', seq, id, state, attempts, queue, name, lease_owner, started_at, token, "
    "id IN (SELECT id FROM done), NULL::float8, "
    "EXISTS (SELECT 1 FROM deps WHERE depends_on = old.id) FROM old{union}"
)
_COMPLETE_DEPENDENTS = _COMPLETE_AT_ONCE.format(
    dep=", dep AS (SELECT " + _DEPENDENTS + " WHERE d.depends_on IN (SELECT id FROM done) "
    "AND t.id NOT IN (SELECT id FROM done) ORDER BY t.seq FOR UPDATE OF t)",
    union=" UNION ALL SELECT 'd', seq, id, depends_on, NULL, queue, name, NULL, NULL, NULL, "
    "NULL, not_before, NULL FROM dep")
_COMPLETE_ALONE = _COMPLETE_AT_ONCE.format(dep="", union="")


log = logging.getLogger("conveyor.store")


class _NotAll(Exception):
    """complete's one-statement path did not find every task (it is undone)."""

#: Seconds before the first new connection is tried after one was lost; doubled after
#: each failed try, up to :data:`RECONNECT_MAX`.
RECONNECT_MIN = 0.05
RECONNECT_MAX = 2.0


def _host(conn: psycopg.Connection[Any]) -> str:
    """``host:port`` a connection reached (of the several a connection string may name)."""
    try:
        return f"{conn.info.host}:{conn.info.port}"
    except psycopg.Error:
        return "?"


def _options(blob: bytes | None) -> dict[str, Any]:
    return serde.unpackb(blob) if blob else {}


_ATTEMPT_COLUMNS = ("number, owner, worker, leased_at, started_at, finished_at, outcome, error, "
                    "output")
_NoteFor = Callable[[str | None], AttemptNote | None]  # lease owner -> what the master knows


def _attempt(row: Sequence[Any]) -> AttemptRecord:
    number, owner, worker, leased_at, started_at, finished_at, outcome, error, output = row
    return AttemptRecord(number, owner, serde.unpackb(worker) if worker else None, leased_at,
                         started_at, finished_at, outcome,
                         bytes(error) if error is not None else None, output)


def _info(row: Sequence[Any], after: list[str]) -> TaskInfo:
    """A TaskInfo from a row of ``_INFO_COLUMNS`` and the task's dependencies (its
    attempt log is left to ``get``)."""
    (tid, queue, name, state, priority, attempts, created_at, not_before, owner, deadline,
     started_at, finished_at, options, errors, ok, payload, codec, progress, args,
     args_codec) = row
    result = None
    if state in FINISHED_STATES:
        result = Result(tid, bool(ok), bytes(payload or b""), codec or "msgpack", state, finished_at)
    return TaskInfo(
        id=tid, queue=queue, name=name, state=state, priority=priority, attempts=attempts,
        created_at=created_at, not_before=not_before, lease_owner=owner,
        lease_deadline=deadline, started_at=started_at, finished_at=finished_at,
        options=_options(options), errors=[bytes(e) for e in errors or []],
        result=result, after=after,
        progress=serde.unpackb(progress) if progress is not None else None,
        payload=bytes(args), codec=args_codec,
    )


def _summary(row: Sequence[Any]) -> tuple[int, TaskSummary]:
    """(seq, summary) from a row of ``_SUMMARY_COLUMNS``."""
    (seq, tid, queue, name, state, priority, attempts, failures, created_at, not_before,
     started_at, finished_at, owner) = row
    return int(seq), TaskSummary(tid, queue, name, state, priority, attempts, int(failures or 0),
                                 created_at, not_before, started_at, finished_at, owner)


def _leases(rows: Iterable[_Row]) -> list[Lease]:
    """Leases from ``_LEASE_RETURNING`` rows, in lease order (RETURNING's order is unspecified)."""
    ordered = sorted(rows, key=lambda r: (-r[0], r[1]))
    return [Lease(r[2], r[3], r[4], bytes(r[5]), r[6], int(r[7]) + TOKEN_OFFSET, _options(r[8]),
                  int(r[9])) for r in ordered]


def _db_token(token: int) -> int | None:
    """A lease token as the token column holds it (token - 2**63); None for a value no
    lease was ever given (out of the 64-bit range): it matches nothing."""
    stored = int(token) - TOKEN_OFFSET
    return stored if -TOKEN_OFFSET <= stored < TOKEN_OFFSET else None


class PostgresStore(Store):
    """The :class:`Store` in a PostgreSQL database named by ``dsn`` (a libpq connection string).

    Opening connects, refuses a database made by a newer conveyor (naming both
    schema versions) and applies any missing migration steps. Every error
    message names the database by its redacted connection string: a password
    in ``dsn`` is never shown.
    """

    # A commit waits for the server's WAL flush (synchronous_commit=on): batch them.
    cheap_commits = False
    blocking_io = True
    shared = True  # several masters may serve one database

    def __init__(self, dsn: str, *, connect_timeout: float = 10.0) -> None:
        self.dsn = dsn
        self.where = redact(dsn)
        self.connect_timeout = connect_timeout
        self._lock = threading.RLock()
        self._depth = 0  # open transaction() levels
        self._bare = False  # the open transaction was begun with savepoints=False
        # Statements not sent yet (see transaction()): control statements, and writes whose
        # outcome nothing waits for (_later); each (sql, params).
        self._prelude: list[tuple[str, Any]] = []
        # Plans are cached per prepared statement, and a generic plan made while the table
        # was small (a seq scan of a few pages) stays when it has grown: re-plan (DISCARD
        # PLANS, with the next transaction) after REPLAN_FIRST inserts, then each time the
        # inserts since start have doubled.
        self._inserted = 0
        self._replan_after = REPLAN_FIRST
        self._replan = False
        # Count changes of each open transaction level, innermost last: (table, queue,
        # name, state) -> delta, written to ``counts``/``totals`` at COMMIT.
        self._deltas: list[dict[_Key, int]] = []
        self._conn: psycopg.Connection[_Row] | None = None
        # Several masters (heartbeat_master): the master this store serves, named by the
        # leases it hands out (the ``conveyor.master`` setting the lease trigger reads),
        # and whether commits announce their changes to the other masters (NOTIFY).
        self.master_id: str | None = None
        self.announce = False
        self._lead_lock = threading.Lock()
        self._lead_conn: psycopg.Connection[_Row] | None = None  # holds the leader lock
        self._leading = False
        # Reconnecting after a lost connection: no new try before ``_retry_at`` (monotonic),
        # the pause doubling after each failure; lines about it rate-limited.
        self._backoff = 0.0
        self._retry_at = 0.0
        self._lost_at: float | None = None
        self.logs = RateLimitedLog(log)
        self._conn = self._connect()
        try:
            migrate(self._conn, self.where)
        except psycopg.Error as exc:
            self._conn.close()
            raise StoreError(f"cannot open store at {self.where}: {self._text(exc)}") from None
        except BaseException:
            self._conn.close()
            raise

    def _text(self, exc: BaseException) -> str:
        """One line of ``exc``'s message, scrubbed of the connection string's password."""
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        return scrub(lines[0] if lines else type(exc).__name__, self.dsn)

    def _connect(self) -> psycopg.Connection[_Row]:
        try:
            conn = psycopg.connect(self.dsn, autocommit=True,
                                   connect_timeout=max(1, round(self.connect_timeout)),
                                   application_name="conveyor")
            if self.master_id is not None:  # a reconnect: leases still name this master
                conn.execute(b"SELECT set_config('conveyor.master', %s, false)", (self.master_id,))
            return conn
        except psycopg.Error as exc:
            raise StoreError(f"cannot open store at {self.where}: {self._text(exc)}") from None

    # -- transactions ------------------------------------------------------------

    @property
    def conn(self) -> psycopg.Connection[_Row]:
        if self._conn is None:
            raise StoreError(f"store at {self.where} is closed")
        return self._conn

    def _x(self, sql: str,
           params: Sequence[Any] | Mapping[str, Any] | None = None) -> psycopg.Cursor[_Row]:
        """Execute one statement on the store's connection (inside the caller's lock).

        Control statements still waiting in the prelude (BEGIN, SAVEPOINT, RELEASE)
        go in the same network round trip, pipelined ahead of it.
        """
        conn = self.conn
        query = sql.encode()  # bytes: a fixed statement, not a query builder
        if not self._prelude:
            return conn.execute(query, params)
        prelude, self._prelude = self._prelude, []
        with conn.pipeline():
            for control, args in prelude:
                conn.execute(control.encode(), args)
            cur = conn.execute(query, params)
        return cur

    def _later(self, sql: str, params: Sequence[Any] | None = None) -> None:
        """Send a write whose result nothing needs with the next statement or the COMMIT
        (inside a transaction): one round trip fewer. Its error fails what it is sent with,
        and so the transaction, which is what it would have failed anyway."""
        self._prelude.append((sql, params))

    @contextlib.contextmanager
    def transaction(self, durable: bool = True, savepoints: bool = True) -> Iterator[None]:
        """One commit for every call inside; nested blocks are savepoints.

        An exception rolls the block back (an inner block back to where it
        began) and is re-raised; database errors surface as StoreError.
        ``durable=False`` commits with ``synchronous_commit = off`` (the commit
        does not wait for the WAL flush; a later durable commit covers it).
        ``savepoints=False`` (outermost block only) spares the blocks directly
        inside their savepoints: any error there rolls back everything anyway.

        Round trips are what a transaction costs here, so control statements
        are lazy: BEGIN and SAVEPOINT wait in a prelude sent with the next real
        statement, RELEASE waits for the next statement or the COMMIT, and a
        block that ran no statement costs nothing. A single submit in the
        runner's batch is then two round trips (BEGIN, SAVEPOINT, INSERT; then
        RELEASE, COMMIT), not five.
        """
        with self._lock:
            depth = self._depth
            if depth == 0:
                self._reopen()  # a lost connection: start afresh (nothing of it was committed)
            conn = self.conn
            bare = depth == 1 and self._bare
            savepoint = f"SAVEPOINT sp{depth}"
            try:
                if depth == 0:
                    self._prelude = [("BEGIN", None)] if durable else [
                        ("BEGIN", None), ("SET LOCAL synchronous_commit = off", None)]
                    if self._replan:
                        self._replan = False
                        self._prelude.insert(0, ("DISCARD PLANS", None))
                    self._bare = not savepoints
                    self._deltas = []
                elif not bare:
                    self._prelude.append((savepoint, None))
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
                            self._prelude = []
                            if conn.info.transaction_status != TransactionStatus.IDLE:
                                conn.execute(b"ROLLBACK")
                        elif not bare:
                            if (savepoint, None) in self._prelude:  # never sent: nothing ran inside
                                del self._prelude[self._prelude.index((savepoint, None)):]
                            else:
                                self._prelude += [(f"ROLLBACK TO SAVEPOINT sp{depth}", None),
                                                  (f"RELEASE SAVEPOINT sp{depth}", None)]
                    except psycopg.Error:
                        pass  # the original error matters more
                    raise
                self._depth = depth
                done = self._deltas.pop()
                if depth == 0:
                    self._commit(conn, done)
                    return
                self._merge(done)
                if not bare:
                    if self._prelude and self._prelude[-1] == (savepoint, None):
                        self._prelude.pop()  # an empty block: never sent, nothing to release
                    else:
                        self._prelude.append((f"RELEASE SAVEPOINT sp{depth}", None))
            except psycopg.Error as exc:
                raise self._error(exc) from None

    def _commit(self, conn: psycopg.Connection[_Row], deltas: dict[_Key, int]) -> None:
        """Send what waits in the prelude, the count changes and COMMIT, in one round trip."""
        prelude, self._prelude = self._prelude, []
        if (conn.info.transaction_status == TransactionStatus.IDLE
                and all(args is None for _, args in prelude)):
            return  # no statement ran or waits (BEGIN was never sent): nothing to commit
        try:
            with conn.pipeline():
                for control, args in prelude:
                    conn.execute(control.encode(), args)
                self._flush_counts(conn, deltas)
                if self.announce:
                    # Inside the transaction: the server delivers them only if it commits.
                    for channel, payload in self._notices(deltas):
                        conn.execute(b"SELECT pg_notify(%s, %s)", (channel, payload))
                    self._notify_space(conn, deltas)
                cur = conn.execute(b"COMMIT")
        except psycopg.Error:
            with contextlib.suppress(psycopg.Error):
                conn.execute(b"ROLLBACK")
            raise
        if cur.statusmessage != "COMMIT":  # the server rolled back a failed transaction
            raise StoreError(f"store at {self.where} failed: the transaction was rolled back "
                             f"({cur.statusmessage})")

    @staticmethod
    def _flush_counts(conn: psycopg.Connection[_Row], deltas: dict[_Key, int]) -> None:
        """Add a transaction's count changes to ``counts`` and ``totals`` (at its COMMIT),
        counts before totals and each in key order: the one lock order of every writer."""
        for table, key in (("counts", "queue, name, state"), ("totals", "queue, name, outcome")):
            rows = sorted((q, name, k, n) for (t, q, name, k), n in deltas.items() if t == table and n)
            if rows:
                conn.execute(_FLUSH.format(table=table, key=key).encode(),
                             [list(col) for col in zip(*rows)])

    def _notices(self, deltas: dict[_Key, int]) -> list[tuple[str, str]]:
        """The NOTIFYs of a transaction's announcements: one per channel, each payload
        ``[master id, items]`` in JSON under PostgreSQL's 8000-byte limit. Queues (of
        new or delayed work) that do not fit become one ``[master id, null]``: "look
        at every queue"; ids (results, cancels) that do not fit go in more notifications."""
        items: dict[str, list[str]] = {}
        for (table, channel, item, _), n in deltas.items():
            if table == "notify" and n:
                items.setdefault(channel, []).append(item)
        out: list[tuple[str, str]] = []
        for channel, values in sorted(items.items()):
            chunk: list[str] = []
            size = 0
            for value in sorted(values):
                cost = len(json.dumps(value)) + 1
                if chunk and size + cost > NOTIFY_BUDGET:
                    if channel in (WORK_CHANNEL, DUE_CHANNEL):
                        chunk = []
                        break
                    out.append((channel, json.dumps([self.master_id, chunk])))
                    chunk, size = [], 0
                chunk.append(value)
                size += cost
            out.append((channel, json.dumps([self.master_id, chunk or None])))
        return out

    def _notify_space(self, conn: psycopg.Connection[_Row], deltas: dict[_Key, int]) -> None:
        """Announce on SPACE_CHANNEL the bounded queues items left in this transaction.

        Which queues are bounded only the shared ``queues`` table knows (any master's
        bounded put records it), so the database picks them, in the same pipeline as the
        COMMIT: no round trip more, and no notification for an unbounded queue."""
        queues = sorted({q for (t, _, q, _), n in deltas.items() if t == "space" and n})
        if queues:
            conn.execute(_SPACE_NOTIFY, {"channel": SPACE_CHANNEL, "me": self.master_id,
                                         "queues": queues, "budget": NOTIFY_BUDGET})

    def _announce(self, channel: str, item: str) -> None:
        """Announce ``item`` on ``channel`` when the open transaction commits (dropped if
        the level it was made in rolls back)."""
        if self.announce:
            self._deltas[-1][("notify", channel, item, "")] = 1

    def _merge(self, deltas: dict[_Key, int]) -> None:
        """Add a finished inner level's count changes to the level around it."""
        outer = self._deltas[-1]
        for key, n in deltas.items():
            outer[key] = outer.get(key, 0) + n

    def _note(self, queue: str, name: str | None, old: str | None, new: str | None,
              n: int = 1, *, tid: str | None = None) -> None:
        """Count ``n`` tasks of (queue, name) going from state ``old`` to ``new`` (None: they
        did not exist / no longer exist) in the open transaction level. Work made ready,
        and the result of task ``tid`` when it finishes, are announced to other masters."""
        deltas = self._deltas[-1]
        if self.announce:
            if new == READY:
                deltas[("notify", WORK_CHANNEL, queue, "")] = 1
            elif new == DELAYED:
                deltas[("notify", DUE_CHANNEL, queue, "")] = 1
            elif tid is not None and new in FINISHED_STATES:
                deltas[("notify", RESULTS_CHANNEL, tid, "")] = 1
            if old in _COUNTED and new not in _COUNTED:  # room in the queue, if it is bounded
                deltas[("space", SPACE_CHANNEL, queue, "")] = 1
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

    def _note_retry(self, queue: str, name: str | None, n: int = 1) -> None:
        """Count ``n`` retries of (queue, name) in the open transaction level."""
        key = ("totals", queue, name or "", RETRIED)
        deltas = self._deltas[-1]
        deltas[key] = deltas.get(key, 0) + n

    def _note_names(self, queue: str, names: Iterable[str | None], old: str, new: str) -> None:
        """Count tasks of one queue (one name each) that moved from ``old`` to ``new``."""
        by_name: dict[str | None, int] = {}
        for name in names:
            by_name[name] = by_name.get(name, 0) + 1
        for name, n in by_name.items():
            self._note(queue, name, old, new, n)

    @contextlib.contextmanager
    def _reading(self) -> Iterator[None]:
        with self._lock:
            if self._depth == 0:
                self._reopen()
            try:
                yield
            except psycopg.Error as exc:
                raise self._error(exc) from None

    def _reopen(self) -> None:
        """Replace a broken store connection (inside the lock, outside any transaction), at
        most one try per backoff pause: a call meanwhile fails at once with a StoreError."""
        conn = self._conn
        if conn is None or not conn.broken:
            return
        now = time.monotonic()
        if self._lost_at is None:
            self._lost_at = now
            self.logs.warning("lost", "lost the connection to the store at %s; reconnecting",
                              self.where)
        if now < self._retry_at:
            raise StoreError(f"store at {self.where} failed: the connection was lost; "
                             f"reconnecting (next try in {self._retry_at - now:.2f}s)")
        try:
            new = self._connect()
        except StoreError as exc:
            self._backoff = min(RECONNECT_MAX, max(RECONNECT_MIN, self._backoff * 2))
            self._retry_at = time.monotonic() + self._backoff
            self.logs.warning("reconnect", "cannot reconnect yet (next try in %.2fs): %s",
                              self._backoff, exc)
            raise
        with contextlib.suppress(psycopg.Error):
            conn.close()
        self._conn = new
        self.logs.info("reconnected", "store connection back after %.1fs, on %s",
                       time.monotonic() - self._lost_at, _host(new))
        self._lost_at, self._backoff, self._retry_at = None, 0.0, 0.0

    def _error(self, exc: psycopg.Error) -> StoreError:
        return StoreError(f"store at {self.where} failed: {self._text(exc)}")

    def close(self) -> None:
        """Close the connections (idempotent); the leadership, if held, goes with them."""
        with self._lead_lock:
            if self._lead_conn is not None:
                self._lead_conn.close()
                self._lead_conn, self._leading = None, False
        with self._lock:
            if self._conn is not None:
                self._conn.close()  # an open transaction is rolled back by the server
                self._conn = None

    def clear(self) -> None:
        """Delete every task, dependency and schedule (for tests: a fresh, empty store)."""
        with self.transaction():
            self._x(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY")

    def __repr__(self) -> str:
        return f"PostgresStore({self.where!r})"

    # -- enqueue and dependencies ------------------------------------------------

    def enqueue(self, tasks: Sequence[NewTask], now: float) -> list[bool]:
        """Insert tasks; False for ids that exist already (nothing changes)."""
        if not tasks:
            return []
        with self.transaction():
            if any(t.after for t in tasks):
                return self._enqueue_linked(tasks, now)
            first: dict[str, NewTask] = {}
            for t in tasks:
                first.setdefault(t.id, t)
            inserted = self._insert([(t, DELAYED if t.not_before > now else READY)
                                     for t in first.values()], now)
            out = []
            for t in tasks:
                out.append(t.id in inserted and first.get(t.id) is t)
            return out

    def _insert(self, rows: Sequence[tuple[NewTask, str]], now: float) -> set[str]:
        """INSERT (task, state) rows, skipping existing ids; the ids inserted."""
        if not rows:
            return set()
        cols: list[list[Any]] = [[] for _ in range(10)]
        for t, state in rows:
            values = (t.id, t.queue, t.name, state, int(t.priority), now, float(t.not_before),
                      bytes(t.payload), t.codec, serde.packb(t.options) if t.options else None)
            for col, value in zip(cols, values):
                col.append(value)
        inserted = set()
        for task_id, queue, name, state in self._x(_INSERT_TASKS, cols).fetchall():
            self._note(queue, name, None, state)
            inserted.add(task_id)
        self._inserted += len(inserted)
        if self._inserted >= self._replan_after:
            self._replan, self._replan_after = True, 2 * self._replan_after
        return inserted

    def _enqueue_linked(self, tasks: Sequence[NewTask], now: float) -> list[bool]:
        """enqueue for a batch where some task has dependencies (inside its transaction)."""
        batch_ids = list(dict.fromkeys(t.id for t in tasks))
        wanted = list(dict.fromkeys([d for t in tasks for d in t.after] + batch_ids))
        # Lock the dependencies' rows: a dependency finishing concurrently (another master)
        # settles its dependents only once this batch's rows are committed and visible.
        states: dict[str, str] = dict(self._x(
            "SELECT id, state FROM tasks WHERE id = ANY(%s) ORDER BY seq FOR SHARE",
            (wanted,)).fetchall())
        existing = {i for i in batch_ids if i in states}
        seen: set[str] = set()
        for t in tasks:  # validate everything before inserting anything
            if t.id in existing or t.id in seen:
                continue
            for dep in t.after:
                if dep not in states and dep not in seen:
                    raise ValueError(f"unknown dependency {dep}")
            seen.add(t.id)
        out: list[bool] = []
        rows: list[tuple[NewTask, str]] = []
        links: list[tuple[str, str]] = []
        failed: list[tuple[str, bytes]] = []
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
                bad = next((d for d in after
                            if states[d] in FINISHED_STATES and states[d] != SUCCEEDED), None)
                if bad is not None:
                    state = FAILED
                    failed.append((t.id, dependency_failed_error(bad, states[bad])))
                elif any(states[d] != SUCCEEDED for d in after):
                    state = WAITING
            states[t.id] = state
            rows.append((t, state))
        inserted = self._insert(rows, now)
        if len(inserted) != len(rows):  # another writer inserted one of these ids meanwhile
            raise StoreError(f"store at {self.where} failed: concurrent enqueue of the same ids")
        if links:
            self._x("INSERT INTO deps (task_id, depends_on) SELECT * FROM unnest(%s::text[], "
                    "%s::text[]) ON CONFLICT DO NOTHING",
                    ([a for a, _ in links], [b for _, b in links]))
        if failed:
            self._x("UPDATE tasks t SET result_ok = false, result_payload = u.err, "
                    "result_codec = 'msgpack', finished_at = %s "
                    "FROM unnest(%s::text[], %s::bytea[]) AS u(id, err) WHERE t.id = u.id",
                    (now, [a for a, _ in failed], [b for _, b in failed]))
        return out

    def _settle(self, ended: Sequence[tuple[str, str]], now: float,
                dependents: list[_Row] | None = None, budget: int | None = None,
                resume: dict[str, str] | None = None) -> int:
        """Tasks just finished (id, state): free or fail the tasks waiting for them.

        A success makes each waiting dependent whose dependencies have all
        succeeded ready (or delayed); any other end fails every waiting
        dependent, and theirs in turn. The dependents' rows are locked first,
        so two transactions finishing two dependencies of one task settle it
        one after the other, the second seeing the first's success.
        ``dependents``: the waiting dependents of ``ended`` (rows of
        ``_DEPENDENTS``) when the caller read them already.

        ``budget`` (default: :attr:`cascade_limit`) bounds the dependents settled
        here (see :meth:`_settle_bounded`); without one, the whole cascade is
        settled a level at a time (one query per level). How many it settled.
        """
        if budget is None:
            budget = self.cascade_limit
        if not ended:
            return 0
        if budget is not None:
            return self._settle_bounded(ended, now, budget, resume or {})
        steps = 0
        work = deque(ended)
        while work:
            level = list(work)
            work.clear()
            if dependents is not None:
                rows, dependents = dependents, None
            else:
                rows = self._x("SELECT " + _DEPENDENTS + " WHERE d.depends_on = ANY(%s) "
                               "ORDER BY t.seq FOR UPDATE OF t",
                               ([task_id for task_id, _ in level],)).fetchall()
            if not rows:
                break
            by_dep: dict[str, list[_Row]] = {}
            for row in rows:
                by_dep.setdefault(row[0], []).append(row)
            changed: set[int] = set()
            for dep_id, dep_state in level:
                for _, seq, task_id, not_before, queue, name in by_dep.get(dep_id, []):
                    if seq in changed:
                        continue
                    if self._settle_one(dep_id, dep_state, seq, task_id, not_before, queue, name,
                                        now):
                        changed.add(seq)
                        steps += 1
                        if dep_state != SUCCEEDED:
                            work.append((task_id, FAILED))
        return steps

    def _settle_one(self, dep_id: str, dep_state: str, seq: int, task_id: str,
                    not_before: float, queue: str, name: str | None, now: float) -> bool:
        """Settle one waiting dependent of ``dep_id`` (which ended ``dep_state``); False if it
        still waits on another dependency."""
        if dep_state != SUCCEEDED:
            self._x("UPDATE tasks SET state = 'failed', result_ok = false, result_payload = %s, "
                    "result_codec = 'msgpack', finished_at = %s WHERE seq = %s",
                    (dependency_failed_error(dep_id, dep_state), now, seq))
            self._note(queue, name, WAITING, FAILED, tid=task_id)
            return True
        if self._x("SELECT 1 FROM deps d JOIN tasks t ON t.id = d.depends_on "
                   "WHERE d.task_id = %s AND t.state != 'succeeded' LIMIT 1",
                   (task_id,)).fetchone() is not None:
            return False
        target = DELAYED if not_before > now else READY
        self._x("UPDATE tasks SET state = %s WHERE seq = %s", (target, seq))
        self._note(queue, name, WAITING, target)
        return True

    def _settle_bounded(self, ended: Sequence[tuple[str, str]], now: float, budget: int,
                        resume: dict[str, str]) -> int:
        """_settle with at most ``budget`` dependents looked at; the rest of the cascade goes
        to ``unsettled`` for :meth:`settle_pending`, each finished task with the last
        dependent id looked at (``resume`` gives those back). Dependents are walked in
        id order, the next ``budget`` rows of the deps_on index read first and only
        then joined to their tasks (whatever the planner estimates, no join or sort of
        every dependent), so a task with very many dependents is walked once, not
        again from its start on every call. Dependents no longer waiting (settled
        some other way) are passed over; they count as looked at."""
        having = self._with_dependents([task_id for task_id, _ in ended])
        work = deque((i, st, resume.get(i, "")) for i, st in ended if i in having)
        steps = 0
        while work:
            if steps >= budget:
                some = self._with_dependents([w[0] for w in work])
                rest = [w for w in work if w[0] in some]
                if rest:
                    self._x("INSERT INTO unsettled (task_id, state, after_id) "
                            "SELECT a, b, c FROM unnest(%s::text[], %s::text[], %s::text[]) "
                            "WITH ORDINALITY AS u(a, b, c, i) ORDER BY i",
                            [list(col) for col in zip(*rest)])
                break
            dep_id, dep_state, after_id = work.popleft()
            rows = self._x(
                "SELECT t.seq, t.id, t.not_before, t.queue, t.name, t.state FROM (SELECT task_id "
                "FROM deps WHERE depends_on = %s AND task_id > %s ORDER BY task_id LIMIT %s) AS d "
                "JOIN tasks t ON t.id = d.task_id ORDER BY d.task_id FOR UPDATE OF t",
                (dep_id, after_id, budget - steps)).fetchall()
            if len(rows) == budget - steps:  # it may have more: from the last one on
                work.appendleft((dep_id, dep_state, rows[-1][1]))
            for seq, task_id, not_before, queue, name, state in rows:
                steps += 1
                if state == WAITING and self._settle_one(
                        dep_id, dep_state, seq, task_id, not_before, queue, name, now) \
                        and dep_state != SUCCEEDED:
                    work.append((task_id, FAILED, ""))
        return steps

    def _with_dependents(self, ids: Sequence[str]) -> set[str]:
        """The ids among ``ids`` that some task depends on (one index probe each)."""
        if not ids:
            return set()
        return {r[0] for r in self._x(
            "SELECT x FROM unnest(%s::text[]) AS x "
            "WHERE EXISTS (SELECT 1 FROM deps WHERE depends_on = x)", (list(ids),))}

    def settle_pending(self, now: float, *, limit: int = 1000) -> bool:
        """Continue dependency cascades that :attr:`cascade_limit` cut short: settle up
        to about ``limit`` more dependents, in one transaction. True while more remain.

        Several masters may call it at once: each takes the pending rows no other
        holds (SKIP LOCKED), so none settles a cascade twice or waits on another.
        """
        check_int("limit", limit, 1, MAX_BATCH)
        with self.transaction():
            rows = self._x(
                "SELECT seq, task_id, state, after_id FROM unsettled ORDER BY seq LIMIT %s "
                "FOR UPDATE SKIP LOCKED", (limit,)).fetchall()
            if not rows:
                return False  # none, or all of them being settled by another master now
            self._x("DELETE FROM unsettled WHERE seq = ANY(%s)", ([r[0] for r in rows],))
            self._settle([(r[1], r[2]) for r in rows], now, budget=limit,
                         resume={r[1]: r[3] for r in rows if r[3]})
            return self._x("SELECT EXISTS (SELECT 1 FROM unsettled)").fetchone() == (True,)

    # -- leases -------------------------------------------------------------------

    def lease(self, queue: str, limit: int, owner: str, now: float, lease_for: float) -> list[Lease]:
        """Lease up to ``limit`` ready tasks, highest priority first, FIFO within one."""
        if limit <= 0:
            return []
        with self.transaction():
            rows = self._x(
                "WITH picked AS (SELECT seq FROM tasks WHERE state = 'ready' AND queue = %s "
                " ORDER BY priority DESC, seq LIMIT %s FOR UPDATE SKIP LOCKED) "
                f"UPDATE tasks t SET state = 'leased', attempts = t.attempts + 1, token = {_NEW_TOKEN}, "
                "lease_owner = %s, lease_deadline = %s, started_at = %s FROM picked "
                "WHERE t.seq = picked.seq "
                + _LEASE_RETURNING,
                (queue, int(limit), owner, now + lease_for, now)).fetchall()
            self._note_names(queue, (r[4] for r in rows), READY, LEASED)
        return _leases(rows)

    def take(self, queue: str, limit: int, owner: str, now: float) -> list[Lease]:
        """Lease and acknowledge in one UPDATE, then settle dependents (see Store.take)."""
        if limit <= 0:
            return []
        with self.transaction():
            rows = self._x(
                "WITH picked AS (SELECT seq FROM tasks WHERE state = 'ready' AND queue = %s "
                " ORDER BY priority DESC, seq LIMIT %s FOR UPDATE SKIP LOCKED) "
                f"UPDATE tasks t SET state = 'succeeded', attempts = t.attempts + 1, token = {_NEW_TOKEN}, "
                "started_at = %s, finished_at = %s, result_ok = true, result_payload = ''::bytea, "
                "result_codec = 'msgpack' FROM picked WHERE t.seq = picked.seq "
                + _LEASE_RETURNING,
                (queue, int(limit), now, now)).fetchall()
            self._note_names(queue, (r[4] for r in rows), READY, SUCCEEDED)
            got = _leases(rows)
            self._settle([(x.id, SUCCEEDED) for x in got], now)
        return got

    def _write_attempts(self, rows: Sequence[tuple[str, AttemptRecord]]) -> None:
        """Store ended attempts (a late report of the same attempt replaces it) and
        drop each task's attempts older than the last ATTEMPTS_KEPT."""
        if not rows:
            return
        cols: list[list[Any]] = [[] for _ in range(10)]
        for tid, a in rows:
            for col, value in zip(cols, (tid, a.number, a.owner,
                                         serde.packb(a.worker) if a.worker else None,
                                         a.leased_at, a.started_at, a.finished_at, a.outcome,
                                         a.error, a.output)):
                col.append(value)
        self._later(f"INSERT INTO attempts (task_id, {_ATTEMPT_COLUMNS}) SELECT * FROM unnest("
                "%s::text[], %s::int[], %s::text[], %s::bytea[], %s::float8[], %s::float8[], "
                "%s::float8[], %s::text[], %s::bytea[], %s::text[]) "
                "ON CONFLICT (task_id, number) DO UPDATE SET owner = excluded.owner, "
                "worker = excluded.worker, leased_at = excluded.leased_at, "
                "started_at = excluded.started_at, finished_at = excluded.finished_at, "
                "outcome = excluded.outcome, error = excluded.error, output = excluded.output",
                cols)
        old = [(tid, a.number - ATTEMPTS_KEPT) for tid, a in rows if a.number > ATTEMPTS_KEPT]
        if old:
            self._later("DELETE FROM attempts a USING unnest(%s::text[], %s::int[]) AS u(id, n) "
                    "WHERE a.task_id = u.id AND a.number <= u.n",
                    ([t for t, _ in old], [n for _, n in old]))

    def complete(self, outcomes: Sequence[Outcome], now: float) -> list[str]:
        """Store results; STORED, DUPLICATE, STALE or UNKNOWN for each outcome."""
        if not outcomes:
            return []
        with self.transaction():
            ids = [o.id for o in outcomes]
            if len(set(ids)) == len(ids):
                return self._complete_at_once(outcomes, now)
            return self._complete_locked(outcomes, now)

    def _complete_at_once(self, outcomes: Sequence[Outcome], now: float) -> list[str]:
        """complete for distinct ids: one statement locks, checks, stores and reads the
        waiting dependents, one round trip fewer than reading first.

        The tasks are locked first by a statement of their own, pipelined ahead of it (no
        round trip more): the main statement's snapshot then comes after the locks, so it
        sees every dependent committed by a transaction that held one of these tasks (an
        enqueue naming it as a dependency locks it), and later ones wait for this commit.
        Both skip the rows another transaction holds (SKIP LOCKED): waiting would leave the
        snapshot before that holder's commit. When it did not find every task (one held
        elsewhere, an unknown id, a token out of range), it is undone (its savepoint, locks
        included: waiting for the others while holding these could deadlock) and
        _complete_locked does the whole batch."""
        tokens = [_db_token(o.token) for o in outcomes]
        if None in tokens:
            return self._complete_locked(outcomes, now)
        cols = [[o.id for o in outcomes], tokens, [bool(o.ok) for o in outcomes],
                [bytes(o.payload) for o in outcomes], [o.codec for o in outcomes]]
        try:
            with self.transaction():
                self._later("SELECT 1 FROM tasks WHERE id = ANY(%s::text[]) ORDER BY seq "
                            "FOR UPDATE SKIP LOCKED", (cols[0],))
                unbounded = self.cascade_limit is None  # read the dependents now: the whole cascade goes
                rows = self._x(_COMPLETE_DEPENDENTS if unbounded else _COMPLETE_ALONE,
                               (*cols, cols[0], now)).fetchall()
                if sum(row[0] == "o" for row in rows) != len(outcomes):
                    raise _NotAll
        except _NotAll:
            return self._complete_locked(outcomes, now)
        old: dict[str, _Row] = {}
        dependents: list[_Row] = []
        for row in rows:
            if row[0] == "o":
                old[row[2]] = row
            else:
                dependents.append((row[3], row[1], row[2], row[11], row[5], row[6]))
        out: list[str] = []
        ended_attempts: list[tuple[str, AttemptRecord]] = []
        ended: list[tuple[str, str]] = []
        having: set[str] = set()  # the stored ones some task depends on
        for o in outcomes:
            row = old[o.id]
            _, _, tid, state, attempts, queue, name, owner, leased_at, _, stored, _, deps = row
            if not stored:
                out.append(DUPLICATE if state in FINISHED_STATES else STALE)
                continue
            out.append(STORED)
            new = SUCCEEDED if o.ok else FAILED
            holder = state == LEASED  # else the last lease's late success: it was handed back
            ended_attempts.append((tid, attempt_record(
                attempts, owner if holder else None, leased_at if holder else None, now,
                ATTEMPT_SUCCEEDED if o.ok else ATTEMPT_FAILED, note_of(o),
                None if o.ok else o.payload)))
            self._note(queue, name, state, new, tid=tid)
            ended.append((tid, new))
            if deps:
                having.add(tid)
        self._write_attempts(ended_attempts)
        if unbounded:
            self._settle(ended, now, dependents)
        elif having:
            self._settle([e for e in ended if e[0] in having], now)
        return out

    def _complete_locked(self, outcomes: Sequence[Outcome], now: float) -> list[str]:
        """complete that reads (and locks) the tasks first, then decides in Python (inside
        complete's transaction level: an error undoes it alone)."""
        ids = list(dict.fromkeys(o.id for o in outcomes))
        # Locked: a concurrent complete of the same task waits, then sees it finished.
        current: dict[str, list[Any]] = {
            row[1]: [row[0], *row[2:]] for row in self._x(
                "SELECT seq, id, state, attempts, queue, name, lease_owner, started_at, token "
                "FROM tasks WHERE id = ANY(%s) ORDER BY seq FOR UPDATE", (ids,)).fetchall()}
        ended_attempts: list[tuple[str, AttemptRecord]] = []
        out: list[str] = []
        cols: list[list[Any]] = [[], [], [], [], []]  # seq, state, ok, payload, codec
        ended: list[tuple[str, str]] = []
        for o in outcomes:
            cur = current.get(o.id)
            if cur is None:
                out.append(UNKNOWN)
                continue
            seq, state, attempts, queue, name, owner, leased_at, tok = cur
            if state in FINISHED_STATES:
                out.append(DUPLICATE)
                continue
            mine = tok is not None and o.token == int(tok) + TOKEN_OFFSET  # the last lease's
            if o.ok and mine:
                cur[1] = SUCCEEDED
            elif not o.ok and state == LEASED and mine:
                cur[1] = FAILED
            else:
                out.append(STALE)
                continue
            out.append(STORED)
            holder = state == LEASED  # else the last lease's late success: it was handed back
            ended_attempts.append((o.id, attempt_record(
                attempts, owner if holder else None, leased_at if holder else None, now,
                ATTEMPT_SUCCEEDED if o.ok else ATTEMPT_FAILED, note_of(o),
                None if o.ok else o.payload)))
            self._note(queue, name, state, cur[1], tid=o.id)
            for col, value in zip(cols, (seq, cur[1], bool(o.ok), bytes(o.payload), o.codec)):
                col.append(value)
            ended.append((o.id, cur[1]))
        self._write_attempts(ended_attempts)
        if ended:
            store = ("UPDATE tasks t SET state = u.state, result_ok = u.ok, "
                     "result_payload = u.payload, result_codec = u.codec, finished_at = %s, "
                     "lease_owner = NULL, lease_deadline = NULL FROM unnest(%s::bigint[], "
                     "%s::text[], %s::bool[], %s::bytea[], %s::text[]) "
                     "AS u(seq, state, ok, payload, codec) "
                     f"WHERE t.seq = u.seq AND t.state NOT IN {_FINISHED_SQL} RETURNING t.id")
            if self.cascade_limit is not None:  # a bounded cascade reads dependents in steps
                self._x(store, (now, *cols))
                self._settle(ended, now)
            else:
                # One round trip stores the results and reads (locked) the tasks waiting on them.
                dependents = self._x(
                    f"WITH done AS ({store}) SELECT " + _DEPENDENTS +
                    " WHERE d.depends_on IN (SELECT id FROM done) "
                    "AND t.id NOT IN (SELECT id FROM done) ORDER BY t.seq FOR UPDATE OF t",
                    (now, *cols)).fetchall()
                self._settle(ended, now, dependents)
        return out

    def nack(self, task_id: str, token: int, now: float, *, delay: float = 0.0,
             error: bytes | None = None, dead: bool = False,
             note: AttemptNote | None = None) -> bool:
        """Give a leased task back to ready, delayed or dead; False if ``token`` is stale."""
        err = None if error is None else bytes(error)
        history = "errors || %s::bytea[]"  # the error history, this attempt's error appended
        fence = "WHERE id = %s AND state = 'leased' AND token = %s"
        extra = [] if err is None else [err]
        stored = _db_token(token)
        if stored is None:
            return False
        with self.transaction():
            held = self._x(f"SELECT lease_owner, started_at, attempts FROM tasks {fence} FOR UPDATE",
                           (task_id, stored)).fetchone()
            if held is None:
                return False
            ended = ATTEMPT_FAILED if dead else ATTEMPT_DEFERRED if err is None else ATTEMPT_RETRIED
            if err is not None or note is not None or dead:  # a bare deferral never ran
                self._write_attempts([(task_id, attempt_record(int(held[2]), held[0], held[1], now,
                                                               ended, note, err))])
            if dead:
                row = self._x(
                    f"UPDATE tasks SET state = 'dead', errors = {history}, result_ok = false, "
                    "result_payload = coalesce(%s::bytea, errors[cardinality(errors)], ''::bytea), "
                    "result_codec = 'msgpack', finished_at = %s, lease_owner = NULL, "
                    f"lease_deadline = NULL {fence} RETURNING queue, name",
                    (extra, err, now, task_id, stored)).fetchone()
                if row is not None:
                    self._note(row[0], row[1], LEASED, DEAD, tid=task_id)
                    self._settle([(task_id, DEAD)], now)
            elif delay > 0:
                row = self._x(
                    f"UPDATE tasks SET state = 'delayed', errors = {history}, not_before = %s, "
                    f"lease_owner = NULL, lease_deadline = NULL {fence} RETURNING queue, name",
                    (extra, now + delay, task_id, stored)).fetchone()
                if row is not None:
                    self._note(row[0], row[1], LEASED, DELAYED)
            else:
                row = self._x(
                    f"UPDATE tasks SET {_RETURN_TO_READY}, errors = {history} {fence} "
                    "RETURNING queue, name", (extra, task_id, stored)).fetchone()
                if row is not None:
                    self._note(row[0], row[1], LEASED, READY)
            if row is not None and err is not None and not dead:
                self._note_retry(row[0], row[1])  # another attempt after a failure
            return row is not None

    def release(self, leases: Sequence[tuple[str, int]], now: float, *,
                note: AttemptNote | None = None) -> int:
        """Hand back the leases whose token still holds; how many did."""
        pairs = [(i, db) for i, tok in leases if (db := _db_token(tok)) is not None]
        if not pairs:
            return 0
        return len(self._return_to_ready(
            "(id, token) IN (SELECT * FROM unnest(%s::text[], %s::bigint[]))",
            ([i for i, _ in pairs], [db for _, db in pairs]), now, ATTEMPT_RELEASED,
            lambda _owner: note))

    def adopt(self, pairs: Sequence[tuple[str, int]], owner: str, now: float,
              lease_for: float) -> list[str]:
        """Pass the leases whose token still holds (leased, or handed back and not leased
        since) to ``owner``; their ids."""
        wanted = list({i: db for i, tok in pairs if (db := _db_token(tok)) is not None}.items())
        if not wanted:
            return []
        with self.transaction():
            # The CTE reads (and locks) each task's state before, to count the ready ones.
            rows = self._x(
                "WITH old AS (SELECT seq, state FROM tasks WHERE state IN ('leased', 'ready') "
                "AND (id, token) IN (SELECT * FROM unnest(%s::text[], %s::bigint[])) FOR UPDATE) "
                "UPDATE tasks t SET state = 'leased', lease_owner = %s, lease_deadline = %s, "
                "started_at = CASE WHEN old.state = 'leased' THEN t.started_at ELSE %s END "
                "FROM old WHERE t.seq = old.seq RETURNING t.id, old.state, t.queue, t.name",
                ([i for i, _ in wanted], [db for _, db in wanted], owner, now + lease_for,
                 now)).fetchall()
            for _tid, old, queue, name in rows:
                if old == READY:
                    self._note(queue, name, READY, LEASED)
            got = {r[0] for r in rows}
        return [i for i, _ in wanted if i in got]

    def _return_to_ready(self, condition: str, params: tuple[Any, ...], now: float,
                         outcome: str = ATTEMPT_LOST, note_for: _NoteFor | None = None) -> list[str]:
        """Hand back the leased tasks matching ``condition``, ending their attempts
        with ``outcome`` (``note_for(owner)``: what the master knows of each);
        their ids in enqueue order."""
        with self.transaction():
            # The CTE reads (and locks) each lease as it was, for its attempt record.
            rows = self._x(
                "WITH old AS (SELECT seq, attempts, lease_owner, started_at FROM tasks "
                f"WHERE state = 'leased' AND {condition} FOR UPDATE) "
                f"UPDATE tasks t SET {_RETURN_TO_READY} FROM old "
                "WHERE t.seq = old.seq AND t.state = 'leased' "
                "RETURNING t.seq, t.id, t.queue, t.name, old.attempts, old.lease_owner, "
                "old.started_at", params).fetchall()
            for r in rows:
                self._note(r[2], r[3], LEASED, READY)
            self._write_attempts([(r[1], attempt_record(
                r[4], r[5], r[6], now, outcome, note_for(r[5]) if note_for else None))
                for r in rows])
        return [r[1] for r in sorted(rows)]

    def release_owner(self, owner: str, now: float, *,
                      note: AttemptNote | None = None) -> list[str]:
        """Hand back every task leased to ``owner``; their ids in enqueue order."""
        return self._return_to_ready("lease_owner = %s", (owner,), now, ATTEMPT_LOST,
                                     lambda _owner: note)

    def release_all(self, now: float, *, limit: int | None = None) -> int:
        """Hand back every leased task (at most ``limit``, earliest deadline first, then
        oldest); how many.

        With a limit, call again until it returns less than the limit: each call
        is one bounded transaction.
        """
        check_limit(limit)
        if limit is None:
            return len(self._return_to_ready("true", (), now))
        # The outer ``state = 'leased'`` is checked again on a row another writer changed.
        return len(self._return_to_ready(
            "seq IN (SELECT seq FROM tasks WHERE state = 'leased' "
            "ORDER BY lease_deadline, seq LIMIT %s)", (int(limit),), now))

    def extend_owner(self, owner: str, now: float, lease_for: float) -> int:
        """Set the deadline of every lease ``owner`` holds to ``now + lease_for``."""
        with self.transaction():
            return self._x("UPDATE tasks SET lease_deadline = %s "
                           "WHERE state = 'leased' AND lease_owner = %s",
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
            return self._return_to_ready("lease_deadline <= %s", (now,), now, ATTEMPT_LOST,
                                         note_for)
        due = _FIRST_DUE.format(col="lease_deadline", part="state = 'leased'", op="<=")
        return self._return_to_ready(f"lease_deadline <= %s AND {due}", (now, int(limit), now),
                                     now, ATTEMPT_LOST, note_for)

    def promote_due(self, now: float, *, limit: int | None = None) -> list[str]:
        """Make delayed tasks with ``not_before <= now`` ready (at most ``limit``, earliest
        first); their queues, deduplicated."""
        check_limit(limit)
        due = "state = 'delayed' AND not_before <= %s"
        params: tuple[Any, ...] = (now,)
        if limit is not None:
            due += " AND " + _FIRST_DUE.format(col="not_before", part="state = 'delayed'", op="<=")
            params = (now, int(limit), now)
        with self.transaction():
            rows = self._x(f"UPDATE tasks SET state = 'ready' WHERE {due} "
                           "RETURNING seq, queue, name", params).fetchall()
            for r in rows:
                self._note(r[1], r[2], DELAYED, READY)
        return list({r[1]: None for r in sorted(rows)})

    def next_due(self) -> float | None:
        """The earliest ``not_before`` of any delayed task, or None."""
        with self._reading():
            row = self._x("SELECT min(not_before) FROM tasks WHERE state = 'delayed'").fetchone()
        return None if row is None or row[0] is None else float(row[0])

    # -- results and inspection ----------------------------------------------------

    def results(self, ids: Sequence[str]) -> dict[str, Result]:
        """Stored results of the finished tasks among ``ids``."""
        if not ids:
            return {}
        with self._reading():
            rows = self._x("SELECT id, result_ok, result_payload, result_codec, state, finished_at "
                           "FROM tasks WHERE id = ANY(%s) AND finished_at IS NOT NULL",
                           (list(dict.fromkeys(ids)),)).fetchall()
        return {tid: Result(tid, bool(ok), bytes(payload or b""), codec or "msgpack", state, fin)
                for tid, ok, payload, codec, state, fin in rows}

    def get(self, task_id: str) -> TaskInfo | None:
        """Everything stored about one task, or None."""
        with self._reading():
            row = self._x(f"SELECT {_INFO_COLUMNS} FROM tasks WHERE id = %s", (task_id,)).fetchone()
            if row is None:
                return None
            after = [r[0] for r in self._x(
                "SELECT depends_on FROM deps WHERE task_id = %s ORDER BY seq", (task_id,))]
            log = [_attempt(r) for r in self._x(
                f"SELECT {_ATTEMPT_COLUMNS} FROM attempts WHERE task_id = %s ORDER BY number",
                (task_id,))]
        info = _info(row, after)
        info.attempt_log = log
        return info

    def dependents(self, task_id: str, limit: int = 100) -> list[str]:
        """Ids of at most ``limit`` tasks waiting on ``task_id`` (the deps_on index)."""
        check_int("limit", limit, 1, MAX_BATCH)
        with self._reading():
            return [r[0] for r in self._x(
                "SELECT task_id FROM deps WHERE depends_on = %s ORDER BY task_id LIMIT %s",
                (task_id, int(limit)))]

    def cancel(self, task_id: str, now: float, error: bytes) -> tuple[str, str | None] | None:
        """Cancel an unfinished task; (its state before, its lease owner) or None if unknown."""
        with self.transaction():
            row = self._x("SELECT seq, state, lease_owner, queue, name, attempts, started_at "
                          "FROM tasks WHERE id = %s FOR UPDATE", (task_id,)).fetchone()
            if row is None:
                return None
            seq, state, owner, queue, name, attempts, leased_at = row
            if state in FINISHED_STATES:
                return state, None
            if state == LEASED:
                self._write_attempts([(task_id, attempt_record(
                    attempts, owner, leased_at, now, ATTEMPT_CANCELLED, None))])
            self._x("UPDATE tasks SET state = 'cancelled', result_ok = false, result_payload = %s, "
                    "result_codec = 'msgpack', finished_at = %s, lease_owner = NULL, "
                    "lease_deadline = NULL WHERE seq = %s", (bytes(error), now, seq))
            self._note(queue, name, state, CANCELLED, tid=task_id)
            if state == LEASED and owner:  # the master holding that worker stops it
                self._announce(CANCEL_CHANNEL, f"{owner} {task_id}")
            self._settle([(task_id, CANCELLED)], now)
            return state, owner if state == LEASED else None

    def requeue(self, now: float, *, ids: Sequence[str] = (), queue: str | None = None,
                states: Sequence[str] = (DEAD,)) -> list[str]:
        """Send finished tasks in ``states`` back to ready; their ids in enqueue order."""
        wanted = finished_states(states, "requeue")
        if not wanted or (not ids and queue is None):
            return []
        columns = "seq, id, queue, state, not_before, options, cardinality(errors), name"
        with self.transaction():
            if ids:
                rows = self._x(f"SELECT {columns} FROM tasks WHERE id = ANY(%s) ORDER BY seq "
                               "FOR UPDATE", (list(dict.fromkeys(ids)),)).fetchall()
            else:
                rows = self._x(f"SELECT {columns} FROM tasks WHERE queue = %s "
                               "AND state = ANY(%s) ORDER BY seq FOR UPDATE",
                               (queue, sorted(wanted))).fetchall()
            out: list[str] = []
            for seq, task_id, task_queue, state, not_before, options, n_errors, name in rows:
                if state not in wanted or (queue is not None and task_queue != queue):
                    continue
                target = DELAYED if not_before > now else READY
                dep_states = {r[0] for r in self._x(
                    "SELECT t.state FROM deps d JOIN tasks t ON t.id = d.depends_on "
                    "WHERE d.task_id = %s", (task_id,))}
                dep_states.discard(SUCCEEDED)
                if dep_states & FINISHED_STATES:
                    continue  # it would fail again at once: retry the dependency too
                if dep_states:
                    target = WAITING
                opts = _options(options)
                opts["retry_base"] = int(n_errors or 0)
                self._x("UPDATE tasks SET state = %s, options = %s, result_ok = NULL, "
                        "result_payload = NULL, result_codec = NULL, finished_at = NULL, "
                        "progress = NULL WHERE seq = %s", (target, serde.packb(opts), seq))
                self._note(task_queue, name, state, target)
                out.append(task_id)
            return out

    def _delete_where(self, where: str, params: Sequence[Any]) -> int:
        """Delete the tasks ``WHERE where`` and every dependency row naming them; how many."""
        rows = self._x(f"DELETE FROM tasks WHERE {where} RETURNING id, queue, name, state",
                       params).fetchall()
        for _, queue, name, state in rows:
            self._note(queue, name, state, None)
        if rows:
            gone = [r[0] for r in rows]
            self._x("DELETE FROM deps WHERE task_id = ANY(%s) OR depends_on = ANY(%s)",
                    (gone, gone))
            self._x("DELETE FROM attempts WHERE task_id = ANY(%s)", (gone,))
        return len(rows)

    def purge(self, *, queue: str | None = None, states: Sequence[str] = (DEAD,),
              limit: int | None = None) -> int:
        """Delete every task in ``states`` (of ``queue``, or of every queue); how many.

        With a ``limit``, at most that many per call (by state name, then oldest first:
        the (state, seq) index order): call again until it returns less than the limit.
        """
        wanted = finished_states(states, "purge")
        check_limit(limit)
        if not wanted:
            return 0
        where = "state = ANY(%s)"
        params: list[Any] = [sorted(wanted)]
        if queue is not None:
            where += " AND queue = %s"
            params.append(queue)
        if limit is not None:  # the outer condition is checked again on a row changed meanwhile
            where = (f"{where} AND seq IN (SELECT seq FROM tasks WHERE {where} "
                     "ORDER BY state, seq LIMIT %s)")
            params = [*params, *params, int(limit)]
        with self.transaction():
            return self._delete_where(where, params)

    def list_tasks(self, *, queue: str | None = None, state: str | None = None,
                   limit: int = 50, offset: int = 0) -> list[TaskInfo]:
        """Tasks filtered by queue and/or state, in enqueue order, paged."""
        check_page(state, limit, offset)
        where: list[str] = []
        params: list[Any] = []
        if queue is not None:
            where.append("queue = %s")
            params.append(queue)
        if state is not None:
            where.append("state = %s")
            params.append(state)
        sql = f"SELECT {_INFO_COLUMNS} FROM tasks"
        if where:
            sql += " WHERE " + " AND ".join(where)
        with self._reading():
            rows = self._x(sql + " ORDER BY seq LIMIT %s OFFSET %s",
                           (*params, int(limit), int(offset))).fetchall()
            after: dict[str, list[str]] = {}
            if rows:
                for task_id, dep in self._x(
                        "SELECT task_id, depends_on FROM deps WHERE task_id = ANY(%s) ORDER BY seq",
                        ([r[0] for r in rows],)):
                    after.setdefault(task_id, []).append(dep)
        return [_info(row, after.get(row[0], [])) for row in rows]

    # -- listings, counts and bulk actions by filter (the dashboard) ----------

    @staticmethod
    def _filter_sql(flt: TaskFilter) -> tuple[list[str], list[Any]]:
        """SQL conditions on ``tasks t`` for every field of ``flt`` but its states."""
        where: list[str] = []
        params: list[Any] = []
        if flt.queue is not None:
            where.append("t.queue = %s")
            params.append(flt.queue)
        if flt.name is not None:
            where.append("t.name = %s")
            params.append(flt.name)
        if flt.id_prefix is not None:  # ids compare bytewise (COLLATE "C", schema 2)
            low, high = paging.prefix_range(flt.id_prefix)
            where.append("t.id >= %s AND t.id < %s")
            params += [low, high]
        if flt.key is not None:
            where.append("t.id = %s")
            params.append(task_id_for_key(flt.key))
        if flt.created_from is not None:
            where.append("t.created_at >= %s")
            params.append(flt.created_from)
        if flt.created_to is not None:
            where.append("t.created_at < %s")
            params.append(flt.created_to)
        return where, params

    def _few_by_id(self, flt: TaskFilter) -> list[int] | None:
        """The seqs of the tasks ``flt``'s id prefix or key names, read through the id
        index, when they are few (<= paging.PREFIX_FEW); None otherwise."""
        if flt.key is not None:
            row = self._x("SELECT seq FROM tasks WHERE id = %s",
                          (task_id_for_key(flt.key),)).fetchone()
            return [] if row is None else [int(row[0])]
        if flt.id_prefix is None:
            return None
        low, high = paging.prefix_range(flt.id_prefix)
        seqs = [int(r[0]) for r in self._x(
            "SELECT seq FROM tasks WHERE id >= %s AND id < %s ORDER BY id LIMIT %s",
            (low, high, paging.PREFIX_FEW + 1))]
        return seqs if len(seqs) <= paging.PREFIX_FEW else None

    def _stream(self, state: str | None, where: list[str], params: list[Any], start: int | None,
                newest_first: bool, limit: int, budget: int) -> paging.Stream[TaskSummary]:
        """Up to ``limit`` matches of one state (or of all tasks) after ``start``,
        examining at most ``budget`` rows of the (state, seq) index or the seq key."""
        order = "DESC" if newest_first else "ASC"
        scan: list[str] = []
        scan_params: list[Any] = []
        if state is not None:
            scan.append("state = %s")
            scan_params.append(state)
        if start is not None:
            scan.append(f"seq {'<' if newest_first else '>'} %s")
            scan_params.append(start)
        scan_sql = f"SELECT seq FROM tasks {'WHERE ' + ' AND '.join(scan) if scan else ''} " \
                   f"ORDER BY seq {order}"
        if not where:  # nothing to skip: the index walk stops at the page's end
            rows = self._x(
                f"SELECT {_SUMMARY_COLUMNS} FROM ({scan_sql} LIMIT %s) AS w "
                f"JOIN tasks t ON t.seq = w.seq ORDER BY t.seq {order}",
                (*scan_params, limit)).fetchall()
            found = [_summary(r) for r in rows]
            return paging.Stream(found, found[-1][0] if len(found) == limit else None)
        rows = self._x(
            f"SELECT {_SUMMARY_COLUMNS} FROM ({scan_sql} LIMIT %s) AS w "
            f"JOIN tasks t ON t.seq = w.seq WHERE {' AND '.join(where)} "
            f"ORDER BY t.seq {order} LIMIT %s", (*scan_params, budget, *params, limit)).fetchall()
        found = [_summary(r) for r in rows]
        if len(found) == limit:
            return paging.Stream(found, found[-1][0])
        last = self._x(f"{scan_sql} LIMIT 1 OFFSET %s", (*scan_params, budget - 1)).fetchone()
        return paging.Stream(found, None if last is None else int(last[0]))

    def _listed(self, seqs: list[int], flt: TaskFilter, where: list[str], params: list[Any],
                start: int | None, newest_first: bool) -> paging.Stream[TaskSummary]:
        """The matches among a few known seqs, as one stream read to its end."""
        if start is not None:
            seqs = [q for q in seqs if (q < start if newest_first else q > start)]
        if not seqs:
            return paging.Stream([], None)
        cond = ["t.seq = ANY(%s)", *where]
        cond_params: list[Any] = [seqs, *params]
        if flt.states:
            cond.append("t.state = ANY(%s)")
            cond_params.append(sorted(set(flt.states)))
        found = [_summary(r) for r in self._x(
            f"SELECT {_SUMMARY_COLUMNS} FROM tasks t WHERE {' AND '.join(cond)}", cond_params)]
        found.sort(key=lambda r: r[0], reverse=newest_first)
        return paging.Stream(found, None)

    def list_page(self, flt: TaskFilter = ALL_TASKS, *, limit: int = 50,
                  cursor: str | None = None, newest_first: bool = True) -> TaskPage:
        """A page of the tasks ``flt`` selects, newest (or oldest) first, and the next cursor.

        Keyset paging on the enqueue order (``seq``, through the (state, seq) index or
        the primary key): no OFFSET; each call examines a bounded number of rows (see
        :class:`TaskPage` for what a short page means). Bad arguments are refused by
        the shared validators before any query.
        """
        start = check_listing(flt, limit, cursor, newest_first)
        where, params = self._filter_sql(flt)
        with self._reading():
            few = self._few_by_id(flt)
            if few is not None:
                stream = self._listed(few, flt, where, params, start, newest_first)
                rows, nxt = paging.merge([stream], limit, newest_first)
            else:
                states = paging.stream_states(flt)
                budget = paging.share(paging.LIST_BUDGET, len(states))
                streams = [self._stream(state, where, params, start, newest_first, limit, budget)
                           for state in states]
                rows, nxt = paging.merge(streams, limit, newest_first)
        return TaskPage(rows, None if nxt is None else str(nxt))

    def count_tasks(self, flt: TaskFilter = ALL_TASKS, *, cap: int = MAX_COUNT_CAP) -> TaskCount:
        """How many tasks ``flt`` selects: exact from the counts table when it filters by
        state, queue and name only; else counted up to ``cap`` over a bounded scan."""
        check_filter(flt)
        check_int("cap", cap, 1, MAX_COUNT_CAP)
        states = set(flt.states) or set(STATES)
        counts = self._table("counts")
        if flt.id_prefix is None and flt.key is None and flt.created_from is None \
                and flt.created_to is None:
            n = sum(c for (q, name, state), c in counts.items()
                    if state in states and (flt.queue is None or q == flt.queue)
                    and (flt.name is None or name == flt.name))
            return TaskCount(n, True)
        where, params = self._filter_sql(flt)
        with self._reading():
            few = self._few_by_id(flt)
            if few is not None:
                stream = self._listed(few, flt, where, params, None, False)
                return TaskCount(min(len(stream.rows), cap), len(stream.rows) <= cap)
            sizes: dict[str, int] = {}
            for (_, _, state), c in counts.items():
                sizes[state] = sizes.get(state, 0) + c
            chosen = paging.stream_states(flt)
            budget = paging.share(paging.COUNT_BUDGET, len(chosen))
            n, exact = 0, True
            for one in chosen:
                scan = "SELECT seq FROM tasks" + (" WHERE state = %s" if one else "")
                row = self._x(
                    f"SELECT count(*) FROM (SELECT t.seq FROM ({scan} ORDER BY seq LIMIT %s) AS w "
                    f"JOIN tasks t ON t.seq = w.seq WHERE {' AND '.join(where)} LIMIT %s) AS m",
                    (*([one] if one else []), budget, *params, cap + 1)).fetchone()
                n += int(row[0]) if row is not None else 0
                size = sizes.get(one, 0) if one else sum(sizes.values())
                exact = exact and size <= budget
        if n > cap:
            return TaskCount(cap, False)
        return TaskCount(n, exact)

    def set_progress(self, task_id: str, token: int, progress: dict[str, Any]) -> bool:
        """Record the progress report of the attempt holding the lease; False if stale."""
        with self.transaction():
            done = self._x("UPDATE tasks SET progress = %s "
                           "WHERE id = %s AND state = 'leased' AND token = %s",
                           (serde.packb(progress), task_id, _db_token(token))).rowcount == 1
            if done:
                self._announce(PROGRESS_CHANNEL, task_id)
            return done

    def purge_finished(self, before: float, *, limit: int | None = None) -> int:
        """Delete finished tasks that finished before ``before``; how many.

        With a ``limit``, at most that many (earliest finished first) per call:
        call again until it returns less than the limit.
        """
        check_limit(limit)
        where = "finished_at < %s"
        params: tuple[Any, ...] = (before,)
        if limit is not None:
            where += " AND " + _FIRST_DUE.format(col="finished_at", part="finished_at IS NOT NULL",
                                                 op="<")
            params = (before, int(limit), before)
        with self.transaction():
            return self._delete_where(where, params)

    def pending_counts(self, queue: str) -> tuple[int, int, int]:
        """(ready, delayed, leased) counts of one queue, from the counts table."""
        by_state: dict[str, int] = {}
        for (_, _, state), n in self._table("counts", queue).items():
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

    def _table(self, table: str, queue: str | None = None) -> dict[tuple[str, str, str], int]:
        """Rows of ``counts`` or ``totals`` (of one ``queue``, when given), plus the changes
        of the open transaction not written yet."""
        key = "state" if table == "counts" else "outcome"
        where, params = ("WHERE queue = %s", (queue,)) if queue is not None else ("", ())
        with self._reading():
            out = {(q, name, k): int(n) for q, name, k, n in self._x(
                f"SELECT queue, name, {key}, n FROM {table} {where}", params).fetchall()}
            for level in self._deltas if self._depth else ():
                for (t, q, name, k), n in level.items():
                    if t == table and (queue is None or q == queue):
                        out[(q, name, k)] = out.get((q, name, k), 0) + n
        return out

    # -- periodic schedules ----------------------------------------------------------

    def save_schedule(self, record: dict[str, Any]) -> None:
        """Insert or replace the schedule ``record["name"]``."""
        rec = sched.normalise(record)
        rec["options"] = serde.packb(rec["options"]) if rec["options"] else None
        updates = ", ".join(f"{c} = EXCLUDED.{c}" for c in sched.COLUMNS if c != "name")
        with self.transaction():
            self._x(f"INSERT INTO schedules ({_COLUMNS_SQL}) "
                    f"VALUES ({', '.join(['%s'] * len(sched.COLUMNS))}) "
                    f"ON CONFLICT (name) DO UPDATE SET {updates}",
                    [rec[c] for c in sched.COLUMNS])

    def schedules(self) -> list[dict[str, Any]]:
        """Every schedule record, by name."""
        with self._reading():
            rows = self._x(f"SELECT {_COLUMNS_SQL} FROM schedules ORDER BY name").fetchall()
        out = []
        for row in rows:
            rec = dict(zip(sched.COLUMNS, row))
            rec["payload"] = bytes(rec["payload"])
            rec["options"] = serde.unpackb(rec["options"]) if rec["options"] else {}
            out.append(rec)
        return out

    def remove_schedule(self, name: str) -> bool:
        """Delete a schedule; False if there was none by that name."""
        with self.transaction():
            return self._x("DELETE FROM schedules WHERE name = %s", (name,)).rowcount > 0

    def mark_slot(self, name: str, slot: float) -> None:
        """Record that ``slot`` of ``name`` was enqueued (``last_slot`` only moves forward)."""
        with self.transaction():
            self._x("UPDATE schedules SET last_slot = %s WHERE name = %s "
                    "AND (last_slot IS NULL OR last_slot < %s)", (float(slot), name, float(slot)))

    # -- several masters on one database ---------------------------------------------

    def heartbeat_master(self, master_id: str, address: str, info: Mapping[str, Any],
                         now: float) -> float | None:
        """Insert or refresh this master's row (heartbeat: the database's clock). The first
        call binds the store to ``master_id``: the lease trigger names it on every lease
        this connection takes or adopts, and commits start announcing to other masters."""
        with self.transaction(durable=False):
            if self.master_id != master_id:
                self._x("SELECT set_config('conveyor.master', %s, false)", (master_id,))
            row = self._x(
                "INSERT INTO masters (id, address, info, started_at) VALUES (%s, %s, %s, %s) "
                "ON CONFLICT (id) DO UPDATE SET address = excluded.address, "
                "info = excluded.info, heartbeat_at = clock_timestamp() "
                "RETURNING extract(epoch FROM clock_timestamp())::float8",
                (master_id, address, serde.packb(dict(info)), now)).fetchone()
        self.master_id = master_id
        self.announce = True
        return float(row[0]) if row is not None else None

    def release_dead(self, timeout: float, now: float, *, limit: int | None = None) -> int:
        """Hand back the leases of masters silent past ``timeout`` seconds (database clock)
        and of no master; forget the silent masters that hold none. How many leases."""
        check_limit(limit)
        dead = ("(lease_master IS NULL OR lease_master NOT IN (SELECT id FROM masters "
                "WHERE heartbeat_at >= clock_timestamp() - make_interval(secs => %s)))")
        params: tuple[Any, ...] = (float(timeout),)
        if limit is not None:
            # The condition again outside the bounded pick: a row it picked that another
            # master handed back and leased again while this waited for its lock is
            # rechecked as it is now (a live master's lease), not as the pick saw it.
            dead = (f"{dead} AND seq IN (SELECT seq FROM tasks WHERE state = 'leased' AND {dead} "
                    "ORDER BY seq LIMIT %s)")
            params = (float(timeout), float(timeout), int(limit))
        with self.transaction():
            n = len(self._return_to_ready(dead, params, now))
            if limit is None or n < limit:
                self._x("DELETE FROM masters m WHERE heartbeat_at < clock_timestamp() - "
                        "make_interval(secs => %s) AND NOT EXISTS (SELECT 1 FROM tasks t "
                        "WHERE t.state = 'leased' AND t.lease_master = m.id)", (float(timeout),))
        return n

    def masters(self) -> list[dict[str, Any]]:
        """Every registered master, oldest first, with its heartbeat age (database clock)."""
        with self._reading():
            rows = self._x("SELECT id, address, started_at, "
                           "extract(epoch FROM clock_timestamp() - heartbeat_at)::float8, info "
                           "FROM masters ORDER BY started_at, id").fetchall()
        return [{"id": r[0], "address": r[1], "started_at": r[2], "heartbeat_age": r[3],
                 "info": serde.unpackb(r[4]) if r[4] else {}} for r in rows]

    def try_lead(self) -> bool:
        """Hold the leader lock (a session-level advisory lock) on a connection of its own:
        True while held. The server releases it when that connection ends (its master
        died, or lost the database), and the next master to ask takes it over."""
        with self._lead_lock:
            conn = self._lead_conn
            try:
                if conn is not None and not conn.broken:
                    if self._leading:
                        conn.execute(b"SELECT 1")  # still connected: still holding it
                        return True
                else:
                    if conn is not None:
                        conn.close()
                    self._leading = False
                    conn = self._lead_conn = self._connect()
                row = conn.execute(b"SELECT pg_try_advisory_lock(%s)", (LEADER_LOCK,)).fetchone()
                self._leading = bool(row and row[0])
            except (psycopg.Error, StoreError):
                if self._lead_conn is not None:
                    self._lead_conn.close()
                self._lead_conn, self._leading = None, False
            return self._leading

    def finished_since(self, since: float, limit: int = 10_000) -> list[str]:
        """Ids of tasks finished at or after ``since``, earliest first (the finished index)."""
        with self._reading():
            rows = self._x("SELECT id FROM tasks WHERE finished_at >= %s ORDER BY finished_at, seq "
                           "LIMIT %s", (float(since), int(limit))).fetchall()
        return [r[0] for r in rows]

    def listen(self, on_notice: Callable[[str | None, str], None], stop: threading.Event) -> None:
        """LISTEN on every channel on a connection of its own until ``stop`` is set; after
        each (re)connection ``on_notice(None, "")``: anything may have been missed."""
        alive: float | None = None  # when the last connection was last known to hear all
        backoff = 0.0
        lost = False
        while not stop.is_set():
            try:
                with self._connect() as conn:
                    for channel in CHANNELS:
                        conn.execute(f"LISTEN {channel}".encode())
                    if lost:
                        self.logs.info("listen back", "listening again, on %s", _host(conn))
                    lost, backoff = False, 0.0
                    since = "" if alive is None else repr(alive)
                    # Hearing all from here on, even if this connection dies before its
                    # first poll ends: a reconnection then re-reads from this moment.
                    alive = time.time()
                    on_notice(None, since)
                    while not stop.is_set():
                        checked = time.time()
                        for n in conn.notifies(timeout=0.5):
                            on_notice(n.channel, n.payload)
                        alive = checked  # the generator ends quietly only while connected
            except (psycopg.Error, StoreError) as exc:
                # The database is away (or failing over): try again, backing off.
                backoff = min(RECONNECT_MAX, max(RECONNECT_MIN, backoff * 2))
                if not stop.is_set():
                    self.logs.warning("listen lost", "LISTEN connection lost; reconnecting: %s",
                                      exc if isinstance(exc, StoreError) else self._text(exc))
                lost = True
                stop.wait(backoff)

    def take_tokens(self, name: str, capacity: float, per: float, n: int) -> tuple[int, float]:
        """Take up to ``n`` tokens from the shared bucket ``name``, refilled by the database's
        clock, in one statement (the row lock orders masters taking at once)."""
        if n <= 0:
            return 0, 0.0
        refill = "least(%(cap)s, b.tokens + (excluded.stamp - b.stamp) * %(rate)s)"
        with self.transaction():
            row = self._x(
                "INSERT INTO buckets AS b (name, tokens, stamp, granted) "
                "SELECT %(name)s, %(cap)s - least(%(n)s, floor(%(cap)s)), c.t, "
                "least(%(n)s, floor(%(cap)s))::int "
                "FROM (SELECT extract(epoch FROM clock_timestamp())::float8 AS t) AS c "
                f"ON CONFLICT (name) DO UPDATE SET granted = least(%(n)s, floor({refill}))::int, "
                f"tokens = {refill} - least(%(n)s, floor({refill})), stamp = excluded.stamp "
                "RETURNING granted, tokens",
                {"name": name, "cap": float(capacity), "rate": float(capacity) / float(per),
                 "n": int(n)}).fetchone()
        assert row is not None
        return int(row[0]), float(row[1])

    def enqueue_bounded(self, queue: str, tasks: Sequence[NewTask], maxsize: int, now: float) -> int:
        """Count and insert under the lock of ``queue``'s row (kept with its maxsize): a
        concurrent bounded put to the same queue, through any master, waits for this
        commit, and counts what it added."""
        with self.transaction():
            self._x("INSERT INTO queues (name, maxsize) VALUES (%s, %s) ON CONFLICT (name) "
                    "DO UPDATE SET maxsize = excluded.maxsize", (queue, int(maxsize)))
            return super().enqueue_bounded(queue, tasks, maxsize, now)

