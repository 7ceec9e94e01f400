"""master/cluster.py without a database: a master's clock follows its store's, measured
at each heartbeat, and a shared rate limit keeps what the bucket grants and puts the
rest back delayed."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from conveyor.master.cluster import Membership, shared_rate_limit
from conveyor.master.context import Context, Limits
from conveyor.master.runner import StoreRunner
from conveyor.records import DELAYED, LEASED, NewTask
from conveyor.store import MemoryStore


class SkewedStore(MemoryStore):
    """A store whose clock runs ``skew`` seconds ahead of this machine's."""

    def __init__(self, skew: float, wall: list[float]) -> None:
        super().__init__()
        self.skew, self.wall = skew, wall
        self.now_seen: list[float] = []

    def heartbeat_master(self, master_id: str, address: str, info: Mapping[str, Any],
                         now: float) -> float | None:
        self.now_seen.append(now)
        return self.wall[0] + self.skew


def test_the_master_clock_follows_the_store_clock() -> None:
    wall = [1_000.0]  # this machine's clock, driven by the test
    store = SkewedStore(250.0, wall)

    async def main() -> None:
        ctx = Context(store, Limits(60.0, 15.0, 3600.0, False), clock=lambda: wall[0])
        ctx.bind_runner(StoreRunner(store, asyncio.get_running_loop(), inline=True))
        membership = Membership(ctx, address=lambda: "127.0.0.1:7700")
        assert ctx.clock() == 1_000.0  # before any heartbeat: this machine's
        await membership.heartbeat()
        assert abs(ctx.clock() - 1_250.0) < 1e-6
        wall[0] += 10
        await membership.heartbeat()
        assert abs(ctx.clock() - 1_260.0) < 1e-6
        assert store.now_seen[-1] == ctx.clock()  # what it writes is on the store's clock

    asyncio.run(main())


def test_a_shared_rate_limit_keeps_the_granted_and_delays_the_rest() -> None:
    store = MemoryStore()
    store.enqueue([NewTask(f"t{i}", "q", "f", b"", "msgpack", 0, 0.0, {"rate_limit": "2/h"})
                   for i in range(5)] + [NewTask("free", "q", "g", b"", "msgpack", 0, 0.0, {})],
                  1_000.0)
    leases = store.lease("q", 10, "w", 1_000.0, 60)
    kept = shared_rate_limit(store, leases, 1_000.0)
    assert [x.id for x in kept] == ["t0", "t1", "free"]  # lease order kept
    states = {i: store.get(i).state for i in ("t0", "t1", "t2", "t3", "t4", "free")}
    assert states == {"t0": LEASED, "t1": LEASED, "t2": DELAYED, "t3": DELAYED, "t4": DELAYED,
                      "free": LEASED}
    due = sorted(store.get(i).not_before for i in ("t2", "t3", "t4"))
    assert due[0] > 1_000.0 and due[0] < due[1] < due[2]  # one token after another
