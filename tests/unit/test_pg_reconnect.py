"""The PostgreSQL store riding out lost connections: the store's own (backoff while the
database is away, one line about it), the LISTEN connection's (listening again, with
the marker that makes the master re-read what it may have missed) and the leader lock's
(taken again).

Needs the machine's PostgreSQL (see tests/pg.py): skipped without it, failed in CI.
"""

from __future__ import annotations

import logging
import os
import threading

import pytest

from conveyor.errors import StoreError
from conveyor.store.conformance import T0, task
from tests.pg import fresh_postgres_dsn  # noqa: F401 (a fixture)

from ..waiting import wait_for, wait_until

psycopg = pytest.importorskip("psycopg") if os.environ.get("CI") != "true" else __import__("psycopg")
from conveyor.store.postgres import PostgresStore  # noqa: E402 (after the psycopg check)


def _terminate(dsn: str, pid: int) -> None:
    with psycopg.connect(dsn, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))


def test_reconnects_back_off_while_the_database_is_away_and_are_logged_once(
        fresh_postgres_dsn: str, monkeypatch: pytest.MonkeyPatch,  # noqa: F811
        caplog: pytest.LogCaptureFixture) -> None:
    s = PostgresStore(fresh_postgres_dsn)
    try:
        s.enqueue([task("a")], T0)
        _terminate(fresh_postgres_dsn, s.conn.info.backend_pid)
        real = s._connect
        tries: list[int] = []

        def away() -> psycopg.Connection:
            tries.append(1)
            raise StoreError(f"cannot open store at {s.where}: connection refused")

        monkeypatch.setattr(s, "_connect", away)
        caplog.set_level(logging.INFO, logger="conveyor.store")
        calls = 0
        for i in range(200):  # a burst of requests while the database is away
            with pytest.raises(StoreError):
                s.enqueue([task(f"x{i}")], T0)
            calls += 1
        assert 1 <= len(tries) < calls  # the backoff spares the database most tries
        monkeypatch.setattr(s, "_connect", real)
        # Back: a call after the pause reconnects and commits.
        assert wait_until(lambda: _enqueued(s, "b"), timeout=30)
        assert s.get("a") is not None and s.get("x0") is None  # a failed call stored nothing
        text = caplog.text
        assert text.count("lost the connection to the store") == 1
        assert text.count("store connection back after") == 1
    finally:
        s.close()


def _enqueued(s: PostgresStore, tid: str) -> bool:
    try:
        return s.enqueue([task(tid)], T0) == [True]
    except StoreError:
        return False


def test_the_listen_connection_comes_back_and_asks_for_a_reread(fresh_postgres_dsn: str) -> None:  # noqa: F811
    s = PostgresStore(fresh_postgres_dsn)
    heard: list[tuple[str | None, str]] = []
    stop = threading.Event()
    listener = threading.Thread(target=s.listen, args=(lambda c, p: heard.append((c, p)), stop),
                                daemon=True)
    listener.start()
    try:
        wait_for(lambda: heard, 30, "listening to start")
        assert heard[0] == (None, "")  # the first start: nothing was missed before it

        def listening() -> list[int]:
            with psycopg.connect(fresh_postgres_dsn, autocommit=True) as conn:
                return [r[0] for r in conn.execute(
                    "SELECT pid FROM pg_stat_activity WHERE application_name = 'conveyor' "
                    "AND datname = current_database() AND query LIKE 'LISTEN %'")]

        first = wait_for(listening, 30, "the LISTEN connection")
        _terminate(fresh_postgres_dsn, first[0])
        wait_for(lambda: len(heard) >= 2, 30, "listening again")
        channel, since = heard[1]
        assert channel is None and float(since) > 0  # re-read from when it last heard all
        assert wait_until(lambda: (p := listening()) and p != first, timeout=30)
    finally:
        stop.set()
        listener.join(10)
        s.close()
    assert not listener.is_alive()


def test_the_leader_lock_is_taken_again_after_its_connection_is_lost(fresh_postgres_dsn: str) -> None:  # noqa: F811
    s = PostgresStore(fresh_postgres_dsn)
    try:
        assert s.try_lead()
        assert s._lead_conn is not None
        old = s._lead_conn.info.backend_pid
        _terminate(fresh_postgres_dsn, old)
        # The loss is seen at the next check, and the lock (freed by the server) retaken.
        assert wait_until(s.try_lead, timeout=30)
        with psycopg.connect(fresh_postgres_dsn, autocommit=True) as conn:
            held = conn.execute(
                "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted AND database = "
                "(SELECT oid FROM pg_database WHERE datname = current_database())").fetchall()
        assert held == [(s._lead_conn.info.backend_pid,)] and held[0][0] != old
    finally:
        s.close()
