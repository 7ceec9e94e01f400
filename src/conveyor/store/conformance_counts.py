"""Conformance tests of counts, listings, bounded batches and bad page input.

Like :mod:`conveyor.store.conformance` (whose helpers it uses), every test
takes a ``store`` fixture and uses only the Store interface; a store's test
module subclasses :class:`CountsConformance` beside ``StoreConformance``.
:func:`random_mix` and :func:`recount` are importable on their own (the
SQLite kill test drives a child process with the same mix).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import pytest

from conveyor.records import (
    ALL_TASKS,
    CANCELLED,
    DEAD,
    DELAYED,
    FAILED,
    LEASED,
    READY,
    RETRIED,
    STATES,
    SUCCEEDED,
    WAITING,
    NewTask,
    QueueStats,
    TaskFilter,
    TaskSummary,
    task_id_for_key,
)
from conveyor.store import paging
from conveyor.store.base import Store, dependency_failed_error
from conveyor.store.conformance import T0, after, fail, lease_one, ok, task, task_info
from conveyor.store.memory import MemoryStore

QUEUES = ("q1", "q2")
NAMES = ("mod.a", "mod.b", None)


def random_mix(store: Store, seed: int, steps: int, *, now: float = T0,
               on_step: Callable[[int], None] | None = None) -> float:
    """Drive ``store`` through ``steps`` seeded random operations of every kind that
    changes task states (enqueues plain, delayed and dependent; leases, completes,
    nacks with retry, delay, deferral and dead; releases, expiries, cancels,
    requeues, purges, bulk actions and rolled-back transactions); the clock at the end.

    The same seed on two stores with the same semantics makes the same calls.
    """
    rng = random.Random(seed)
    known: list[str] = []
    held: list[tuple[str, int, str]] = []  # (id, token, owner)
    serial = 0

    def new_tasks() -> list[NewTask]:
        nonlocal serial
        out = []
        for _ in range(rng.randint(1, 4)):
            serial += 1
            t = NewTask(f"t{serial:06d}", rng.choice(QUEUES), rng.choice(NAMES), b"p")
            r = rng.random()
            if r < 0.15:
                t.not_before = now + rng.uniform(0.5, 5)
            elif r < 0.35 and known:
                t.after = rng.sample(known[-30:], min(len(known[-30:]), rng.randint(1, 2)))
            out.append(t)
        return out

    def pick(n: int) -> list[tuple[str, int, str]]:
        rng.shuffle(held)
        got = held[:n]
        del held[:n]
        return got

    for step in range(steps):
        now += rng.uniform(0, 0.4)
        op = rng.random()
        if op < 0.22:
            batch = new_tasks()
            try:
                store.enqueue(batch, now)
            except ValueError:  # a dependency was purged meanwhile: nothing inserted
                continue
            known.extend(t.id for t in batch)
        elif op < 0.40:
            owner = rng.choice(("w1", "w2"))
            for lease in store.lease(rng.choice(QUEUES), rng.randint(1, 4), owner, now,
                                     rng.uniform(0.5, 6)):
                held.append((lease.id, lease.token, owner))
        elif op < 0.52:
            store.complete([ok(i, tok) if rng.random() < 0.7 else fail(i, tok)
                            for i, tok, _ in pick(rng.randint(1, 3))], now)
        elif op < 0.62:
            for i, tok, _ in pick(1):
                kind = rng.randrange(4)
                store.nack(i, tok, now, delay=rng.uniform(0.5, 3) if kind == 1 else 0.0,
                           error=None if kind == 2 else b"err", dead=kind == 3)
        elif op < 0.66:
            store.release([(i, tok) for i, tok, _ in pick(2)], now)
        elif op < 0.69:
            store.release_owner(rng.choice(("w1", "w2")), now)
        elif op < 0.74:
            store.expire_leases(now, limit=rng.choice((None, 1, 3)))
        elif op < 0.80:
            store.promote_due(now)
        elif op < 0.84 and known:
            store.cancel(rng.choice(known), now, b"cancelled")
        elif op < 0.87 and known:
            if rng.random() < 0.5:
                store.requeue(now, ids=rng.sample(known, min(5, len(known))),
                              states=(DEAD, FAILED, CANCELLED))
            else:
                store.requeue(now, queue=rng.choice(QUEUES), states=(DEAD, FAILED))
        elif op < 0.89:
            store.purge(queue=rng.choice((None, *QUEUES)), states=(DEAD, CANCELLED),
                        limit=rng.choice((None, 2)))
        elif op < 0.91:
            store.purge_finished(now - rng.uniform(0, 3), limit=rng.choice((None, 3)))
        elif op < 0.92:
            store.release_all(now, limit=rng.choice((None, 2)))
        elif op < 0.94:
            flt = TaskFilter(states=(FAILED, DEAD), queue=rng.choice((None, *QUEUES)))
            store.requeue_matching(flt, now, limit=rng.randint(1, 3))
        elif op < 0.945:
            store.settle_pending(now, limit=rng.randint(1, 3))
        elif op < 0.95:
            flt = TaskFilter(states=(WAITING, DELAYED), name=rng.choice(NAMES[:2]))
            store.cancel_matching(flt, now, b"bulk", limit=rng.randint(1, 3))
        elif known:
            try:  # a transaction that changes things, then fails: none of it may count
                with store.transaction():
                    store.enqueue([t for t in new_tasks() if not t.after], now)
                    got = store.lease(rng.choice(QUEUES), 2, "w3", now, 5)
                    store.complete([ok(x.id, x.token) for x in got], now)
                    store.cancel(rng.choice(known), now, b"x")
                    store.purge_finished(now + 1)
                    raise _Rollback
            except _Rollback:
                pass
        if on_step is not None:
            on_step(step)
    return now


class _Rollback(Exception):
    pass


def every_task(store: Store) -> list[TaskSummary]:
    """Every task, oldest first, through the paged listing (a slow full scan)."""
    out: list[TaskSummary] = []
    cursor = None
    while True:
        page = store.list_page(ALL_TASKS, limit=1000, cursor=cursor, newest_first=False)
        out.extend(page.tasks)
        if page.cursor is None:
            return out
        cursor = page.cursor


def recount(store: Store) -> tuple[dict[str, QueueStats], dict[tuple[str, str | None, str], int]]:
    """(stats, task_counts) as a full scan of every task finds them."""
    stats: dict[str, QueueStats] = {}
    named: dict[tuple[str, str | None, str], int] = {}
    for t in every_task(store):
        s = stats.setdefault(t.queue, QueueStats())
        setattr(s, t.state, getattr(s, t.state) + 1)
        named[(t.queue, t.name, t.state)] = named.get((t.queue, t.name, t.state), 0) + 1
    return dict(sorted(stats.items())), named


def assert_counts_match(store: Store) -> None:
    stats, named = recount(store)
    assert store.stats() == stats
    assert store.task_counts() == named
    for queue, s in stats.items():
        assert store.pending_counts(queue) == (s.ready, s.delayed, s.leased)


class CountsConformance:
    """Counters, listings, counts, bulk actions, bounded batches and their bad input."""

    # -- counters ------------------------------------------------------------------

    @pytest.mark.parametrize("seed", [1, 2, 3])
    def test_counts_equal_a_full_recount_after_a_random_mix(self, store: Store, seed: int) -> None:
        checks = []

        def check(step: int) -> None:
            if step % 97 == 0:
                assert_counts_match(store)
                checks.append(step)

        if seed == 3:  # cascades cut short, continued by settle_pending in the mix
            store.cascade_limit = 2
        random_mix(store, seed, 600, on_step=check)
        assert_counts_match(store)
        assert len(checks) == 7
        assert store.stats(), "the mix left no tasks: it tests nothing"

    @pytest.mark.parametrize("seed", [4, 5])
    def test_outcome_totals_agree_with_the_reference_store(self, store: Store, seed: int) -> None:
        reference = MemoryStore()
        random_mix(store, seed, 600)
        random_mix(reference, seed, 600)
        totals = store.outcome_totals()
        assert totals == reference.outcome_totals()
        assert store.stats() == reference.stats()
        outcomes = {k[2] for k in totals}
        assert {SUCCEEDED, FAILED, DEAD, CANCELLED, RETRIED} <= outcomes

    def test_outcome_totals_count_each_end_and_retry_and_survive_purges(self, store: Store) -> None:
        store.enqueue([task("a"), task("b", name="mod.b"), task("c"), task("d", "other", name=None)],
                      T0)
        la = lease_one(store, "a")
        assert store.complete([ok("a", la.token)], T0) == ["stored"]
        lb = lease_one(store, "b")
        assert store.nack("b", lb.token, T0, error=b"e1")  # a retry
        lb = lease_one(store, "b")
        assert store.nack("b", lb.token, T0, error=None)  # a deferral: no retry
        lb = lease_one(store, "b")
        assert store.nack("b", lb.token, T0, error=b"e2", dead=True)
        store.cancel("c", T0, b"stop")
        assert store.requeue(T0, ids=["b"]) == ["b"]  # an operator's retry
        ld = lease_one(store, "d", queue="other")
        store.complete([fail("d", ld.token)], T0)
        expected = {("other", None, FAILED): 1, ("q", "mod.b", DEAD): 1,
                    ("q", "mod.b", RETRIED): 2, ("q", "mod.fn", CANCELLED): 1,
                    ("q", "mod.fn", SUCCEEDED): 1}
        assert store.outcome_totals() == expected
        assert store.purge_finished(T0 + 1) == 3
        assert store.outcome_totals() == expected  # counters never go down
        assert store.task_counts() == {("q", "mod.b", READY): 1}

    def test_a_rolled_back_transaction_leaves_every_counter_as_it_was(self, store: Store) -> None:
        store.enqueue([task("a"), task("b"), task("c", not_before=T0 + 5)], T0)
        lease = lease_one(store, "a")
        stats, named, totals = store.stats(), store.task_counts(), store.outcome_totals()
        with pytest.raises(RuntimeError):
            with store.transaction():
                store.complete([ok("a", lease.token)], T0)
                store.cancel("b", T0, b"x")
                store.enqueue([task("d", "new")], T0)
                with store.transaction():
                    store.purge_finished(T0 + 1)
                assert store.stats()["q"].succeeded == 0  # purged inside, and seen inside
                raise RuntimeError("undo")
        assert (store.stats(), store.task_counts(), store.outcome_totals()) == (stats, named, totals)
        with pytest.raises(RuntimeError):  # an inner block alone
            with store.transaction():
                store.cancel("b", T0, b"x")
                try:
                    with store.transaction():
                        store.enqueue([task("e")], T0)
                        raise RuntimeError("inner")
                except RuntimeError:
                    pass
                assert store.stats()["q"] == QueueStats(cancelled=1, leased=1, delayed=1)
                raise RuntimeError("outer")
        assert_counts_match(store)

    # -- bounded batches -------------------------------------------------------------

    def test_bounded_batches_do_at_most_limit_and_end_below_it(self, store: Store) -> None:
        store.enqueue([task(f"t{i:02d}") for i in range(25)], T0)
        store.lease("q", 25, "w", T0, 5)
        assert [store.release_all(T0, limit=10) for _ in range(4)] == [10, 10, 5, 0]
        store.lease("q", 25, "w", T0, 5)
        got = [store.expire_leases(T0 + 10, limit=10) for _ in range(4)]
        assert [len(g) for g in got] == [10, 10, 5, 0]
        assert sorted(sum(got, [])) == [f"t{i:02d}" for i in range(25)]
        leases = store.lease("q", 25, "w", T0 + 10, 5)
        store.complete([ok(x.id, x.token) for x in leases[:12]], T0 + 11)
        for x in leases[12:]:
            store.nack(x.id, x.token, T0 + 12, error=b"e", dead=True)
        assert [store.purge(states=(DEAD,), limit=5) for _ in range(4)] == [5, 5, 3, 0]
        assert [store.purge_finished(T0 + 20, limit=5) for _ in range(4)] == [5, 5, 2, 0]
        assert store.stats() == {}
        assert_counts_match(store)

    @pytest.mark.parametrize("bad", [0, -1, 10_001, 2.5, "10", True])
    def test_bounded_batches_refuse_an_absurd_limit(self, store: Store, bad: Any) -> None:
        for call in (lambda: store.release_all(T0, limit=bad),
                     lambda: store.expire_leases(T0, limit=bad),
                     lambda: store.purge_finished(T0, limit=bad),
                     lambda: store.purge(limit=bad)):
            with pytest.raises(ValueError, match="limit must be"):
                call()

    def test_promote_due_in_bounded_batches(self, store: Store) -> None:
        store.enqueue([task(f"d{i}", "q" if i % 2 else "r", not_before=T0 + 1 + i) for i in range(5)],
                      T0)
        assert store.promote_due(T0 + 10, limit=2) == ["r", "q"]
        assert store.next_due() == T0 + 3
        assert sorted(store.promote_due(T0 + 10, limit=2)) == ["q", "r"]
        assert store.promote_due(T0 + 10, limit=2) == ["r"] and store.next_due() is None
        assert store.stats()["q"] == QueueStats(ready=2) and store.stats()["r"] == QueueStats(ready=3)

    # -- bounded dependency cascades -------------------------------------------------

    def _fan(self, store: Store) -> None:
        """root <- c0..c4 (each) <- g0..g4 (one each): ten tasks waiting on root."""
        store.enqueue([task("root")], T0)
        store.enqueue([after(f"c{i}", "root") for i in range(5)], T0)
        store.enqueue([after(f"g{i}", f"c{i}") for i in range(5)], T0)

    def test_a_cascade_limit_fails_dependents_in_bounded_steps(self, store: Store) -> None:
        self._fan(store)
        store.cascade_limit = 3
        lease = lease_one(store, "root")
        assert store.nack("root", lease.token, T0 + 1, error=b"e", dead=True)
        assert store.stats()["q"] == QueueStats(dead=1, failed=3, waiting=7)
        rounds = 0
        while store.settle_pending(T0 + 2, limit=3):
            rounds += 1
            assert_counts_match(store)
        assert rounds >= 2
        assert store.stats()["q"] == QueueStats(dead=1, failed=10)
        assert store.settle_pending(T0 + 2) is False
        results = store.results([f"{kind}{i}" for kind in "cg" for i in range(5)])
        for i in range(5):
            assert results[f"c{i}"].payload == dependency_failed_error("root", DEAD)
            assert results[f"g{i}"].payload == dependency_failed_error(f"c{i}", FAILED)
        assert store.outcome_totals()[("q", "mod.fn", FAILED)] == 10

    def test_a_cascade_limit_frees_dependents_in_bounded_steps(self, store: Store) -> None:
        self._fan(store)
        store.cascade_limit = 2
        lease = lease_one(store, "root")
        store.complete([ok("root", lease.token)], T0)
        assert store.stats()["q"] == QueueStats(succeeded=1, ready=2, waiting=8)
        while store.settle_pending(T0, limit=2):
            pass
        assert store.stats()["q"] == QueueStats(succeeded=1, ready=5, waiting=5)

    def test_pending_cascades_roll_back_with_their_transaction(self, store: Store) -> None:
        self._fan(store)
        store.cascade_limit = 1
        with pytest.raises(RuntimeError):
            with store.transaction():
                store.cancel("root", T0, b"x")
                assert store.stats()["q"] == QueueStats(cancelled=1, failed=1, waiting=9)
                raise RuntimeError("undo")
        assert store.settle_pending(T0) is False
        assert store.stats()["q"] == QueueStats(ready=1, waiting=10)
        store.cancel("root", T0, b"x")
        with pytest.raises(RuntimeError):
            with store.transaction():
                store.settle_pending(T0, limit=5)
                raise RuntimeError("undo")
        assert store.stats()["q"] == QueueStats(cancelled=1, failed=1, waiting=9)
        while store.settle_pending(T0, limit=4):
            pass
        assert store.stats()["q"] == QueueStats(cancelled=1, failed=10)

    # -- listings ----------------------------------------------------------------------

    def _fill(self, store: Store) -> None:
        """Tasks in every state, two queues, two names, submitted at T0..T0+39."""
        for i in range(40):
            name = "mod.a" if i % 2 else "mod.b"
            store.enqueue([task(f"t{i:02d}", "q" if i < 30 else "r", name=name,
                                not_before=T0 + 999 if i % 10 == 9 else 0.0)], T0 + i)
        for i in (0, 3, 6, 12, 15, 18, 21, 24, 27):  # leased; most of them then finished
            lease = lease_one(store, f"t{i:02d}", now=T0 + 50)
            if i in (3, 27):
                store.nack(lease.id, lease.token, T0 + 50, error=b"e", dead=True)
            elif i % 6 == 0:
                store.complete([ok(lease.id, lease.token)], T0 + 50)

    def test_list_page_filters_combine(self, store: Store) -> None:
        self._fill(store)
        everything = every_task(store)
        assert [t.id for t in everything] == [f"t{i:02d}" for i in range(40)]
        filters = [
            TaskFilter(states=(READY,)), TaskFilter(states=(SUCCEEDED, DEAD)),
            TaskFilter(states=(READY, LEASED), queue="q"), TaskFilter(name="mod.a"),
            TaskFilter(states=(DELAYED,), name="mod.a"), TaskFilter(queue="r", name="mod.b"),
            TaskFilter(id_prefix="t1"), TaskFilter(id_prefix="t2", states=(LEASED, READY)),
            TaskFilter(created_from=T0 + 5, created_to=T0 + 12),
            TaskFilter(created_from=T0 + 31, queue="r", states=(READY, DELAYED)),
            TaskFilter(states=tuple(STATES)), TaskFilter(states=(WAITING,)),
        ]
        for flt in filters:
            want = [t.id for t in everything if _matches(t, flt)]
            for newest_first in (True, False):
                for limit in (1, 3, 50):
                    got = _all_pages(store, flt, limit, newest_first)
                    assert got == (want[::-1] if newest_first else want), (flt, limit, newest_first)
            assert store.count_tasks(flt) .n == len(want)
            assert store.count_tasks(flt).exact

    def test_a_scan_budget_gives_short_pages_but_never_skips_a_match(
            self, store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
        self._fill(store)
        everything = every_task(store)
        monkeypatch.setattr(paging, "LIST_BUDGET", 4)  # a deep store, in miniature
        monkeypatch.setattr(paging, "COUNT_BUDGET", 4)
        short_pages = 0
        for flt in (TaskFilter(name="mod.a", states=(DEAD, READY, SUCCEEDED)),
                    TaskFilter(queue="r"), TaskFilter(created_from=T0 + 3, created_to=T0 + 7),
                    TaskFilter(states=(DELAYED,), queue="q")):
            want = [t.id for t in everything if _matches(t, flt)]
            for newest_first in (True, False):
                got: list[str] = []
                cursor = None
                for _ in range(200):
                    page = store.list_page(flt, limit=3, cursor=cursor, newest_first=newest_first)
                    got += [t.id for t in page.tasks]
                    if page.cursor is None:
                        break
                    short_pages += len(page.tasks) < 3
                    cursor = page.cursor
                assert got == (want[::-1] if newest_first else want), flt
            count = store.count_tasks(flt)
            assert count.n <= len(want) and (count.exact is False or count.n == len(want))
        assert short_pages > 0  # the budget did cut pages short
        assert store.count_tasks(TaskFilter(queue="r", created_from=T0)).exact is False

    def test_list_page_rows_are_summaries_and_cursors_resume(self, store: Store) -> None:
        self._fill(store)
        page = store.list_page(TaskFilter(states=(DEAD,)), limit=1)
        [row] = page.tasks
        info = task_info(store, row.id)
        assert (row.id, row.queue, row.name, row.state, row.attempts, row.failures,
                row.created_at, row.finished_at) == \
               (info.id, info.queue, info.name, DEAD, info.attempts, 1, info.created_at,
                info.finished_at)
        assert page.cursor is not None
        nxt = store.list_page(TaskFilter(states=(DEAD,)), limit=1, cursor=page.cursor)
        assert [t.id for t in nxt.tasks] != [row.id] and nxt.tasks[0].state == DEAD
        # a cursor stays valid when its row is deleted meanwhile
        store.purge(states=(DEAD,), queue="q")
        assert store.list_page(TaskFilter(states=(DEAD,)), cursor=page.cursor).tasks == []
        assert store.list_page(TaskFilter(states=(SUCCEEDED,)), limit=2).tasks[0].id == "t24"

    def test_key_filter_matches_the_id_a_key_stands_for(self, store: Store) -> None:
        kid = task_id_for_key("invoice-42")
        store.enqueue([task(kid), task(task_id_for_key("invoice-43")), task("plain")], T0)
        assert [t.id for t in store.list_page(TaskFilter(key="invoice-42")).tasks] == [kid]
        assert store.count_tasks(TaskFilter(key="invoice-42")).n == 1
        assert store.count_tasks(TaskFilter(key="nope")).n == 0
        assert store.count_tasks(TaskFilter(id_prefix="key-")).n == 2

    def test_count_tasks_caps_and_says_when_it_is_not_exact(self, store: Store) -> None:
        store.enqueue([task(f"t{i:02d}", name="mod.a") for i in range(30)], T0)
        assert store.count_tasks() == store.count_tasks(TaskFilter(states=(READY,)))
        assert store.count_tasks().n == 30 and store.count_tasks().exact
        capped = store.count_tasks(TaskFilter(id_prefix="t", states=(READY,)), cap=10)
        assert (capped.n, capped.exact) == (10, False)
        assert store.count_tasks(TaskFilter(created_from=T0), cap=30).n == 30

    # -- bulk actions --------------------------------------------------------------------

    def test_requeue_matching_goes_through_a_filter_in_batches(self, store: Store) -> None:
        self._fill(store)
        dead = [t.id for t in every_task(store) if t.state == DEAD]
        flt = TaskFilter(states=(DEAD, READY))
        assert store.count_tasks(TaskFilter(states=(DEAD,))).n == len(dead) == 2
        done, cursor, calls = [], None, 0
        while True:
            batch = store.requeue_matching(flt, T0 + 60, limit=1, cursor=cursor)
            done += batch.ids
            calls += 1
            if batch.cursor is None:
                break
            cursor = batch.cursor
        assert done == dead and calls >= 2
        assert all(task_info(store, i).state == READY for i in dead)
        assert store.requeue_matching(TaskFilter(states=(READY,)), T0).ids == []
        assert_counts_match(store)

    def test_cancel_matching_names_what_it_stopped(self, store: Store) -> None:
        self._fill(store)
        flt = TaskFilter(queue="q", states=(LEASED, DELAYED))
        want = [t.id for t in every_task(store) if _matches(t, flt)]
        got = []
        cursor = None
        while True:
            batch = store.cancel_matching(flt, T0 + 70, b"bulk", limit=2, cursor=cursor)
            got += batch.cancelled
            if batch.cursor is None:
                break
            cursor = batch.cursor
        assert [g[0] for g in got] == want
        assert {(g[1], g[2]) for g in got} == {(LEASED, "w"), (DELAYED, None)}
        assert all(task_info(store, i).state == CANCELLED for i in want)
        assert_counts_match(store)

    # -- bad input -------------------------------------------------------------------

    @pytest.mark.parametrize("kwargs, what", [
        ({"limit": 0}, "limit"), ({"limit": -5}, "limit"), ({"limit": 1001}, "limit"),
        ({"limit": 10**6}, "limit"), ({"limit": "50"}, "limit"), ({"limit": 2.0}, "limit"),
        ({"cursor": "-1"}, "cursor"), ({"cursor": 12}, "cursor"), ({"cursor": "abc"}, "cursor"),
        ({"newest_first": "yes"}, "newest_first"),
        ({"flt": TaskFilter(states=("bogus",))}, "bogus"),
        ({"flt": TaskFilter(states="ready")}, "states"),  # type: ignore[arg-type]
        ({"flt": TaskFilter(queue="")}, "queue"), ({"flt": TaskFilter(queue=5)}, "queue"),  # type: ignore[arg-type]
        ({"flt": TaskFilter(id_prefix="x" * 500)}, "id_prefix"),
        ({"flt": TaskFilter(created_from=float("nan"))}, "created_from"),
        ({"flt": TaskFilter(created_from=T0 + 1, created_to=T0)}, "created_from"),
        ({"flt": {"states": ["ready"]}}, "filter"),
    ])
    def test_absurd_page_arguments_are_refused_by_name(self, store: Store, kwargs: dict[str, Any],
                                                       what: str) -> None:
        store.enqueue([task("a")], T0)
        with pytest.raises(ValueError, match=what):
            store.list_page(**kwargs)
        flt = kwargs.get("flt", ALL_TASKS)
        if "flt" in kwargs:
            with pytest.raises(ValueError, match=what):
                store.count_tasks(flt)
            with pytest.raises(ValueError, match=what):
                store.requeue_matching(flt, T0)
            with pytest.raises(ValueError, match=what):
                store.cancel_matching(flt, T0, b"x")
        elif what != "newest_first":
            with pytest.raises(ValueError, match=what):
                store.requeue_matching(ALL_TASKS, T0, **kwargs)
        assert task_info(store, "a").state == READY

    @pytest.mark.parametrize("cap", [0, -1, 100_001, "9", None])
    def test_count_refuses_an_absurd_cap(self, store: Store, cap: Any) -> None:
        with pytest.raises(ValueError, match="cap"):
            store.count_tasks(ALL_TASKS, cap=cap)


def _matches(t: TaskSummary, flt: TaskFilter) -> bool:
    return ((not flt.states or t.state in flt.states)
            and (flt.queue is None or t.queue == flt.queue)
            and (flt.name is None or t.name == flt.name)
            and (flt.id_prefix is None or t.id.startswith(flt.id_prefix))
            and (flt.created_from is None or t.created_at >= flt.created_from)
            and (flt.created_to is None or t.created_at < flt.created_to))


def _all_pages(store: Store, flt: TaskFilter, limit: int, newest_first: bool) -> list[str]:
    got: list[str] = []
    cursor = None
    for _ in range(1000):
        page = store.list_page(flt, limit=limit, cursor=cursor, newest_first=newest_first)
        assert len(page.tasks) <= limit
        got.extend(t.id for t in page.tasks)
        if page.cursor is None:
            return got
        cursor = page.cursor
    raise AssertionError("paging did not end")

