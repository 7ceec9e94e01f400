"""The SQLite store's own promises: files, pragmas, durability across a killed
process, schema migrations and errors. (The semantics it shares with every
store are in conveyor.store.conformance, run by test_store_conformance.py.)"""

from __future__ import annotations

import os
import select
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import conveyor.store as store_pkg
from conveyor import serde
from conveyor.errors import StoreError
from conveyor.store import (
    LEASED,
    READY,
    STORED,
    WAITING,
    QueueStats,
    SQLiteStore,
    sqlite_schema,
)
from conveyor.store.conformance import T0, after, ids, ok, schedule_record, task


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
    got = s.lease("q", 2, "w", T0, 30)
    assert ids(got) == ["b", "a"]
    s.complete([ok("b", got[0].token, b"result")], T0 + 1)
    s.nack("a", got[1].token, T0 + 1, error=b"e1")
    s.lease("q", 1, "w2", T0 + 2, 30)  # a again (attempt 2)
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
    s = SQLiteStore(tmp_path, exclusive=False)
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


def test_sqlite_store_keeps_its_file_to_itself_unless_asked_not_to(tmp_path):
    s = SQLiteStore(tmp_path / "x")
    s.enqueue([task("a")], T0)
    other = sqlite3.connect(tmp_path / "x" / "conveyor.db", timeout=0.05)
    try:
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            other.execute("SELECT count(*) FROM tasks").fetchone()
        s.close()  # closing lets go of the file, with every commit in it
        assert other.execute("SELECT count(*) FROM tasks").fetchone()[0] == 1
    finally:
        other.close()
    shared = SQLiteStore(tmp_path / "y", exclusive=False)
    shared.enqueue([task("a")], T0)
    other = sqlite3.connect(tmp_path / "y" / "conveyor.db", timeout=0.05)
    try:
        assert other.execute("SELECT count(*) FROM tasks").fetchone()[0] == 1
    finally:
        other.close()
        shared.close()


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
    s = SQLiteStore(tmp_path, exclusive=False)
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

