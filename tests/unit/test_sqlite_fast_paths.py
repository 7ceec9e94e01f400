"""SQLite's per-task fast paths. It keeps a first attempt that succeeded with no output in its task's row
(``tasks.attempt``) instead of an attempts row: the history every reader sees is
the same as the memory store's, through a requeue, a later attempt and a purge,
a file made at schema version 5 gains the column; and a batch of new ids is
inserted without a lookup, undone when one exists."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

import pytest

from conveyor.records import ATTEMPT_SUCCEEDED, SUCCEEDED, AttemptNote, AttemptRecord, Outcome
from conveyor.store.base import Store
from conveyor.store.conformance import T0, lease_one, task
from conveyor.store.memory import MemoryStore
from conveyor.store.sqlite import SCHEMA_VERSION, SQLiteStore

W1 = {"name": "w1", "host": "h1", "pid": 11}
W2 = {"name": "w2", "host": "h2", "pid": 22}


def attempt_rows(store: SQLiteStore, task_id: str) -> int:
    return int(store.conn.execute("SELECT count(*) FROM attempts WHERE task_id = ?", (task_id,)).fetchone()[0])


def both(tmp_path, script: Callable[[Store], None]) -> tuple[SQLiteStore, MemoryStore]:
    """Run ``script`` on a SQLite store and on the memory store (the reference)."""
    sq, mem = SQLiteStore(tmp_path / "data"), MemoryStore()
    script(sq)
    script(mem)
    return sq, mem


def test_a_first_success_is_kept_in_the_row_and_read_back_exactly(tmp_path):
    def script(s: Store) -> None:
        s.enqueue([task("a", "a"), task("b", "b"), task("c", "c")], T0)
        tok = {tid: lease_one(s, tid, tid, "s1", when).token
               for tid, when in (("a", T0 + 1), ("b", T0 + 2), ("c", T0 + 3))}
        assert s.complete([Outcome("a", tok["a"], True, b"v", worker=W1, started_at=T0 + 1.25),
                           Outcome("b", tok["b"], True, b"w"),  # nothing known of its worker
                           Outcome("c", tok["c"], True, b"x", output="printed\n", worker=W1)],
                          T0 + 4.5) == ["stored"] * 3

    sq, mem = both(tmp_path, script)
    try:
        assert sq.get("a").attempt_log == mem.get("a").attempt_log == [
            AttemptRecord(1, "s1", W1, T0 + 1, T0 + 1.25, T0 + 4.5, ATTEMPT_SUCCEEDED, None, None)]
        assert sq.get("b").attempt_log == mem.get("b").attempt_log == [
            AttemptRecord(1, "s1", None, T0 + 2, None, T0 + 4.5, ATTEMPT_SUCCEEDED, None, None)]
        assert sq.get("c").attempt_log == mem.get("c").attempt_log
        # a and b wrote no attempts row; c, with output, did.
        assert [attempt_rows(sq, t) for t in "abc"] == [0, 0, 1]
    finally:
        sq.close()


def test_a_requeued_success_keeps_its_first_attempt_and_adds_the_next(tmp_path):
    def script(s: Store) -> None:
        s.enqueue([task("a", "a")], T0)
        first = lease_one(s, "a", "a", "s1", T0 + 1)
        s.complete([Outcome("a", first.token, True, b"v", worker=W1, started_at=T0 + 1.5)], T0 + 2)
        assert s.requeue(T0 + 3, ids=["a"], states=[SUCCEEDED]) == ["a"]
        second = lease_one(s, "a", "a", "s2", T0 + 4)
        assert second.token != first.token
        assert s.nack("a", second.token, T0 + 5, error=b"boom", dead=True, note=AttemptNote(W2, T0 + 4.5, "out"))

    sq, mem = both(tmp_path, script)
    try:
        expected = mem.get("a").attempt_log
        assert [(a.number, a.owner, a.outcome) for a in expected] == [(1, "s1", ATTEMPT_SUCCEEDED),
                                                                      (2, "s2", "failed")]
        assert sq.get("a").attempt_log == expected
        assert attempt_rows(sq, "a") == 2  # the first was written out when the task went back
        assert sq.conn.execute("SELECT attempt FROM tasks WHERE id = 'a'").fetchone()[0] is None
    finally:
        sq.close()


def test_a_late_or_second_success_is_an_attempts_row(tmp_path):
    def script(s: Store) -> None:
        s.enqueue([task("late", "late"), task("second", "second")], T0)
        late = lease_one(s, "late", "late", "s1", T0)
        s.expire_leases(T0 + 100)  # handed back, not leased since: its success still counts
        assert s.complete([Outcome("late", late.token, True, b"v", worker=W1)], T0 + 102) == ["stored"]
        first = lease_one(s, "second", "second", "s1", T0 + 103)
        s.nack("second", first.token, T0 + 104, error=b"e")
        second = lease_one(s, "second", "second", "s2", T0 + 105)
        assert s.complete([Outcome("second", second.token, True, b"v", worker=W2)], T0 + 106) == ["stored"]

    sq, mem = both(tmp_path, script)
    try:
        for tid in ("late", "second"):
            assert sq.get(tid).attempt_log == mem.get(tid).attempt_log
            assert sq.conn.execute("SELECT attempt FROM tasks WHERE id = ?", (tid,)).fetchone()[0] is None
        assert attempt_rows(sq, "second") == 2
    finally:
        sq.close()


def test_a_version_5_file_gains_the_column_and_keeps_its_attempts(tmp_path):
    s = SQLiteStore(tmp_path)
    s.enqueue([task("old", "old")], T0)
    old = lease_one(s, "old", "old", "s1", T0)
    s.complete([Outcome("old", old.token, True, b"v", output="o")], T0 + 1)
    s.close()
    conn = sqlite3.connect(tmp_path / "conveyor.db", isolation_level=None)
    conn.execute("ALTER TABLE tasks DROP COLUMN attempt")
    conn.execute("PRAGMA user_version = 5")  # as schema version 5 made it
    conn.close()
    s = SQLiteStore(tmp_path)
    try:
        assert s.conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 7
        assert [(a.number, a.output) for a in s.get("old").attempt_log] == [(1, "o")]
        s.enqueue([task("new", "new")], T0)
        new = lease_one(s, "new", "new", "s1", T0)
        s.complete([Outcome("new", new.token, True, b"v")], T0 + 1)
        assert [a.outcome for a in s.get("new").attempt_log] == [ATTEMPT_SUCCEEDED]
    finally:
        s.close()


@pytest.mark.parametrize("purge", ["purge", "purge_finished"])
def test_purged_tasks_take_their_row_attempt_along(tmp_path, purge):
    s = SQLiteStore(tmp_path)
    try:
        s.enqueue([task("a", "a")], T0)
        a = lease_one(s, "a", "a", "s1", T0)
        s.complete([Outcome("a", a.token, True, b"v")], T0 + 1)
        if purge == "purge":
            assert s.purge(states=[SUCCEEDED]) == 1
        else:
            assert s.purge_finished(T0 + 2) == 1
        assert s.get("a") is None
        s.enqueue([task("a", "a")], T0 + 3)  # the id again: a new task, no history
        assert s.get("a").attempt_log == []
    finally:
        s.close()


@pytest.mark.parametrize("savepoints", [True, False])
def test_a_batch_meeting_an_existing_id_is_undone_and_inserted_carefully(tmp_path, savepoints):
    """enqueue inserts a batch of new ids without looking them up; one that exists undoes
    that insert (a savepoint, even inside the master's one-call transaction) and the
    careful path stores only the new ones, counted once."""
    from conveyor.store.conformance_counts import assert_counts_match

    s = SQLiteStore(tmp_path)
    try:
        assert s.enqueue([task("a", payload=b"first")], T0) == [True]
        with s.transaction(savepoints=savepoints):
            assert s.enqueue([task("b"), task("a", payload=b"second"), task("c"), task("b")], T0) == \
                [True, False, True, False]
        assert s.get("a").payload == b"first"
        assert sorted(x.id for x in s.lease("q", 10, "w", T0, 30)) == ["a", "b", "c"]
        assert_counts_match(s)
        with s.transaction(savepoints=savepoints):
            assert s.enqueue([task("d"), task("e")], T0) == [True, True]
        assert_counts_match(s)
        assert s.stats()["q"].ready == 2
    finally:
        s.close()
