"""The master's store maintenance runs in bounded batches, each its own runner call.

A store spy records every maintenance call with its ``limit``: none may be
unbounded (a limit of None would be one transaction over every matching row,
stalling every other request at depth), and each sweep must still finish the
whole job (several calls). Time is injected, nothing sleeps.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from conveyor import protocol, timing, wire
from conveyor.master import Master, maintenance
from conveyor.records import DEAD, READY, NewTask, TaskFilter
from conveyor.store import MemoryStore

from .test_master_io import KEY, Peer, frame

T0 = 1_800_000_000.0
N = 2 * maintenance.BATCH + 500  # needs three batches


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class MaintenanceSpy(MemoryStore):
    """Records (method, limit) of every maintenance call; a limit of None is a full sweep."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, Any]] = []

    def release_all(self, now: float, *, limit: int | None = None) -> int:
        self.calls.append(("release_all", limit))
        return super().release_all(now, limit=limit)

    def expire_leases(self, now: float, *, limit: int | None = None,
                      workers: Any = None) -> list[str]:
        self.calls.append(("expire_leases", limit))
        return super().expire_leases(now, limit=limit, workers=workers)

    def promote_due(self, now: float, *, limit: int | None = None) -> list[str]:
        self.calls.append(("promote_due", limit))
        return super().promote_due(now, limit=limit)

    def purge_finished(self, before: float, *, limit: int | None = None) -> int:
        self.calls.append(("purge_finished", limit))
        return super().purge_finished(before, limit=limit)

    def purge(self, *, queue: str | None = None, states: Any = (DEAD,), limit: int | None = None) -> int:
        self.calls.append(("purge", limit))
        return super().purge(queue=queue, states=states, limit=limit)

    def settle_pending(self, now: float, *, limit: int = 1000) -> bool:
        self.calls.append(("settle_pending", limit))
        return super().settle_pending(now, limit=limit)

    def requeue(self, now: float, *, ids: Any = (), queue: str | None = None, states: Any = (DEAD,)) -> list[str]:
        # A requeue by queue alone is a sweep of the queue; by ids it is bounded by the ids.
        self.calls.append(("requeue", len(ids) if ids else None))
        return super().requeue(now, ids=ids, queue=queue, states=states)

    def made(self, name: str) -> list[Any]:
        return [limit for method, limit in self.calls if method == name]


def fill(store: MemoryStore, n: int = N, **kw: Any) -> list[str]:
    ids = [f"{i:032x}" for i in range(1, n + 1)]
    store.enqueue([NewTask(tid, "q", "mod:fn", b"\x90", **kw) for tid in ids], T0)
    return ids


def run(store: MemoryStore, clock: Clock, body: Callable[[Master], Awaitable[None]], **kw: Any) -> None:
    async def main() -> None:
        m = Master(store, authkey=KEY, port=0, clock=clock, monotonic=clock, heartbeat_timeout=1e9, **kw)
        await m.start()
        try:
            await body(m)
        finally:
            await m.close()

    asyncio.run(main())


def bounded(limits: list[Any]) -> bool:
    return all(limit is not None and 1 <= limit <= maintenance.BATCH for limit in limits)


def test_start_up_hands_back_old_leases_in_batches_and_sets_a_cascade_limit():
    store, clock = MaintenanceSpy(), Clock(T0)
    fill(store)
    store.lease("q", N, "old-master-worker", T0, 60.0)

    async def body(m: Master) -> None:
        limits = store.made("release_all")
        assert len(limits) == 3 and bounded(limits)  # 1000 + 1000 + 500
        assert store.stats()["q"].ready == N and store.stats()["q"].leased == 0
        assert store.made("settle_pending")  # cascades cut short before the restart continue
        assert store.cascade_limit == maintenance.CASCADE_LIMIT

    run(store, clock, body)


def test_the_reaper_expires_and_purges_in_batches_and_finishes_the_job():
    store, clock = MaintenanceSpy(), Clock(T0)
    ids = fill(store)

    async def body(m: Master) -> None:
        store.lease("q", N, "nobody", T0, 1.0)
        clock.now = T0 + timing.EXPIRE_EVERY + 10
        await m.reaper.step(clock.now, clock.now)
        assert bounded(store.made("expire_leases")) and len(store.made("expire_leases")) == 3
        assert store.stats()["q"].ready == N
        # Finish them all, then let the result TTL pass: the purge sweeps in batches too.
        for tid in ids:
            store.cancel(tid, clock.now, b"")
        clock.now += 10 * 24 * 3600
        await m.reaper.step(clock.now, clock.now)
        assert bounded(store.made("purge_finished")) and len(store.made("purge_finished")) == 3
        assert "q" not in store.stats() or store.stats()["q"].cancelled == 0
        assert all(limit == maintenance.SETTLE_BATCH for limit in store.made("settle_pending"))

    run(store, clock, body, result_ttl=3600.0)


