"""Conformance tests of the store methods for several masters on one store.

Every store implements them: a shared store (PostgreSQL) for real, the others
(memory, SQLite: one master per store) as their single-master versions, where
the one master is alive, leads, and has no peers. What both must promise is
tested here; a shared store's cross-master behaviour (a dead master's leases,
leadership takeover, announcements) has tests of its own. Mixed into a store's
test class (see :class:`~conveyor.store.conformance.StoreConformance` for the
``store`` fixture); importing this module needs pytest.
"""

from __future__ import annotations

import threading

from conveyor.records import LEASED, READY
from conveyor.store.base import Store
from conveyor.store.conformance import T0, lease_one, ok, task, task_info


class ClusterConformance:
    """Mixin: membership, dead-master release, leadership and listening."""

    def test_a_live_master_keeps_its_leases(self, store: Store) -> None:
        store.heartbeat_master("m1", "127.0.0.1:7700", {"pid": 1}, T0)
        store.enqueue([task("a"), task("b")], T0)
        x = lease_one(store, "a")
        assert store.release_dead(30.0, T0) == 0
        assert store.release_dead(30.0, T0, limit=10) == 0
        assert task_info(store, "a").state == LEASED
        assert task_info(store, "b").state == READY
        assert store.complete([ok("a", x.token)], T0 + 1) == ["stored"]

    def test_heartbeats_refresh_and_list_the_master(self, store: Store) -> None:
        store.heartbeat_master("m1", "127.0.0.1:7700", {"pid": 1}, T0)
        store.heartbeat_master("m1", "127.0.0.1:7701", {"pid": 1, "clients": 2}, T0 + 1)
        masters = store.masters()
        if not store.shared:
            assert masters == []  # one master per store: status shows it from memory
            return
        mine = [m for m in masters if m["id"] == "m1"]
        assert len(mine) == 1
        assert mine[0]["address"] == "127.0.0.1:7701"
        assert mine[0]["info"] == {"pid": 1, "clients": 2}
        assert 0 <= mine[0]["heartbeat_age"] < 30

    def test_leadership_is_kept_by_its_holder(self, store: Store) -> None:
        assert store.try_lead() is True
        assert store.try_lead() is True  # asking again keeps it (no second lock)

    def test_listen_returns_once_stopped(self, store: Store) -> None:
        heard: list[tuple[str | None, str]] = []
        stop = threading.Event()
        t = threading.Thread(target=store.listen, args=(lambda c, p: heard.append((c, p)), stop))
        t.start()
        stop.set()
        t.join(30)
        assert not t.is_alive()
        assert all(channel is None or isinstance(payload, str) for channel, payload in heard)

    def test_a_rate_bucket_gives_its_capacity_then_runs_dry(self, store: Store) -> None:
        taken, left = store.take_tokens("mod.fn 5/3600", 5, 3600, 8)
        assert taken == 5 and 0 <= left < 1
        assert store.take_tokens("mod.fn 5/3600", 5, 3600, 1)[0] == 0  # 5 an hour: none yet
        assert store.take_tokens("other 2/3600", 2, 3600, 1) == (1, 1.0)  # buckets are apart

    def test_a_bounded_enqueue_stops_at_maxsize(self, store: Store) -> None:
        assert store.enqueue_bounded("bq", [task(f"t{i}", "bq") for i in range(5)], 3, T0) == 3
        assert store.enqueue_bounded("bq", [task("t9", "bq")], 3, T0) == 0
        assert store.pending_counts("bq") == (3, 0, 0)
        lease_one(store, "t0", "bq")  # leased items no longer count against maxsize
        assert store.enqueue_bounded("bq", [task("t9", "bq")], 3, T0) == 1
        assert task_info(store, "t9").state == READY

    def test_finished_since_lists_what_a_master_may_have_missed(self, store: Store) -> None:
        store.enqueue([task("early"), task("late"), task("open")], T0)
        for tid, when in (("early", T0 + 1), ("late", T0 + 5)):
            x = lease_one(store, tid, now=when)
            store.complete([ok(tid, x.token)], when)
        found = store.finished_since(T0 + 2)
        if store.shared:
            assert found == ["late"]
            assert store.finished_since(T0, limit=1) == ["early"]
        else:
            assert found == []  # one master per store: it missed nothing
