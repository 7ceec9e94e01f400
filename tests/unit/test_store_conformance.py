"""One conformance suite for every Store, plus the SQLite store's durability and errors."""

from __future__ import annotations

import os
import select
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

import conveyor.store as store_pkg
from conveyor import serde
from conveyor.errors import StoreError
from conveyor.store import (
    DEAD,
    DELAYED,
    DUPLICATE,
    FAILED,
    LEASED,
    READY,
    STALE,
    STORED,
    SUCCEEDED,
    UNKNOWN,
    MemoryStore,
    NewTask,
    Outcome,
    QueueStats,
    SQLiteStore,
    Store,
    open_store,
)

T0 = 1_000.0


def task(task_id: str, queue: str = "q", *, priority: int = 0, not_before: float = 0.0,
         payload: bytes | None = None, name: str | None = "mod.fn",
         options: dict | None = None) -> NewTask:
    return NewTask(task_id, queue, name, payload if payload is not None else task_id.encode(),
                   "msgpack", priority, not_before, options or {})


def ok(task_id: str, token: int, payload: bytes = b"ok") -> Outcome:
    return Outcome(task_id, token, True, payload)


def fail(task_id: str, token: int, payload: bytes = b"boom") -> Outcome:
    return Outcome(task_id, token, False, payload)


@pytest.fixture(params=["memory", "sqlite-normal", "sqlite-full"])
def store(request, tmp_path):
    if request.param == "memory":
        s: Store = MemoryStore()
    else:
        s = SQLiteStore(tmp_path / "data", sync=request.param.split("-")[1])
    try:
        yield s
    finally:
        s.close()


def ids(leases) -> list[str]:
    return [lease.id for lease in leases]


# -- enqueue / get -------------------------------------------------------------


def test_enqueue_reports_new_ids_and_get_shows_them(store):
    assert store.enqueue([task("a", options={"retries": 3, "tags": ["x", 1]}), task("b")], T0) \
        == [True, True]
    info = store.get("a")
    assert info is not None
    assert (info.id, info.queue, info.name, info.state) == ("a", "q", "mod.fn", READY)
    assert (info.priority, info.attempts, info.created_at, info.not_before) == (0, 0, T0, 0.0)
    assert (info.lease_owner, info.lease_deadline, info.started_at, info.finished_at) \
        == (None, None, None, None)
    assert info.options == {"retries": 3, "tags": ["x", 1]}
    assert info.errors == []
    assert info.result is None
    assert store.enqueue([], T0) == []


def test_enqueue_is_idempotent_by_id(store):
    assert store.enqueue([task("a", payload=b"first", priority=1)], T0) == [True]
    again = [task("a", "other", payload=b"second", priority=9), task("c")]
    assert store.enqueue(again, T0 + 5) == [False, True]
    info = store.get("a")
    assert (info.queue, info.priority, info.created_at) == ("q", 1, T0)
    assert store.lease("other", 10, "w", T0, 30) == []
    [lease] = store.lease("q", 1, "w", T0, 30)
    assert (lease.id, lease.payload) == ("a", b"first")


def test_enqueue_same_id_twice_in_one_batch(store):
    assert store.enqueue([task("a", payload=b"1"), task("a", payload=b"2")], T0) == [True, False]
    assert [(lease.id, lease.payload) for lease in store.lease("q", 10, "w", T0, 30)] \
        == [("a", b"1")]


def test_enqueue_an_existing_finished_task_changes_nothing(store):
    store.enqueue([task("a")], T0)
    [lease] = store.lease("q", 1, "w", T0, 30)
    assert store.complete([ok("a", lease.token)], T0) == [STORED]
    assert store.enqueue([task("a")], T0 + 1) == [False]
    assert store.get("a").state == SUCCEEDED
    assert store.lease("q", 1, "w", T0, 30) == []


def test_get_unknown_is_none(store):
    assert store.get("nope") is None


# -- lease ---------------------------------------------------------------------


def test_lease_is_priority_first_then_fifo(store):
    store.enqueue([task("a"), task("b", priority=5), task("c"), task("d", priority=5),
                   task("e", priority=-1), task("f", priority=10)], T0)
    assert ids(store.lease("q", 2, "w", T0, 30)) == ["f", "b"]
    assert ids(store.lease("q", 10, "w", T0, 30)) == ["d", "a", "c", "e"]
    assert store.lease("q", 10, "w", T0, 30) == []


