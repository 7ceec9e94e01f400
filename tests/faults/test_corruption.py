"""A damaged store is caught, not spun on: the master refuses to start on it with one line
saying what to do, and corruption met at run time stops it with one line and a non-zero exit."""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conveyor.client import Client
from conveyor.errors import ConnectionLost, StoreCorrupt
from conveyor.store.check import integrity_check, quick_check
from conveyor.store.sqlite import SQLiteStore
from tests.faults.damaged import DONE, LATER, build_store, conveyor, damage
from tests.integration.conftest import ROOT
from tests.waiting import wait_for


@pytest.fixture(scope="module")
def sound(tmp_path_factory) -> Path:
    """A stopped master's store with thousands of tasks (built once for the module; copy it)."""
    data, _ = build_store(tmp_path_factory.mktemp("sound"))
    return data


def _copy(sound: Path, tmp_path: Path, *, damaged: bool) -> Path:
    data = tmp_path / "data"
    shutil.copytree(sound, data)
    if damaged:
        damage(data)
    return data


def test_the_checks_tell_a_damaged_store_from_a_sound_one(sound, tmp_path):
    data = _copy(sound, tmp_path, damaged=False)
    assert integrity_check(data / "conveyor.db").ok
    bad = _copy(sound, tmp_path / "bad", damaged=True)
    assert not integrity_check(bad / "conveyor.db").ok
    conn = sqlite3.connect(bad / "conveyor.db")
    try:
        report = quick_check(conn, bad / "conveyor.db")
    finally:
        conn.close()
    assert not report.ok and report.complete


def test_the_quick_check_at_start_stops_at_its_budget_and_passes_what_it_read(sound, tmp_path):
    data = _copy(sound, tmp_path, damaged=False)
    conn = sqlite3.connect(data / "conveyor.db")
    try:
        assert quick_check(conn, data / "conveyor.db").complete
        cut = quick_check(conn, data / "conveyor.db", budget=0.0)
    finally:
        conn.close()
    assert cut.ok and not cut.complete  # stopped by the budget, no damage seen in what it read


@pytest.mark.parametrize("check", [False, True])
def test_a_master_refuses_to_start_on_a_store_damaged_mid_file_with_one_line(sound, tmp_path, check):
    data = _copy(sound, tmp_path, damaged=True)
    proc = conveyor("master", "--bind", "127.0.0.1:0", "--data", str(data), *(["--check"] if check else []),
                    timeout=60)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "corrupt" in lines[0] and f"conveyor store recover {data} NEW_DIR" in lines[0]


def test_a_sound_store_passes_the_thorough_check_and_the_master_serves(sound, tmp_path):
    data = _copy(sound, tmp_path, damaged=False)
    proc = subprocess.Popen([sys.executable, "-m", "conveyor", "master", "--bind", "127.0.0.1:0", "--data",
                             str(data), "--check"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=ROOT, env={"CONVEYOR_AUTHKEY": "k", **_env()})
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # the one line it prints once it listens
        assert "listening on" in line, proc.stderr.read() if proc.poll() is not None else line
    finally:
        proc.terminate()
        proc.wait(30)
    assert proc.returncode == 0


def _env() -> dict[str, str]:
    import os
    return {k: v for k, v in os.environ.items() if k != "CONVEYOR_AUTHKEY"}


# The real CLI in a real process, with SQLite's "malformed" raised from the store's first
# enqueue after the start (damage the start-up checks could not see: a page gone bad since).
_CORRUPT_AT_RUN_TIME = """
import sqlite3, sys
from conveyor.store import sqlite as s
def enqueue(self, tasks, now):
    raise self._error(sqlite3.DatabaseError("database disk image is malformed"))
s.SQLiteStore.enqueue = enqueue
from conveyor.cli import main
sys.exit(main(["master", "--bind", "127.0.0.1:0", "--data", sys.argv[1]]))
"""


def test_corruption_met_at_run_time_stops_the_master_with_one_line_and_a_non_zero_exit(sound, tmp_path):
    data = _copy(sound, tmp_path, damaged=False)
    proc = subprocess.Popen([sys.executable, "-c", _CORRUPT_AT_RUN_TIME, str(data)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=ROOT, env={**_env(), "CONVEYOR_AUTHKEY": "k"})
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert "listening on" in line
        port = int(line.split("tcp://127.0.0.1:")[1].split()[0])
        with Client(f"127.0.0.1:{port}", b"k", connect_timeout=10) as client:
            with pytest.raises((StoreCorrupt, ConnectionLost)):
                client.submit("tests.integration.itasks:square", 3)
        started = time.monotonic()
        rc = proc.wait(60)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
    assert rc == 1 and time.monotonic() - started < 60
    assert "Traceback" not in err
    said = [ln for ln in err.splitlines() if "corrupt" in ln]
    assert len(said) == 1, err  # one line, not one per attempt
    assert "conveyor store recover" in said[0]
    assert len(err.splitlines()) < 10, err


def test_a_simulated_runtime_corruption_stops_an_in_process_master(tmp_path):
    from tests.faults.test_disk_full import serving

    class Rotten(SQLiteStore):
        rotten = False

        def stats(self):  # type: ignore[override]
            if self.rotten:
                raise self._error(sqlite3.DatabaseError("database disk image is malformed"))
            return super().stats()

    store = Rotten(tmp_path / "data")
    with serving(store) as master, Client(f"127.0.0.1:{master.port}", b"k", connect_timeout=10) as client:
        client.status()
        store.rotten = True
        with pytest.raises((StoreCorrupt, ConnectionLost)):
            client.status()
        assert wait_for(lambda: master.stopping, timeout=30, what="the master stopping")
        assert isinstance(master.fatal, StoreCorrupt)


def test_counts_of_the_fixture(sound):
    conn = sqlite3.connect(sound / "conveyor.db")
    try:
        assert conn.execute("SELECT count(*) FROM tasks").fetchone()[0] == DONE + LATER
    finally:
        conn.close()


def test_check_problems_are_one_line_each_whatever_sqlite_joins():
    """SQLite before 3.43 returns an integrity check's findings newline-joined in one row,
    after a heading: each becomes a problem of its own, and a message naming them stays one line."""
    from conveyor.store.check import _problems

    assert _problems(["ok"]) == []
    assert _problems(["*** in database main ***\nPage 7: btreeInitPage() returns error code 11\n"
                      "On tree page 3 cell 0: Child page depth differs"]) == [
        "Page 7: btreeInitPage() returns error code 11", "On tree page 3 cell 0: Child page depth differs"]
    assert _problems(["row 1 missing from index tasks_state", "wrong # of entries in index tasks_state"]) == [
        "row 1 missing from index tasks_state", "wrong # of entries in index tasks_state"]
