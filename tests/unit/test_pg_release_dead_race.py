"""A dead master's leases handed back by two masters at once (found by the kill soak).

The leader's sweep and a starting master's ``join`` both call ``release_dead``. If
the rows one of them picked were handed back and leased again by a live master
while it waited for their row locks, it must not hand back those new, live leases:
the task would be leased twice and run twice (the soak saw 194 tasks run twice,
the same 213 leases handed back by the leader and then by a master starting 0.56 s
later). Here the race is made deterministic: a transaction holds the dead master's
rows while ``release_dead`` waits for them, then moves them to a live master's lease.

Needs the machine's PostgreSQL (tests/pg.py).
"""

from __future__ import annotations

import os
import threading
import time

import pytest

from conveyor.records import LEASED
from conveyor.store.conformance import T0, task, task_info
from tests.pg import fresh_postgres_dsn  # noqa: F401 (a fixture)

psycopg = pytest.importorskip("psycopg") if os.environ.get("CI") != "true" else __import__("psycopg")
from conveyor.store.postgres import PostgresStore  # noqa: E402 (after the psycopg check)

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize("limit", [None, 100])
def test_leases_taken_again_by_a_live_master_are_not_handed_back(fresh_postgres_dsn, limit):  # noqa: F811
    dead, live, sweeper = (PostgresStore(fresh_postgres_dsn) for _ in range(3))
    ids = [f"t{i}" for i in range(5)]
    try:
        dead.heartbeat_master("dead", "127.0.0.1:1", {}, T0)
        dead.enqueue([task(tid) for tid in ids], T0)
        assert len(dead.lease("q", 10, "session-of-dead", T0, 3600)) == 5  # leases naming "dead"
        live.heartbeat_master("live", "127.0.0.1:2", {}, T0)
        with psycopg.connect(fresh_postgres_dsn, autocommit=True) as admin:
            admin.execute("UPDATE masters SET heartbeat_at = clock_timestamp() - interval '1 hour' "
                          "WHERE id = 'dead'")  # silent for an hour; "live" beat just now
        with psycopg.connect(fresh_postgres_dsn) as holder:  # a transaction, as another master's
            holder.execute("SELECT set_config('conveyor.master', 'live', false)")
            holder.execute("SELECT seq FROM tasks WHERE state = 'leased' FOR UPDATE").fetchall()
            released: list[int] = []
            sweep = threading.Thread(target=lambda: released.append(
                sweeper.release_dead(60.0, T0 + 10, limit=limit)))
            sweep.start()
            _wait_for_a_lock_wait(fresh_postgres_dsn)
            # Handed back and leased again by the live master, all while the sweep waits.
            holder.execute("UPDATE tasks SET lease_owner = 'session-of-live' WHERE state = 'leased'")
            holder.commit()
            sweep.join(30)
        assert not sweep.is_alive()
        assert released == [0], "leases of a live master were handed back"
        assert all(task_info(live, tid).state == LEASED for tid in ids)
    finally:
        for s in (dead, live, sweeper):
            s.close()


def _wait_for_a_lock_wait(dsn: str, timeout: float = 20.0) -> None:
    """Until a session of this database waits for a row lock (the sweep, blocked)."""
    deadline = time.monotonic() + timeout
    with psycopg.connect(dsn, autocommit=True) as conn:
        while time.monotonic() < deadline:
            n = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                             "AND wait_event_type = 'Lock'").fetchone()[0]
            if n:
                return
            time.sleep(0.02)
    raise AssertionError("the sweep never waited for the rows")