def test_fifo_survives_many_tasks(store):
    store.enqueue([task(f"t{i:04d}") for i in range(300)], T0)
    got = []
    while batch := store.lease("q", 7, "w", T0, 30):
        got.extend(ids(batch))
    assert got == [f"t{i:04d}" for i in range(300)]


def test_lease_fields_token_owner_deadline(store):
    store.enqueue([task("a", payload=b"\x00data", options={"k": "v"})], T0)
    [lease] = store.lease("q", 1, "w1", T0 + 1, 30)
    assert (lease.id, lease.queue, lease.name, lease.payload, lease.codec) \
        == ("a", "q", "mod.fn", b"\x00data", "msgpack")
    assert lease.token == 1
    assert lease.options == {"k": "v"}
    info = store.get("a")
    assert (info.state, info.attempts, info.lease_owner) == (LEASED, 1, "w1")
    assert info.lease_deadline == T0 + 31
    assert info.started_at == T0 + 1
    assert store.release([("a", 1)], T0 + 2) == 1
    [lease2] = store.lease("q", 1, "w2", T0 + 3, 10)
    assert lease2.token == 2
    info = store.get("a")
    assert (info.attempts, info.lease_owner, info.lease_deadline, info.started_at) \
        == (2, "w2", T0 + 13, T0 + 3)


def test_lease_only_its_queue_and_nothing_for_limit_zero(store):
    store.enqueue([task("a", "q1"), task("b", "q2")], T0)
    assert store.lease("q1", 0, "w", T0, 30) == []
    assert ids(store.lease("q2", 5, "w", T0, 30)) == ["b"]
    assert store.lease("missing", 5, "w", T0, 30) == []
    assert ids(store.lease("q1", 5, "w", T0, 30)) == ["a"]


def test_leases_are_never_handed_out_twice_across_threads(store):
    store.enqueue([task(f"t{i}") for i in range(400)], T0)
    seen: list[str] = []
    lock = threading.Lock()

    def worker(name: str) -> None:
        while batch := store.lease("q", 3, name, T0, 30):
            with lock:
                seen.extend(ids(batch))

    threads = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(seen) == sorted(f"t{i}" for i in range(400))


# -- delayed tasks -------------------------------------------------------------


def test_delayed_tasks_wait_for_promote_due(store):
    store.enqueue([task("later", not_before=T0 + 10), task("now", not_before=T0)], T0)
    assert store.get("later").state == DELAYED
    assert store.get("now").state == READY  # not_before == now is not in the future
    assert store.next_due() == T0 + 10
    assert ids(store.lease("q", 10, "w", T0 + 20, 30)) == ["now"]  # lease never promotes
    assert store.promote_due(T0 + 9.5) == []
    assert store.get("later").state == DELAYED
    assert store.promote_due(T0 + 10) == ["q"]
    assert store.get("later").state == READY
    assert store.next_due() is None
    assert ids(store.lease("q", 10, "w", T0 + 10, 30)) == ["later"]
    assert store.promote_due(T0 + 100) == []


def test_promote_due_deduplicates_queues_and_next_due_is_the_earliest(store):
    store.enqueue([task("a", "q1", not_before=T0 + 3), task("b", "q1", not_before=T0 + 1),
                   task("c", "q2", not_before=T0 + 2), task("d", "q3", not_before=T0 + 50)], T0)
    assert store.next_due() == T0 + 1
    assert sorted(store.promote_due(T0 + 5)) == ["q1", "q2"]
    assert store.next_due() == T0 + 50
    assert ids(store.lease("q1", 10, "w", T0 + 5, 30)) == ["a", "b"]  # enqueue order
    assert store.get("d").state == DELAYED


def test_promoted_tasks_keep_priority_order(store):
    store.enqueue([task("r0"), task("d5", priority=5, not_before=T0 + 1)], T0)
    store.promote_due(T0 + 1)
    assert ids(store.lease("q", 10, "w", T0 + 1, 30)) == ["d5", "r0"]


# -- complete ------------------------------------------------------------------


