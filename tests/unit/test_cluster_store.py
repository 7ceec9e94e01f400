"""Several masters on one store: the cluster conformance suite on every store, and the
PostgreSQL store's cross-master promises (a dead master's leases, the leader lock and its
takeover, announcements made only by commits, within the payload limit).

The PostgreSQL tests need the machine's PostgreSQL (tests/pg.py): skipped without it,
failed in CI.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator

import pytest

from conveyor.records import LEASED, READY
from conveyor.store import MemoryStore, SQLiteStore
from conveyor.store.base import CANCEL_CHANNEL, DUE_CHANNEL, RESULTS_CHANNEL, WORK_CHANNEL
from conveyor.store.conformance import T0, lease_one, ok, task, task_info
from conveyor.store.conformance_cluster import ClusterConformance
from tests.pg import fresh_postgres_dsn, postgres_dsn  # noqa: F401 (fixtures)

from ..waiting import wait_until


class TestMemoryCluster(ClusterConformance):
    @pytest.fixture
    def store(self) -> Iterator[MemoryStore]:
        s = MemoryStore()
        yield s
        s.close()


class TestSQLiteCluster(ClusterConformance):
    @pytest.fixture
    def store(self, tmp_path) -> Iterator[SQLiteStore]:
        s = SQLiteStore(tmp_path / "data")
        yield s
        s.close()


def _postgres():  # the module, or skip (fail in CI)
    if os.environ.get("CI") == "true":
        return __import__("conveyor.store.postgres", fromlist=["PostgresStore"])
    pytest.importorskip("psycopg")
    return __import__("conveyor.store.postgres", fromlist=["PostgresStore"])


class TestPostgresCluster(ClusterConformance):
    @pytest.fixture
    def store(self, postgres_dsn: str) -> Iterator[object]:  # noqa: F811
        s = _postgres().PostgresStore(postgres_dsn)
        s.clear()
        yield s
        s.close()


@pytest.fixture
def two(fresh_postgres_dsn: str) -> Iterator[tuple[object, object, str]]:  # noqa: F811
    """Two masters' stores on one fresh database, registered as "A" and "B"."""
    mod = _postgres()
    a, b = mod.PostgresStore(fresh_postgres_dsn), mod.PostgresStore(fresh_postgres_dsn)
    a.heartbeat_master("A", "a:1", {}, T0)
    b.heartbeat_master("B", "b:1", {}, T0)
    try:
        yield a, b, fresh_postgres_dsn
    finally:
        a.close()
        b.close()


def _age(dsn: str, master: str, seconds: float) -> None:
    """Make ``master``'s last heartbeat ``seconds`` old (instead of waiting for it)."""
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("UPDATE masters SET heartbeat_at = clock_timestamp() - make_interval(secs => %s) "
                     "WHERE id = %s", (seconds, master))


def _lease_masters(dsn: str) -> dict[str, str | None]:
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        return dict(conn.execute("SELECT id, lease_master FROM tasks").fetchall())


def test_leases_name_their_master_and_only_dead_masters_lose_them(two) -> None:
    a, b, dsn = two
    a.enqueue([task("a1"), task("a2"), task("b1")], T0)
    xa = lease_one(a, "a1", owner="wa")
    lease_one(a, "a2", owner="wa")
    lease_one(b, "b1", owner="wb")
    assert _lease_masters(dsn) == {"a1": "A", "a2": "A", "b1": "B"}
    assert b.release_dead(10.0, T0) == 0  # A is alive: B's start or sweep leaves A's leases
    _age(dsn, "A", 60)
    assert b.release_dead(10.0, T0, limit=1) == 1  # bounded: one per call
    assert b.release_dead(10.0, T0, limit=1) == 1
    assert b.release_dead(10.0, T0, limit=1) == 0
    assert task_info(b, "a1").state == READY and task_info(b, "a2").state == READY
    assert task_info(b, "b1").state == LEASED
    assert [m["id"] for m in b.masters()] == ["B"]  # A forgotten once it held nothing
    assert a.complete([ok("a1", xa.token)], T0) == ["stored"]  # a late success still counts
    assert _lease_masters(dsn)["a1"] is None


def test_a_lease_taken_without_a_master_is_released_as_dead(two) -> None:
    a, b, dsn = two
    mod = _postgres()
    tool = mod.PostgresStore(dsn)  # a connection that is no master (a script, a tool)
    try:
        tool.enqueue([task("t")], T0)
        lease_one(tool, "t", owner="x")
        assert _lease_masters(dsn) == {"t": None}
        assert a.release_dead(10.0, T0) == 1
    finally:
        tool.close()


def test_one_leader_and_takeover_when_its_connection_ends(two) -> None:
    a, b, _ = two
    assert a.try_lead() is True
    assert b.try_lead() is False
    assert a.try_lead() is True and b.try_lead() is False
    a.close()  # the leader's connections end (as when its process dies)
    assert wait_until(b.try_lead, timeout=30)


def _listening(store) -> tuple[list[tuple[str, list[str] | None]], threading.Event, threading.Thread]:
    heard: list[tuple[str, list[str] | None]] = []
    ready = threading.Event()
    stop = threading.Event()

    def on_notice(channel: str | None, payload: str) -> None:
        if channel is None:
            ready.set()
        else:
            sender, items = json.loads(payload)
            heard.append((channel, items))

    t = threading.Thread(target=store.listen, args=(on_notice, stop), daemon=True)
    t.start()
    assert ready.wait(30)
    return heard, stop, t


