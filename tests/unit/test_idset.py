"""The compact id set the master keeps per session for the results it waits for."""

from __future__ import annotations

from conveyor.ids import new_id
from conveyor.master.idset import IdSet
from conveyor.master.results import Subscriptions
from conveyor.records import Result

from .set_model import behaves_as_a_set


def test_it_behaves_as_a_set_through_growth_tombstones_and_shrinking():
    behaves_as_a_set(IdSet, n_ids=5000, steps=40_000, p_add=0.55)


def test_a_drained_set_gives_its_memory_back_and_a_full_one_costs_a_few_bytes_a_task():
    s = IdSet()
    ids = [new_id() for _ in range(100_000)]
    for tid in ids:
        s.add(tid)
    assert s.nbytes() <= 40 * len(ids)  # 8 bytes a slot, 20-50 % full
    for tid in ids:
        s.discard(tid)
    assert len(s) == 0 and s.nbytes() == 64


class FakeSession:
    output_paused = False  # its peer reads: results are pushed (master/backpressure.py)

    def __init__(self) -> None:
        self.pushed: list[tuple[str, dict]] = []

    def push(self, op: str, fields: dict) -> None:
        self.pushed.append((op, fields))


def test_subscriptions_deliver_each_result_once_to_each_waiting_session():
    subs = Subscriptions()
    a, b = FakeSession(), FakeSession()
    t1, t2, t3 = new_id(), new_id(), new_id()
    subs.subscribe(a, t1)  # type: ignore[arg-type]
    subs.subscribe(a, t2)  # type: ignore[arg-type]
    subs.subscribe(b, t2)  # type: ignore[arg-type]
    assert subs.watched(t2) and not subs.watched(t3)
    assert subs.subscribers(t2) == frozenset({a, b})
    subs.deliver([Result(t2, True, b"\x01", "msgpack", "succeeded", 1.0),
                  Result(t3, True, b"\x01", "msgpack", "succeeded", 1.0)])
    assert [[r[0] for r in f["results"]] for _, f in a.pushed] == [[t2]]
    assert [[r[0] for r in f["results"]] for _, f in b.pushed] == [[t2]]
    assert subs.waiting(b) == 0 and subs.waiting(a) == 1  # b waits for nothing: forgotten
    subs.deliver([Result(t2, True, b"\x01", "msgpack", "succeeded", 1.0)])  # a duplicate: nobody waits
    assert len(a.pushed) == len(b.pushed) == 1
    subs.drop(a)  # type: ignore[arg-type]
    assert not subs.watched(t1) and subs.nbytes() == 0
