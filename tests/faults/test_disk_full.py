"""A full disk fails loudly and passes: a submit or put that cannot be committed raises
StoreFull in the caller, the master says so once per interval, keeps serving reads, and
the next commit after space returns succeeds; a master restarted on a nearly full disk
completes every acknowledged task.

Two ways: a real 8 MiB tmpfs (as root: CI runs as root) with real processes, and a
simulated full disk (an SQLite store whose writing commits fail with SQLite's own
"database or disk is full") under an in-process master with a real client over TCP.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sqlite3
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from conveyor.client import Client
from conveyor.errors import StoreFull
from conveyor.master import Master
from conveyor.store.sqlite import SQLiteStore
from tests.integration.conftest import make_cluster  # noqa: F401 (a fixture)
from tests.waiting import wait_for, wait_until

SQUARE = "tests.integration.itasks:square"


# -- a real small disk -----------------------------------------------------------------

@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    """An 8 MiB tmpfs mounted for the test (root only), unmounted after it."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (the simulated full disk below runs everywhere)")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mnt)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        if os.environ.get("CI") == "true":
            pytest.fail(f"cannot mount a tmpfs as root in CI: {done.stderr.strip()}")
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def fill(directory: Path, leave: int = 0) -> Path:
    """Fill the file system of ``directory`` with a file, leaving about ``leave`` bytes free."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        st = os.statvfs(directory)
        want = st.f_bavail * st.f_frsize - leave
        block = b"x" * 65536
        with contextlib.suppress(OSError):  # ENOSPC: full
            while want > 0:
                want -= os.write(fd, block[:max(4096, min(len(block), want))])
        if not leave:
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, b"x" * 512)
    finally:
        os.close(fd)
    return filler


def _lines(path: Path, needle: str) -> int:
    return sum(needle in line for line in path.read_text(errors="replace").splitlines())


@pytest.mark.parametrize("sync", ["normal", "full"])
def test_a_full_tmpfs_fails_submits_and_puts_loudly_serves_reads_and_recovers(tmpfs, make_cluster, sync):  # noqa: F811
    c = make_cluster(data=tmpfs / "data", sync=sync, workers=1).start()
    with c.client(connect_timeout=10) as client:
        done = client.submit(SQUARE, 3)
        assert done.result(timeout=60) == 9
        filler = fill(tmpfs)
        for i in range(100):  # every one fails in the caller, naming the cause; none hangs
            with pytest.raises(StoreFull, match="disk full"):
                client.submit(SQUARE, i)
        with pytest.raises(StoreFull, match="disk full"):
            client.queue(f"q-{sync}").put("item", timeout=30)
        # Reads are served meanwhile: status, a stored result, inspection.
        assert client.status()["queues"]["default"]["succeeded"] >= 1
        assert client.result(done.task_id, timeout=30) == 9
        assert client.inspect(done.task_id)["state"] == "succeeded"
        assert c.master is not None and c.master.poll() is None  # still up
        log = c.log_path(c.master)
        # The cause is said, a few times (once per part that met it, per 10 s), not once per
        # failed commit (101 here).
        assert wait_until(lambda: _lines(log, "disk full") >= 1, timeout=10)
        assert _lines(log, "disk full") <= 12, log.read_text()[-3000:]
        filler.unlink()  # space returns: the next commits succeed, with no restart
        fut = wait_for(lambda: _submit_or_none(client, 7), timeout=30, what="a submit after space returned")
        assert fut.result(timeout=60) == 49
        client.queue(f"q-{sync}").put("item", timeout=30)
        assert client.queue(f"q-{sync}").get(timeout=30) == "item"


def _submit_or_none(client: Client, n: int):
    try:
        return client.submit(SQUARE, n)
    except StoreFull:
        return None


def test_a_master_restarted_on_a_nearly_full_tmpfs_completes_every_acknowledged_task(tmpfs, make_cluster):  # noqa: F811
    # A killed master leaves its WAL (up to ~4 MiB: the autocheckpoint size) behind; new
    # commits could only append to it, and on a tight disk nothing after the restart
    # committed (262 of 900 tasks in 30 s, stuck). It is folded in and truncated at open.
    c = make_cluster(data=tmpfs / "data", workers=0).start()
    with c.client(connect_timeout=10) as client:
        acked = {client.submit(SQUARE, i, result=False): i for i in range(800)}
        fill(tmpfs)
        with pytest.raises(StoreFull):
            for i in range(1000, 5000):  # until the disk is full; each one that returned is acknowledged
                acked[client.submit(SQUARE, i, result=False)] = i
    c.kill_master()
    os.truncate(tmpfs / "filler", max(0, (tmpfs / "filler").stat().st_size - 64 * 1024))  # 64 KiB free
    c.start_master()
    c.start_worker()
    with c.client(connect_timeout=30) as client:
        assert wait_until(lambda: client.status()["queues"]["default"]["succeeded"] >= len(acked), timeout=90), \
            client.status()["queues"]
        assert {client.result(tid, timeout=30) for tid in acked} == {n * n for n in acked.values()}


# -- a simulated full disk --------------------------------------------------------------

class FullDisk(SQLiteStore):
    """An SQLite store whose writing commits fail, as SQLite's own, while ``full`` is set."""

    full = False

    @contextlib.contextmanager
    def transaction(self, durable: bool = True, savepoints: bool = True) -> Iterator[None]:
        outer = self._depth == 0
        changes = self.conn.total_changes
        with super().transaction(durable, savepoints):
            yield
            if outer and self.full and self.conn.total_changes != changes:
                raise sqlite3.OperationalError("database or disk is full")


