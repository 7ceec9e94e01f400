"""Conformance tests of each task's attempt history and of ``Store.dependents``.

Every store keeps, per task, a record of each attempt that ended (its worker,
lease and start times, outcome, error and output), written in the transaction
that ends the attempt, the last ``ATTEMPTS_KEPT`` of them, purged with the
task. Mixed into a store's test class beside
:class:`~conveyor.store.conformance.StoreConformance` (which see for the
``store`` fixture); importing this module needs pytest.
"""

from __future__ import annotations

import pytest

from conveyor.records import (
    ATTEMPT_CANCELLED,
    ATTEMPT_DEFERRED,
    ATTEMPT_FAILED,
    ATTEMPT_LOST,
    ATTEMPT_RELEASED,
    ATTEMPT_RETRIED,
    ATTEMPT_SUCCEEDED,
    ATTEMPTS_KEPT,
    MAX_ATTEMPT_OUTPUT,
    SUCCEEDED,
    AttemptNote,
    AttemptRecord,
    Lease,
    NewTask,
    Outcome,
)
from conveyor.store.base import Store
from conveyor.store.conformance import T0, after, lease_one, task, task_info

W1 = {"name": "w1", "host": "h1", "pid": 11}
W2 = {"name": "w2", "host": "h2", "pid": 22}


def log(store: Store, task_id: str) -> list[AttemptRecord]:
    return task_info(store, task_id).attempt_log


def own(*task_ids: str) -> list[NewTask]:
    """Tasks each in a queue of its own (named as it), so leasing one leases no other."""
    return [task(tid, tid) for tid in task_ids]


def lease(store: Store, task_id: str, owner: str = "w", now: float = T0) -> Lease:
    return lease_one(store, task_id, task_id, owner, now)


