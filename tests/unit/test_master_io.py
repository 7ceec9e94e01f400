"""The master's request handling, in process: the eager start of handlers (``master/eager.py``)."""

from __future__ import annotations

import asyncio

import pytest

from conveyor.master import eager


# -- eager.start ------------------------------------------------------------------
def test_eager_start_runs_a_coroutine_that_never_waits_to_its_end_now():
    seen = []

    async def handler() -> None:
        seen.append("ran")

    async def main() -> None:
        assert eager.start(handler()) is None
        assert seen == ["ran"]  # before any loop turn

    asyncio.run(main())


def test_eager_start_raises_what_the_coroutine_raised_before_its_first_await():
    async def handler() -> None:
        raise ValueError("bad request")

    async def main() -> None:
        with pytest.raises(ValueError, match="bad request"):
            eager.start(handler())

    asyncio.run(main())


def test_eager_start_makes_a_task_that_carries_on_after_the_first_await():
    steps = []

    async def handler(fut: asyncio.Future, fail: bool) -> int:
        steps.append("first step")
        value = await fut
        await asyncio.sleep(0)  # a bare yield too
        steps.append("resumed")
        if fail:
            raise KeyError("after the await")
        return value + 1

    async def main() -> None:
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        task = eager.start(handler(fut, False))
        assert isinstance(task, asyncio.Task) and steps == ["first step"]
        fut.set_result(41)
        assert await task == 42 and steps == ["first step", "resumed"]

        fut = loop.create_future()
        task = eager.start(handler(fut, True))
        assert task is not None
        fut.set_result(0)
        with pytest.raises(KeyError, match="after the await"):
            await task

    asyncio.run(main())


def test_eager_start_first_yield_may_be_a_bare_yield():
    async def handler() -> str:
        await asyncio.sleep(0)
        return "done"

    async def main() -> None:
        task = eager.start(handler())
        assert task is not None
        assert await task == "done"

    asyncio.run(main())


def test_cancelling_the_task_throws_into_the_coroutine_where_it_waits():
    cleaned = []

    async def handler(fut: asyncio.Future) -> None:
        try:
            await fut
        finally:
            cleaned.append(True)

    async def survivor(fut: asyncio.Future, other: asyncio.Future) -> str:
        try:
            await fut
        except asyncio.CancelledError:
            return await other  # swallows the cancellation and waits on: as in a Task
        return "not cancelled"

    async def main() -> None:
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        task = eager.start(handler(fut))
        assert task is not None
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert task.cancelled() and cleaned == [True] and fut.cancelled()

        fut, other = loop.create_future(), loop.create_future()
        task = eager.start(survivor(fut, other))
        assert task is not None
        await asyncio.sleep(0)
        task.cancel()
        await asyncio.sleep(0)
        assert not task.done()
        other.set_result("carried on")
        assert await task == "carried on"

        # Cancelled before its first loop turn: the pending first await gets it.
        fut = loop.create_future()
        task = eager.start(handler(fut))
        assert task is not None
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert cleaned == [True, True]

    asyncio.run(main())