@contextlib.contextmanager
def serving(store: SQLiteStore) -> Iterator[Master]:
    """A master on ``store`` in a thread of its own, on a free loopback port."""
    loop = asyncio.new_event_loop()
    master = Master(store, authkey=b"k", port=0)
    ready = threading.Event()

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(master.start())
        ready.set()
        loop.run_until_complete(master.serve_forever())

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert ready.wait(30)
    try:
        yield master
    finally:
        if not master.stopping:  # else it stopped itself (a fatal store error): its loop has ended
            asyncio.run_coroutine_threadsafe(master.close(), loop).result(30)
        thread.join(30)
        loop.close()
        store.close()


@pytest.mark.parametrize("sync", ["normal", "full"])
def test_a_simulated_full_disk_fails_each_submit_once_logs_rarely_and_recovers(tmp_path, caplog, sync):
    store = FullDisk(tmp_path / "data", sync=sync)
    with serving(store) as master, Client(f"127.0.0.1:{master.port}", b"k", connect_timeout=10) as client:
        before = client.submit(SQUARE, 2, result=False)
        store.full = True
        with caplog.at_level(logging.INFO, logger="conveyor"):
            for i in range(200):
                with pytest.raises(StoreFull, match=r"disk full \(database or disk is full\)"):
                    client.submit(SQUARE, i)
            with pytest.raises(StoreFull):
                client.submit_many(SQUARE, [[1], [2]], result=False)
            with pytest.raises(StoreFull):
                client.queue("q").put(1, timeout=10)
            # Reads: status, a fetch, inspection.
            assert client.status()["queues"]["default"]["ready"] == 1
            assert client.inspect(before)["state"] == "ready"
        said = [r for r in caplog.records if "disk full" in r.getMessage()]
        # Once per part that met it (commit, request, dispatch) per 10 s: not one per failure (203).
        assert 1 <= len(said) <= 9, [r.getMessage() for r in said]
        assert all(r.exc_info is None for r in said)  # a line each, no tracebacks
        # Not resent on reconnect, not stored: nothing of the failed submits is in the store.
        assert master.store.stats()["default"].ready == 1
        store.full = False
        tid = wait_for(lambda: _submit_id_or_none(client), timeout=30, what="a submit after the disk recovered")
        assert client.inspect(tid)["state"] == "ready"
        client.queue("q").put(1, timeout=10)


def _submit_id_or_none(client: Client) -> str | None:
    try:
        return client.submit(SQUARE, 1, result=False)
    except StoreFull:
        return None


# -- the parts ---------------------------------------------------------------------------

def test_the_fault_log_says_each_cause_once_per_interval_with_the_count_it_held_back(caplog):
    from conveyor.ratelimit_log import RateLimitedLog

    now = [0.0]
    faults = RateLimitedLog(logging.getLogger("conveyor.master"), interval=10.0, clock=lambda: now[0])
    with caplog.at_level(logging.ERROR, logger="conveyor.master"):
        said = [faults.error("full", "disk full") for _ in range(1000)]
        assert faults.error("io", "I/O error")  # another cause is said at once
        now[0] = 10.5
        assert faults.error("full", "disk full")
    assert said.count(True) == 1
    assert [r.getMessage() for r in caplog.records] == [
        "disk full", "I/O error", "disk full (999 similar suppressed)"]


def test_sqlite_errors_are_told_apart_by_their_code():
    from conveyor.errors import StoreCorrupt, StoreError, StoreIOError
    from conveyor.store.check import classify

    def error(text: str, code: int) -> sqlite3.Error:
        exc = sqlite3.OperationalError(text)
        exc.sqlite_errorcode = code  # type: ignore[attr-defined]
        return exc

    where = Path("/data/conveyor.db")
    assert type(classify(error("database or disk is full", 13), where)) is StoreFull
    assert type(classify(error("disk I/O error", 10 | (4 << 8)), where)) is StoreIOError  # SQLITE_IOERR_READ
    corrupt = classify(error("database disk image is malformed", 11), where)
    assert type(corrupt) is StoreCorrupt and "conveyor store recover /data NEW_DIR" in str(corrupt)
    assert type(classify(error("database is locked", 5), where)) is StoreError
