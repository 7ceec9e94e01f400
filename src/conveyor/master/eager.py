"""Start a coroutine at once, and make it a Task only if it has to wait.

``asyncio.ensure_future(coro)`` runs nothing now: the coroutine's first step
waits for the next loop iteration, and a Task is made even for a handler
that never suspends (a request answered from memory, or a store call the
runner did inline). Python 3.11 has no ``eager_task_factory``; this is the
small part of it the master needs.
"""

from __future__ import annotations

import asyncio
import types
from collections.abc import Coroutine, Generator
from typing import Any


def start(coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any] | None:
    """Run ``coro`` up to its first suspension now; a Task carries it on from there.

    Returns None when the coroutine finished without suspending; an
    exception it raised before suspending propagates from here. Otherwise
    the returned Task behaves as ``asyncio.ensure_future(coro)`` would from
    that point: its result, its exception, and a ``cancel()`` (thrown into
    the coroutine where it waits).
    """
    try:
        first = coro.send(None)
    except StopIteration:
        return None
    carrier = _carry(coro, first)
    carrier.send(None)  # to its first yield: a cancel before the Task's first step reaches coro too
    return asyncio.get_running_loop().create_task(carrier)


@types.coroutine
def _carry(coro: Coroutine[Any, Any, Any], pending: Any) -> Generator[Any, None, Any]:
    """Hand the Task what ``coro`` yielded in its first step, then delegate to it."""
    thrown: BaseException | None = None
    try:
        yield  # where start() leaves it
    except GeneratorExit:
        coro.close()
        raise
    except BaseException as exc:  # thrown in by the Task (a cancel): into the coroutine
        thrown = exc
    while True:
        if thrown is not None:
            try:
                pending = coro.throw(thrown)
            except StopIteration as stop:
                return stop.value
            thrown = None
        try:
            # A Future with _asyncio_future_blocking set (the Task waits for it), or None
            # (a bare yield, as in asyncio.sleep(0)): exactly what the Task would have seen.
            yield pending
        except GeneratorExit:
            coro.close()
            raise
        except BaseException as exc:
            thrown = exc
        else:
            # The Task resumes a coroutine with send(None) only, as yield from does.
            return (yield from coro)
