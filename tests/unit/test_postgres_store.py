"""The PostgreSQL store: the whole conformance suite, plus its own promises (schema
migrations, concurrent lessors and completers on separate connections, a lost
connection, bad input, passwords kept out of messages).

Needs the machine's PostgreSQL (see tests/pg.py): skipped without it, failed in CI.
"""

from __future__ import annotations

import os
import random
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conveyor.errors import StoreError
from conveyor.records import FAILED, SUCCEEDED, QueueStats, TaskFilter
from conveyor.store import STORED, open_store
from conveyor.store.conformance import T0, StoreConformance, after, fail, ok, task
from conveyor.store.conformance_attempts import AttemptsConformance
from conveyor.store.conformance_counts import CountsConformance, assert_counts_match
from conveyor.store.dsn import redact, scrub
from tests.pg import fresh_postgres_dsn, postgres_dsn  # noqa: F401 (fixtures)

ROOT = Path(__file__).resolve().parents[2]

psycopg = pytest.importorskip("psycopg") if os.environ.get("CI") != "true" else __import__("psycopg")
from conveyor.store.postgres import PostgresStore  # noqa: E402 (after the psycopg check)
from conveyor.store.postgres_schema import (  # noqa: E402
    MIGRATION_LOCK,
    MIGRATIONS,
    SCHEMA_VERSION,
    VERSION_TABLE,
)


class TestPostgresStore(StoreConformance, CountsConformance, AttemptsConformance):
    @pytest.fixture
    def store(self, postgres_dsn: str) -> Iterator[PostgresStore]:  # noqa: F811
        s = PostgresStore(postgres_dsn)
        try:
            s.clear()
            yield s
        finally:
            s.close()


def _version(dsn: str) -> list[int]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return [r[0] for r in conn.execute(f"SELECT version FROM {VERSION_TABLE}")]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- schema migrations ------------------------------------------------------------------


def test_a_new_database_is_migrated_once_and_reopened_as_is(fresh_postgres_dsn: str) -> None:  # noqa: F811
    s = PostgresStore(fresh_postgres_dsn)
    s.enqueue([task("a")], T0)
    s.close()
    assert _version(fresh_postgres_dsn) == [SCHEMA_VERSION]
    s = PostgresStore(fresh_postgres_dsn)  # reopening keeps the data and changes no version
    try:
        assert s.get("a") is not None
    finally:
        s.close()
    assert _version(fresh_postgres_dsn) == [SCHEMA_VERSION]


def test_a_newer_schema_version_is_refused_naming_both(fresh_postgres_dsn: str) -> None:  # noqa: F811
    PostgresStore(fresh_postgres_dsn).close()
    with psycopg.connect(fresh_postgres_dsn, autocommit=True) as conn:
        conn.execute(f"UPDATE {VERSION_TABLE} SET version = {SCHEMA_VERSION + 5}")
    with pytest.raises(StoreError) as err:
        PostgresStore(fresh_postgres_dsn)
    assert f"schema version {SCHEMA_VERSION + 5}" in str(err.value)
    assert f"this conveyor's {SCHEMA_VERSION}" in str(err.value)
    assert _version(fresh_postgres_dsn) == [SCHEMA_VERSION + 5]  # left as it was


