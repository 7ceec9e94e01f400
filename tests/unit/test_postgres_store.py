"""The PostgreSQL store: the whole conformance suite, plus its own promises (schema
migrations, concurrent lessors and completers on separate connections, a lost
connection, bad input, passwords kept out of messages).

Needs the machine's PostgreSQL (see tests/pg.py): skipped without it, failed in CI.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from conveyor.errors import StoreError
from conveyor.store import STORED, open_store
from conveyor.store.conformance import T0, StoreConformance, ok, task
from conveyor.store.conformance_counts import CountsConformance
from conveyor.store.dsn import redact, scrub
from tests.pg import fresh_postgres_dsn, postgres_dsn  # noqa: F401 (fixtures)

ROOT = Path(__file__).resolve().parents[2]

psycopg = pytest.importorskip("psycopg") if os.environ.get("CI") != "true" else __import__("psycopg")
from conveyor.store.postgres import PostgresStore  # noqa: E402 (after the psycopg check)
from conveyor.store.postgres_schema import (  # noqa: E402
    MIGRATION_LOCK,
    SCHEMA_VERSION,
    VERSION_TABLE,
)


class TestPostgresStore(StoreConformance, CountsConformance):
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
        stores[0].lease("q", 50, "w", T0, 30)
        verdicts: list[list[str]] = [[] for _ in stores]
        start = threading.Barrier(len(stores))

        def completer(i: int) -> None:
            start.wait()
            verdicts[i] = stores[i].complete([ok(f"t{n}", 1, f"from{i}".encode())
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
