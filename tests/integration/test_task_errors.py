"""A failure conveyor names reaches the client as its own class (each a TaskError):
through ``result()``, ``map``, ``as_completed``, the executor and the asyncio client."""

from __future__ import annotations

import asyncio

import pytest

import conveyor
from conveyor import aio

from . import itasks
from .conftest import TASKS


def _check(exc: BaseException, cls: type, fragment: str) -> None:
    assert type(exc) is cls
    assert isinstance(exc, conveyor.TaskError)
    assert exc.type_name == f"conveyor.errors.{cls.__name__}"
    assert fragment in exc.message
    assert str(exc).startswith(f"conveyor.errors.{cls.__name__}: ")


def test_named_failures_raise_as_themselves_in_the_sync_client(cluster):
    with cluster.client() as client:
        timed_out = client.submit(f"{TASKS}:hang", 60, timeout=0.5)
        crashed = client.submit(f"{TASKS}:crash", 7)
        unknown = client.submit("os:system", "true")
        broken = client.submit(f"{TASKS}:fail", "upstream broke")
        downstream = client.submit(f"{TASKS}:square", 2, after=[broken])

        with pytest.raises(conveyor.TaskTimeout) as info:
            timed_out.result(60)
        _check(info.value, conveyor.TaskTimeout, "time limit")
        with pytest.raises(conveyor.WorkerCrashed) as info:
            crashed.result(60)
        _check(info.value, conveyor.WorkerCrashed, "code 7")
        with pytest.raises(conveyor.UnknownTask) as info:
            unknown.result(60)
        _check(info.value, conveyor.UnknownTask, "unknown task 'os:system'")
        assert "unknown task" in info.value.remote_traceback  # the worker's traceback travels
        with pytest.raises(conveyor.DependencyFailed) as info:
            downstream.result(60)
        _check(info.value, conveyor.DependencyFailed, broken.task_id)
        # A task's own exception stays a plain TaskError carrying the remote name.
        with pytest.raises(conveyor.TaskError) as plain:
            broken.result(60)
        assert type(plain.value) is conveyor.TaskError and plain.value.type_name == "ValueError"

        # The same classes by every other way of reading results.
        for fut in conveyor.as_completed([client.submit("os:path", 1)], timeout=60):
            assert isinstance(fut.exception(), conveyor.UnknownTask)
        with pytest.raises(conveyor.UnknownTask):
            list(client.map("os:getcwd", [1, 2], timeout=60))
        with pytest.raises(conveyor.WorkerCrashed):
            client.result(crashed.task_id, timeout=60)
        with client.executor() as pool:
            with pytest.raises(conveyor.WorkerCrashed):
                pool.submit(itasks.crash, 3).result(60)


def test_named_failures_raise_as_themselves_in_the_asyncio_client(cluster):
    async def main() -> None:
        async with await aio.connect(cluster.address, cluster.authkey) as client:
            before = (await client.status())["queues"]["default"]["failed"]  # the module shares a cluster
            unknown = await client.submit("os:system", "true")
            crashed = await client.submit(f"{TASKS}:crash", 5)
            with pytest.raises(conveyor.UnknownTask):
                await asyncio.wait_for(unknown, 60)
            with pytest.raises(conveyor.WorkerCrashed) as info:
                await asyncio.wait_for(crashed, 60)
            assert "code 5" in info.value.message
            counts = (await client.status())["queues"]["default"]
            assert counts["failed"] - before == 2

    asyncio.run(main())
