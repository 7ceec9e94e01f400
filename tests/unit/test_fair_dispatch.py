"""The rules behind fair dispatch, without processes: the worker's credit window, the
master's slots-before-prefetch plan, and the running/prefetched split of a session."""

from __future__ import annotations

import asyncio
import math
import threading
import time
from types import SimpleNamespace

import pytest

from conveyor import protocol, wire
from conveyor.errors import ProtocolError
from conveyor.master.dispatch import Dispatcher, QueueTracker, Wake
from conveyor.master.session import Session
from conveyor.timing import (
    MAX_WINDOW,
    credit_window,
    effective_duration,
    prefetch_surplus,
)
from conveyor.worker.jobs import Job, JobResult
from conveyor.worker.worker import Worker


class _Writer:
    def write(self, data: bytes) -> None:
        pass

    def close(self) -> None:
        pass


def _worker(sid: str, concurrency: int, credit: int, inflight: int = 0) -> Session:
    s = Session(sid, "peer", _Writer(), protocol.Connection("server", b"k"), role="worker", queues=["default"],
                concurrency=concurrency, credit=credit)
    s.inflight = {f"{sid}-t{i}": 1 for i in range(inflight)}
    return s


def _dispatcher(*workers: Session) -> Dispatcher:
    ctx = SimpleNamespace(wake=Wake(), queues=QueueTracker(), sessions={w.id: w for w in workers})
    queues = SimpleNamespace(plan=lambda: [])
    return Dispatcher(ctx, queues, None)  # type: ignore[arg-type]


def test_an_unknown_task_length_counts_as_long_and_earns_no_prefetch():
    assert credit_window(4, 0.0) == 4


def test_long_tasks_earn_no_prefetch_and_short_ones_earn_about_a_tenth_of_a_second_of_work():
    assert credit_window(4, 3.0) == 4
    assert credit_window(4, 0.05) == 4 + 8
    assert credit_window(4, 1e-7) == MAX_WINDOW


def test_a_fixed_prefetch_overrides_the_rule():
    assert credit_window(4, 0.0, fixed=10) == 10
    assert credit_window(4, 1e-7, fixed=3) == 3


def test_the_plan_fills_free_slots_on_every_worker_before_any_prefetch():
    busy = _worker("busy", concurrency=4, credit=6, inflight=2)  # 2 free slots, 4 more of prefetch
    idle = _worker("idle", concurrency=4, credit=4)
    for _ in range(2):  # whoever the rotation serves first
        plan = [(t.id, n) for t, _, n in _dispatcher(busy, idle).plan()]
        assert sorted(plan[:2]) == [("busy", 2), ("idle", 4)]
        assert plan[2:] == [("busy", 4)]


def test_a_worker_that_did_not_say_its_concurrency_is_all_slots():
    w = _worker("w", concurrency=0, credit=5, inflight=3)
    assert [(t.id, n) for t, _, n in _dispatcher(w).plan()] == [("w", 5)]


def test_running_counts_only_leases_still_held_at_the_reported_token():
    w = _worker("w", concurrency=2, credit=0)
    w.inflight = {"a": 1, "b": 1, "c": 7}
    w.mark_started([("a", 1), ("c", 6), ("zz", 1)], now=100.0)  # c: a stale token; zz: not held
    assert w.running() == 1
    assert w.started_at("a") == 100.0 and w.started_at("b") is None and w.started_at("c") is None
    del w.inflight["a"]  # settled
    assert w.running() == 0 and w.started_at("a") is None


def test_started_reports_are_validated_as_lease_pairs():
    assert wire.decode_started({"leases": [["a", 1]]}).pairs == [("a", 1)]
    with pytest.raises(ProtocolError, match="started: leases"):
        wire.decode_started({"leases": [["a"]]})


def test_the_window_follows_the_age_of_running_tasks_only_while_every_slot_is_busy():
    # One slot free: the learned mean stands, however old the running task.
    assert effective_duration(0.002, [5.0], slots=2) == 0.002
    # Every slot busy, but not for long (a batch of tiny tasks, a short stall): the mean stands.
    assert effective_duration(0.002, [0.05, 0.07], slots=2) == 0.002
    # Every slot busy past the prefetch target: long tasks, no prefetch at all.
    assert effective_duration(0.002, [0.2, 3.0], slots=2) == math.inf
    assert credit_window(4, math.inf) == 4
    # Tasks that usually run this long are not a burst: their own mean keeps sizing the window.
    assert effective_duration(0.15, [0.2, 0.25], slots=2) == 0.15


def test_only_prefetched_tasks_beyond_the_window_are_handed_back():
    assert prefetch_surplus(window=4, running=4, pending=3) == 3
    assert prefetch_surplus(window=6, running=4, pending=3) == 1
    assert prefetch_surplus(window=12, running=4, pending=3) == 0
    assert prefetch_surplus(window=1, running=4, pending=0) == 0  # running tasks are never handed back


class _Core:
    connected = True

    def __init__(self) -> None:
        self.requests: list[tuple[str, dict]] = []
        self.pushes: list[tuple[str, dict]] = []

    def request_nowait(self, op: str, fields: dict) -> asyncio.Future:
        self.requests.append((op, fields))
        return asyncio.get_running_loop().create_future()

    def push(self, op: str, fields: dict) -> None:
        self.pushes.append((op, fields))