def test_a_foreign_tasks_table_is_refused(fresh_postgres_dsn: str) -> None:  # noqa: F811
    with psycopg.connect(fresh_postgres_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE tasks (x int)")
    with pytest.raises(StoreError, match="not a conveyor database"):
        PostgresStore(fresh_postgres_dsn)


_OPEN = ("import sys; from conveyor.store.postgres import PostgresStore; "
         "PostgresStore(sys.argv[1]).close(); print('opened')")


def test_two_processes_migrating_at_once_both_open_one_schema(fresh_postgres_dsn: str) -> None:  # noqa: F811
    """Both masters find version 0, then queue on the migration lock (held here until
    both wait on it): one migrates, the other finds the work done."""
    with psycopg.connect(fresh_postgres_dsn, autocommit=True) as holder:
        holder.execute("BEGIN")
        holder.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
        procs = [subprocess.Popen([sys.executable, "-c", _OPEN, fresh_postgres_dsn], cwd=ROOT,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for _ in range(2)]
        try:
            with psycopg.connect(fresh_postgres_dsn, autocommit=True) as watch:
                for _ in range(600):  # until both wait on the lock (bounded: 30 s)
                    waiting = watch.execute(
                        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' "
                        "AND NOT granted").fetchone()
                    assert waiting is not None
                    if waiting[0] == 2 or any(p.poll() is not None for p in procs):
                        break
                    threading.Event().wait(0.05)
                assert waiting[0] == 2, [p.communicate() for p in procs if p.poll() is not None]
        finally:
            holder.execute("ROLLBACK")  # let them go
            outs = [p.communicate(timeout=60) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err
        assert out.strip() == "opened"
    assert _version(fresh_postgres_dsn) == [SCHEMA_VERSION]


def test_migration_to_2_builds_the_counts_from_the_tasks(fresh_postgres_dsn: str) -> None:  # noqa: F811
    """A version-1 database (tasks, no counts) opened by this conveyor: the counts and
    outcome totals are built from its tasks, and ids compare bytewise from then on."""
    with psycopg.connect(fresh_postgres_dsn, autocommit=True) as conn:
        with conn.transaction(), conn.cursor() as cur:
            MIGRATIONS[0].apply(cur)
            cur.execute(f"UPDATE {VERSION_TABLE} SET version = 1")
            cur.execute("INSERT INTO tasks (id, queue, name, state, created_at, finished_at, "
                        "payload, codec) VALUES ('done', 'q', 'mod.fn', 'succeeded', 1.0, 2.0, "
                        "'\\x00', 'msgpack'), ('next', 'q', NULL, 'ready', 1.0, NULL, "
                        "'\\x00', 'msgpack')")
    s = PostgresStore(fresh_postgres_dsn)
    try:
        assert _version(fresh_postgres_dsn) == [SCHEMA_VERSION]
        assert s.stats() == {"q": QueueStats(ready=1, succeeded=1)}
        assert s.task_counts() == {("q", "mod.fn", SUCCEEDED): 1, ("q", None, "ready"): 1}
        assert s.outcome_totals() == {("q", "mod.fn", SUCCEEDED): 1}
        s.enqueue([task("n-b"), task("n_a"), task("nZ"), task("n_")], T0)
        for prefix, want in (("n-", ["n-b"]), ("n_", ["n_a", "n_"]), ("nZ", ["nZ"])):
            assert [t.id for t in s.list_page(TaskFilter(id_prefix=prefix)).tasks] == want[::-1]
            assert s.count_tasks(TaskFilter(id_prefix=prefix)).n == len(want)
        with s._reading():
            collations = s._x("SELECT table_name, column_name, collation_name "
                              "FROM information_schema.columns WHERE (table_name, column_name) "
                              "IN (('tasks', 'id'), ('deps', 'task_id'), ('deps', 'depends_on'))"
                              ).fetchall()
        assert sorted(c[2] for c in collations) == ["C", "C", "C"]
        assert_counts_match(s)
    finally:
        s.close()


# -- several connections on one database ------------------------------------------------


def test_two_connections_never_lease_one_task_twice(postgres_dsn: str) -> None:  # noqa: F811
    stores = [PostgresStore(postgres_dsn) for _ in range(3)]
    try:
        stores[0].clear()
        stores[0].enqueue([task(f"t{i}") for i in range(600)], T0)
        seen: list[list[str]] = [[] for _ in stores]

        def lessor(i: int) -> None:
            while batch := stores[i].lease("q", 7, f"w{i}", T0, 30):
                seen[i].extend(x.id for x in batch)

        threads = [threading.Thread(target=lessor, args=(i,)) for i in range(len(stores))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        every = [x for part in seen for x in part]
        assert sorted(every) == sorted(f"t{i}" for i in range(600))  # each once, none lost
    finally:
        for s in stores:
            s.close()


def test_concurrent_completes_store_exactly_one_result(postgres_dsn: str) -> None:  # noqa: F811
    stores = [PostgresStore(postgres_dsn) for _ in range(4)]
    try:
        stores[0].clear()
        stores[0].enqueue([task(f"t{i}") for i in range(50)], T0)
        tokens = {x.id: x.token for x in stores[0].lease("q", 50, "w", T0, 30)}
        verdicts: list[list[str]] = [[] for _ in stores]
        start = threading.Barrier(len(stores))

        def completer(i: int) -> None:
            start.wait()
            verdicts[i] = stores[i].complete([ok(f"t{n}", tokens[f"t{n}"], f"from{i}".encode())
                                              for n in range(50)], T0)

        threads = [threading.Thread(target=completer, args=(i,)) for i in range(len(stores))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        for n in range(50):
            stored = [i for i in range(len(stores)) if verdicts[i][n] == STORED]
            assert len(stored) == 1, (n, [v[n] for v in verdicts])
            assert stores[0].results([f"t{n}"])[f"t{n}"].payload == f"from{stored[0]}".encode()
    finally:
        for s in stores:
            s.close()


def test_several_writers_at_once_keep_the_counts_exact(postgres_dsn: str) -> None:  # noqa: F811
    """Four connections (four masters) change tasks of the same queue and names at once,
    so their commits add to the same counts and totals rows: no deadlock, no lost update."""
    stores = [PostgresStore(postgres_dsn) for _ in range(4)]
    errors: list[BaseException] = []
    start = threading.Barrier(len(stores))

    def writer(i: int) -> None:
        s, rng = stores[i], random.Random(i)
        try:
            start.wait()
            for step in range(60):
                with s.transaction():  # one commit with several count changes, as the runner's
                    s.enqueue([task(f"w{i}-{step}-{k}", name=rng.choice(("mod.a", "mod.b")))
                               for k in range(3)], T0)
                    got = s.lease("q", 3, f"w{i}", T0, 30)
                    s.complete([ok(x.id, x.token) if rng.random() < 0.6 else fail(x.id, x.token)
                                for x in got[:2]], T0)
                    for x in got[2:]:
                        s.nack(x.id, x.token, T0, error=b"e")
        except BaseException as exc:  # reported below: a thread's error must fail the test
            errors.append(exc)

    try:
        stores[0].clear()
        threads = [threading.Thread(target=writer, args=(i,)) for i in range(len(stores))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not errors, errors
        assert not any(t.is_alive() for t in threads)
        assert_counts_match(stores[0])
        counts, totals = stores[0].task_counts(), stores[0].outcome_totals()
        assert sum(counts.values()) == len(stores) * 60 * 3
        for outcome in (SUCCEEDED, FAILED):  # nothing was purged: totals equal the counts
            assert sum(n for k, n in totals.items() if k[2] == outcome) == \
                sum(n for k, n in counts.items() if k[2] == outcome) > 0
    finally:
        for s in stores:
            s.close()


def test_bounded_calls_walk_an_index(fresh_postgres_dsn: str) -> None:  # noqa: F811
    """Every statement a listing or a bounded batch sends plans as an index walk that
    stops at its limit: no sequential scan of the tasks, no sort of every match (the
    plans of a filled, analysed database, looked at with EXPLAIN)."""
    s = PostgresStore(fresh_postgres_dsn)
    try:
        with s.transaction():
            s.enqueue([task(f"t{i:06d}", name="mod.a", not_before=T0 + 50 if i % 7 == 0 else 0.0)
                       for i in range(30_000)], T0)
            s.enqueue([task("root")], T0)
            s.enqueue([after(f"w{i:05d}", "root") for i in range(3000)], T0)
        got = s.lease("q", 12_000, "w", T0, 10)
        s.complete([ok(x.id, x.token) for x in got[:8000]], T0 + 1)
        with s._reading():
            s._x("ANALYZE")
        sent: list[tuple[str, Any]] = []
        send = s._x
        s._x = lambda sql, params=None: (sent.append((sql, params)), send(sql, params))[1]  # type: ignore[method-assign]
        calls = {
            "list by state": lambda: s.list_page(TaskFilter(states=("ready",))),
            "list deep": lambda: s.list_page(TaskFilter(), cursor="20000"),
            "list filtered": lambda: s.list_page(TaskFilter(name="mod.a", states=("succeeded",
                                                                                   "ready"))),
            "list by id prefix": lambda: s.list_page(TaskFilter(id_prefix="t0001")),
            "expire": lambda: s.expire_leases(T0 + 20, limit=500),
            "release all": lambda: s.release_all(T0, limit=500),
            "promote": lambda: s.promote_due(T0 + 60, limit=500),
            "purge finished": lambda: s.purge_finished(T0 + 5, limit=500),
            "purge": lambda: s.purge(states=("succeeded", "dead"), queue="q", limit=500),
            "bounded cascade": lambda: (setattr(s, "cascade_limit", 100),
                                        s.cancel("root", T0, b"x")),
        }
        for what, call in calls.items():
            sent.clear()
            with pytest.raises(RuntimeError):
                with s.transaction():  # looked at, then undone: each call sees the same data
                    call()
                    raise RuntimeError("undo")
            assert sent, what
            for sql, params in sent:
                with s._reading():
                    plan = "\n".join(r[0] for r in send("EXPLAIN " + sql, params))
                assert "Seq Scan on tasks" not in plan and "Sort" not in plan, (what, sql, plan)
    finally:
        s.close()


def test_a_lost_connection_fails_one_call_and_the_next_reconnects(postgres_dsn: str) -> None:  # noqa: F811
    s = PostgresStore(postgres_dsn)
    try:
        s.clear()
        s.enqueue([task("a")], T0)
        pid = s.conn.info.backend_pid
        with psycopg.connect(postgres_dsn, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        with pytest.raises(StoreError, match="failed"):
            s.enqueue([task("b")], T0)  # not committed, so not acknowledged
        assert s.enqueue([task("c")], T0) == [True]
        assert s.conn.info.backend_pid != pid
        assert s.get("b") is None and s.get("a") is not None
    finally:
        s.close()


# -- bad input ---------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs", [{"limit": 0}, {"limit": 10**6}, {"cursor": "1; DROP"},
                                    {"flt": TaskFilter(states=("nope",))},
                                    {"flt": TaskFilter(id_prefix="x" * 201)}])
def test_bad_page_arguments_are_refused_before_any_statement(postgres_dsn: str,  # noqa: F811
                                                             kwargs: dict[str, Any]) -> None:
    s = PostgresStore(postgres_dsn)
    sent: list[str] = []
    send = s._x
    s._x = lambda sql, params=None: (sent.append(sql), send(sql, params))[1]  # type: ignore[method-assign]
    try:
        flt = kwargs.pop("flt", TaskFilter())
        with pytest.raises(ValueError):
            s.list_page(flt, **kwargs)
        with pytest.raises(ValueError):
            s.requeue_matching(flt, T0, **kwargs)
        if "cursor" not in kwargs and "limit" not in kwargs:
            with pytest.raises(ValueError):
                s.count_tasks(flt)
        assert sent == []
    finally:
        s.close()


def test_an_unreachable_database_is_one_line_without_the_password() -> None:
    dsn = f"postgresql://postgres:s3cr%40t@127.0.0.1:{_closed_port()}/nowhere"
    with pytest.raises(StoreError) as err:
        PostgresStore(dsn, connect_timeout=3)
    text = str(err.value)
    assert "\n" not in text and "cannot open store at" in text
    assert "s3cr" not in text and "***" in text


def test_redact_hides_passwords_in_every_spelling() -> None:
    assert redact("postgresql://u:pw@h:5432/db") == "postgresql://u:***@h:5432/db"
    assert redact("postgres://u@h/db") == "postgres://u@h/db"
    assert redact("postgresql://u:p:w@h/db?sslmode=require") == "postgresql://u:***@h/db?sslmode=require"
    assert redact("postgresql://u@h/db?password=pw&x=1") == "postgresql://u@h/db?password=***&x=1"
    assert redact("host=h password='a b' user=u") == "host=h password=*** user=u"
    assert "pw" not in scrub('FATAL: password "pw" wrong', "postgresql://u:pw@h/db")
    assert "p@ss" not in scrub("saw p@ss", "postgresql://u:p%40ss@h/db")


def test_open_store_picks_postgres_and_conveyor_store_loads_no_psycopg(postgres_dsn: str) -> None:  # noqa: F811
    s = open_store(postgres_dsn)
    try:
        assert isinstance(s, PostgresStore) and s.blocking_io
    finally:
        s.close()
    code = ("import sys, conveyor.store, conveyor.store.base, conveyor.cli; "
            "conveyor.store.open_store(None); print('psycopg' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         check=True, timeout=60)
    assert out.stdout.strip() == "False"


def test_a_database_error_inside_a_nested_block_undoes_only_that_block(postgres_dsn: str) -> None:  # noqa: F811
    """The savepoint is rolled back lazily (before the next statement): the aborted
    transaction recovers and the outer block's work commits."""
    s = PostgresStore(postgres_dsn)
    try:
        s.clear()
        with s.transaction():
            s.enqueue([task("a")], T0)
            with pytest.raises(StoreError, match="division by zero"):
                with s.transaction():
                    s.enqueue([task("b")], T0)
                    with s._reading():
                        s._x("SELECT 1 / 0")
            s.enqueue([task("c")], T0)
        assert [s.get(x) is not None for x in "abc"] == [True, False, True]
        with s.transaction():  # a block that runs no statement commits nothing and costs nothing
            pass
        assert s.conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    finally:
        s.close()


def test_statements_are_planned_again_as_the_table_grows(fresh_postgres_dsn):  # noqa: F811
    """A generic plan cached while the table held a few rows (a seq scan of a few pages)
    would be kept as it grows to millions: the store's connection discards its plans after
    REPLAN_FIRST inserts and at each doubling after (measured: one master's 20,000-task run
    went from 3,700 to 8,700 tasks/s, its complete no longer a seq scan of the table)."""
    from conveyor.store import postgres as pg

    store = PostgresStore(fresh_postgres_dsn)
    sent: list[bytes] = []
    real = store.conn.execute

    def execute(query, params=None, **kw):  # type: ignore[no-untyped-def]
        sent.append(bytes(query) if isinstance(query, (bytes, bytearray)) else str(query).encode())
        return real(query, params, **kw)

    store.conn.execute = execute  # type: ignore[method-assign]
    try:
        n = 0
        for batch in (10, pg.REPLAN_FIRST - 10, 5, pg.REPLAN_FIRST, 5):
            store.enqueue([task(f"g{n + i}") for i in range(batch)], T0)
            n += batch
            with store.transaction():  # the next transaction carries the DISCARD, if due
                store.get("g0")
        assert sent.count(b"DISCARD PLANS") == 2  # after 1,000 inserts and after 2,000
    finally:
        store.close()
