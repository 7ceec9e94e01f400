"""Tasks and lifecycle hooks for ``task_logs.py`` and ``lifecycle.py``.

A worker that imports this module runs ``open_connection`` once in each pool
child before its first task (a database connection per process, the usual
reason), and ``close_connection`` when the child is asked to exit (recycled,
scaled down, or a warm shutdown). ``on_worker_start``/``on_worker_stop`` run
once in the worker process itself.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time

import conveyor

log = logging.getLogger("lifecycle_tasks")

db: sqlite3.Connection | None = None  # this child's connection, opened by the hook
opened = 0  # how often this process opened it (always 1: once per child)
_kept: list[bytearray] = []


@conveyor.on_child_start
def open_connection() -> None:
    global db, opened
    db = sqlite3.connect(":memory:")
    db.execute("create table seen (x integer)")
    opened += 1


@conveyor.on_child_exit
def close_connection() -> None:
    if db is not None:
        db.close()


@conveyor.on_worker_start
def worker_ready() -> None:
    log.info("worker process %d ready: tasks from lifecycle_tasks", os.getpid())


@conveyor.on_worker_stop
def worker_done() -> None:
    log.info("worker process %d stopped", os.getpid())


@conveyor.task
def record(x: int) -> dict[str, int]:
    """Store ``x`` in this child's connection: which child, how often it opened it, rows so far."""
    assert db is not None, "on_child_start did not run"
    db.execute("insert into seen values (?)", (x,))
    rows = db.execute("select count(*) from seen").fetchone()[0]
    return {"pid": os.getpid(), "opened": opened, "rows": rows}


@conveyor.task
def resize(image: str) -> str:
    """Logs and prints as a task does: both lines carry the task, and travel with its outcome."""
    log.info("resizing %s", image)
    print(f"wrote {image}.thumb.png")
    return f"{image}.thumb.png"


@conveyor.task
def broken(image: str) -> None:
    log.warning("cannot read %s", image)
    raise ValueError(f"{image} is not an image")


@conveyor.task
def busy(seconds: float) -> int:
    """Work for ``seconds``; returns the child's pid."""
    time.sleep(seconds)
    return os.getpid()


@conveyor.task
def hog(mb: int) -> int:
    """Keep ``mb`` MB of memory in this child (a leak, say); returns its pid."""
    _kept.append(bytearray(b"\x01") * (mb * 1024 * 1024))
    return os.getpid()
