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