def _kill_when_it_says(script: str, args: list[str], src: Path, line: bytes) -> None:
    """Run ``script`` (with conveyor from ``src``) until it prints ``line``, then kill -9 it."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(src), env.get("PYTHONPATH")]))
    proc = subprocess.Popen([sys.executable, "-c", script, *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    try:
        ready, _, _ = select.select([proc.stdout], [], [], 60)
        assert ready, f"the child did not print {line!r} in time"
        got = proc.stdout.readline()
        assert got.strip() == line, (got, proc.stderr.read() if proc.poll() is not None else b"")
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=10) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        proc.stdout.close()
        proc.stderr.close()


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
    _kill_when_it_says(child, [str(tmp_path), sync], src, b"done")
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
        [lease] = s.lease("q", 1, "w", T0, 30)
        s.nack("a", lease.token, T0, error=b"e")
        blob_options, blob_errors = s.conn.execute(
            "SELECT options, errors FROM tasks WHERE id = 'a'").fetchone()
        assert serde.unpackb(blob_options) == {"timeout": 1.5}
        assert serde.unpackb(blob_errors) == [b"e"]
    finally:
        s.close()


def test_sqlite_schedules_survive_reopen(tmp_path):
    s = SQLiteStore(tmp_path / "data")
    s.save_schedule(schedule_record("a"))
    s.mark_slot("a", T0 + 300)
    s.close()
    s = SQLiteStore(tmp_path / "data")
    try:
        assert s.schedules() == [{**schedule_record("a"), "last_slot": T0 + 300}]
    finally:
        s.close()


def test_sqlite_version_1_file_gets_the_schedules_table(tmp_path):
    s = SQLiteStore(tmp_path / "data")
    s.enqueue([task("old")], T0)
    s.close()
    conn = sqlite3.connect(tmp_path / "data" / "conveyor.db")
    conn.execute("DROP TABLE schedules")
    conn.execute("PRAGMA user_version = 1")
    conn.commit()
    conn.close()
    s = SQLiteStore(tmp_path / "data")
    try:
        assert s.get("old") is not None and s.schedules() == []
        s.save_schedule(schedule_record("a"))
        assert [r["name"] for r in s.schedules()] == ["a"]
    finally:
        s.close()
    conn = sqlite3.connect(tmp_path / "data" / "conveyor.db")
    try:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == store_pkg.sqlite.SCHEMA_VERSION >= 2
    finally:
        conn.close()


def test_sqlite_dependencies_survive_reopen(tmp_path):
    s = SQLiteStore(tmp_path)
    s.enqueue([task("a"), after("b", "a")], T0)
    [lease] = s.lease("q", 1, "w", T0, 30)
    s.set_progress("a", lease.token, {"done": 1})
    s.close()
    s = SQLiteStore(tmp_path)
    try:
        assert s.get("b").state == WAITING and s.get("a").progress == {"done": 1}
        s.complete([ok("a", lease.token)], T0)  # the token outlives a reopen
        assert s.get("b").state == READY
    finally:
        s.close()


def test_sqlite_store_made_before_dependencies_gains_them(tmp_path):
    SQLiteStore(tmp_path).close()
    conn = sqlite3.connect(tmp_path / "conveyor.db", isolation_level=None)
    conn.execute("DROP TABLE deps")
    conn.execute("ALTER TABLE tasks DROP COLUMN progress")
    conn.execute("INSERT INTO tasks (id, queue, state, created_at, payload, codec) "
                 "VALUES ('old', 'q', 'ready', 1.0, x'00', 'msgpack')")
    conn.execute("PRAGMA user_version = 2")  # as schema version 2 made it
    conn.close()
    s = SQLiteStore(tmp_path)
    try:
        columns = {r[1] for r in s.conn.execute("PRAGMA table_info(tasks)")}
        assert "progress" in columns
        indexes = {r[0] for r in s.conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
        assert {"deps_task", "deps_on"} <= indexes
        assert s.conn.execute("PRAGMA user_version").fetchone()[0] == store_pkg.sqlite.SCHEMA_VERSION
        assert s.get("old").state == READY and s.get("old").progress is None
        s.enqueue([after("new", "old")], T0)
        assert s.get("new").state == WAITING
        [lease] = s.lease("q", 5, "w", T0, 30)
        s.set_progress("old", lease.token, {"done": 1})
        s.complete([ok("old", lease.token)], T0)
        assert s.get("new").state == READY and s.get("old").progress == {"done": 1}
        plan = " ".join(r[3] for r in s.conn.execute(
            "EXPLAIN QUERY PLAN SELECT task_id FROM deps WHERE depends_on = ?", ("x",)))
        assert "deps_on" in plan
    finally:
        s.close()
    SQLiteStore(tmp_path).close()  # opening again changes nothing


# The tasks table exactly as schema version 1 (the first release) made it.
_V1_SCHEMA = """
CREATE TABLE tasks (
    seq INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, queue TEXT NOT NULL, name TEXT,
    state TEXT NOT NULL, priority INTEGER NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0, created_at REAL NOT NULL,
    not_before REAL NOT NULL DEFAULT 0, lease_owner TEXT, lease_deadline REAL, started_at REAL,
    finished_at REAL, payload BLOB NOT NULL, codec TEXT NOT NULL, options BLOB, errors BLOB,
    result_ok INTEGER, result_payload BLOB, result_codec TEXT
);
CREATE INDEX tasks_ready ON tasks (queue, priority DESC, seq, state) WHERE state = 'ready';
CREATE INDEX tasks_owner ON tasks (lease_owner) WHERE state = 'leased';
CREATE INDEX tasks_deadline ON tasks (lease_deadline) WHERE state = 'leased';
CREATE INDEX tasks_delayed ON tasks (not_before, state) WHERE state = 'delayed';
CREATE INDEX tasks_finished ON tasks (finished_at) WHERE finished_at IS NOT NULL;
INSERT INTO tasks (id, queue, name, state, created_at, payload, codec, errors)
    VALUES ('old', 'q', 'mod.fn', 'ready', 1.0, x'00', 'msgpack', x'91c40165');