def test_delayed_tasks_are_promoted_in_batches_until_none_is_due():
    store, clock = MaintenanceSpy(), Clock(T0)
    fill(store, not_before=T0 + 5)
    fill_later = NewTask("f" * 32, "q", "mod:fn", b"\x90", not_before=T0 + 100)
    store.enqueue([fill_later], T0)

    async def body(m: Master) -> None:
        assert store.stats()["q"].delayed == N + 1
        clock.now = T0 + 6
        await m.delay_timer.step(clock.now)
        assert bounded(store.made("promote_due")) and len(store.made("promote_due")) == 3
        assert store.stats()["q"].ready == N and store.stats()["q"].delayed == 1
        assert m.ctx.delays.next_due == T0 + 100  # the one not due yet sets the next look

    run(store, clock, body)


def test_a_clients_purge_and_retry_of_a_whole_queue_run_in_batches():
    store, clock = MaintenanceSpy(), Clock(T0)
    ids = fill(store)
    for lease in store.lease("q", N, "w", T0, 60.0):
        store.nack(lease.id, lease.token, T0, error=b"\x90", dead=True)

    async def body(m: Master) -> None:
        c = Peer(m)
        c.hello()
        c.feed(frame(protocol.RETRY, 2, queue="q", states=[DEAD]))
        (reply,) = c.messages()
        assert reply.op == protocol.OK and sorted(reply.fields["requeued"]) == ids
        assert store.made("requeue") and bounded(store.made("requeue"))  # never by queue alone
        assert store.stats()["q"].ready == N
        for lease in store.lease("q", N, "w", T0, 60.0):
            store.nack(lease.id, lease.token, T0, error=b"\x90", dead=True)
        c.feed(frame(protocol.PURGE, 3, queue="q", states=[DEAD]))
        (reply,) = c.messages()
        assert reply.op == protocol.OK and reply.fields["n"] == N
        assert len(store.made("purge")) == 3 and bounded(store.made("purge"))
        assert store.count_tasks(TaskFilter(queue="q")).n == 0

    run(store, clock, body)


def test_a_purge_names_its_bad_state():
    store, clock = MaintenanceSpy(), Clock(T0)

    async def body(m: Master) -> None:
        c = Peer(m)
        c.hello()
        c.feed(frame(protocol.PURGE, 2, queue="q", states=[READY]))
        (reply,) = c.messages()
        assert reply.op == protocol.ERR and "states" in str(reply.fields)
        assert store.made("purge") == []

    run(store, clock, body)



def test_a_fire_and_forget_submit_leaves_nothing_behind_on_the_master():
    store, clock = MaintenanceSpy(), Clock(T0)

    async def body(m: Master) -> None:
        c = Peer(m)
        c.hello()
        forget = [wire.task_to_wire(NewTask(f"{i:032x}", "q", "mod:fn", b"\x90")) for i in range(1, 501)]
        keep = [wire.task_to_wire(NewTask(f"{i:032x}", "q", "mod:fn", b"\x90")) for i in range(501, 511)]
        c.feed(frame(protocol.SUBMIT, 2, tasks=forget, subscribe=False))
        c.feed(frame(protocol.SUBMIT, 3, tasks=keep))
        replies = c.messages()
        assert [r.fields["new"] for r in replies] == [500, 10]
        (session,) = m.sessions.values()
        assert m.ctx.subs.waiting(session) == 10  # only the ones it waits for
        # Results of forgotten tasks go nowhere; the kept ones are pushed.
        w = Peer(m)
        w.hello(role="worker", queues=["q"], concurrency=1)
        w.feed(frame(protocol.CREDIT, 0, n=510))
        pushed = [t for msg in w.messages() if msg.op == protocol.TASKS for t in msg.fields["tasks"]]
        assert len(pushed) == 510
        w.feed(frame(protocol.ACK, 2, results=[[t[0], t[1], True, b"\x90", "msgpack", None] for t in pushed]))
        got = [r[0] for msg in c.messages() if msg.op == protocol.RESULTS for r in msg.fields["results"]]
        assert sorted(got) == sorted(t[0] for t in keep)
        assert m.ctx.subs.waiting(session) == 0 and m.ctx.subs.nbytes() == 0

    run(store, clock, body)