def test_complete_success_then_duplicate(store):
    store.enqueue([task("a")], T0)
    [lease] = store.lease("q", 1, "w", T0, 30)
    assert store.complete([Outcome("a", lease.token, True, b"value", "pickle")], T0 + 1) \
        == [STORED]
    info = store.get("a")
    assert (info.state, info.finished_at, info.lease_owner, info.lease_deadline) \
        == (SUCCEEDED, T0 + 1, None, None)
    assert info.result is not None
    assert (info.result.ok, info.result.payload, info.result.codec, info.result.state) \
        == (True, b"value", "pickle", SUCCEEDED)
    assert store.complete([ok("a", lease.token, b"again")], T0 + 2) == [DUPLICATE]
    assert store.complete([fail("a", lease.token)], T0 + 2) == [DUPLICATE]
    assert store.results(["a"])["a"].payload == b"value"
    assert store.nack("a", lease.token, T0 + 3) is False
    assert store.release([("a", lease.token)], T0 + 3) == 0
    assert store.extend_owner("w", T0 + 3, 30) == 0
    assert store.expire_leases(T0 + 1000) == []


def test_complete_success_from_a_stale_token_is_stored_when_no_result_yet(store):
    store.enqueue([task("a")], T0)
    [first] = store.lease("q", 1, "w1", T0, 10)
    assert store.expire_leases(T0 + 10) == ["a"]
    [second] = store.lease("q", 1, "w2", T0 + 11, 10)
    assert (first.token, second.token) == (1, 2)
    assert store.complete([ok("a", first.token, b"late")], T0 + 12) == [STORED]
    info = store.get("a")
    assert (info.state, info.lease_owner, info.attempts) == (SUCCEEDED, None, 2)
    assert info.result.payload == b"late"
    # The holder of the current lease lost: its result is a duplicate, its lease is gone.
    assert store.complete([ok("a", second.token, b"current")], T0 + 13) == [DUPLICATE]
    assert store.nack("a", second.token, T0 + 13) is False
    assert store.extend_owner("w2", T0 + 13, 10) == 0
    assert store.release_owner("w2", T0 + 13) == []
    assert store.results(["a"])["a"].payload == b"late"


def test_complete_success_for_a_released_or_delayed_task(store):
    store.enqueue([task("a"), task("b")], T0)
    leases = store.lease("q", 2, "w", T0, 30)
    assert store.release([("a", 1)], T0) == 1
    assert store.nack("b", 1, T0, delay=60) is True
    assert store.complete([ok("a", 1), ok("b", 1)], T0 + 1) == [STORED, STORED]
    assert [store.get(x).state for x in ("a", "b")] == [SUCCEEDED, SUCCEEDED]
    assert store.lease("q", 10, "w", T0 + 1, 30) == []
    assert store.promote_due(T0 + 100) == []
    assert store.next_due() is None
    assert len(leases) == 2


def test_complete_refuses_tokens_never_issued(store):
    store.enqueue([task("a")], T0)
    assert store.complete([ok("a", 1)], T0) == [STALE]  # never leased
    store.lease("q", 1, "w", T0, 30)
    assert store.complete([ok("a", 2), ok("a", 0)], T0) == [STALE, STALE]
    assert store.get("a").state == LEASED


def test_complete_failure_from_a_stale_token_is_stale(store):
    store.enqueue([task("a")], T0)
    [first] = store.lease("q", 1, "w1", T0, 10)
    assert store.release([("a", first.token)], T0 + 1) == 1
    [second] = store.lease("q", 1, "w2", T0 + 2, 10)
    assert store.complete([fail("a", first.token)], T0 + 3) == [STALE]
    info = store.get("a")
    assert (info.state, info.lease_owner, info.attempts, info.result) == (LEASED, "w2", 2, None)
    assert store.results(["a"]) == {}
    assert store.complete([fail("a", second.token, b"err")], T0 + 4) == [STORED]
    info = store.get("a")
    assert (info.state, info.lease_owner, info.finished_at) == (FAILED, None, T0 + 4)
    assert (info.result.ok, info.result.payload, info.result.state) == (False, b"err", FAILED)
    assert store.complete([ok("a", second.token)], T0 + 5) == [DUPLICATE]


