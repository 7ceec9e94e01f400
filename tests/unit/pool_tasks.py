"""Tasks for the pool tests (imported by pool children as ``tests.unit.pool_tasks``)."""

from __future__ import annotations

import os
import signal
import time


def square(n):
    """n * n."""
    return n * n


def fail():
    """Raise ValueError("boom")."""
    raise ValueError("boom")


def crash():
    """Exit the process at once with code 3."""
    os._exit(3)


def segv():
    """Kill the process with SIGKILL (as the OOM killer would)."""
    os.kill(os.getpid(), signal.SIGKILL)


def sleep(seconds):
    """Sleep, then return the seconds slept."""
    time.sleep(seconds)
    return seconds


def returns_object():
    """Return something msgpack cannot encode."""
    return object()


def echo_kwargs(*args, **kwargs):
    """Return the call's arguments."""
    return {"args": list(args), "kwargs": kwargs}


def count_up(n):
    """Report progress 1..n (the last report always goes out), then return n."""
    from conveyor import current_task

    for i in range(1, n + 1):
        current_task().progress(i, n)
    return n