class _Pool:
    avg_duration = 0.002  # it learned short tasks

    def __init__(self, running: int, pending: list[Job]) -> None:
        self._running, self._pending = running, list(pending)

    def running(self) -> int:
        return self._running

    def pending(self) -> int:
        return len(self._pending)

    def discard_pending(self) -> list[Job]:
        out, self._pending = self._pending, []
        return out

    def submit(self, jobs: list[Job]) -> None:
        self._pending.extend(jobs)


def test_a_worker_whose_slots_are_all_busy_with_long_tasks_hands_back_its_prefetch_and_unused_credit():
    async def main() -> None:
        worker = Worker(["tests.unit.pool_tasks"], "127.0.0.1:1", b"key", concurrency=2)
        core, pending = _Core(), [Job(f"p{i}", 1, "m:f", b"", "msgpack") for i in range(3)]
        worker._loop, worker._core = asyncio.get_running_loop(), core  # type: ignore[assignment]
        worker._pool = _Pool(running=2, pending=pending)
        worker._outstanding = 2 + 3 + 5  # running, prefetched, and 5 credit the master holds
        long_ago = time.monotonic() - 1.0
        worker._running_since = {"r0": long_ago, "r1": long_ago}
        worker._rebalance()
        assert core.requests == [(protocol.RETURN, {"leases": [["p0", 1], ["p1", 1], ["p2", 1]]})]
        assert core.pushes == [(protocol.CREDIT, {"n": 0, "revoke": 5})]
        assert worker._outstanding == 2 and worker._pool.pending() == 0
        # Short tasks in every slot keep their prefetch.
        core2 = _Core()
        worker._core = core2  # type: ignore[assignment]
        worker._pool = _Pool(running=2, pending=pending)
        worker._outstanding = 5
        worker._running_since = {"r0": time.monotonic(), "r1": time.monotonic()}
        worker._rebalance()
        assert core2.requests == [] and core2.pushes == []
        if worker._rebalance_timer is not None:
            worker._rebalance_timer.cancel()

    asyncio.run(main())


def test_started_reports_are_batched_and_leave_out_tasks_that_finished_meanwhile():
    async def main() -> None:
        worker = Worker(["tests.unit.pool_tasks"], "127.0.0.1:1", b"key", concurrency=2)
        core = _Core()
        worker._loop, worker._core = asyncio.get_running_loop(), core  # type: ignore[assignment]
        worker._loop_thread = threading.get_ident()
        worker._started_from_pool([Job("a", 1, "m:f", b"", "msgpack")])
        worker._started_from_pool([Job("b", 2, "m:f", b"", "msgpack"), Job("c", 1, "m:f", b"", "msgpack")])
        assert core.pushes == []  # gathered, not sent one by one
        worker._on_results([JobResult("a", 1, True, b"\x01", "msgpack", 0.001)])  # a finished already
        worker._flush_starts()  # what the timer armed by the first start runs
        assert [p for p in core.pushes if p[0] == protocol.STARTED] == [
            (protocol.STARTED, {"leases": [["b", 2], ["c", 1]]})]

    asyncio.run(main())


# -- when a dispatch pass goes round again ------------------------------------------

def _pass_with(worker: Session, leases_per_call: list[int]) -> tuple[list[list[tuple[str, int]]], Wake]:
    """Run one dispatch pass for ``worker`` against a stub store that leases as many tasks
    as ``leases_per_call`` says per plan entry; the plan entries asked for, and the wake."""
    from conveyor.records import Lease

    asked: list[list[tuple[str, int]]] = []

    class Runner:
        def call(self, fn, plan, now, durable=True):  # type: ignore[no-untyped-def]
            asked.append([(q, n) for _, q, n in plan])
            fut = asyncio.get_running_loop().create_future()
            fut.set_result([[Lease(f"t{i}-{k}", q, None, b"", "msgpack", k, {}) for k in range(got)]
                            for i, ((_, q, _), got) in enumerate(zip(plan, leases_per_call))])
            return fut

    wake = Wake()
    ctx = SimpleNamespace(wake=wake, queues=QueueTracker(), sessions={worker.id: worker},
                          runner=Runner(), clock=time.time)
    queues = SimpleNamespace(plan=lambda: [], space_freed=lambda q: None)
    jobs = SimpleNamespace(rate_limit=lambda got, now: got, upstream=lambda got: _none())
    d = Dispatcher(ctx, queues, jobs)  # type: ignore[arg-type]
    wake.held = True  # as at the end of a read: the pass is noted, not scheduled

    async def one_pass() -> None:
        await d.dispatch_pass()

    asyncio.run(one_pass())
    return asked, wake


async def _none() -> dict:
    return {}


def test_a_lease_that_comes_back_short_from_the_only_queue_ends_the_passes():
    """One task for a worker with room for eight: its queue is empty now, and another pass
    would only cost a transaction that leases nothing."""
    w = _worker("w", concurrency=8, credit=8)
    asked, wake = _pass_with(w, [1])
    assert asked == [[("default", 8)]]
    assert not wake.due


def test_a_full_lease_or_a_worker_with_other_queues_goes_round_again():
    full, wake = _pass_with(_worker("w", concurrency=2, credit=2), [2])
    assert wake.due  # the queue may hold more, for takers this pass did not serve
    two = _worker("w2", concurrency=4, credit=4)
    two.queues = ["a", "b"]
    asked, wake = _pass_with(two, [1])
    assert asked == [[("a", 4)]] and wake.due  # "a" is empty now: the next pass tries "b"