def test_complete_failure_of_a_task_not_leased_is_stale(store):
    store.enqueue([task("a")], T0)
    store.lease("q", 1, "w", T0, 30)
    store.release([("a", 1)], T0)
    assert store.complete([fail("a", 1)], T0) == [STALE]
    assert store.get("a").state == READY


def test_complete_batch_keeps_order_and_handles_unknown(store):
    store.enqueue([task("a"), task("b"), task("c")], T0)
    store.lease("q", 3, "w", T0, 30)
    got = store.complete([ok("b", 1), Outcome("zz", 1, True, b""), fail("a", 1),
                          ok("b", 1), fail("c", 7)], T0 + 1)
    assert got == [STORED, UNKNOWN, STORED, DUPLICATE, STALE]
    assert store.complete([], T0) == []
    assert [store.get(x).state for x in "abc"] == [FAILED, SUCCEEDED, LEASED]


# -- nack ----------------------------------------------------------------------


def test_nack_to_ready_delayed_and_dead_keeps_error_history(store):
    store.enqueue([task("a")], T0)
    [lease] = store.lease("q", 1, "w", T0, 30)
    assert store.nack("a", lease.token, T0 + 1, error=b"e1") is True
    info = store.get("a")
    assert (info.state, info.lease_owner, info.lease_deadline, info.errors) \
        == (READY, None, None, [b"e1"])

    [lease] = store.lease("q", 1, "w", T0 + 2, 30)
    assert lease.token == 2
    assert store.nack("a", lease.token, T0 + 3, delay=5, error=b"e2") is True
    info = store.get("a")
    assert (info.state, info.not_before, info.errors) == (DELAYED, T0 + 8, [b"e1", b"e2"])
    assert store.next_due() == T0 + 8
    assert store.lease("q", 1, "w", T0 + 9, 30) == []
    assert store.promote_due(T0 + 8) == ["q"]

    [lease] = store.lease("q", 1, "w", T0 + 9, 30)
    assert lease.token == 3
    assert store.nack("a", lease.token, T0 + 10, error=b"e3", dead=True) is True
    info = store.get("a")
    assert (info.state, info.finished_at, info.lease_owner) == (DEAD, T0 + 10, None)
    assert info.errors == [b"e1", b"e2", b"e3"]
    assert info.result is not None and info.result.ok is False
    assert info.result.payload == b"e3" and info.result.state == DEAD
    assert store.results(["a"])["a"].state == DEAD
    assert store.complete([ok("a", 3)], T0 + 11) == [DUPLICATE]
    assert store.lease("q", 1, "w", T0 + 11, 30) == []


def test_nack_with_a_stale_token_changes_nothing(store):
    store.enqueue([task("a")], T0)
    store.lease("q", 1, "w1", T0, 30)
    store.release_owner("w1", T0)
    store.lease("q", 1, "w2", T0, 30)
    assert store.nack("a", 1, T0, error=b"old", dead=True) is False
    assert store.nack("a", 3, T0, error=b"future") is False
    assert store.nack("missing", 1, T0) is False
    info = store.get("a")
    assert (info.state, info.lease_owner, info.attempts, info.errors) == (LEASED, "w2", 2, [])
    assert store.nack("a", 2, T0) is True  # no error given: history stays empty
    assert store.get("a").errors == []
    assert store.nack("a", 2, T0) is False  # no longer leased


# -- release / expiry --------------------------------------------------------------


def test_release_counts_only_current_tokens(store):
    store.enqueue([task("a"), task("b"), task("c")], T0)
    store.lease("q", 3, "w", T0, 30)
    assert store.release([("a", 1), ("b", 99), ("zz", 1), ("a", 1)], T0) == 1
    assert [store.get(x).state for x in "abc"] == [READY, LEASED, LEASED]
    assert store.get("a").attempts == 1  # attempts never go back: tokens stay unique
    assert store.release([], T0) == 0
    assert store.release([("b", 1), ("c", 1)], T0) == 2
    assert [lease.token for lease in store.lease("q", 3, "w", T0, 30)] == [2, 2, 2]


