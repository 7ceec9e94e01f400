"""``conveyor store check DIR`` and ``conveyor store recover DIR NEW_DIR`` on a real store
with thousands of tasks, damaged mid-file: check reports it, recover salvages the readable
tasks and results into a new store (the damaged file untouched), and a master started on
the new store runs the tasks that were waiting and serves the results that were stored."""

from __future__ import annotations

import hashlib
import shutil
import sqlite3
from pathlib import Path

import pytest

from conveyor.cluster import LocalCluster
from conveyor.store.recover import recover, shell_works
from tests.faults.damaged import DONE, LATER, TASKS, build_store, conveyor, damage
from tests.integration.conftest import ROOT, make_cluster  # noqa: F401 (a fixture)
from tests.waiting import wait_until


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, dict[str, int]]:
    return build_store(tmp_path_factory.mktemp("built"))


@pytest.fixture
def damaged(built, tmp_path) -> Path:
    data = tmp_path / "data"
    shutil.copytree(built[0], data)
    damage(data)
    return data


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _rows(data: Path) -> dict[str, tuple[str, bytes | None]]:
    conn = sqlite3.connect(data / "conveyor.db")
    try:
        return {tid: (state, result) for tid, state, result in
                conn.execute("SELECT id, state, result_payload FROM tasks")}
    finally:
        conn.close()


def test_store_check_says_ok_for_a_sound_store_and_names_the_damage_of_a_damaged_one(built, damaged):
    ok = conveyor("store", "check", str(built[0]))
    assert ok.returncode == 0 and ok.stdout.startswith("ok:"), ok.stdout + ok.stderr
    bad = conveyor("store", "check", str(damaged))
    assert bad.returncode == 1
    assert bad.stdout.startswith("corrupt:") and f"conveyor store recover {damaged} NEW_DIR" in bad.stdout
    quick = conveyor("store", "check", "--quick", str(damaged))
    assert quick.returncode == 1 and "corrupt" in quick.stdout


def test_store_recover_salvages_the_readable_tasks_and_the_master_runs_them(built, damaged, tmp_path):
    _, tasks = built
    before = _digest(damaged / "conveyor.db")
    new = tmp_path / "new"
    proc = conveyor("store", "recover", str(damaged), str(new))
    assert proc.returncode == 0, proc.stderr
    assert f"of {DONE + LATER} task(s)" in proc.stdout
    assert _digest(damaged / "conveyor.db") == before  # the damaged file is only read
    assert conveyor("store", "check", str(new)).returncode == 0
    rows = _rows(new)
    # 8 KiB is two pages: the tasks on them are lost, every other one is salvaged.
    assert set(rows) <= set(tasks) and len(rows) >= 0.9 * (DONE + LATER), len(rows)
    assert f"recovered {len(rows)} of" in proc.stdout
    finished = [tid for tid, (state, _) in rows.items() if state == "succeeded"]
    waiting = [tid for tid, (state, _) in rows.items() if state == "ready"]
    assert finished and waiting and len(finished) + len(waiting) == len(rows)
    cluster = LocalCluster(modules=[TASKS], workers=1, concurrency=2, cwd=ROOT, log_dir=tmp_path / "logs",
                           data=new, worker_args=["--queues", "default,later"])
    try:
        cluster.start()
        with cluster.client(connect_timeout=30) as client:
            # The results stored before the damage, and the waiting tasks, run now.
            assert all(client.result(tid, timeout=30) == tasks[tid] ** 2 for tid in finished[:200])
            assert wait_until(lambda: client.status()["queues"].get("later", {}).get("succeeded", 0)
                              == len(waiting), timeout=120)
            assert all(client.result(tid, timeout=30) == tasks[tid] ** 2 for tid in waiting)
    finally:
        cluster.stop(grace=10)


def test_recover_uses_the_sqlite3_shell_where_it_can_and_python_salvage_otherwise(damaged, tmp_path):
    py = recover(damaged, tmp_path / "py", use_shell=False)
    assert py.rows["tasks"] > 0 and "salvage" in py.method
    chosen = recover(damaged, tmp_path / "chosen")
    if shell_works():
        assert chosen.method == "sqlite3 .recover"
        assert chosen.rows["tasks"] >= py.rows["tasks"]
    else:  # e.g. Debian 12's shell, built without sqlite_dbpage: the fallback, with the same rows
        assert chosen.method == py.method and chosen.rows == py.rows


def test_recover_refuses_a_target_that_holds_a_store_and_the_damaged_directory_itself(built, damaged, tmp_path):
    proc = conveyor("store", "recover", str(damaged), str(built[0]))
    assert proc.returncode == 1 and "exists" in proc.stderr and "Traceback" not in proc.stderr
    proc = conveyor("store", "recover", str(damaged), str(damaged))
    assert proc.returncode == 1 and "new directory" in proc.stderr


def test_store_commands_refuse_a_directory_a_running_master_holds(make_cluster):  # noqa: F811
    cluster = make_cluster(workers=0).start()
    proc = conveyor("store", "check", str(cluster.data))
    assert proc.returncode == 1 and "in use by another master" in proc.stderr and "stop it first" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_recover_reads_the_tasks_no_path_reaches_when_the_table_root_is_destroyed(built, tmp_path):
    # Every query of the tasks table goes through its root page: with that page destroyed,
    # SQLite itself reads none of them; their leaf pages are intact and read one by one.
    data = tmp_path / "data"
    shutil.copytree(built[0], data)
    original = _rows(data)
    conn = sqlite3.connect(data / "conveyor.db")
    try:
        root = conn.execute("SELECT rootpage FROM sqlite_master WHERE name = 'tasks'").fetchone()[0]
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
    finally:
        conn.close()
    with open(data / "conveyor.db", "r+b") as f:
        f.seek((root - 1) * page_size)
        f.write(bytes(page_size))
    assert conveyor("store", "check", str(data)).returncode == 1
    report = recover(data, tmp_path / "new", use_shell=False)
    assert report.rows["tasks"] == len(original) == DONE + LATER
    assert _rows(tmp_path / "new") == original  # every state and every stored result
    assert conveyor("store", "check", str(tmp_path / "new")).returncode == 0
