"""Tasks for the several-masters tests: one that marks each execution before it runs on."""

from __future__ import annotations

import os
import time


def mark_then_sleep(path, seconds):
    """Append one line to ``path`` as this execution starts, then sleep; the lines so far."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{os.getpid()}\n".encode())
    finally:
        os.close(fd)
    time.sleep(seconds)
    with open(path) as f:
        return len(f.read().split())
