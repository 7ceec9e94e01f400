"""Masters, workers and clients as real processes: tasks run and results come back right."""

from __future__ import annotations

import concurrent.futures as cf

import pytest

import conveyor
from conveyor import aio

from .conftest import TASKS, running_cluster


def test_ten_thousand_tasks_two_workers_every_result_right(cluster):
    with cluster.client() as client:
        before = client.status()
        results = list(client.map(f"{TASKS}:square", range(10_000), timeout=120))
        status = client.status()
    assert results == [n * n for n in range(10_000)]
    # The cluster is shared by this module: count what this test added.
    succeeded = before["queues"].get("default", {}).get("succeeded", 0)
    assert status["queues"]["default"]["succeeded"] - succeeded == 10_000
    assert status["queues"]["default"]["ready"] == 0
    assert status["counters"].get("duplicates", 0) - before["counters"].get("duplicates", 0) == 0
    assert len(status["workers"]) == 2


def test_submit_returns_future_with_task_id_and_result(cluster):
    with cluster.client() as client:
        fut = client.submit(f"{TASKS}:add", 2, b=3)
        assert isinstance(fut, cf.Future) and len(fut.task_id) == 32
        assert fut.result(30) == 5
        assert client.result(fut.task_id, timeout=10) == 5


def test_task_exception_reraises_as_task_error_with_remote_traceback(cluster):
    with cluster.client() as client:
        fut = client.submit(f"{TASKS}:fail", "boom")
        with pytest.raises(conveyor.TaskError) as info:
            fut.result(30)
    assert info.value.type_name == "ValueError"
    assert info.value.message == "boom"
    assert "itasks.py" in info.value.remote_traceback and "raise ValueError" in info.value.remote_traceback


def test_unknown_task_fails_clearly_and_worker_stays_up(cluster):
    with cluster.client() as client:
        bad = client.submit("os:system", "touch /tmp/conveyor-pwned")
        with pytest.raises(conveyor.TaskError) as info:
            bad.result(30)
        assert info.value.type_name == "conveyor.errors.UnknownTask"
        assert "unknown task 'os:system'" in info.value.message
        assert client.submit(f"{TASKS}:square", 9).result(30) == 81
        assert len(client.status()["workers"]) == 2
    assert all(w.poll() is None for w in cluster.workers)


def test_crashing_task_fails_and_worker_replaces_its_process(cluster):
    with cluster.client() as client:
        fut = client.submit(f"{TASKS}:crash", 7)
        with pytest.raises(conveyor.TaskError) as info:
            fut.result(60)
        assert info.value.type_name == "conveyor.errors.WorkerCrashed"
        assert "code 7" in info.value.message
        assert list(client.map(f"{TASKS}:square", range(50), timeout=60)) == [n * n for n in range(50)]
        assert len(client.status()["workers"]) == 2
    assert all(w.poll() is None for w in cluster.workers)


def test_unencodable_argument_is_rejected_at_submit_naming_it(cluster):
    with cluster.client() as client:
        before = client.status()["counters"].get("submitted", 0)
        with pytest.raises(TypeError, match="argument 1"):
            client.submit(f"{TASKS}:add", 1, object())
        with pytest.raises(TypeError, match="argument 'b'"):
            client.submit(f"{TASKS}:add", 1, b={1, 2})
        assert client.status()["counters"].get("submitted", 0) == before


def test_lambda_is_refused_at_submit(cluster):
    with cluster.client() as client:
        with pytest.raises(TypeError, match="module-level"):
            client.submit(lambda x: x, 1)


def test_executor_and_as_completed(cluster):
    with cluster.client() as client:
        with client.executor() as ex:
            futures = [ex.submit(conveyor.task(name=f"{TASKS}:square")(lambda n: n), i) for i in range(20)]
            got = sorted(f.result() for f in conveyor.as_completed(futures, timeout=60))
            assert list(ex.map(f"{TASKS}:square", range(10))) == [n * n for n in range(10)]
    assert got == sorted(i * i for i in range(20))


def test_result_of_unknown_task_id_is_not_found(cluster):
    with cluster.client() as client:
        with pytest.raises(conveyor.NotFound):
            client.result("0" * 32, timeout=5)


def test_asyncio_client(cluster):
    import asyncio

    async def main():
        async with await aio.connect(cluster.address, cluster.authkey) as client:
            fut = await client.submit(f"{TASKS}:add", 40, 2)
            values = [v async for v in client.map(f"{TASKS}:square", range(100))]
            return await fut, values

    value, values = asyncio.run(main())
    assert value == 42
    assert values == [n * n for n in range(100)]


@pytest.fixture(scope="module")
def pickle_master(tmp_path_factory, request):
    """A master that accepts pickle, with no workers: each test starts the worker it needs."""
    with running_cluster(tmp_path_factory.mktemp("pickle"), request, workers=0,
                         master_args=["--pickle"]) as c:
        yield c


def test_pickle_codec_when_enabled_everywhere(pickle_master):
    from .itasks import Point

    worker = pickle_master.start_worker("--pickle", "--queues", "pickled")
    with pickle_master.client(codec="pickle") as client:
        p = client.submit(f"{TASKS}:norm2", Point(3, 4), queue="pickled").result(30)
        assert (p.x, p.y) == (9, 16)
        offset = 10
        assert client.submit(f"{TASKS}:apply", lambda v: v + offset, 5, queue="pickled").result(30) == 15  # cloudpickle
    pickle_master.stop_worker(worker)


def test_pickle_refused_unless_enabled(cluster, pickle_master):
    with cluster.client(codec="pickle") as client:  # a master without --pickle
        with pytest.raises(conveyor.SerializationError, match="pickle codec is disabled"):
            client.submit(f"{TASKS}:square", 3)
    worker = pickle_master.start_worker("--queues", "unpickled")  # a worker without --pickle
    with pickle_master.client(codec="pickle") as client:
        with pytest.raises(conveyor.TaskError) as info:
            client.submit(f"{TASKS}:square", 3, queue="unpickled").result(30)
        assert "refusing to unpickle" in info.value.message
    pickle_master.stop_worker(worker)


@pytest.mark.parametrize("choice", ["", "asyncio"])
def test_master_and_workers_run_on_either_event_loop(make_cluster, monkeypatch, choice):
    """uvloop by default; the stdlib loop (CONVEYOR_LOOP=asyncio, or where uvloop is absent) too."""
    monkeypatch.setenv("CONVEYOR_LOOP", choice)
    cluster = make_cluster(workers=1).start()
    cluster.wait_for_workers(1)
    with cluster.client() as client:
        assert list(client.map(f"{TASKS}:square", range(500), timeout=60)) == [n * n for n in range(500)]
        q = client.queue("loop-check")
        q.put_many(range(10))
        assert sorted(q.get_many(10, timeout=10)) == list(range(10))
        status = client.status()
    assert status["loop"] == ("asyncio" if choice else "uvloop")
