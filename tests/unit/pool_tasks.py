"""Tasks for the pool tests (imported by pool children as ``tests.unit.pool_tasks``)."""

from __future__ import annotations

import asyncio
import os
import signal
import time

from conveyor.errors import SoftTimeLimitExceeded


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


def touch_then_block(path, seconds):
    """A plain def task: create ``path`` (so a test sees it started), then block its thread."""
    open(path, "w").close()
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


# -- async def tasks (every pool runs them; the asyncio pool runs many at once) -------------

async def async_square(n):
    """n * n, after giving the loop a turn."""
    await asyncio.sleep(0)
    return n * n


async def async_sleep(seconds):
    """Sleep on the loop, then return the seconds slept."""
    await asyncio.sleep(seconds)
    return seconds


async def async_block(seconds):
    """Block the child's loop (a coroutine that never awaits), then return."""
    time.sleep(seconds)
    return seconds


async def async_stubborn(seconds):
    """Ignore cancellation: sleep on for ``seconds`` whatever happens."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            await asyncio.sleep(deadline - time.monotonic())
        except asyncio.CancelledError:
            pass
    return seconds


async def async_soft(seconds):
    """Sleep; a soft time limit is caught, and the task cleans up and returns."""
    try:
        await asyncio.sleep(seconds)
    except SoftTimeLimitExceeded:
        await asyncio.sleep(0)  # the coroutine can still await while it cleans up
        return "cleaned up"
    return "slept"


_arrived: dict[str, int] = {}
_all_here: dict[str, asyncio.Event] = {}


async def rendezvous(key, n):
    """Wait until ``n`` calls of this task with this ``key`` run at once in this process,
    then return how many arrived. Run one at a time, the first would wait forever (it
    gives up after 60 s and fails)."""
    event = _all_here.setdefault(key, asyncio.Event())
    _arrived[key] = _arrived.get(key, 0) + 1
    if _arrived[key] >= n:
        event.set()
    await asyncio.wait_for(event.wait(), 60)
    return _arrived[key]


async def whoami(n):
    """Report progress 1..n, yielding to other tasks between reports; return the id that
    ``current_task()`` gave all along."""
    from conveyor import current_task

    task_id = current_task().id
    for i in range(1, n + 1):
        await asyncio.sleep(0.001)
        assert current_task().id == task_id, "another task's current_task()"
        current_task().progress(i, n)
    return task_id


async def announce_then_sleep(seconds):
    """Report progress 0 ("started"), so a client can see the task is running, then sleep."""
    from conveyor import current_task

    current_task().progress(0, 1, "started")
    await asyncio.sleep(seconds)
    return seconds
