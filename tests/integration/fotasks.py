"""Tasks for the failover tests: each execution appends a line to a log file first,
so a test can count executions against results.

A line is ``key pid ppid monotonic``: the task's key, the process that ran it and
its parent (a process pool's child runs under its worker), and when it started on
the machine's monotonic clock (the same clock in every process on Linux), so a
test can tell when each worker was back at work after a kill.
"""

from __future__ import annotations

import os
import time


def _append(path: str, line: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())  # one small O_APPEND write: lines never interleave
    finally:
        os.close(fd)


def _log(path: str, key: str) -> None:
    """Append one execution line for ``key`` to the execution log."""
    _append(path, f"{key} {os.getpid()} {os.getppid()} {time.monotonic():.4f}\n")


def _runs(path: str, key: str) -> int:
    """Count this execution of ``key`` in a file of its own; how many it has had, this one
    included. (Per key, so that counting stays cheap in a log of 50,000 executions.)"""
    folder = f"{path}.runs"
    os.makedirs(folder, exist_ok=True)
    mine = os.path.join(folder, key)
    _append(mine, "x")
    return os.path.getsize(mine)


def run(path: str, key: str, seconds: float = 0.0) -> str:
    """Log, sleep ``seconds``, return ``key``."""
    _log(path, key)
    time.sleep(seconds)
    return key


def flaky(path: str, key: str, fails: int) -> str:
    """Fail the first ``fails`` executions of ``key``, then return ``key``."""
    _log(path, key)
    if _runs(path, key) <= fails:
        raise RuntimeError(f"{key}: failing on purpose")
    return key


def with_progress(path: str, key: str, steps: int, seconds: float) -> str:
    """Log, report ``steps`` progress steps over ``seconds``, return ``key``."""
    import conveyor

    _log(path, key)
    task = conveyor.current_task()
    for i in range(1, steps + 1):
        time.sleep(seconds / steps)
        task.progress(i, steps)
    return key