def test_release_owner_hands_back_only_that_owners_tasks(store):
    store.enqueue([task("a"), task("b"), task("c")], T0)
    store.lease("q", 2, "w1", T0, 30)
    store.lease("q", 1, "w2", T0, 30)
    assert store.release_owner("w1", T0 + 1) == ["a", "b"]
    assert [store.get(x).state for x in "abc"] == [READY, READY, LEASED]
    assert store.get("a").lease_owner is None
    assert store.release_owner("w1", T0 + 1) == []
    assert store.release_owner("nobody", T0 + 1) == []
    assert store.get("c").lease_owner == "w2"


def test_release_all_hands_back_every_lease(store):
    store.enqueue([task("a"), task("b", "q2"), task("c")], T0)
    store.lease("q", 1, "w1", T0, 30)
    store.lease("q2", 1, "w2", T0, 30)
    assert store.release_all(T0) == 2
    assert [store.get(x).state for x in "abc"] == [READY, READY, READY]
    assert store.release_all(T0) == 0
    assert ids(store.lease("q", 5, "w", T0, 30)) == ["a", "c"]


def test_extend_owner_keeps_leases_alive(store):
    store.enqueue([task("a"), task("b"), task("c")], T0)
    store.lease("q", 1, "w1", T0, 10)
    store.lease("q", 2, "w2", T0, 10)
    assert store.extend_owner("w1", T0 + 8, 10) == 1
    assert store.extend_owner("ghost", T0 + 8, 10) == 0
    assert store.get("a").lease_deadline == T0 + 18
    assert store.expire_leases(T0 + 9) == []
    assert sorted(store.expire_leases(T0 + 12)) == ["b", "c"]
    info = store.get("a")
    assert (info.state, info.lease_owner) == (LEASED, "w1")
    assert [store.get(x).state for x in "bc"] == [READY, READY]
    assert store.extend_owner("w1", T0 + 17, 10) == 1
    assert store.expire_leases(T0 + 20) == []
    assert store.expire_leases(T0 + 27) == ["a"]  # a deadline reached counts as passed
    assert store.extend_owner("w1", T0 + 28, 10) == 0


def test_expired_task_is_leased_again_with_a_new_token(store):
    store.enqueue([task("a")], T0)
    store.lease("q", 1, "w1", T0, 5)
    assert store.expire_leases(T0 + 5) == ["a"]
    assert store.expire_leases(T0 + 6) == []
    [lease] = store.lease("q", 1, "w2", T0 + 6, 5)
    assert lease.token == 2
    assert store.nack("a", 1, T0 + 7) is False
    assert store.release_owner("w1", T0 + 7) == []


# -- results / purge / stats -------------------------------------------------------


def test_results_only_for_finished_tasks(store):
    store.enqueue([task("ok"), task("bad"), task("leased"), task("ready")], T0)
    store.lease("q", 3, "w", T0, 30)
    store.complete([ok("ok", 1, b"1"), fail("bad", 1, b"2")], T0 + 1)
    got = store.results(["ok", "bad", "leased", "ready", "unknown", "ok"])
    assert set(got) == {"ok", "bad"}
    assert (got["ok"].id, got["ok"].ok, got["ok"].payload, got["ok"].codec) \
        == ("ok", True, b"1", "msgpack")
    assert (got["ok"].state, got["ok"].finished_at) == (SUCCEEDED, T0 + 1)
    assert (got["bad"].ok, got["bad"].payload, got["bad"].state) == (False, b"2", FAILED)
    assert store.results([]) == {}


def test_purge_finished_deletes_old_finished_tasks_only(store):
    store.enqueue([task("a"), task("b"), task("c"), task("d")], T0)
    store.lease("q", 3, "w", T0, 30)
    store.complete([ok("a", 1)], T0 + 10)
    store.complete([fail("b", 1)], T0 + 20)
    assert store.purge_finished(T0 + 10) == 0  # strictly before
    assert store.purge_finished(T0 + 15) == 1
    assert store.get("a") is None
    assert set(store.results(["a", "b"])) == {"b"}
    assert store.purge_finished(T0 + 1000) == 1
    assert store.get("b") is None
    assert store.get("c").state == LEASED and store.get("d").state == READY
    assert store.stats()["q"] == QueueStats(ready=1, leased=1)
    # A purged id is unknown again: completing it says so, enqueueing it is new.
    assert store.complete([ok("a", 1)], T0) == [UNKNOWN]
    assert store.enqueue([task("a")], T0) == [True]


