"""Tasks the periodic-schedule integration tests run (no schedules declared here)."""

from __future__ import annotations

import os
import time

import conveyor


def log_slot(path):
    """Append this run's task id (one id per schedule slot) and the time to ``path``."""
    line = f"{conveyor.current_task().id} {time.time():.3f}\n"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)
    return path