class AttemptsConformance:
    """Mixin: the attempt-history semantics every store must have."""

    def test_a_fresh_task_has_no_attempts_and_keeps_its_arguments(self, store: Store) -> None:
        t = task("a", payload=b"\x92\x01\x02")
        t.codec = "pickle"
        store.enqueue([t], T0)
        info = task_info(store, "a")
        assert info.attempt_log == []
        assert (info.payload, info.codec) == (b"\x92\x01\x02", "pickle")

    def test_retried_then_succeeded_attempts_keep_worker_times_error_and_output(
            self, store: Store) -> None:
        store.enqueue(own("a"), T0)
        first = lease(store, "a", owner="s1", now=T0 + 1)
        assert store.nack("a", first.token, T0 + 3, error=b"err1",
                          note=AttemptNote(W1, T0 + 2, "printed 1\n"))
        second = lease(store, "a", owner="s2", now=T0 + 4)
        done = Outcome("a", second.token, True, b"v", output="printed 2\n", worker=W2,
                       started_at=T0 + 5)
        assert store.complete([done], T0 + 6) == ["stored"]
        assert log(store, "a") == [
            AttemptRecord(1, "s1", W1, T0 + 1, T0 + 2, T0 + 3, ATTEMPT_RETRIED, b"err1",
                          "printed 1\n"),
            AttemptRecord(2, "s2", W2, T0 + 4, T0 + 5, T0 + 6, ATTEMPT_SUCCEEDED, None,
                          "printed 2\n"),
        ]

    def test_failure_dead_and_deferral_outcomes(self, store: Store) -> None:
        store.enqueue(own("f", "d", "r"), T0)
        f = lease(store, "f")
        store.complete([Outcome("f", f.token, False, b"boom", worker=W1)], T0 + 1)
        d = lease(store, "d")
        store.nack("d", d.token, T0 + 1, error=b"last", dead=True,
                   note=AttemptNote(W1, outcome="timed out"))
        r = lease(store, "r")
        store.nack("r", r.token, T0 + 1)  # a rate limit's deferral: no attempt ran
        assert log(store, "r") == []
        r = lease(store, "r", now=T0 + 10)
        store.nack("r", r.token, T0 + 11, note=AttemptNote(output="deferred itself"))
        assert [(a.outcome, a.error, a.worker) for a in log(store, "f")] == \
            [(ATTEMPT_FAILED, b"boom", W1)]
        assert [(a.outcome, a.error) for a in log(store, "d")] == [("timed out", b"last")]
        assert [(a.number, a.outcome, a.error, a.output) for a in log(store, "r")] == \
            [(2, ATTEMPT_DEFERRED, None, "deferred itself")]

    def test_a_stale_report_adds_no_attempt(self, store: Store) -> None:
        store.enqueue(own("a"), T0)
        first = lease(store, "a")
        store.expire_leases(T0 + 100)
        lease(store, "a", now=T0 + 101)
        assert not store.nack("a", first.token, T0 + 102, error=b"late")
        assert store.complete([Outcome("a", first.token, False, b"late")], T0 + 102) == ["stale"]
        assert [a.outcome for a in log(store, "a")] == [ATTEMPT_LOST]

    def test_a_late_success_replaces_the_record_of_its_lost_attempt(self, store: Store) -> None:
        store.enqueue(own("a"), T0)
        first = lease(store, "a", owner="s1")
        store.expire_leases(T0 + 100)  # lost, and not leased again since
        done = Outcome("a", first.token, True, b"v", output="late", worker=W1)
        assert store.complete([done], T0 + 102) == ["stored"]
        got = log(store, "a")
        assert [(a.number, a.outcome, a.output) for a in got] == \
            [(1, ATTEMPT_SUCCEEDED, "late")]

    def test_lost_leases_by_expiry_owner_release_and_restart(self, store: Store) -> None:
        store.enqueue(own("e", "o", "r", "all"), T0)
        lease(store, "e", owner="s1")
        assert store.expire_leases(T0 + 100, workers={"s1": W1}) == ["e"]
        lease(store, "o", owner="s2")
        assert store.release_owner("s2", T0 + 2, note=AttemptNote(W2)) == ["o"]
        r = lease(store, "r", owner="s3")
        assert store.release([("r", r.token)], T0 + 3, note=AttemptNote(W1)) == 1
        lease(store, "all", owner="s4")
        assert store.release_all(T0 + 4) == 1
        assert [(a.outcome, a.owner, a.worker, a.leased_at) for a in log(store, "e")] == \
            [(ATTEMPT_LOST, "s1", W1, T0)]
        assert [(a.outcome, a.worker, a.finished_at) for a in log(store, "o")] == \
            [(ATTEMPT_LOST, W2, T0 + 2)]
        assert [(a.outcome, a.worker) for a in log(store, "r")] == [(ATTEMPT_RELEASED, W1)]
        assert [(a.outcome, a.worker) for a in log(store, "all")] == [(ATTEMPT_LOST, None)]

    def test_cancelling_a_leased_task_ends_its_attempt(self, store: Store) -> None:
        store.enqueue(own("a", "b"), T0)
        lease(store, "a", owner="s1")
        store.cancel("a", T0 + 1, b"cancelled")
        store.cancel("b", T0 + 1, b"cancelled")
        assert [(a.number, a.outcome, a.owner) for a in log(store, "a")] == \
            [(1, ATTEMPT_CANCELLED, "s1")]
        assert log(store, "b") == []

    def test_output_is_capped_to_its_last_part(self, store: Store) -> None:
        store.enqueue(own("a"), T0)
        got = lease(store, "a")
        text = "x" * MAX_ATTEMPT_OUTPUT + "the end"
        store.complete([Outcome("a", got.token, True, b"", output=text)], T0 + 1)
        [a] = log(store, "a")
        assert a.output is not None and len(a.output) == MAX_ATTEMPT_OUTPUT
        assert a.output.endswith("the end")

    def test_only_the_last_attempts_are_kept(self, store: Store) -> None:
        store.enqueue(own("a"), T0)
        n = ATTEMPTS_KEPT + 3
        for i in range(n):
            got = lease(store, "a", now=T0 + i)
            store.nack("a", got.token, T0 + i, error=f"e{i}".encode())
        kept = log(store, "a")
        assert [a.number for a in kept] == list(range(n - ATTEMPTS_KEPT + 1, n + 1))
        assert kept[-1].error == f"e{n - 1}".encode()

    def test_attempts_roll_back_with_their_transaction(self, store: Store) -> None:
        store.enqueue(own("a"), T0)
        got = lease(store, "a")
        with pytest.raises(RuntimeError), store.transaction():
            store.nack("a", got.token, T0 + 1, error=b"e")
            raise RuntimeError("undo")
        assert log(store, "a") == []

    def test_purges_remove_the_attempts(self, store: Store) -> None:
        store.enqueue(own("a", "b"), T0)
        for tid in ("a", "b"):
            got = lease(store, tid)
            store.complete([Outcome(tid, got.token, True, b"", output="out")], T0 + 1)
        assert store.purge(states=[SUCCEEDED]) == 2
        store.enqueue(own("a"), T0 + 2)  # the same id again starts a clean history
        assert log(store, "a") == []
        store.enqueue(own("c"), T0)
        got = lease(store, "c")
        store.complete([Outcome("c", got.token, True, b"")], T0 + 1)
        assert store.purge_finished(T0 + 10) == 1
        store.enqueue(own("c"), T0 + 11)
        assert log(store, "c") == []

    def test_dependents_lists_the_tasks_waiting_on_a_task(self, store: Store) -> None:
        store.enqueue([task("p"), task("lonely"), after("c1", "p"), after("c2", "p"),
                       after("c3", "p", "lonely")], T0)
        assert store.dependents("p") == ["c1", "c2", "c3"]
        assert store.dependents("p", limit=2) == ["c1", "c2"]
        assert store.dependents("lonely") == ["c3"]
        assert store.dependents("c1") == []
        assert store.dependents("nope") == []
        with pytest.raises(ValueError):
            store.dependents("p", limit=0)