def test_stats_counts_by_state_per_queue(store):
    assert store.stats() == {}
    store.enqueue([task("a"), task("b"), task("c"), task("d"), task("e", not_before=T0 + 5),
                   task("x", "other")], T0)
    store.lease("q", 4, "w", T0, 30)
    store.complete([ok("a", 1), fail("b", 1)], T0)
    store.nack("c", 1, T0, dead=True)
    stats = store.stats()
    assert set(stats) == {"q", "other"}
    assert stats["q"] == QueueStats(ready=0, delayed=1, leased=1, succeeded=1, failed=1, dead=1)
    assert stats["q"].as_dict()["cancelled"] == 0
    assert stats["other"] == QueueStats(ready=1)
    store.lease("other", 1, "w", T0, 30)
    store.complete([ok("x", 1)], T0)
    store.purge_finished(T0 + 1)
    assert set(store.stats()) == {"q"}
    assert store.stats()["q"] == QueueStats(delayed=1, leased=1)


# -- transactions ------------------------------------------------------------------


def test_transaction_groups_calls(store):
    with store.transaction():
        assert store.enqueue([task("a"), task("b")], T0) == [True, True]
        assert ids(store.lease("q", 1, "w", T0, 30)) == ["a"]  # sees its own writes
        assert store.get("a").state == LEASED
        with store.transaction():  # nested: joins the outer one
            assert store.complete([ok("a", 1)], T0) == [STORED]
    assert store.get("a").state == SUCCEEDED
    assert store.get("b").state == READY


def test_transaction_rolls_back_on_exception(store):
    store.enqueue([task("a")], T0)
    with pytest.raises(RuntimeError, match="boom"):
        with store.transaction():
            store.enqueue([task("b"), task("c", not_before=T0 + 9)], T0)
            store.lease("q", 2, "w", T0, 30)
            store.complete([ok("b", 1)], T0)
            store.nack("a", 1, T0, error=b"e", delay=3)
            raise RuntimeError("boom")
    assert store.get("b") is None and store.get("c") is None
    info = store.get("a")
    assert (info.state, info.attempts, info.lease_owner, info.errors) == (READY, 0, None, [])
    assert store.stats() == {"q": QueueStats(ready=1)}
    assert store.next_due() is None
    assert store.release_all(T0) == 0
    # Still fully usable afterwards, order intact.
    assert store.enqueue([task("b")], T0) == [True]
    assert ids(store.lease("q", 5, "w", T0, 30)) == ["a", "b"]


def test_transaction_rollback_restores_finished_and_purged_tasks(store):
    store.enqueue([task("a"), task("b")], T0)
    store.lease("q", 2, "w", T0, 30)
    store.complete([ok("a", 1, b"kept")], T0)
    with pytest.raises(KeyError):
        with store.transaction():
            assert store.purge_finished(T0 + 1) == 1
            assert store.release_owner("w", T0) == ["b"]
            assert store.extend_owner("w", T0, 100) == 0
            raise KeyError("x")
    assert store.results(["a"])["a"].payload == b"kept"
    info = store.get("b")
    assert (info.state, info.lease_owner, info.lease_deadline) == (LEASED, "w", T0 + 30)
    assert store.expire_leases(T0 + 30) == ["b"]


def test_nested_transaction_failure_rolls_back_only_the_inner_block(store):
    with store.transaction():
        store.enqueue([task("a")], T0)
        with pytest.raises(ValueError):
            with store.transaction():
                store.enqueue([task("b")], T0)
                store.lease("q", 5, "w", T0, 30)
                raise ValueError("inner")
        store.enqueue([task("c")], T0)
    assert store.get("b") is None
    assert [store.get(x).state for x in "ac"] == [READY, READY]
    assert store.get("a").attempts == 0
    assert ids(store.lease("q", 5, "w", T0, 30)) == ["a", "c"]


# -- open_store ----------------------------------------------------------------


