"""The master's timers driven by injected time: no sleeps, no thresholds.

The master gets a wall clock and a monotonic clock the test moves by hand;
:meth:`Reaper.step` and :meth:`DelayTimer.step` are called directly with
them, so what happens at a given time (and not a moment before) is checked
exactly. The background loops also run, on the same injected clocks: a step
of theirs in between decides the same things.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from conveyor import protocol, timing
from conveyor.ids import new_id
from conveyor.master import Master
from conveyor.records import NewTask, Outcome
from conveyor.store import MemoryStore

from .test_master_io import KEY, Peer, a_task, frame, turns

WALL0, MONO0 = 1_000_000.0, 500.0


class Clock:
    """A clock that moves only when told."""

    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


class Time:
    """The master's two clocks, moved together."""

    def __init__(self) -> None:
        self.wall, self.mono = Clock(WALL0), Clock(MONO0)

    def advance(self, seconds: float) -> None:
        self.wall.t += seconds
        self.mono.t += seconds


def run(store: MemoryStore, body: Callable[[Master, Time], Awaitable[None]], **kwargs: Any) -> None:
    t = Time()

    async def main() -> None:
        master = Master(store, authkey=KEY, port=0, clock=t.wall, monotonic=t.mono, **kwargs)
        await master.start()
        try:
            await body(master, t)
        finally:
            await master.close()

    asyncio.run(main())


async def step(m: Master, t: Time) -> None:
    await m.reaper.step(t.mono(), t.wall())


def _leased_to_a_worker(m: Master) -> tuple[Peer, str]:
    worker, client = Peer(m), Peer(m)
    worker.hello(role="worker", queues=["q"], concurrency=1)
    worker.feed(frame(protocol.CREDIT, 0, n=1))
    client.hello()
    task = a_task()
    client.feed(frame(protocol.SUBMIT, 2, tasks=[task]))
    return worker, task[0]


def test_a_silent_workers_leases_go_back_after_the_heartbeat_timeout_and_not_before():
    store = MemoryStore()

    async def body(m: Master, t: Time) -> None:
        worker, tid = _leased_to_a_worker(m)
        assert store.get(tid).state == "leased"
        t.advance(10.0)  # silent for exactly the timeout: not yet presumed dead
        await step(m, t)
        assert store.get(tid).state == "leased" and not worker.transport.closed
        t.advance(0.01)
        await step(m, t)
        assert worker.transport.closed
        await turns(lambda: store.get(tid).state == "ready")
        assert all(s.role != "worker" for s in m.sessions.values())

    run(store, body, heartbeat_timeout=10.0, lease_for=60.0)


def test_a_worker_that_keeps_talking_keeps_its_session():
    store = MemoryStore()

    async def body(m: Master, t: Time) -> None:
        worker, tid = _leased_to_a_worker(m)
        for _ in range(5):
            t.advance(8.0)
            worker.feed(frame(protocol.PING, 0))  # any bytes count as a heartbeat
            await step(m, t)
        assert not worker.transport.closed and store.get(tid).state == "leased"

    run(store, body, heartbeat_timeout=10.0, lease_for=60.0)


def test_live_leases_are_extended_on_cadence():
    store = MemoryStore()
    lease_for = 40.0
    every = timing.extend_every(lease_for)

    async def body(m: Master, t: Time) -> None:
        _, tid = _leased_to_a_worker(m)
        assert store.get(tid).lease_deadline == WALL0 + lease_for
        t.advance(every - 0.1)
        await step(m, t)
        assert store.get(tid).lease_deadline == WALL0 + lease_for  # not due yet
        t.advance(0.1)
        await step(m, t)
        assert store.get(tid).lease_deadline == t.wall() + lease_for
        extended = t.wall()
        t.advance(every / 2)
        await step(m, t)
        assert store.get(tid).lease_deadline == extended + lease_for  # once per period

    run(store, body, heartbeat_timeout=1000.0, lease_for=lease_for)


