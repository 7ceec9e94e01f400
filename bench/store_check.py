"""What checking an SQLite store costs at size: the master's start, quick_check, integrity_check.

Builds a store of ``--tasks`` tasks (half of them finished with a result) in ``--data``
unless it holds one already, then times, each on a fresh connection:

* opening it as the master does (``SQLiteStore``: schema, the bounded start check of
  ``conveyor.store.check.quick_check``, migrations), and whether that check read every page
  within its budget;
* SQLite's ``PRAGMA quick_check`` in full (O(size): what a start without a budget would pay);
* ``PRAGMA integrity_check`` (``conveyor master --check`` and ``conveyor store check``).

    .venv/bin/python bench/store_check.py --tasks 1000000 --data /tmp/store-1m
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))

from conveyor.ids import new_id  # noqa: E402
from conveyor.records import NewTask, Outcome  # noqa: E402
from conveyor.store.check import integrity_check, quick_check  # noqa: E402
from conveyor.store.sqlite import DB_NAME, SQLiteStore  # noqa: E402


def build(data: Path, n: int, batch: int = 5000) -> None:
    """``n`` tasks in ``data``, every other one leased and completed with a small result."""
    store = SQLiteStore(data)
    try:
        for _ in range(0, n, batch):
            now = time.time()
            tasks = [NewTask(new_id(), "default", "bench:square", b"\x92\x91\x05\x80") for _ in range(batch)]
            with store.transaction():
                store.enqueue(tasks, now)
                leases = store.lease("default", batch // 2, "bench", now, 60.0)
                store.complete([Outcome(lease.id, lease.token, True, b"\x19", "msgpack") for lease in leases], now)
    finally:
        store.close()


def timed(label: str, fn):  # type: ignore[no-untyped-def]
    started = time.perf_counter()
    value = fn()
    print(f"{label}: {time.perf_counter() - started:.2f}s", flush=True)
    return value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=1_000_000)
    parser.add_argument("--data", type=Path, required=True)
    args = parser.parse_args()
    path = args.data / DB_NAME
    if not path.exists():
        timed(f"build {args.tasks} tasks", lambda: build(args.data, args.tasks))
    print(f"store: {path.stat().st_size / 2**20:.0f} MiB", flush=True)
    timed("open as the master does (bounded start check included)", lambda: SQLiteStore(args.data).close())
    conn = sqlite3.connect(path)
    try:
        report = quick_check(conn, path)
        print(f"  start check: {report.seconds:.2f}s, ok={report.ok}, read every page={report.complete}")
    finally:
        conn.close()
    for pragma in ("quick_check", "integrity_check"):
        conn = sqlite3.connect(path)
        try:
            timed(f"PRAGMA {pragma} (whole file)", lambda: conn.execute(f"PRAGMA {pragma}").fetchall())  # noqa: B023
        finally:
            conn.close()
    report = integrity_check(path)
    print(f"conveyor store check: {report.seconds:.2f}s, ok={report.ok}")


if __name__ == "__main__":
    main()