PRAGMA user_version = 1;
"""


def test_sqlite_version_1_file_gains_dependencies_and_progress(tmp_path):
    conn = sqlite3.connect(tmp_path / "conveyor.db")
    conn.executescript(_V1_SCHEMA)
    conn.close()
    s = SQLiteStore(tmp_path)
    try:
        assert s.get("old").state == READY and s.get("old").errors == [b"e"]
        s.enqueue([after("new", "old")], T0)
        [lease] = s.lease("q", 5, "w", T0, 30)
        assert (lease.id, lease.failures) == ("old", 1)
        assert s.set_progress("old", lease.token, {"done": 1}) is True
        assert s.complete([ok("old", lease.token)], T0) == [STORED]
        assert s.get("new").state == READY and s.get("old").progress == {"done": 1}
    finally:
        s.close()
    s = SQLiteStore(tmp_path)  # and it opens again as it is now
    try:
        assert s.get("new").after == ["old"]
    finally:
        s.close()


def test_sqlite_full_relaxes_only_the_non_durable_commit(tmp_path):
    from conveyor.store import SQLiteStore

    store = SQLiteStore(tmp_path, sync="full")
    try:
        sync = lambda: store.conn.execute("PRAGMA synchronous").fetchone()[0]  # noqa: E731
        assert sync() == 2  # FULL
        with store.transaction(durable=False):
            assert sync() == 1  # NORMAL: no fsync at this commit
        assert sync() == 2
        with store.transaction():
            assert sync() == 2
    finally:
        store.close()


# -- the versioned migrations (store/sqlite_schema.py) ---------------------------------


def _file_at(directory: Path, version: int) -> Path:
    """A store file as the code of schema ``version`` made it, holding one ready task."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "conveyor.db"
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        for step in sqlite_schema.MIGRATIONS[:version]:
            step.apply(conn)
        if version >= 1:
            conn.execute("INSERT INTO tasks (id, queue, name, state, created_at, payload, codec) "
                         "VALUES ('old', 'q', 'mod.fn', 'ready', 1.0, x'00', 'msgpack')")
        conn.execute(f"PRAGMA user_version = {version}")
    finally:
        conn.close()
    return path


def _user_version(path: Path) -> int:
    conn = sqlite3.connect(path)
    try:
        return conn.execute("PRAGMA user_version").fetchone()[0]
    finally:
        conn.close()


@pytest.mark.parametrize("version", range(sqlite_schema.SCHEMA_VERSION))
def test_sqlite_a_file_made_by_each_older_step_is_migrated_to_the_current_one(tmp_path, version):
    path = _file_at(tmp_path, version)
    s = SQLiteStore(tmp_path)
    try:
        assert s.conn.execute("PRAGMA user_version").fetchone()[0] == sqlite_schema.SCHEMA_VERSION
        if version >= 1:
            assert s.get("old").state == READY
        s.enqueue([task("a"), after("b", "a")], T0)  # deps (schema 3)
        [lease] = s.lease("q", 1, "w", T0, 30)
        assert s.set_progress(lease.id, lease.token, {"done": 1}) is True  # tasks.progress (3)
        s.save_schedule(schedule_record("s"))  # the schedules table (2)
        assert [r["name"] for r in s.schedules()] == ["s"] and s.get("b").after == ["a"]
    finally:
        s.close()
    assert _user_version(path) == sqlite_schema.SCHEMA_VERSION
    SQLiteStore(tmp_path).close()  # opening it again changes nothing