def test_a_live_consumer_keeps_its_queue_item_past_the_lease_length():
    """Replaces a 6.5 s sleep: the item's lease outlives its length and an expiry sweep."""
    store = MemoryStore()
    lease_for = 1.0

    async def body(m: Master, t: Time) -> None:
        a, b = Peer(m), Peer(m)
        a.hello()
        b.hello()
        a.feed(frame(protocol.QPUT, 2, queue="held", items=[[new_id(), b"w", "msgpack"]], maxsize=0, timeout=0))
        a.feed(frame(protocol.QGET, 3, queue="held", max=1, timeout=0, ack=False))
        (_, got) = a.messages()
        assert len(got.fields["items"]) == 1
        for _ in range(int(2 * timing.EXPIRE_EVERY / 0.25)):  # two sweeps, and many lease lengths
            t.advance(0.25)
            a.feed(frame(protocol.PING, 0))  # a is alive (its pings keep it so)
            await step(m, t)
        assert t.wall() - WALL0 > timing.EXPIRE_EVERY + lease_for
        b.feed(frame(protocol.QGET, 2, queue="held", max=1, timeout=0, ack=False))
        (reply,) = b.messages()
        assert reply.fields["items"] == [] and store.stats()["held"].leased == 1

    run(store, body, heartbeat_timeout=1000.0, lease_for=lease_for)


def test_expired_leases_go_back_on_the_sweep_cadence():
    store = MemoryStore()

    async def body(m: Master, t: Time) -> None:
        store.enqueue([NewTask("lost", "q", "mod:fn", b"", "msgpack")], t.wall())
        store.lease("q", 1, "a-master-that-died", t.wall(), 1.0)
        t.advance(timing.EXPIRE_EVERY - 0.1)  # long past the deadline, but no sweep yet
        await step(m, t)
        assert store.get("lost").state == "leased"
        t.advance(0.1)
        await step(m, t)
        assert store.get("lost").state == "ready"

    run(store, body, heartbeat_timeout=1000.0, lease_for=60.0)


def test_finished_tasks_are_purged_on_cadence_after_their_ttl():
    store = MemoryStore()
    ttl = 8.0
    every = timing.purge_every(ttl)

    async def body(m: Master, t: Time) -> None:
        store.enqueue([NewTask("done", "q", "mod:fn", b"", "msgpack")], t.wall())
        (lease,) = store.lease("q", 1, "w", t.wall(), 60.0)
        store.complete([Outcome("done", lease.token, True, b"")], t.wall())
        t.wall.t += ttl + 1  # past its TTL on the wall clock...
        t.mono.t += every - 0.1  # ...but the purge is not due yet
        await step(m, t)
        assert store.get("done") is not None
        t.mono.t += 0.1
        await step(m, t)
        assert store.get("done") is None

    run(store, body, heartbeat_timeout=1000.0, lease_for=60.0, result_ttl=ttl)


def test_a_delayed_task_is_made_ready_when_its_time_comes():
    store = MemoryStore()

    async def body(m: Master, t: Time) -> None:
        worker = Peer(m)
        worker.hello(role="worker", queues=["q"], concurrency=1)
        worker.feed(frame(protocol.CREDIT, 0, n=1))
        client = Peer(m)
        client.hello()
        task = a_task()
        task[6] = WALL0 + 5.0  # not_before
        client.feed(frame(protocol.SUBMIT, 2, tasks=[task]))
        assert await m.delay_timer.step(t.wall()) == timing.TIMER_TICK_MAX
        t.advance(4.9)
        assert await m.delay_timer.step(t.wall()) is not None
        assert store.get(task[0]).state == "delayed" and worker.messages() == []
        t.advance(0.1)
        await m.delay_timer.step(t.wall())
        await turns(lambda: store.get(task[0]).state == "leased")
        (push,) = worker.messages()
        assert push.op == protocol.TASKS and push.fields["tasks"][0][0] == task[0]

    run(store, body)


def test_rate_limit_buckets_fill_on_the_injected_monotonic_clock():
    store = MemoryStore()

    async def body(m: Master, t: Time) -> None:
        worker = Peer(m)
        worker.hello(role="worker", queues=["q"], concurrency=1)
        worker.feed(frame(protocol.CREDIT, 0, n=10))
        client = Peer(m)
        client.hello()
        tasks = [a_task() for _ in range(2)]
        for task in tasks:
            task[7] = {"rate_limit": "1/m"}
        client.feed(frame(protocol.SUBMIT, 2, tasks=tasks))
        await turns(lambda: m.counters["rate_limited"] == 1)
        (push,) = worker.messages()
        assert len(push.fields["tasks"]) == 1
        deferred = next(task[0] for task in tasks if task[0] != push.fields["tasks"][0][0])
        info = store.get(deferred)
        assert info.state == "delayed" and info.not_before == WALL0 + 60.0  # a token per minute
        t.advance(60.0)
        await m.delay_timer.step(t.wall())
        await turns(lambda: bool(worker.transport.writes) and store.get(deferred).state == "leased")
        assert [x[0] for x in worker.messages()[0].fields["tasks"]] == [deferred]

    run(store, body, heartbeat_timeout=1000.0)
