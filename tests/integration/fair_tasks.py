"""Tasks for the fair-dispatch tests: they hold their slot until the test opens a gate."""

from __future__ import annotations

import os
import time


def gated_ppid(gate: str, limit: float = 60.0) -> int:
    """Wait until the file ``gate`` exists, then return the pid of the worker that ran us
    (the pool child's parent)."""
    deadline = time.monotonic() + limit
    while not os.path.exists(gate):
        if time.monotonic() > deadline:
            raise TimeoutError(f"gate {gate} never opened")
        time.sleep(0.02)
    return os.getppid()
