"""``conveyor worker --pool asyncio`` with a real master: many ``async def`` tasks at
once, time limits, progress and cancellation end to end."""

from __future__ import annotations

import concurrent.futures as cf

import pytest

import conveyor

from ..waiting import wait_until
from .conftest import running_cluster

TASKS = "tests.unit.pool_tasks"
WAIT = 60


@pytest.fixture(scope="module")
def aio_cluster(tmp_path_factory, request):
    """A master and one asyncio-pool worker running 100 tasks at once, shared by the module."""
    with running_cluster(tmp_path_factory.mktemp("aio"), request, workers=1, modules=[TASKS],
                         concurrency=100, worker_args=["--pool", "asyncio"]) as cluster:
        cluster.wait_for_workers(1)
        yield cluster


def test_asyncio_worker_runs_a_hundred_tasks_at_once(aio_cluster):
    """Each task waits until all 100 are running in the worker's child: one at a time
    they could not finish."""
    with aio_cluster.client() as client:
        futures = [client.submit(f"{TASKS}:rendezvous", "e2e", 100) for _ in range(100)]
        assert [f.result(WAIT) for f in futures] == [100] * 100
        status = client.status()
    (worker,) = status["workers"]
    assert worker["concurrency"] == 100


def test_asyncio_worker_time_limits_progress_and_cancel(aio_cluster):
    with aio_cluster.client() as client:
        slow = client.submit(f"{TASKS}:async_sleep", 30, timeout=0.5)
        soft = client.submit(f"{TASKS}:async_soft", 30, soft_timeout=0.3, timeout=20)
        who = client.submit(f"{TASKS}:whoami", 3)
        with pytest.raises(conveyor.TaskError) as info:
            slow.result(WAIT)
        assert info.value.type_name == "conveyor.errors.TaskTimeout"
        assert soft.result(WAIT) == "cleaned up"
        assert who.result(WAIT) == who.task_id
        assert wait_until(lambda: who.progress is not None and who.progress["done"] == 3, WAIT)

        running = client.submit(f"{TASKS}:announce_then_sleep", 60)
        assert wait_until(lambda: running.progress is not None, WAIT)
        assert running.cancel()
        with pytest.raises(cf.CancelledError):
            running.result(WAIT)
        assert client.submit(f"{TASKS}:square", 9).result(WAIT) == 81  # sync def: a thread of the child