def test_open_store_picks_the_implementation(tmp_path):
    assert isinstance(open_store(None), MemoryStore)
    assert isinstance(open_store(":memory:"), MemoryStore)
    s = open_store(tmp_path / "d", sync="full")
    try:
        assert isinstance(s, SQLiteStore)
        assert (tmp_path / "d" / "conveyor.db").is_file()
    finally:
        s.close()
    s = open_store(str(tmp_path / "e"))
    assert isinstance(s, SQLiteStore)
    s.close()
    with pytest.raises(ValueError, match="normal"):
        open_store(None, sync="sometimes")
    assert store_pkg.Store is Store


# -- SQLite only ---------------------------------------------------------------


def test_sqlite_pragmas_and_schema(tmp_path):
    for sync, level in (("normal", 1), ("full", 2)):
        s = SQLiteStore(tmp_path / sync, sync=sync)
        try:
            conn = s.conn
            assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
            assert conn.execute("PRAGMA synchronous").fetchone()[0] == level
            assert conn.execute("PRAGMA user_version").fetchone()[0] >= 1
            plan = " ".join(r[3] for r in conn.execute(
                "EXPLAIN QUERY PLAN SELECT seq FROM tasks WHERE state = 'ready' AND queue = ? "
                "ORDER BY priority DESC, seq LIMIT 10", ("q",)))
            assert "COVERING INDEX tasks_ready" in plan and "TEMP B-TREE" not in plan
        finally:
            s.close()


def test_sqlite_bad_sync_mode(tmp_path):
    with pytest.raises(ValueError, match="normal.*full"):
        SQLiteStore(tmp_path, sync="bogus")


def test_sqlite_data_survives_close_and_reopen(tmp_path):
    s = SQLiteStore(tmp_path)
    s.enqueue([task("a", options={"o": 1}), task("b", priority=2), task("c"),
               task("d", not_before=T0 + 50)], T0)
    assert ids(s.lease("q", 2, "w", T0, 30)) == ["b", "a"]
    s.complete([ok("b", 1, b"result")], T0 + 1)
    s.nack("a", 1, T0 + 1, error=b"e1")
    s.lease("q", 1, "w2", T0 + 2, 30)  # a again (token 2)
    s.close()
    s.close()  # idempotent

    s = SQLiteStore(tmp_path)
    try:
        assert s.results(["b"])["b"].payload == b"result"
        info = s.get("a")
        assert (info.state, info.lease_owner, info.attempts, info.errors, info.options) \
            == (LEASED, "w2", 2, [b"e1"], {"o": 1})
        assert s.next_due() == T0 + 50
        assert s.stats()["q"] == QueueStats(ready=1, delayed=1, leased=1, succeeded=1)
        assert s.release_all(T0 + 3) == 1
        assert ids(s.lease("q", 5, "w", T0 + 3, 30)) == ["a", "c"]
        assert s.get("a").attempts == 3
    finally:
        s.close()


def test_sqlite_rolled_back_writes_never_reach_the_file(tmp_path):
    s = SQLiteStore(tmp_path)
    s.enqueue([task("a")], T0)
    with pytest.raises(RuntimeError):
        with s.transaction():
            s.enqueue([task("b")], T0)
            s.lease("q", 2, "w", T0, 30)
            raise RuntimeError
    s.close()
    conn = sqlite3.connect(tmp_path / "conveyor.db")
    try:
        assert conn.execute("SELECT id, state, attempts FROM tasks").fetchall() \
            == [("a", READY, 0)]
    finally:
        conn.close()


def test_sqlite_calls_outside_a_transaction_commit_by_themselves(tmp_path):
    s = SQLiteStore(tmp_path)
    other = sqlite3.connect(tmp_path / "conveyor.db")
    try:
        s.enqueue([task("a")], T0)
        assert other.execute("SELECT count(*) FROM tasks").fetchone()[0] == 1
        with s.transaction():
            s.enqueue([task("b")], T0)
            assert other.execute("SELECT count(*) FROM tasks").fetchone()[0] == 1
        assert other.execute("SELECT count(*) FROM tasks").fetchone()[0] == 2
    finally:
        other.close()
        s.close()


def test_sqlite_corrupt_file_raises_store_error(tmp_path):
    (tmp_path / "conveyor.db").write_bytes(os.urandom(4096))
    with pytest.raises(StoreError, match=r"cannot open store at .*conveyor\.db.*not a database"):
        SQLiteStore(tmp_path)