def test_commits_announce_work_results_and_cancels_rollbacks_nothing(two) -> None:
    a, b, _ = two
    heard, stop, t = _listening(b)
    try:
        with pytest.raises(RuntimeError), a.transaction():
            a.enqueue([task("gone", "q0")], T0)
            raise RuntimeError("rolled back")
        with a.transaction():
            a.enqueue([task("x", "q1"), task("y", "q1"), task("z", "q2")], T0)
            a.enqueue([task("later", "q3", not_before=T0 + 100)], T0)  # delayed: no work yet
        xs = a.lease("q1", 2, "w", T0, 30)
        a.complete([ok(xs[0].id, xs[0].token)], T0)
        assert a.cancel(xs[1].id, T0, b"cancelled") == (LEASED, "w")
        assert wait_until(lambda: len(heard) >= 5, timeout=30)
        time.sleep(0.2)  # nothing else may come: the rolled-back enqueue announced nothing
        # One notification per channel for the commit of the three enqueues.
        assert sorted(heard[:2]) == [(DUE_CHANNEL, ["q3"]), (WORK_CHANNEL, ["q1", "q2"])]
        assert (RESULTS_CHANNEL, [xs[0].id]) in heard
        assert (RESULTS_CHANNEL, [xs[1].id]) in heard
        assert (CANCEL_CHANNEL, [f"w {xs[1].id}"]) in heard
        assert len(heard) == 5
    finally:
        stop.set()
        t.join(30)


def test_announcements_stay_under_the_payload_limit(two) -> None:
    a, b, _ = two
    heard, stop, t = _listening(b)
    try:
        n = 1000  # ids of 40 bytes: about 45 kB of ids in one commit
        ids = [f"{i:040d}" for i in range(n)]
        a.enqueue([task(f"q{i:04d}", f"queue-with-a-long-name-{i:04d}") for i in range(400)],
                  T0)  # 400 queues of 28 bytes in one commit: too many to name
        a.enqueue([task(i, "big") for i in ids], T0)
        got = a.lease("big", n, "w", T0, 30)
        assert a.complete([ok(x.id, x.token) for x in got], T0) == ["stored"] * n
        got: set[str] = set()

        def all_heard() -> bool:
            got.update(i for ch, items in heard if ch == RESULTS_CHANNEL for i in items or ())
            return len(got) == n

        assert wait_until(all_heard, timeout=30)
        assert (WORK_CHANNEL, None) in heard  # "re-read every queue" instead of 2000 names
        assert sum(1 for ch, _ in heard if ch == RESULTS_CHANNEL) > 1  # split, none too big
    finally:
        stop.set()
        t.join(30)


def test_masters_share_one_rate_bucket(two) -> None:
    a, b, _ = two
    assert a.take_tokens("f 5/3600", 5, 3600, 3) == (3, 2.0)
    taken, left = b.take_tokens("f 5/3600", 5, 3600, 5)
    assert taken == 2 and left < 1


def test_bounded_puts_through_two_masters_never_pass_maxsize(two) -> None:
    a, b, _ = two
    accepted = [0, 0]

    def put(i: int, store) -> None:
        for k in range(40):
            accepted[i] += store.enqueue_bounded("bounded", [task(f"{i}-{k}", "bounded")], 25, T0)

    threads = [threading.Thread(target=put, args=(i, s)) for i, s in enumerate((a, b))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sum(accepted) == 25
    assert a.pending_counts("bounded") == (25, 0, 0)


def test_adopting_a_lease_moves_it_to_the_adopting_master(two) -> None:
    # What a worker that reconnects elsewhere does: the new master re-owns its held lease
    # (id and token) for the worker's new session; the trigger names the new master.
    a, b, dsn = two
    a.enqueue([task("t")], T0)
    x = lease_one(a, "t", owner="old-session")
    assert b.adopt([(x.id, x.token)], "new-session", T0, 30.0) == [x.id]
    assert _lease_masters(dsn) == {"t": "B"}
    _age(dsn, "A", 60)
    assert b.release_dead(10.0, T0) == 0  # A died, but the lease is B's now


def test_a_lost_listening_connection_says_since_when_to_re_read(two) -> None:
    import psycopg

    a, b, dsn = two
    restarts: list[str] = []
    stop = threading.Event()

    def on_notice(channel: str | None, payload: str) -> None:
        if channel is None:
            restarts.append(payload)

    t = threading.Thread(target=b.listen, args=(on_notice, stop), daemon=True)
    t.start()
    try:
        assert wait_until(lambda: restarts == [""], timeout=30)
        time.sleep(0.7)  # (at least one quiet poll, so the connection is known to have heard all)
        with psycopg.connect(dsn, autocommit=True) as conn:
            assert wait_until(lambda: conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = "
                "current_database() AND query LIKE 'LISTEN%%'").fetchall(), timeout=30)
        now = time.time()
        a.enqueue([task("done-meanwhile")], now)
        x = lease_one(a, "done-meanwhile", now=now)
        a.complete([ok(x.id, x.token)], now)
        assert wait_until(lambda: len(restarts) == 2, timeout=30)
        since = float(restarts[1])
        assert since <= now
        assert "done-meanwhile" in b.finished_since(since - 5.0)
        assert "done-meanwhile" not in b.finished_since(now + 60)
    finally:
        stop.set()
        t.join(30)
