"""Tasks for the failover tests: each execution appends its key to a log file first,
so a test can count executions against results."""

from __future__ import annotations

import os
import time


def _log(path: str, key: str) -> int:
    """Append ``key`` to the execution log; how many times ``key`` ran, this one included."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{key}\n".encode())  # one small O_APPEND write: lines never interleave
    finally:
        os.close(fd)
    with open(path) as f:
        return sum(1 for line in f if line.strip() == key)


def run(path: str, key: str, seconds: float = 0.0) -> str:
    """Log, sleep ``seconds``, return ``key``."""
    _log(path, key)
    time.sleep(seconds)
    return key


def flaky(path: str, key: str, fails: int) -> str:
    """Fail the first ``fails`` executions (counted in the log), then return ``key``."""
    if _log(path, key) <= fails:
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