def test_sqlite_a_version_2_file_that_already_has_dependencies_is_migrated(tmp_path):
    # conveyor before schema 3 added deps and tasks.progress to version-2 files in place.
    path = _file_at(tmp_path, 2)
    conn = sqlite3.connect(path, isolation_level=None)
    sqlite_schema.MIGRATIONS[2].apply(conn)
    conn.execute("INSERT INTO deps (task_id, depends_on) VALUES ('x', 'old')")
    conn.close()
    s = SQLiteStore(tmp_path)
    try:
        assert s.conn.execute("SELECT task_id, depends_on FROM deps").fetchall() == [("x", "old")]
        assert s.conn.execute("PRAGMA user_version").fetchone()[0] == sqlite_schema.SCHEMA_VERSION
    finally:
        s.close()


def test_sqlite_a_file_from_a_newer_conveyor_is_refused_naming_both_versions(tmp_path):
    newer = sqlite_schema.SCHEMA_VERSION + 1
    path = _file_at(tmp_path, sqlite_schema.SCHEMA_VERSION)
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {newer}")
    conn.close()
    with pytest.raises(StoreError, match=f"schema version {newer}, newer than this "
                                         f"conveyor's {sqlite_schema.SCHEMA_VERSION}"):
        SQLiteStore(tmp_path)
    assert _user_version(path) == newer  # left as it was


def test_sqlite_migration_steps_apply_all_or_nothing(tmp_path, monkeypatch):
    last = sqlite_schema.SCHEMA_VERSION + 1

    def broken(conn: sqlite3.Connection) -> None:
        raise sqlite3.OperationalError(f"step {last} failed")

    steps = (*sqlite_schema.MIGRATIONS, sqlite_schema.Migration(last, "broken", broken))
    monkeypatch.setattr(sqlite_schema, "MIGRATIONS", steps)
    monkeypatch.setattr(sqlite_schema, "SCHEMA_VERSION", last)
    path = _file_at(tmp_path, 1)
    with pytest.raises(StoreError, match=f"step {last} failed"):
        SQLiteStore(tmp_path)
    conn = sqlite3.connect(path)
    try:  # the steps before it ran in the same transaction: rolled back with it
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 1
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert tables == {"tasks"}
    finally:
        conn.close()


def _raw_recount(path: Path) -> tuple[dict[tuple[str, str, str], int], dict[tuple[str, str, str], int]]:
    """(counts table, a GROUP BY over every task) read straight from the file."""
    conn = sqlite3.connect(path)
    try:
        table = {(q, n, s): c for q, n, s, c in conn.execute("SELECT * FROM counts WHERE n != 0")}
        scan = {(q, n, s): c for q, n, s, c in conn.execute(
            "SELECT queue, coalesce(name, ''), state, count(*) FROM tasks GROUP BY 1, 2, 3")}
        return table, scan
    finally:
        conn.close()


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_sqlite_counts_equal_a_recount_after_a_kill_mid_stream(tmp_path):
    src = Path(store_pkg.__file__).resolve().parents[2]
    child = textwrap.dedent("""
        import sys
        from conveyor.store import SQLiteStore
        from conveyor.store.conformance_counts import random_mix
        store = SQLiteStore(sys.argv[1], sync="normal")
        def step(i):
            if i == 300:
                print("busy", flush=True)  # the parent kills it from here on
        random_mix(store, 11, 10**9, on_step=step)
    """)
    _kill_when_it_says(child, [str(tmp_path)], src, b"busy")
    s = SQLiteStore(tmp_path)
    try:
        from conveyor.store.conformance_counts import assert_counts_match

        assert_counts_match(s)  # through the Store interface
        assert sum(n for q in s.stats().values() for n in q.as_dict().values()) > 0
    finally:
        s.close()
    table, scan = _raw_recount(tmp_path / "conveyor.db")
    assert table == scan


