"""ConveyorExecutor.shutdown(cancel_futures=True) cancels what has not started, on the master too."""

from __future__ import annotations

import concurrent.futures as cf

import pytest

import conveyor

from . import itasks


@conveyor.task(queue="parked")  # no worker serves this queue: its tasks wait until cancelled
def parked(n):
    return n


def test_shutdown_with_cancel_futures_cancels_waiting_tasks_and_keeps_finished_ones(cluster):
    with cluster.client() as client:
        pool = client.executor()
        done = pool.submit(itasks.square, 4)
        assert done.result(60) == 16
        waiting = [pool.submit(parked, i) for i in range(5)]
        pool.shutdown(wait=True, cancel_futures=True)
        assert all(f.cancelled() for f in waiting)
        with pytest.raises(cf.CancelledError):
            waiting[0].result(0)
        assert done.result(0) == 16 and not done.cancelled()
        assert {client.inspect(f.task_id)["state"] for f in waiting} == {"cancelled"}
        with pytest.raises(RuntimeError, match="after shutdown"):
            pool.submit(itasks.square, 1)


def test_shutdown_without_cancel_futures_leaves_tasks_queued(cluster):
    with cluster.client() as client:
        pool = client.executor()
        waiting = pool.submit(parked, 1)
        pool.shutdown(wait=False)
        assert not waiting.done()
        assert client.inspect(waiting.task_id)["state"] == "ready"
