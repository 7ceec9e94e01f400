"""The rules behind fair dispatch, without processes: the worker's credit window, the
master's slots-before-prefetch plan, and the running/prefetched split of a session."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from conveyor import protocol, wire
from conveyor.errors import ProtocolError
from conveyor.master.dispatch import Dispatcher, QueueTracker, Wake
from conveyor.master.session import Session
from conveyor.timing import MAX_WINDOW, credit_window


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