def test_sqlite_migration_to_4_builds_the_counts_from_the_tasks(tmp_path):
    path = _file_at(tmp_path, 3)
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("INSERT INTO tasks (id, queue, name, state, created_at, finished_at, payload, codec) "
                 "VALUES ('done', 'q', 'mod.fn', 'succeeded', 1.0, 2.0, x'00', 'msgpack')")
    conn.close()
    s = SQLiteStore(tmp_path)
    try:
        assert s.stats() == {"q": QueueStats(ready=1, succeeded=1)}
        assert s.outcome_totals() == {("q", "mod.fn", "succeeded"): 1}
    finally:
        s.close()
    table, scan = _raw_recount(path)
    assert table == scan


@pytest.mark.parametrize("sql, index", [
    ("SELECT seq FROM tasks WHERE state = ? AND seq < ? ORDER BY seq DESC LIMIT 50", "tasks_state"),
    ("SELECT seq FROM tasks WHERE finished_at < ? ORDER BY finished_at LIMIT 500", "tasks_finished"),
    ("SELECT seq FROM tasks INDEXED BY tasks_deadline WHERE state = 'leased' "
     "AND lease_deadline <= ? ORDER BY lease_deadline LIMIT 500", "tasks_deadline"),
    ("SELECT seq FROM tasks INDEXED BY tasks_deadline WHERE state = 'leased' "
     "ORDER BY lease_deadline LIMIT 500", "tasks_deadline"),
    ("SELECT seq FROM tasks WHERE state IN (?, ?) AND queue = ? LIMIT 500", "tasks_state"),
    ("SELECT seq FROM tasks WHERE state = ? ORDER BY seq LIMIT 500", "tasks_state"),
    ("SELECT seq FROM tasks INDEXED BY tasks_delayed WHERE state = 'delayed' AND not_before <= ? "
     "ORDER BY not_before LIMIT 500", "tasks_delayed"),
    ("SELECT t.seq FROM deps d JOIN tasks t ON t.id = d.task_id WHERE d.depends_on = ? "
     "AND d.task_id > ? AND t.state = 'waiting' ORDER BY d.task_id LIMIT 500", "deps_on"),
    ("SELECT seq FROM tasks WHERE id >= ? AND id < ? LIMIT 10001", "sqlite_autoindex_tasks_1"),
])
def test_sqlite_bounded_queries_use_an_index(tmp_path, sql, index):
    """Each bounded batch, listing stream and id-prefix lookup walks an index: no scan, no sort."""
    s = SQLiteStore(tmp_path)
    try:
        params = [None] * sql.count("?")
        plan = " ".join(r[3] for r in s.conn.execute("EXPLAIN QUERY PLAN " + sql, params))
        # a SCAN is allowed only along the index itself, in its order, stopping at the LIMIT
        assert index in plan and "TEMP B-TREE" not in plan, plan
        assert "SCAN" not in plan or f"SCAN tasks USING INDEX {index}" == plan, plan
    finally:
        s.close()


def test_sqlite_a_cut_cascade_survives_reopen_and_is_continued(tmp_path):
    s = SQLiteStore(tmp_path)
    try:
        s.cascade_limit = 2
        s.enqueue([task("root")], T0)
        s.enqueue([after(f"c{i}", "root") for i in range(6)], T0)
        s.cancel("root", T0, b"stop")
        assert s.stats()["q"] == QueueStats(cancelled=1, failed=2, waiting=4)
    finally:
        s.close()
    s = SQLiteStore(tmp_path)  # a new master: no cascade_limit, the pending rest kept on disk
    try:
        calls = 1
        while s.settle_pending(T0, limit=3):
            calls += 1
        assert 2 <= calls <= 4
        assert s.stats()["q"] == QueueStats(cancelled=1, failed=6)
        assert s.conn.execute("SELECT count(*) FROM unsettled").fetchone()[0] == 0
    finally:
        s.close()