def test_sqlite_foreign_database_raises_store_error(tmp_path):
    conn = sqlite3.connect(tmp_path / "conveyor.db")
    conn.execute("CREATE TABLE something (x)")
    conn.commit()
    conn.close()
    with pytest.raises(StoreError, match="not a conveyor store"):
        SQLiteStore(tmp_path)


def test_sqlite_newer_schema_raises_store_error(tmp_path):
    SQLiteStore(tmp_path).close()
    conn = sqlite3.connect(tmp_path / "conveyor.db")
    conn.execute("PRAGMA user_version = 99")
    conn.close()
    with pytest.raises(StoreError, match="schema version 99"):
        SQLiteStore(tmp_path)


def test_sqlite_unwritable_location_raises_store_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(StoreError, match=str(blocker)):
        SQLiteStore(blocker / "data")
    with pytest.raises(StoreError, match=str(blocker)):
        SQLiteStore(blocker)


def test_sqlite_errors_during_operation_are_store_errors(tmp_path):
    s = SQLiteStore(tmp_path)
    other = sqlite3.connect(tmp_path / "conveyor.db", isolation_level=None)
    try:
        s.conn.execute("PRAGMA busy_timeout = 50")
        other.execute("BEGIN IMMEDIATE")  # another writer holds the lock
        with pytest.raises(StoreError, match="locked"):
            s.enqueue([task("a")], T0)
        with pytest.raises(StoreError):
            with s.transaction():
                pass
        other.execute("ROLLBACK")
        assert s.enqueue([task("a")], T0) == [True]  # recovers once the lock is gone
    finally:
        other.close()
        s.close()
    with pytest.raises(StoreError, match="closed"):
        s.get("a")


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
@pytest.mark.parametrize("sync", ["normal", "full"])
def test_sqlite_commits_survive_sigkill(tmp_path, sync):
    src = Path(store_pkg.__file__).resolve().parents[2]
    child = textwrap.dedent("""
        import sys, time
        from conveyor.store import NewTask, SQLiteStore
        store = SQLiteStore(sys.argv[1], sync=sys.argv[2])
        for i in range(1000):
            store.enqueue([NewTask(f"k{i}", "q", None, b"p%d" % i)], 1000.0)
        print("done", flush=True)
        time.sleep(120)
    """)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(src), env.get("PYTHONPATH")]))
    proc = subprocess.Popen([sys.executable, "-c", child, str(tmp_path), sync],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    try:
        ready, _, _ = select.select([proc.stdout], [], [], 60)
        assert ready, "child did not finish enqueueing in time"
        line = proc.stdout.readline()
        assert line.strip() == b"done", (line, proc.stderr.read() if proc.poll() is not None else b"")
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=10) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        proc.stdout.close()
        proc.stderr.close()
    s = SQLiteStore(tmp_path)
    try:
        assert s.stats()["q"] == QueueStats(ready=1000)
        leases = s.lease("q", 2000, "w", T0, 30)
        assert ids(leases) == [f"k{i}" for i in range(1000)]
        assert leases[999].payload == b"p999"
    finally:
        s.close()


def test_sqlite_options_and_errors_are_msgpack(tmp_path):
    s = SQLiteStore(tmp_path)
    try:
        s.enqueue([task("a", options={"timeout": 1.5})], T0)
        s.lease("q", 1, "w", T0, 30)
        s.nack("a", 1, T0, error=b"e")
        blob_options, blob_errors = s.conn.execute(
            "SELECT options, errors FROM tasks WHERE id = 'a'").fetchone()
        assert serde.unpackb(blob_options) == {"timeout": 1.5}
        assert serde.unpackb(blob_errors) == [b"e"]
    finally:
        s.close()


def test_pending_counts_per_queue(store):
    assert store.pending_counts("q") == (0, 0, 0)
    store.enqueue([task("a"), task("b"), task("c", not_before=T0 + 50), task("x", queue="other")], T0)
    store.lease("q", 1, "w", T0, 30)
    assert store.pending_counts("q") == (1, 1, 1)
    assert store.pending_counts("other") == (1, 0, 0)
    store.complete([ok("a", 1)], T0)
    assert store.pending_counts("q") == (1, 1, 0)
