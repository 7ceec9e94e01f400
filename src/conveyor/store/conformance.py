"""The store conformance suite: the semantics every :class:`~conveyor.store.Store` must have.

Every test here takes a ``store`` fixture (a fresh, empty store) and uses only
the :class:`~conveyor.store.base.Store` interface, so the same tests run on
every implementation. Importing this module needs pytest; nothing in conveyor
imports it.

A new store plugs in with one fixture: in a test module, subclass
:class:`StoreConformance` and give it a ``store`` fixture that yields a new,
empty store and closes it afterwards::

    import pytest
    from conveyor.store.conformance import StoreConformance

    class TestPostgresStore(StoreConformance):
        @pytest.fixture
        def store(self, postgres_dsn):
            s = PostgresStore(postgres_dsn)
            try:
                yield s
            finally:
                s.drop_everything_and_close()

pytest then collects every test of the suite for that store (and a
``params=[...]`` fixture runs it once per parameter, e.g. per sync mode).
tests/unit/test_store_conformance.py does this for MemoryStore and
SQLiteStore. Tests of one store's own promises (durability, files, schema
migrations) live beside that store's tests, not here. The helpers below
(``task``, ``ok``, ``fail``, ...) build the records the tests use.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import pytest

from conveyor import serde
from conveyor.records import (
    CANCELLED,
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
    WAITING,
    Lease,
    NewTask,
    Outcome,
    QueueStats,
    TaskInfo,
)
from conveyor.store.base import Store, dependency_failed_error

T0 = 1_000.0


def task(task_id: str, queue: str = "q", *, priority: int = 0, not_before: float = 0.0,
         payload: bytes | None = None, name: str | None = "mod.fn",
         options: dict[str, Any] | None = None) -> NewTask:
    return NewTask(task_id, queue, name, payload if payload is not None else task_id.encode(),
                   "msgpack", priority, not_before, options or {})


def ok(task_id: str, token: int, payload: bytes = b"ok") -> Outcome:
    return Outcome(task_id, token, True, payload)


def fail(task_id: str, token: int, payload: bytes = b"boom") -> Outcome:
    return Outcome(task_id, token, False, payload)


class Tokens:
    """The token of every lease a test was handed, by task id and attempt number.

    Tokens are random, so a test names "the token of task a's attempt 2" as
    ``t("a", 2)`` (``t("a")``: its latest). Made by the ``t`` fixture, which
    records what ``store.lease`` and ``store.take`` return from then on.
    """

    def __init__(self, store: Store) -> None:
        self._by: dict[str, list[int]] = {}
        lease, take = store.lease, store.take

        def leasing(queue: str, limit: int, owner: str, now: float, lease_for: float) -> list[Lease]:
            return self._note(lease(queue, limit, owner, now, lease_for))

        def taking(queue: str, limit: int, owner: str, now: float) -> list[Lease]:
            return self._note(take(queue, limit, owner, now))

        store.lease = leasing  # type: ignore[method-assign]
        store.take = taking  # type: ignore[method-assign]

    def _note(self, got: list[Lease]) -> list[Lease]:
        for x in got:
            seen = self._by.setdefault(x.id, [])
            if x.token not in seen:  # take may go through lease: one attempt, one token
                seen.append(x.token)
        return got

    def __call__(self, task_id: str, attempt: int | None = None) -> int:
        seen = self._by[task_id]
        return seen[-1] if attempt is None else seen[attempt - 1]


def task_info(store: Store, task_id: str) -> TaskInfo:
    """``store.get(task_id)``, which must exist."""
    found = store.get(task_id)
    assert found is not None, f"no task {task_id}"
    return found


def ids(leases: Sequence[Lease]) -> list[str]:
    return [lease.id for lease in leases]


def schedule_record(name: str = "nightly", **fields: Any) -> dict[str, Any]:
    rec = {"name": name, "task": "mod:fn", "queue": "q", "payload": serde.packb([[1], {}]),
           "codec": "msgpack", "cron": "*/5 * * * *", "every": None, "tz": "Europe/Paris",
           "missed": "run_once", "options": {"timeout": 5}, "source": "cli", "created_at": T0}
    rec.update(fields)
    return rec


def after(task_id: str, *deps: str, **kw: Any) -> NewTask:
    t = task(task_id, **kw)
    t.after = list(deps)
    return t


def lease_one(store: Store, task_id: str, queue: str = "q", owner: str = "w",
              now: float = T0) -> Lease:
    leases = store.lease(queue, 1000, owner, now, 30)
    mine = [x for x in leases if x.id == task_id]
    others = [(x.id, x.token) for x in leases if x.id != task_id]
    if others:
        store.release(others, now)
    assert mine, f"{task_id} was not ready"
    return mine[0]


def dep_error(dep_id: str, state: str) -> bytes:
    return dependency_failed_error(dep_id, state)


def assert_dep_failed(store: Store, task_id: str, dep_id: str, state: str, now: float) -> None:
    info = task_info(store, task_id)
    assert (info.state, info.finished_at, info.lease_owner) == (FAILED, now, None)
    assert info.result is not None
    assert (info.result.ok, info.result.codec, info.result.state) == (False, "msgpack", FAILED)
    assert info.result.payload == dep_error(dep_id, state)
    assert serde.unpackb(info.result.payload)["dependency"] == dep_id
    assert store.results([task_id])[task_id].payload == dep_error(dep_id, state)


def _dead(store: Store, task_id: str, now: float, *errors: bytes) -> None:
    """Lease ``task_id`` and fail it once per error, the last one killing it."""
    for i, err in enumerate(errors):
        lease = lease_one(store, task_id, queue=task_info(store, task_id).queue, now=now)
        assert store.nack(task_id, lease.token, now, error=err, dead=i == len(errors) - 1)


class StoreConformance:
    """The conformance tests; subclass in a test module and add a ``store`` fixture."""

    @pytest.fixture
    def t(self, store: Store) -> Tokens:
        """The tokens of the leases the test takes (see :class:`Tokens`)."""
        return Tokens(store)

    # -- enqueue / get -------------------------------------------------------------


    def test_enqueue_reports_new_ids_and_get_shows_them(self, store: Store) -> None:
        assert store.enqueue([task("a", options={"retries": 3, "tags": ["x", 1]}), task("b")], T0) \
            == [True, True]
        info = task_info(store, "a")
        assert info is not None
        assert (info.id, info.queue, info.name, info.state) == ("a", "q", "mod.fn", READY)
        assert (info.priority, info.attempts, info.created_at, info.not_before) == (0, 0, T0, 0.0)
        assert (info.lease_owner, info.lease_deadline, info.started_at, info.finished_at) \
            == (None, None, None, None)
        assert info.options == {"retries": 3, "tags": ["x", 1]}
        assert info.errors == []
        assert info.result is None
        assert store.enqueue([], T0) == []

    def test_enqueue_is_idempotent_by_id(self, store: Store) -> None:
        assert store.enqueue([task("a", payload=b"first", priority=1)], T0) == [True]
        again = [task("a", "other", payload=b"second", priority=9), task("c")]
        assert store.enqueue(again, T0 + 5) == [False, True]
        info = task_info(store, "a")
        assert (info.queue, info.priority, info.created_at) == ("q", 1, T0)
        assert store.lease("other", 10, "w", T0, 30) == []
        [lease] = store.lease("q", 1, "w", T0, 30)
        assert (lease.id, lease.payload) == ("a", b"first")

    def test_enqueue_same_id_twice_in_one_batch(self, store: Store) -> None:
        assert store.enqueue([task("a", payload=b"1"), task("a", payload=b"2")], T0) == [True, False]
        assert [(lease.id, lease.payload) for lease in store.lease("q", 10, "w", T0, 30)] \
            == [("a", b"1")]

    def test_enqueue_an_existing_finished_task_changes_nothing(self, store: Store) -> None:
        store.enqueue([task("a")], T0)
        [lease] = store.lease("q", 1, "w", T0, 30)
        assert store.complete([ok("a", lease.token)], T0) == [STORED]
        assert store.enqueue([task("a")], T0 + 1) == [False]
        assert task_info(store, "a").state == SUCCEEDED
        assert store.lease("q", 1, "w", T0, 30) == []

    def test_get_unknown_is_none(self, store: Store) -> None:
        assert store.get("nope") is None

    # -- lease ---------------------------------------------------------------------


    def test_lease_is_priority_first_then_fifo(self, store: Store) -> None:
        store.enqueue([task("a"), task("b", priority=5), task("c"), task("d", priority=5),
                       task("e", priority=-1), task("f", priority=10)], T0)
        assert ids(store.lease("q", 2, "w", T0, 30)) == ["f", "b"]
        assert ids(store.lease("q", 10, "w", T0, 30)) == ["d", "a", "c", "e"]
        assert store.lease("q", 10, "w", T0, 30) == []

    def test_fifo_survives_many_tasks(self, store: Store) -> None:
        store.enqueue([task(f"t{i:04d}") for i in range(300)], T0)
        got = []
        while batch := store.lease("q", 7, "w", T0, 30):
            got.extend(ids(batch))
        assert got == [f"t{i:04d}" for i in range(300)]

    def test_lease_fields_token_owner_deadline(self, store: Store) -> None:
        store.enqueue([task("a", payload=b"\x00data", options={"k": "v"})], T0)
        [lease] = store.lease("q", 1, "w1", T0 + 1, 30)
        assert (lease.id, lease.queue, lease.name, lease.payload, lease.codec) \
            == ("a", "q", "mod.fn", b"\x00data", "msgpack")
        assert 0 <= lease.token < 2 ** 64
        assert lease.options == {"k": "v"}
        info = task_info(store, "a")
        assert (info.state, info.attempts, info.lease_owner) == (LEASED, 1, "w1")
        assert info.lease_deadline == T0 + 31
        assert info.started_at == T0 + 1
        assert store.release([("a", lease.token)], T0 + 2) == 1
        [lease2] = store.lease("q", 1, "w2", T0 + 3, 10)
        assert lease2.token != lease.token  # a new random token for every lease
        info = task_info(store, "a")
        assert (info.attempts, info.lease_owner, info.lease_deadline, info.started_at) \
            == (2, "w2", T0 + 13, T0 + 3)

    def test_lease_only_its_queue_and_nothing_for_limit_zero(self, store: Store) -> None:
        store.enqueue([task("a", "q1"), task("b", "q2")], T0)
        assert store.lease("q1", 0, "w", T0, 30) == []
        assert ids(store.lease("q2", 5, "w", T0, 30)) == ["b"]
        assert store.lease("missing", 5, "w", T0, 30) == []
        assert ids(store.lease("q1", 5, "w", T0, 30)) == ["a"]

    def test_leases_are_never_handed_out_twice_across_threads(self, store: Store) -> None:
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


    def test_delayed_tasks_wait_for_promote_due(self, store: Store) -> None:
        store.enqueue([task("later", not_before=T0 + 10), task("now", not_before=T0)], T0)
        assert task_info(store, "later").state == DELAYED
        assert task_info(store, "now").state == READY  # not_before == now is not in the future
        assert store.next_due() == T0 + 10
        assert ids(store.lease("q", 10, "w", T0 + 20, 30)) == ["now"]  # lease never promotes
        assert store.promote_due(T0 + 9.5) == []
        assert task_info(store, "later").state == DELAYED
        assert store.promote_due(T0 + 10) == ["q"]
        assert task_info(store, "later").state == READY
        assert store.next_due() is None
        assert ids(store.lease("q", 10, "w", T0 + 10, 30)) == ["later"]
        assert store.promote_due(T0 + 100) == []

    def test_promote_due_deduplicates_queues_and_next_due_is_the_earliest(self, store: Store) -> None:
        store.enqueue([task("a", "q1", not_before=T0 + 3), task("b", "q1", not_before=T0 + 1),
                       task("c", "q2", not_before=T0 + 2), task("d", "q3", not_before=T0 + 50)], T0)
        assert store.next_due() == T0 + 1
        assert sorted(store.promote_due(T0 + 5)) == ["q1", "q2"]
        assert store.next_due() == T0 + 50
        assert ids(store.lease("q1", 10, "w", T0 + 5, 30)) == ["a", "b"]  # enqueue order
        assert task_info(store, "d").state == DELAYED

    def test_promoted_tasks_keep_priority_order(self, store: Store) -> None:
        store.enqueue([task("r0"), task("d5", priority=5, not_before=T0 + 1)], T0)
        store.promote_due(T0 + 1)
        assert ids(store.lease("q", 10, "w", T0 + 1, 30)) == ["d5", "r0"]

    # -- complete ------------------------------------------------------------------


    def test_complete_success_then_duplicate(self, store: Store) -> None:
        store.enqueue([task("a")], T0)
        [lease] = store.lease("q", 1, "w", T0, 30)
        assert store.complete([Outcome("a", lease.token, True, b"value", "pickle")], T0 + 1) \
            == [STORED]
        info = task_info(store, "a")
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

    def test_each_lease_gets_a_new_random_64_bit_token(self, store: Store) -> None:
        store.enqueue([task(f"t{i:02d}") for i in range(64)], T0)
        got = store.lease("q", 64, "w", T0, 30)
        tokens = [x.token for x in got]
        assert all(isinstance(x, int) and 0 <= x < 2 ** 64 for x in tokens)
        assert len(set(tokens)) == 64
        # All 64 bits are random: tokens fall in both halves of the range (a store that
        # kept only 63 bits, or the attempt number, would not: 2**-63 odds of a false alarm).
        assert min(tokens) < 2 ** 63 <= max(tokens)
        assert store.release([(x.id, x.token) for x in got], T0 + 1) == 64
        again = store.lease("q", 64, "w", T0 + 2, 30)
        assert len(again) == 64 and not {x.token for x in again} & set(tokens)
        assert {task_info(store, x.id).attempts for x in again} == {2}  # the attempt number stays

    def test_a_wrong_or_old_token_settles_nothing(self, store: Store) -> None:
        store.enqueue([task("a")], T0)
        [old] = store.lease("q", 1, "w1", T0, 10)
        assert store.expire_leases(T0 + 10) == ["a"]
        [new] = store.lease("q", 1, "w2", T0 + 11, 30)
        assert store.set_progress("a", new.token, {"done": 1}) is True
        for bad in (old.token, new.token ^ 1, new.token ^ (1 << 63), 1, 2, 0):
            assert store.complete([ok("a", bad), fail("a", bad)], T0 + 12) == [STALE, STALE]
            assert store.nack("a", bad, T0 + 12, error=b"forged", dead=True) is False
            assert store.release([("a", bad)], T0 + 12) == 0
            assert store.set_progress("a", bad, {"done": 9}) is False
            assert store.adopt([("a", bad)], "thief", T0 + 12, 30) == []
        info = task_info(store, "a")
        assert (info.state, info.lease_owner, info.attempts, info.errors, info.result) \
            == (LEASED, "w2", 2, [], None)
        assert info.lease_deadline == T0 + 41 and info.progress == {"done": 1}
        assert store.extend_owner("thief", T0 + 12, 100) == 0
        assert store.complete([ok("a", new.token, b"mine")], T0 + 13) == [STORED]
        assert store.results(["a"])["a"].payload == b"mine"

    def test_adopt_passes_leases_whose_token_holds_to_the_new_session(self, store: Store) -> None:
        store.enqueue([task("held"), task("dropped"), task("taken"), task("done"), task("w")], T0)
        [held] = store.lease("q", 1, "s1", T0, 30)
        [dropped] = store.lease("q", 1, "s1", T0, 5)
        [taken] = store.lease("q", 1, "s1", T0, 5)
        [done] = store.lease("q", 1, "s1", T0, 30)
        assert store.expire_leases(T0 + 5) == ["dropped", "taken"]
        [again] = store.lease("q", 1, "s2", T0 + 6, 30)  # someone else took "dropped" since
        assert again.id == "dropped"
        assert store.complete([ok("done", done.token)], T0 + 6) == [STORED]
        assert store.stats()["q"] == QueueStats(ready=2, leased=2, succeeded=1)
        pairs = [("held", held.token), ("dropped", dropped.token), ("taken", taken.token),
                 ("done", done.token), ("zz", 5), ("held", held.token ^ 1), ("held", held.token)]
        assert store.adopt(pairs, "s9", T0 + 7, 30) == ["held", "taken"]
        info = task_info(store, "held")
        assert (info.state, info.lease_owner, info.lease_deadline, info.attempts) \
            == (LEASED, "s9", T0 + 37, 1)
        info = task_info(store, "taken")  # expired, not leased since: leased again, same attempt
        assert (info.state, info.lease_owner, info.lease_deadline, info.attempts) \
            == (LEASED, "s9", T0 + 37, 1)
        assert task_info(store, "dropped").lease_owner == "s2"  # another token holds it
        assert store.stats()["q"] == QueueStats(ready=1, leased=3, succeeded=1)
        assert store.pending_counts("q") == (1, 0, 3)
        assert ids(store.lease("q", 10, "s2", T0 + 8, 30)) == ["w"]  # adopted: not ready any more
        assert store.release_owner("s1", T0 + 8) == []
        assert store.expire_leases(T0 + 35) == []  # the new deadline holds
        assert store.extend_owner("s9", T0 + 36, 30) == 2
        assert store.complete([ok("held", held.token)], T0 + 37) == [STORED]
        assert store.nack("taken", taken.token, T0 + 37, error=b"e") is True
        assert store.adopt([], "s9", T0, 30) == []

    def test_complete_success_from_an_old_lease_is_stale(self, store: Store) -> None:
        # Only the lease holder settles: an earlier attempt's success, once the task was
        # leased again, changes nothing (the current holder's result is the one stored).
        store.enqueue([task("a")], T0)
        [first] = store.lease("q", 1, "w1", T0, 10)
        assert store.expire_leases(T0 + 10) == ["a"]
        [second] = store.lease("q", 1, "w2", T0 + 11, 10)
        assert first.token != second.token
        assert store.complete([ok("a", first.token, b"late")], T0 + 12) == [STALE]
        info = task_info(store, "a")
        assert (info.state, info.lease_owner, info.attempts, info.result) == (LEASED, "w2", 2, None)
        assert store.complete([ok("a", second.token, b"current")], T0 + 13) == [STORED]
        assert store.complete([ok("a", first.token, b"late")], T0 + 14) == [DUPLICATE]
        assert store.results(["a"])["a"].payload == b"current"

    def test_a_late_success_of_the_last_lease_is_stored_until_leased_again(self, store: Store) -> None:
        store.enqueue([task("a")], T0)
        [first] = store.lease("q", 1, "w1", T0, 10)
        assert store.release_owner("w1", T0 + 1) == ["a"]  # its connection dropped
        assert store.complete([ok("a", first.token, b"late")], T0 + 2) == [STORED]
        info = task_info(store, "a")
        assert (info.state, info.lease_owner, info.attempts) == (SUCCEEDED, None, 1)
        assert store.results(["a"])["a"].payload == b"late"
        assert store.lease("q", 1, "w2", T0 + 3, 10) == []

    def test_complete_success_for_a_released_or_delayed_task(self, store: Store) -> None:
        store.enqueue([task("a"), task("b")], T0)
        leases = store.lease("q", 2, "w", T0, 30)
        tok = {x.id: x.token for x in leases}
        assert store.release([("a", tok["a"])], T0) == 1
        assert store.nack("b", tok["b"], T0, delay=60) is True
        assert store.complete([ok("a", tok["a"]), ok("b", tok["b"])], T0 + 1) == [STORED, STORED]
        assert [task_info(store, x).state for x in ("a", "b")] == [SUCCEEDED, SUCCEEDED]
        assert store.lease("q", 10, "w", T0 + 1, 30) == []
        assert store.promote_due(T0 + 100) == []
        assert store.next_due() is None
        assert len(leases) == 2

    def test_complete_refuses_tokens_never_issued(self, store: Store) -> None:
        store.enqueue([task("a")], T0)
        assert store.complete([ok("a", 1), ok("a", 0)], T0) == [STALE, STALE]  # never leased
        [lease] = store.lease("q", 1, "w", T0, 30)
        guesses = [1, 2, 0, lease.token ^ 1, (lease.token + 1) % 2 ** 64, 2 ** 64 - 1]
        assert store.complete([ok("a", g) for g in guesses if g != lease.token], T0) \
            == [STALE] * sum(1 for g in guesses if g != lease.token)
        assert task_info(store, "a").state == LEASED

    def test_complete_failure_from_a_stale_token_is_stale(self, store: Store) -> None:
        store.enqueue([task("a")], T0)
        [first] = store.lease("q", 1, "w1", T0, 10)
        assert store.release([("a", first.token)], T0 + 1) == 1
        [second] = store.lease("q", 1, "w2", T0 + 2, 10)
        assert store.complete([fail("a", first.token)], T0 + 3) == [STALE]
        info = task_info(store, "a")
        assert (info.state, info.lease_owner, info.attempts, info.result) == (LEASED, "w2", 2, None)
        assert store.results(["a"]) == {}
        assert store.complete([fail("a", second.token, b"err")], T0 + 4) == [STORED]
        info = task_info(store, "a")
        assert (info.state, info.lease_owner, info.finished_at) == (FAILED, None, T0 + 4)
        assert info.result is not None
        assert (info.result.ok, info.result.payload, info.result.state) == (False, b"err", FAILED)
        assert store.complete([ok("a", second.token)], T0 + 5) == [DUPLICATE]

    def test_complete_failure_of_a_task_not_leased_is_stale(self, store: Store) -> None:
        store.enqueue([task("a")], T0)
        [lease] = store.lease("q", 1, "w", T0, 30)
        store.release([("a", lease.token)], T0)
        assert store.complete([fail("a", lease.token)], T0) == [STALE]
        assert task_info(store, "a").state == READY

    def test_complete_batch_keeps_order_and_handles_unknown(self, store: Store) -> None:
        store.enqueue([task("a"), task("b"), task("c")], T0)
        tok = {x.id: x.token for x in store.lease("q", 3, "w", T0, 30)}
        got = store.complete([ok("b", tok["b"]), Outcome("zz", 1, True, b""), fail("a", tok["a"]),
                              ok("b", tok["b"]), fail("c", tok["c"] ^ 7)], T0 + 1)
        assert got == [STORED, UNKNOWN, STORED, DUPLICATE, STALE]
        assert store.complete([], T0) == []
        assert [task_info(store, x).state for x in "abc"] == [FAILED, SUCCEEDED, LEASED]

    # -- nack ----------------------------------------------------------------------


    def test_nack_to_ready_delayed_and_dead_keeps_error_history(self, store: Store) -> None:
        store.enqueue([task("a")], T0)
        [lease] = store.lease("q", 1, "w", T0, 30)
        assert store.nack("a", lease.token, T0 + 1, error=b"e1") is True
        info = task_info(store, "a")
        assert (info.state, info.lease_owner, info.lease_deadline, info.errors) \
            == (READY, None, None, [b"e1"])

        [lease] = store.lease("q", 1, "w", T0 + 2, 30)
        assert task_info(store, "a").attempts == 2
        assert store.nack("a", lease.token, T0 + 3, delay=5, error=b"e2") is True
        info = task_info(store, "a")
        assert (info.state, info.not_before, info.errors) == (DELAYED, T0 + 8, [b"e1", b"e2"])
        assert store.next_due() == T0 + 8
        assert store.lease("q", 1, "w", T0 + 9, 30) == []
        assert store.promote_due(T0 + 8) == ["q"]

        [lease] = store.lease("q", 1, "w", T0 + 9, 30)
        assert task_info(store, "a").attempts == 3
        assert store.nack("a", lease.token, T0 + 10, error=b"e3", dead=True) is True
        info = task_info(store, "a")
        assert (info.state, info.finished_at, info.lease_owner) == (DEAD, T0 + 10, None)
        assert info.errors == [b"e1", b"e2", b"e3"]
        assert info.result is not None and info.result.ok is False
        assert info.result.payload == b"e3" and info.result.state == DEAD
        assert store.results(["a"])["a"].state == DEAD
        assert store.complete([ok("a", lease.token)], T0 + 11) == [DUPLICATE]
        assert store.lease("q", 1, "w", T0 + 11, 30) == []

    def test_nack_with_a_stale_token_changes_nothing(self, store: Store) -> None:
        store.enqueue([task("a")], T0)
        [old] = store.lease("q", 1, "w1", T0, 30)
        store.release_owner("w1", T0)
        [new] = store.lease("q", 1, "w2", T0, 30)
        assert store.nack("a", old.token, T0, error=b"old", dead=True) is False
        assert store.nack("a", 2, T0, error=b"attempt number") is False
        assert store.nack("a", new.token ^ 1, T0, error=b"guess") is False
        assert store.nack("missing", new.token, T0) is False
        info = task_info(store, "a")
        assert (info.state, info.lease_owner, info.attempts, info.errors) == (LEASED, "w2", 2, [])
        assert store.nack("a", new.token, T0) is True  # no error given: history stays empty
        assert task_info(store, "a").errors == []
        assert store.nack("a", new.token, T0) is False  # no longer leased

    # -- release / expiry --------------------------------------------------------------


    def test_release_counts_only_current_tokens(self, store: Store) -> None:
        store.enqueue([task("a"), task("b"), task("c")], T0)
        tok = {x.id: x.token for x in store.lease("q", 3, "w", T0, 30)}
        assert store.release([("a", tok["a"]), ("b", tok["b"] ^ 99), ("zz", tok["a"]),
                              ("a", tok["a"])], T0) == 1
        assert [task_info(store, x).state for x in "abc"] == [READY, LEASED, LEASED]
        assert task_info(store, "a").attempts == 1  # attempts never go back
        assert store.release([], T0) == 0
        assert store.release([("b", 1), ("c", 1)], T0) == 0  # attempt numbers are not tokens
        assert store.release([("b", tok["b"]), ("c", tok["c"])], T0) == 2
        again = store.lease("q", 3, "w", T0, 30)
        assert [task_info(store, x).attempts for x in "abc"] == [2, 2, 2]
        assert not {x.token for x in again} & set(tok.values())  # new tokens

    def test_release_owner_hands_back_only_that_owners_tasks(self, store: Store) -> None:
        store.enqueue([task("a"), task("b"), task("c")], T0)
        store.lease("q", 2, "w1", T0, 30)
        store.lease("q", 1, "w2", T0, 30)
        assert store.release_owner("w1", T0 + 1) == ["a", "b"]
        assert [task_info(store, x).state for x in "abc"] == [READY, READY, LEASED]
        assert task_info(store, "a").lease_owner is None
        assert store.release_owner("w1", T0 + 1) == []
        assert store.release_owner("nobody", T0 + 1) == []
        assert task_info(store, "c").lease_owner == "w2"

    def test_release_all_hands_back_every_lease(self, store: Store) -> None:
        store.enqueue([task("a"), task("b", "q2"), task("c")], T0)
        store.lease("q", 1, "w1", T0, 30)
        store.lease("q2", 1, "w2", T0, 30)
        assert store.release_all(T0) == 2
        assert [task_info(store, x).state for x in "abc"] == [READY, READY, READY]
        assert store.release_all(T0) == 0
        assert ids(store.lease("q", 5, "w", T0, 30)) == ["a", "c"]

    def test_extend_owner_keeps_leases_alive(self, store: Store) -> None:
        store.enqueue([task("a"), task("b"), task("c")], T0)
        store.lease("q", 1, "w1", T0, 10)
        store.lease("q", 2, "w2", T0, 10)
        assert store.extend_owner("w1", T0 + 8, 10) == 1
        assert store.extend_owner("ghost", T0 + 8, 10) == 0
        assert task_info(store, "a").lease_deadline == T0 + 18
        assert store.expire_leases(T0 + 9) == []
        assert sorted(store.expire_leases(T0 + 12)) == ["b", "c"]
        info = task_info(store, "a")
        assert (info.state, info.lease_owner) == (LEASED, "w1")
        assert [task_info(store, x).state for x in "bc"] == [READY, READY]
        assert store.extend_owner("w1", T0 + 17, 10) == 1
        assert store.expire_leases(T0 + 20) == []
        assert store.expire_leases(T0 + 27) == ["a"]  # a deadline reached counts as passed
        assert store.extend_owner("w1", T0 + 28, 10) == 0

    def test_expired_task_is_leased_again_with_a_new_token(self, store: Store) -> None:
        store.enqueue([task("a")], T0)
        [first] = store.lease("q", 1, "w1", T0, 5)
        assert store.expire_leases(T0 + 5) == ["a"]
        assert store.expire_leases(T0 + 6) == []
        [lease] = store.lease("q", 1, "w2", T0 + 6, 5)
        assert lease.token != first.token
        assert store.nack("a", first.token, T0 + 7) is False
        assert store.release_owner("w1", T0 + 7) == []

    # -- results / purge / stats -------------------------------------------------------


    def test_results_only_for_finished_tasks(self, store: Store, t: Tokens) -> None:
        store.enqueue([task("ok"), task("bad"), task("leased"), task("ready")], T0)
        store.lease("q", 3, "w", T0, 30)
        store.complete([ok("ok", t("ok", 1), b"1"), fail("bad", t("bad", 1), b"2")], T0 + 1)
        got = store.results(["ok", "bad", "leased", "ready", "unknown", "ok"])
        assert set(got) == {"ok", "bad"}
        assert (got["ok"].id, got["ok"].ok, got["ok"].payload, got["ok"].codec) \
            == ("ok", True, b"1", "msgpack")
        assert (got["ok"].state, got["ok"].finished_at) == (SUCCEEDED, T0 + 1)
        assert (got["bad"].ok, got["bad"].payload, got["bad"].state) == (False, b"2", FAILED)
        assert store.results([]) == {}

    def test_purge_finished_deletes_old_finished_tasks_only(self, store: Store, t: Tokens) -> None:
        store.enqueue([task("a"), task("b"), task("c"), task("d")], T0)
        store.lease("q", 3, "w", T0, 30)
        store.complete([ok("a", t("a", 1))], T0 + 10)
        store.complete([fail("b", t("b", 1))], T0 + 20)
        assert store.purge_finished(T0 + 10) == 0  # strictly before
        assert store.purge_finished(T0 + 15) == 1
        assert store.get("a") is None
        assert set(store.results(["a", "b"])) == {"b"}
        assert store.purge_finished(T0 + 1000) == 1
        assert store.get("b") is None
        assert task_info(store, "c").state == LEASED and task_info(store, "d").state == READY
        assert store.stats()["q"] == QueueStats(ready=1, leased=1)
        # A purged id is unknown again: completing it says so, enqueueing it is new.
        assert store.complete([ok("a", t("a", 1))], T0) == [UNKNOWN]
        assert store.enqueue([task("a")], T0) == [True]

    def test_stats_counts_by_state_per_queue(self, store: Store, t: Tokens) -> None:
        assert store.stats() == {}
        store.enqueue([task("a"), task("b"), task("c"), task("d"), task("e", not_before=T0 + 5),
                       task("x", "other")], T0)
        store.lease("q", 4, "w", T0, 30)
        store.complete([ok("a", t("a", 1)), fail("b", t("b", 1))], T0)
        store.nack("c", t("c", 1), T0, dead=True)
        stats = store.stats()
        assert set(stats) == {"q", "other"}
        assert stats["q"] == QueueStats(ready=0, delayed=1, leased=1, succeeded=1, failed=1, dead=1)
        assert stats["q"].as_dict()["cancelled"] == 0
        assert stats["other"] == QueueStats(ready=1)
        store.lease("other", 1, "w", T0, 30)
        store.complete([ok("x", t("x", 1))], T0)
        store.purge_finished(T0 + 1)
        assert set(store.stats()) == {"q"}
        assert store.stats()["q"] == QueueStats(delayed=1, leased=1)

    # -- transactions ------------------------------------------------------------------


    def test_transaction_groups_calls(self, store: Store, t: Tokens) -> None:
        with store.transaction():
            assert store.enqueue([task("a"), task("b")], T0) == [True, True]
            assert ids(store.lease("q", 1, "w", T0, 30)) == ["a"]  # sees its own writes
            assert task_info(store, "a").state == LEASED
            with store.transaction():  # nested: joins the outer one
                assert store.complete([ok("a", t("a", 1))], T0) == [STORED]
        assert task_info(store, "a").state == SUCCEEDED
        assert task_info(store, "b").state == READY

    def test_transaction_rolls_back_on_exception(self, store: Store, t: Tokens) -> None:
        store.enqueue([task("a")], T0)
        with pytest.raises(RuntimeError, match="boom"):
            with store.transaction():
                store.enqueue([task("b"), task("c", not_before=T0 + 9)], T0)
                store.lease("q", 2, "w", T0, 30)
                store.complete([ok("b", t("b", 1))], T0)
                store.nack("a", t("a", 1), T0, error=b"e", delay=3)
                raise RuntimeError("boom")
        assert store.get("b") is None and store.get("c") is None
        info = task_info(store, "a")
        assert (info.state, info.attempts, info.lease_owner, info.errors) == (READY, 0, None, [])
        assert store.stats() == {"q": QueueStats(ready=1)}
        assert store.next_due() is None
        assert store.release_all(T0) == 0
        # Still fully usable afterwards, order intact.
        assert store.enqueue([task("b")], T0) == [True]
        assert ids(store.lease("q", 5, "w", T0, 30)) == ["a", "b"]

    def test_transaction_rollback_restores_finished_and_purged_tasks(self, store: Store, t: Tokens) -> None:
        store.enqueue([task("a"), task("b")], T0)
        store.lease("q", 2, "w", T0, 30)
        store.complete([ok("a", t("a", 1), b"kept")], T0)
        with pytest.raises(KeyError):
            with store.transaction():
                assert store.purge_finished(T0 + 1) == 1
                assert store.release_owner("w", T0) == ["b"]
                assert store.extend_owner("w", T0, 100) == 0
                raise KeyError("x")
        assert store.results(["a"])["a"].payload == b"kept"
        info = task_info(store, "b")
        assert (info.state, info.lease_owner, info.lease_deadline) == (LEASED, "w", T0 + 30)
        assert store.expire_leases(T0 + 30) == ["b"]

    def test_nested_transaction_failure_rolls_back_only_the_inner_block(self, store: Store) -> None:
        with store.transaction():
            store.enqueue([task("a")], T0)
            with pytest.raises(ValueError):
                with store.transaction():
                    store.enqueue([task("b")], T0)
                    store.lease("q", 5, "w", T0, 30)
                    raise ValueError("inner")
            store.enqueue([task("c")], T0)
        assert store.get("b") is None
        assert [task_info(store, x).state for x in "ac"] == [READY, READY]
        assert task_info(store, "a").attempts == 0
        assert ids(store.lease("q", 5, "w", T0, 30)) == ["a", "c"]

    def test_pending_counts_per_queue(self, store: Store, t: Tokens) -> None:
        assert store.pending_counts("q") == (0, 0, 0)
        store.enqueue([task("a"), task("b"), task("c", not_before=T0 + 50), task("x", queue="other")], T0)
        store.lease("q", 1, "w", T0, 30)
        assert store.pending_counts("q") == (1, 1, 1)
        assert store.pending_counts("other") == (1, 0, 0)
        store.complete([ok("a", t("a", 1))], T0)
        assert store.pending_counts("q") == (1, 1, 0)

    def test_schedules_save_list_and_last_slot(self, store: Store) -> None:
        assert store.schedules() == []
        store.save_schedule(schedule_record("b", cron=None, every=2.5, source="code"))
        store.save_schedule(schedule_record("a"))
        got = store.schedules()
        assert [r["name"] for r in got] == ["a", "b"]
        assert got[0] == {**schedule_record("a"), "last_slot": None}
        assert got[1]["every"] == 2.5 and got[1]["cron"] is None and got[1]["source"] == "code"
        assert isinstance(got[0]["payload"], bytes) and got[0]["options"] == {"timeout": 5}

    def test_save_schedule_upserts_by_name(self, store: Store) -> None:
        store.save_schedule(schedule_record("a"))
        store.mark_slot("a", T0 + 300)
        store.save_schedule(schedule_record("a", queue="other", last_slot=T0 + 300))
        (rec,) = store.schedules()
        assert rec["queue"] == "other" and rec["last_slot"] == T0 + 300
        store.save_schedule(schedule_record("a", cron="0 * * * *"))  # no last_slot: none enqueued yet
        (rec,) = store.schedules()
        assert rec["cron"] == "0 * * * *" and rec["last_slot"] is None

    def test_mark_slot_only_moves_forward(self, store: Store) -> None:
        store.save_schedule(schedule_record("a"))
        store.mark_slot("a", T0 + 600)
        store.mark_slot("a", T0 + 300)  # a master that looked late
        assert store.schedules()[0]["last_slot"] == T0 + 600
        store.mark_slot("a", T0 + 900)
        assert store.schedules()[0]["last_slot"] == T0 + 900
        store.mark_slot("missing", T0)  # ignored
        assert [r["name"] for r in store.schedules()] == ["a"]

    def test_remove_schedule(self, store: Store) -> None:
        store.save_schedule(schedule_record("a"))
        store.save_schedule(schedule_record("b"))
        assert store.remove_schedule("a") is True
        assert store.remove_schedule("a") is False
        assert [r["name"] for r in store.schedules()] == ["b"]

    def test_schedule_changes_roll_back_with_the_transaction(self, store: Store) -> None:
        store.save_schedule(schedule_record("keep"))
        store.mark_slot("keep", T0 + 300)
        with pytest.raises(RuntimeError), store.transaction():
            store.save_schedule(schedule_record("new"))
            store.mark_slot("keep", T0 + 600)
            store.enqueue([task("slot-task")], T0)
            store.remove_schedule("keep")
            raise RuntimeError("boom")
        assert [(r["name"], r["last_slot"]) for r in store.schedules()] == [("keep", T0 + 300)]
        assert store.get("slot-task") is None
        with store.transaction():
            store.enqueue([task("slot-task")], T0)
            store.mark_slot("keep", T0 + 600)
        assert store.schedules()[0]["last_slot"] == T0 + 600

    def test_waiting_task_becomes_ready_when_all_its_dependencies_succeed(self, store: Store, t: Tokens) -> None:
        store.enqueue([task("a"), task("b")], T0)
        assert store.enqueue([after("c", "a", "b", priority=3)], T0) == [True]
        info = task_info(store, "c")
        assert (info.state, info.after, info.result, info.finished_at) == (WAITING, ["a", "b"], None, None)
        assert store.pending_counts("q") == (2, 0, 0)  # waiting is not pending
        assert store.stats()["q"] == QueueStats(waiting=1, ready=2)
        assert ids(store.lease("q", 10, "w", T0, 30)) == ["a", "b"]  # never leased while waiting
        assert store.complete([ok("a", t("a", 1))], T0 + 1) == [STORED]
        assert task_info(store, "c").state == WAITING
        assert store.lease("q", 10, "w", T0 + 1, 30) == []
        assert store.complete([ok("b", t("b", 1))], T0 + 2) == [STORED]
        info = task_info(store, "c")
        assert (info.state, info.attempts, info.result) == (READY, 0, None)
        assert store.stats()["q"] == QueueStats(ready=1, succeeded=2)
        [lease] = store.lease("q", 10, "w", T0 + 2, 30)
        assert (lease.id, task_info(store, "c").attempts, lease.failures) == ("c", 1, 0)
        assert store.complete([ok("c", lease.token)], T0 + 3) == [STORED]
        assert task_info(store, "c").after == ["a", "b"]  # still shown once finished

    def test_dependent_with_a_future_not_before_becomes_delayed(self, store: Store, t: Tokens) -> None:
        store.enqueue([task("a"), after("b", "a", not_before=T0 + 100)], T0)
        assert task_info(store, "b").state == WAITING
        assert store.next_due() is None  # a waiting task is not due, whatever its not_before
        assert store.promote_due(T0 + 1000) == []
        assert task_info(store, "b").state == WAITING
        lease_one(store, "a")
        store.complete([ok("a", t("a", 1))], T0 + 10)
        assert task_info(store, "b").state == DELAYED
        assert store.next_due() == T0 + 100
        assert store.promote_due(T0 + 100) == ["q"]
        assert ids(store.lease("q", 5, "w", T0 + 100, 30)) == ["b"]

    def test_dependent_whose_not_before_passed_becomes_ready(self, store: Store, t: Tokens) -> None:
        store.enqueue([task("a"), after("b", "a", not_before=T0 + 5)], T0)
        lease_one(store, "a")
        store.complete([ok("a", t("a", 1))], T0 + 5)  # not_before == now is not in the future
        assert task_info(store, "b").state == READY

    def test_dependencies_within_one_batch_and_already_finished_ones(self, store: Store, t: Tokens) -> None:
        store.enqueue([task("done"), task("bad")], T0)
        store.lease("q", 2, "w", T0, 30)
        store.complete([ok("done", t("done", 1)), fail("bad", t("bad", 1))], T0)
        got = store.enqueue([task("x"), after("y", "x"), after("z", "y", "x"),
                             after("s", "done"), after("f", "done", "bad"), after("ff", "f")], T0 + 1)
        assert got == [True] * 6
        assert [task_info(store, t).state for t in ("x", "y", "z")] == [READY, WAITING, WAITING]
        assert task_info(store, "s").state == READY  # a dependency that already succeeded counts at once
        assert_dep_failed(store, "f", "bad", FAILED, T0 + 1)  # ... and one that already failed
        assert_dep_failed(store, "ff", "f", FAILED, T0 + 1)  # down the chain, in the same batch
        assert store.stats()["q"] == QueueStats(waiting=2, ready=2, succeeded=1, failed=3)
        lease_one(store, "x", now=T0 + 2)
        store.complete([ok("x", t("x", 1))], T0 + 2)
        assert [task_info(store, t).state for t in ("y", "z")] == [READY, WAITING]
        lease_one(store, "y", now=T0 + 3)
        store.complete([ok("y", t("y", 1))], T0 + 3)
        assert task_info(store, "z").state == READY

    def test_unknown_dependency_rejects_the_whole_batch(self, store: Store) -> None:
        store.enqueue([task("a")], T0)
        with pytest.raises(ValueError, match="unknown dependency nope"):
            store.enqueue([task("b"), after("c", "a", "nope")], T0)
        with pytest.raises(ValueError, match="unknown dependency later"):
            store.enqueue([after("early", "later"), task("later")], T0)  # only earlier ones count
        with pytest.raises(ValueError, match="unknown dependency me"):
            store.enqueue([after("me", "me")], T0)
        assert [store.get(t) for t in ("b", "c", "early", "later", "me")] == [None] * 5
        assert store.stats() == {"q": QueueStats(ready=1)}
        assert ids(store.lease("q", 10, "w", T0, 30)) == ["a"]
        # Inside a transaction the error rolls back only the failed enqueue's part.
        with store.transaction():
            store.enqueue([task("t1")], T0)
            with pytest.raises(ValueError):
                store.enqueue([task("t2"), after("t3", "ghost")], T0)
        assert (task_info(store, "t1").state, store.get("t2"), store.get("t3")) == (READY, None, None)

    def test_reenqueue_of_an_existing_id_changes_no_dependencies(self, store: Store, t: Tokens) -> None:
        store.enqueue([task("a"), task("b"), after("c", "a", "a", "b")], T0)
        assert task_info(store, "c").after == ["a", "b"]  # duplicates named once
        # Resubmitted (a reconnect): nothing changes, not even with other or unknown dependencies.
        assert store.enqueue([after("c", "a", "b"), after("c", "ghost")], T0 + 1) == [False, False]
        assert store.enqueue([after("c", "b")], T0 + 1) == [False]
        assert task_info(store, "c").after == ["a", "b"]
        store.lease("q", 2, "w", T0, 30)
        store.complete([ok("a", t("a", 1))], T0 + 2)
        assert task_info(store, "c").state == WAITING
        store.complete([ok("b", t("b", 1))], T0 + 2)
        assert task_info(store, "c").state == READY
        # Same id twice in one batch: the first wins, the second's dependencies are ignored.
        assert store.enqueue([after("d", "a"), after("d", "ghost")], T0) == [True, False]
        assert task_info(store, "d").after == ["a"]

    @pytest.mark.parametrize("how", ["fail", "dead", "cancel"])
    def test_a_failed_dependency_fails_its_waiting_dependents_down_the_chain(self, store: Store, t: Tokens, how: str) -> None:
        store.enqueue([task("a"), task("other"), after("b", "a"), after("c", "b", "other"),
                       after("d", "c"), after("e", "other")], T0)
        lease_one(store, "a")
        state = {"fail": FAILED, "dead": DEAD, "cancel": CANCELLED}[how]
        if how == "fail":
            assert store.complete([fail("a", t("a", 1))], T0 + 1) == [STORED]
        elif how == "dead":
            assert store.nack("a", t("a", 1), T0 + 1, error=b"e", dead=True) is True
        else:
            assert store.cancel("a", T0 + 1, b"stop") == (LEASED, "w")
        assert task_info(store, "a").state == state
        assert_dep_failed(store, "b", "a", state, T0 + 1)
        assert_dep_failed(store, "c", "b", FAILED, T0 + 1)
        assert_dep_failed(store, "d", "c", FAILED, T0 + 1)
        assert task_info(store, "e").state == WAITING  # other dependents of "other" wait on
        assert store.stats()["q"].failed == 3 + (how == "fail")
        # The finished dependents stay finished whatever happens to "other".
        lease_one(store, "other", now=T0 + 2)
        store.complete([ok("other", t("other"))], T0 + 2)
        assert task_info(store, "c").state == FAILED and task_info(store, "e").state == READY

    def test_success_from_any_path_frees_dependents(self, store: Store, t: Tokens) -> None:
        store.enqueue([task("a"), task("b"), after("c", "a"), after("d", "b")], T0)
        store.lease("q", 2, "w", T0, 30)
        store.release([("a", t("a", 1))], T0)  # ready again: a late success still counts
        assert store.nack("b", t("b", 1), T0, delay=60) is True  # delayed: likewise
        assert store.complete([ok("a", t("a", 1)), ok("b", t("b", 1))], T0 + 1) == [STORED, STORED]
        assert [task_info(store, t).state for t in "cd"] == [READY, READY]
        assert store.next_due() is None

    def test_one_complete_batch_with_several_dependencies(self, store: Store, t: Tokens) -> None:
        store.enqueue([task("a"), task("b"), task("c"), after("ab", "a", "b"), after("bc", "b", "c"),
                       after("abc", "ab", "bc")], T0)
        store.lease("q", 3, "w", T0, 30)
        assert store.complete([ok("a", t("a", 1)), ok("b", t("b", 1)), fail("c", t("c", 1))], T0 + 1) == [STORED] * 3
        assert task_info(store, "ab").state == READY
        assert_dep_failed(store, "bc", "c", FAILED, T0 + 1)
        assert_dep_failed(store, "abc", "bc", FAILED, T0 + 1)

    def test_lease_counts_failures_and_a_deferral_is_not_one(self, store: Store, t: Tokens) -> None:
        store.enqueue([task("a")], T0)
        [lease] = store.lease("q", 1, "w", T0, 30)
        assert lease.failures == 0
        store.nack("a", t("a", 1), T0, error=b"e1")
        [lease] = store.lease("q", 1, "w", T0, 30)
        assert (t("a", 2), lease.failures) == (lease.token, 1)
        assert store.nack("a", t("a", 2), T0, delay=5) is True  # error=None: a deferral
        assert task_info(store, "a").errors == [b"e1"]
        store.promote_due(T0 + 5)
        [lease] = store.lease("q", 1, "w", T0 + 5, 30)
        assert (t("a", 3), lease.failures) == (lease.token, 1)
        store.nack("a", t("a", 3), T0 + 5, error=b"e2")
        assert store.lease("q", 1, "w", T0 + 5, 30)[0].failures == 2

    # -- cancel -------------------------------------------------------------------------


    def test_cancel_each_unfinished_state(self, store: Store, t: Tokens) -> None:
        store.enqueue([task("r"), task("l"), task("d", not_before=T0 + 50), task("x"),
                       after("wt", "x")], T0)
        lease_one(store, "l", owner="w1")
        assert store.cancel("r", T0 + 1, b"c-r") == (READY, None)
        assert store.cancel("l", T0 + 1, b"c-l") == (LEASED, "w1")
        assert store.cancel("d", T0 + 1, b"c-d") == (DELAYED, None)
        assert store.cancel("wt", T0 + 1, b"c-w") == (WAITING, None)
        for tid in ("r", "l", "d", "wt"):
            info = task_info(store, tid)
            assert (info.state, info.finished_at, info.lease_owner, info.lease_deadline) \
                == (CANCELLED, T0 + 1, None, None)
            assert info.result is not None
            assert (info.result.ok, info.result.payload, info.result.codec, info.result.state) \
                == (False, f"c-{tid[0]}".encode(), "msgpack", CANCELLED)
        assert task_info(store, "l").attempts == 1
        assert store.stats()["q"] == QueueStats(ready=1, cancelled=4)
        assert store.pending_counts("q") == (1, 0, 0)
        assert ids(store.lease("q", 10, "w", T0 + 100, 30)) == ["x"]  # the others never come back
        assert store.promote_due(T0 + 100) == [] and store.next_due() is None
        assert store.expire_leases(T0 + 1000) == ["x"]
        assert store.release_owner("w1", T0) == [] and store.extend_owner("w1", T0, 5) == 0
        # The worker that ran "l" is too late: its result is a duplicate, its nack stale.
        assert store.complete([ok("l", t("l", 1)), fail("l", t("l", 1))], T0 + 2) == [DUPLICATE, DUPLICATE]
        assert store.nack("l", t("l", 1), T0 + 2, error=b"e") is False
        assert store.set_progress("l", t("l", 1), {"done": 1}) is False
        # x is not hurt: wt was its dependent, not its dependency.
        assert task_info(store, "x").state == READY

    def test_cancel_finished_and_unknown_tasks_changes_nothing(self, store: Store, t: Tokens) -> None:
        store.enqueue([task("a"), task("b")], T0)
        store.lease("q", 2, "w", T0, 30)
        store.complete([ok("a", t("a", 1), b"v")], T0)
        assert store.cancel("a", T0 + 1, b"c") == (SUCCEEDED, None)
        assert store.cancel("b", T0 + 1, b"c") == (LEASED, "w")
        assert store.cancel("b", T0 + 2, b"again") == (CANCELLED, None)
        assert store.cancel("nope", T0, b"c") is None
        assert store.results(["a"])["a"].payload == b"v"
        info = task_info(store, "b")
        assert info.result is not None
        assert (info.result.payload, info.finished_at) == (b"c", T0 + 1)

    def test_cancel_is_rolled_back_with_its_transaction(self, store: Store, t: Tokens) -> None:
        store.enqueue([task("a"), after("b", "a")], T0)
        lease_one(store, "a")
        with pytest.raises(RuntimeError):
            with store.transaction():
                assert store.cancel("a", T0, b"c") == (LEASED, "w")
                assert task_info(store, "b").state == FAILED
                raise RuntimeError
        assert (task_info(store, "a").state, task_info(store, "a").lease_owner) == (LEASED, "w")
        assert task_info(store, "b").state == WAITING
        assert store.stats()["q"] == QueueStats(waiting=1, leased=1)
        store.complete([ok("a", t("a", 1))], T0)
        assert task_info(store, "b").state == READY

    def test_requeue_sends_dead_tasks_back_with_their_history(self, store: Store, t: Tokens) -> None:
        store.enqueue([task("a", options={"retries": 1}), task("b"), task("c")], T0)
        _dead(store, "a", T0 + 1, b"e1", b"e2")
        info = task_info(store, "a")
        assert store.set_progress("a", t("a", 2), {"done": 1}) is False  # (dead now)
        assert (info.state, info.attempts) == (DEAD, 2)
        assert store.requeue(T0 + 2, ids=["a"]) == ["a"]
        info = task_info(store, "a")
        assert (info.state, info.result, info.finished_at, info.lease_owner) == (READY, None, None, None)
        assert info.errors == [b"e1", b"e2"]
        assert info.options == {"retries": 1, "retry_base": 2}
        assert info.attempts == 2  # tokens stay unique
        assert store.results(["a"]) == {}
        assert store.stats()["q"] == QueueStats(ready=3)
        [lease] = store.lease("q", 1, "w", T0 + 3, 30)
        assert (lease.id, lease.token, lease.failures, lease.options) \
            == ("a", t("a", 3), 2, {"retries": 1, "retry_base": 2})
        assert task_info(store, "a").attempts == 3
        assert store.complete([ok("a", t("a", 3))], T0 + 4) == [STORED]
        assert store.requeue(T0 + 5, ids=["a"]) == []  # succeeded: not in the default (dead,)

    def test_requeue_states_ids_and_queues(self, store: Store) -> None:
        store.enqueue([task("d1"), task("f1"), task("s1"), task("r1"), task("d2", "q2"),
                       task("d3")], T0)
        _dead(store, "d1", T0, b"x")
        _dead(store, "d3", T0, b"x")
        _dead(store, "d2", T0, b"x")
        lease = lease_one(store, "f1")
        assert store.complete([fail("f1", lease.token)], T0) == [STORED]
        lease = lease_one(store, "s1")
        assert store.complete([ok("s1", lease.token)], T0) == [STORED]
        c = task_info(store, "r1")
        assert c.state == READY
        assert store.requeue(T0) == []  # neither ids nor a queue: nothing
        with pytest.raises(ValueError, match="ready"):
            store.requeue(T0, ids=["r1"], states=[DEAD, READY])
        # ids: in enqueue order, only those in states; unknown and other states skipped.
        assert store.requeue(T0, ids=["f1", "ghost", "r1", "s1", "d3", "d1"], states=[DEAD, FAILED]) \
            == ["d1", "f1", "d3"]
        assert task_info(store, "s1").state == SUCCEEDED and task_info(store, "r1").state == READY
        # A queue: every task of it in states.
        assert store.requeue(T0, queue="q") == []  # nothing dead left there
        assert store.requeue(T0, queue="q2") == ["d2"]
        assert store.requeue(T0, queue="q", states=[SUCCEEDED]) == ["s1"]
        assert task_info(store, "s1").options == {"retry_base": 0}
        # ids and a queue: only those ids in that queue.
        _dead(store, "d2", T0, b"y")
        assert store.requeue(T0, ids=["d2"], queue="q") == []
        assert store.requeue(T0, ids=["d2"], queue="q2") == ["d2"]
        assert task_info(store, "d2").options == {"retry_base": 2}
        assert store.stats() == {"q": QueueStats(ready=5), "q2": QueueStats(ready=1)}

    def test_requeue_keeps_a_future_not_before(self, store: Store) -> None:
        store.enqueue([task("a", not_before=T0 + 100), task("b", not_before=T0 + 10)], T0)
        store.promote_due(T0 + 100)
        _dead(store, "a", T0 + 100, b"x")
        _dead(store, "b", T0 + 100, b"x")
        # Seen from an earlier "now" (a clock that went back) a not_before ahead still delays it.
        assert store.requeue(T0 + 50, ids=["a", "b"]) == ["a", "b"]
        assert (task_info(store, "a").state, task_info(store, "b").state) == (DELAYED, READY)
        assert store.next_due() == T0 + 100

    def test_requeue_of_a_dependency_failed_task_waits_for_its_retried_dependency(self, store: Store, t: Tokens) -> None:
        store.enqueue([task("a"), after("b", "a"), after("c", "b")], T0)
        _dead(store, "a", T0, b"x")
        assert [task_info(store, t).state for t in "abc"] == [DEAD, FAILED, FAILED]
        # Alone, b would fail again at once: it is skipped until a is retried too.
        assert store.requeue(T0 + 1, ids=["b"], states=[FAILED]) == []
        assert store.requeue(T0 + 1, ids=["c", "b", "a"], states=[DEAD, FAILED]) == ["a", "b", "c"]
        assert [task_info(store, t).state for t in "abc"] == [READY, WAITING, WAITING]
        assert store.stats()["q"] == QueueStats(waiting=2, ready=1)
        lease_one(store, "a", now=T0 + 2)
        store.complete([ok("a", t("a", 2))], T0 + 2)
        assert [task_info(store, t).state for t in "bc"] == [READY, WAITING]

    def test_requeued_task_finished_again_is_purged_by_its_new_finish_time(self, store: Store, t: Tokens) -> None:
        store.enqueue([task("a")], T0)
        _dead(store, "a", T0 + 1, b"x")
        store.requeue(T0 + 2, ids=["a"])
        lease_one(store, "a", now=T0 + 100)
        store.complete([ok("a", t("a", 2))], T0 + 100)
        assert store.purge_finished(T0 + 50) == 0
        assert task_info(store, "a").state == SUCCEEDED
        assert store.purge_finished(T0 + 101) == 1

    # -- purge --------------------------------------------------------------------------


    def test_purge_deletes_finished_tasks_by_state_and_queue(self, store: Store) -> None:
        store.enqueue([task("d1"), task("d2", "q2"), task("f1"), task("s1"), task("r1")], T0)
        _dead(store, "d1", T0, b"x")
        _dead(store, "d2", T0, b"x")
        lease = lease_one(store, "f1")
        assert store.complete([fail("f1", lease.token)], T0) == [STORED]
        lease = lease_one(store, "s1")
        assert store.complete([ok("s1", lease.token)], T0) == [STORED]
        for bad in ([READY], [DEAD, LEASED], [WAITING], ["bogus"]):
            with pytest.raises(ValueError):
                store.purge(states=bad)
        assert task_info(store, "r1").state == READY
        assert store.purge(queue="q2", states=[FAILED]) == 0
        assert store.purge(queue="q") == 1  # dead by default
        assert store.get("d1") is None and task_info(store, "d2").state == DEAD
        assert store.purge(states=[DEAD, FAILED, SUCCEEDED]) == 3
        assert store.purge(states=[]) == 0
        assert store.stats() == {"q": QueueStats(ready=1)}
        assert store.enqueue([task("d1")], T0) == [True]  # a purged id is new again

    @pytest.mark.parametrize("how", ["purge", "purge_finished"])
    def test_purging_a_dependency_drops_its_links(self, store: Store, t: Tokens, how: str) -> None:
        store.enqueue([task("a"), task("b"), after("c", "a", "b"), after("d", "c")], T0)
        lease_one(store, "a")
        store.complete([ok("a", t("a", 1))], T0)
        assert task_info(store, "c").state == WAITING
        if how == "purge":
            assert store.purge(states=[SUCCEEDED]) == 1
        else:
            assert store.purge_finished(T0 + 1) == 1
        assert store.get("a") is None
        assert task_info(store, "c").after == ["b"]
        # Its id can be used again without touching the old links.
        assert store.enqueue([task("a")], T0 + 2) == [True]
        lease = lease_one(store, "a", now=T0 + 2)
        assert store.complete([fail("a", lease.token)], T0 + 2) == [STORED]
        assert task_info(store, "c").state == WAITING
        lease = lease_one(store, "b", now=T0 + 3)
        assert store.complete([ok("b", lease.token)], T0 + 3) == [STORED]
        assert task_info(store, "c").state == READY
        # Purging a dependent drops its links too.
        lease = lease_one(store, "c", now=T0 + 4)
        assert store.complete([fail("c", lease.token)], T0 + 4) == [STORED]
        assert task_info(store, "d").state == FAILED
        assert store.purge(states=[FAILED]) == 3
        assert task_info(store, "b").state == SUCCEEDED
        store.enqueue([after("c", "b")], T0 + 5)
        assert task_info(store, "c").after == ["b"] and task_info(store, "c").state == READY

    def test_purge_is_rolled_back_with_its_transaction(self, store: Store) -> None:
        store.enqueue([task("a"), after("b", "a"), task("c")], T0)
        _dead(store, "a", T0, b"x")
        with pytest.raises(RuntimeError):
            with store.transaction():
                assert store.purge(states=[DEAD, FAILED]) == 2
                raise RuntimeError
        assert task_info(store, "a").state == DEAD and task_info(store, "b").after == ["a"]
        assert store.stats()["q"] == QueueStats(ready=1, failed=1, dead=1)
        assert store.purge(states=[DEAD, FAILED]) == 2

    # -- list_tasks ---------------------------------------------------------------------


    def test_list_tasks_filters_and_pages_in_enqueue_order(self, store: Store) -> None:
        store.enqueue([task("c", priority=5), task("a"), task("x", "other"), after("w", "a"),
                       task("b", not_before=T0 + 9)], T0)
        lease_one(store, "c")
        assert [i.id for i in store.list_tasks()] == ["c", "a", "x", "w", "b"]
        assert [i.id for i in store.list_tasks(queue="q")] == ["c", "a", "w", "b"]
        assert [i.id for i in store.list_tasks(state=READY)] == ["a", "x"]
        assert [i.id for i in store.list_tasks(queue="q", state=READY)] == ["a"]
        assert [i.id for i in store.list_tasks(queue="nope")] == []
        assert [i.id for i in store.list_tasks(limit=2)] == ["c", "a"]
        assert [i.id for i in store.list_tasks(limit=2, offset=2)] == ["x", "w"]
        assert [i.id for i in store.list_tasks(limit=2, offset=4)] == ["b"]
        assert store.list_tasks(offset=5) == []
        [w] = store.list_tasks(state=WAITING)
        assert w == store.get("w")
        assert (w.state, w.after) == (WAITING, ["a"])
        [c] = store.list_tasks(state=LEASED)
        assert c == store.get("c") and c.lease_owner == "w"
        for bad in ({"state": "bogus"}, {"limit": 0}, {"limit": 1001}, {"offset": -1}):
            with pytest.raises(ValueError):
                store.list_tasks(**bad)
        assert len(store.list_tasks(limit=1000)) == 5

    def test_list_tasks_pages_through_many(self, store: Store) -> None:
        store.enqueue([task(f"t{i:03d}") for i in range(250)], T0)
        store.enqueue([after(f"u{i:03d}", f"t{i:03d}") for i in range(250)], T0)
        got, offset = [], 0
        while page := store.list_tasks(limit=97, offset=offset):
            got.extend(page)
            offset += len(page)
        assert [i.id for i in got] == [f"t{i:03d}" for i in range(250)] + [f"u{i:03d}" for i in range(250)]
        assert all(i.after == [f"t{i.id[1:]}"] for i in got[250:])

    # -- progress -----------------------------------------------------------------------


    def test_set_progress_only_from_the_lease_holder_and_kept_after_completion(self, store: Store) -> None:
        store.enqueue([task("a"), task("b")], T0)
        assert store.set_progress("a", 0, {"done": 1}) is False  # not leased
        assert task_info(store, "a").progress is None
        [first] = store.lease("q", 1, "w", T0, 30)
        report = {"done": 3, "total": 10, "message": "three", "nested": {"x": [1, 2]}}
        assert store.set_progress("a", first.token, report) is True
        assert task_info(store, "a").progress == report
        assert store.set_progress("a", first.token + 1, {"done": 9}) is False  # a future token
        assert store.set_progress("ghost", 1, {"done": 9}) is False
        store.release([("a", first.token)], T0)
        assert store.set_progress("a", first.token, {"done": 9}) is False  # released
        [second] = store.lease("q", 1, "w", T0, 30)
        assert task_info(store, "a").progress == report  # the last report stays until a new one
        assert store.set_progress("a", second.token, {"done": 10, "total": 10, "message": ""})
        store.complete([ok("a", second.token)], T0 + 1)
        assert task_info(store, "a").progress == {"done": 10, "total": 10, "message": ""}
        assert store.set_progress("a", second.token, {"done": 11}) is False
        assert store.list_tasks(state=SUCCEEDED)[0].progress == {"done": 10, "total": 10, "message": ""}

    def test_set_progress_is_rolled_back_with_its_transaction(self, store: Store, t: Tokens) -> None:
        store.enqueue([task("a")], T0)
        store.lease("q", 1, "w", T0, 30)
        store.set_progress("a", t("a", 1), {"done": 1})
        with pytest.raises(RuntimeError):
            with store.transaction():
                store.set_progress("a", t("a", 1), {"done": 2})
                raise RuntimeError
        assert task_info(store, "a").progress == {"done": 1}

    # -- transactions with dependencies ---------------------------------------------------


    def test_rolled_back_dependencies_leave_no_trace(self, store: Store, t: Tokens) -> None:
        store.enqueue([task("a")], T0)
        with pytest.raises(RuntimeError):
            with store.transaction():
                store.enqueue([after("b", "a"), after("c", "b")], T0)
                lease_one(store, "a")
                store.complete([fail("a", t("a", 1))], T0)
                assert task_info(store, "c").state == FAILED
                raise RuntimeError
        assert (store.get("b"), store.get("c")) == (None, None)
        assert store.stats() == {"q": QueueStats(ready=1)}
        store.enqueue([after("d", "a")], T0)
        lease_one(store, "a")
        store.complete([ok("a", t("a"))], T0)  # attempt 1 again: the first was rolled back
        assert task_info(store, "d").state == READY and task_info(store, "d").after == ["a"]

    def test_non_durable_transaction_commits_like_any_other(self, store: Store) -> None:
        store.enqueue([task("nd")], T0)
        with store.transaction(durable=False):
            assert [x.id for x in store.lease("q", 1, "w", T0, 30)] == ["nd"]
        assert store.pending_counts("q") == (0, 0, 1)
        with pytest.raises(RuntimeError), store.transaction(durable=False):
            store.release_owner("w", T0)
            raise RuntimeError("roll back")
        assert store.pending_counts("q") == (0, 0, 1)
        store.enqueue([task("after")], T0)  # a durable commit still works after a relaxed one
        assert store.pending_counts("q") == (1, 0, 1)

    # -- take (lease and acknowledge in one step) -------------------------------------


    def test_take_hands_out_in_lease_order_and_acknowledges(self, store: Store, t: Tokens) -> None:
        store.enqueue([task("a"), task("b", priority=5), task("c"), task("x", "other")], T0)
        got = store.take("q", 2, "c1", T0 + 1)
        assert [(x.id, x.token, x.payload) for x in got] == [("b", t("b"), b"b"), ("a", t("a"), b"a")]
        assert task_info(store, "a").attempts == 1
        for tid in ("a", "b"):
            info = task_info(store, tid)
            assert (info.state, info.attempts, info.lease_owner, info.finished_at) == (SUCCEEDED, 1, None, T0 + 1)
            assert store.results([tid])[tid].ok
        assert store.complete([ok("a", t("a", 1))], T0 + 2) == [DUPLICATE]
        assert store.take("q", 0, "c1", T0) == []
        assert ids(store.take("q", 10, "c1", T0)) == ["c"]
        assert store.take("q", 10, "c1", T0) == []
        assert ids(store.lease("other", 10, "w", T0, 30)) == ["x"]

    def test_take_settles_a_task_that_waits_for_the_item(self, store: Store) -> None:
        store.enqueue([task("item")], T0)
        store.enqueue([after("dependent", "item")], T0)
        assert task_info(store, "dependent").state == WAITING
        assert ids(store.take("q", 1, "c1", T0)) == ["item"]
        assert task_info(store, "dependent").state == READY

    def test_single_enqueue_of_an_existing_id_is_reported(self, store: Store) -> None:
        assert store.enqueue([task("a")], T0) == [True]
        assert store.enqueue([task("a", payload=b"other")], T0) == [False]
        assert store.lease("q", 5, "w", T0, 30)[0].payload == b"a"

    def test_transaction_without_savepoints_still_rolls_back_whole(self, store: Store) -> None:
        with pytest.raises(ValueError):
            with store.transaction(savepoints=False):
                store.enqueue([task("a")], T0)
                store.enqueue([after("b", "missing")], T0)  # refused: unknown dependency
        assert store.get("a") is None
        with store.transaction(savepoints=False):
            assert store.enqueue([task("c")], T0) == [True]
        assert task_info(store, "c").state == READY
