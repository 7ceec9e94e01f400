"""Tasks for the fault tests: each execution leaves a line in a file, so a test counts runs."""

from __future__ import annotations

import os
import time


def logged(path: str, n: int, seconds: float = 0.0) -> int:
    """Append ``n`` to ``path`` as the attempt starts (O_APPEND: one line per execution,
    whichever process runs it), then sleep ``seconds``; return ``n``."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{n}\n".encode())
    finally:
        os.close(fd)
    if seconds:
        time.sleep(seconds)
    return n


def collect(values: list[object]) -> list[object]:
    """A pass_results task: its dependencies' results, as given."""
    return values
