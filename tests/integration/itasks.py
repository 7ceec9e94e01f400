"""Tasks the integration tests run on real workers."""

from __future__ import annotations

import os
import time


def square(n):
    return n * n


def slow_square(n, delay=0.01):
    time.sleep(delay)
    return n * n


def add(a, b=0):
    return a + b


def fail(message):
    raise ValueError(message)


def crash(code=3):
    os._exit(code)


def sleep(seconds):
    time.sleep(seconds)
    return seconds


def record(path, n, delay=0.0):
    """Append n to a file (O_APPEND: one line per execution, even across processes)."""
    if delay:
        time.sleep(delay)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{n}\n".encode())
    finally:
        os.close(fd)
    return n


def whoami():
    return os.getpid()
