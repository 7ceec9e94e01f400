"""The asyncio pool (many ``async def`` tasks at once in one child process), and
``async def`` tasks under the process and thread pools."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterator

import pytest

from conveyor import serde
from conveyor.worker.pool import AsyncioPool, Job, make_pool
from tests.unit.test_pool import MOD, Collector, error, value, wait_until

ALL_KINDS = ["process", "thread", "asyncio"]


def job(job_id: str, fn: str, *args, timeout: float | None = None,
        soft_timeout: float | None = None, **kwargs) -> Job:
    options = {}
    if timeout is not None:
        options["timeout"] = timeout
    if soft_timeout is not None:
        options["soft_timeout"] = soft_timeout
    return Job(job_id, 7, f"{MOD}:{fn}", serde.encode_call(args, kwargs), "msgpack", options)


@pytest.fixture
def apool() -> Iterator[Callable[..., tuple[AsyncioPool, Collector]]]:
    """Start asyncio pools (with a short grace, so kills come soon); killed at teardown."""
    pools: list[AsyncioPool] = []

    def factory(concurrency: int = 10, *, grace: float = 0.3) -> tuple[AsyncioPool, Collector]:
        collector = Collector()
        pool = AsyncioPool(concurrency, [MOD], collector, grace=grace)
        pools.append(pool)
        pool.start()
        return pool, collector

    yield factory
    for pool in pools:
        pool.shutdown(wait=False)


@pytest.fixture
def kinds() -> Iterator[Callable[..., tuple[object, Collector]]]:
    pools: list = []

    def factory(kind: str, concurrency: int = 2) -> tuple[object, Collector]:
        collector = Collector()
        pool = make_pool(kind, concurrency, [MOD], collector)
        pools.append(pool)
        pool.start()
        return pool, collector

    yield factory
    for pool in pools:
        pool.shutdown(wait=False)


# -- async def in every pool -------------------------------------------------------------

@pytest.mark.parametrize("kind", ALL_KINDS)
def test_async_def_task_runs_in_every_pool(kinds, kind):
    pool, collector = kinds(kind)
    pool.submit([job(f"a{i}", "async_square", i) for i in range(20)])
    results = collector.wait_for(20)
    assert [value(results[f"a{i}"]) for i in range(20)] == [i * i for i in range(20)]


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_soft_timeout_is_raised_inside_the_coroutine(kinds, kind):
    pool, collector = kinds(kind)
    pool.submit([job("caught", "async_soft", 30, soft_timeout=0.2),
                 job("plain", "async_soft", 0.01, soft_timeout=30)])
    assert value(collector.wait_id("caught")) == "cleaned up"
    assert value(collector.wait_id("plain")) == "slept"


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_current_task_is_each_coroutines_own(kinds, kind):
    pool, collector = kinds(kind)
    reports: list[dict] = []
    pool.set_progress_callback(reports.append)
    pool.submit([job(f"w{i}", "whoami", 5) for i in range(10)])
    results = collector.wait_for(10)
    finals = [{"id": f"w{i}", "token": 7, "done": 5, "total": 5, "message": ""} for i in range(10)]
    # Progress travels beside results, not in order with them: wait for the last reports.
    wait_until(lambda: all(f in reports for f in finals))
    for i in range(10):
        assert value(results[f"w{i}"]) == f"w{i}"
    assert all(r["id"] in {f["id"] for f in finals} for r in reports)


# -- the asyncio pool: concurrency -------------------------------------------------------

def test_many_tasks_run_at_once_in_one_child(apool):
    """100 tasks that each wait until all 100 are running: only concurrent execution
    finishes them (one at a time, the first would wait forever)."""
    pool, collector = apool(100)
    assert len(pool._processes()) == 1
    pool.submit([job(f"r{i}", "rendezvous", "hundred", 100) for i in range(100)])
    results = collector.wait_for(100)
    assert all(value(results[f"r{i}"]) == 100 for i in range(100))


def test_concurrency_bounds_the_tasks_in_the_child(apool):
    pool, collector = apool(3)
    pool.submit([job(f"s{i}", "async_sleep", 30) for i in range(5)])
    wait_until(lambda: pool.running() == 3)
    assert pool.pending() == 2


def test_plain_def_tasks_run_on_threads_of_the_child(apool):
    """Plain functions run in threads of the child, several at once (a blocking sleep
    does not hold up the loop's other tasks)."""
    pool, collector = apool(4)
    pool.submit([job("block", "sleep", 30), job("sq", "square", 9), job("as", "async_square", 3)])
    assert value(collector.wait_id("sq")) == 81
    assert value(collector.wait_id("as")) == 9
    assert "block" not in collector.results


# -- the asyncio pool: time limits, cancels, crashes ---------------------------------------

def test_timeout_cancels_the_coroutine_and_keeps_the_child(apool):
    pool, collector = apool(4)
    procs = pool._processes()
    pool.submit([job("slow", "async_sleep", 30, timeout=0.2), job("ok", "async_sleep", 0.3)])
    err = error(collector.wait_id("slow"))
    assert err["type"] == "conveyor.errors.TaskTimeout"
    assert err["message"] == f"task {MOD}:async_sleep exceeded its time limit of 0.2s"
    assert value(collector.wait_id("ok")) == 0.3
    assert pool._processes() == procs and procs[0].is_alive()  # cancelled, not killed


@pytest.mark.parametrize("fn", ["async_block", "async_stubborn", "sleep"])
def test_task_that_does_not_let_go_has_its_child_killed(apool, fn):
    """A coroutine that blocks the loop or swallows its cancellation, or a plain task
    in a thread, past its time limit and the grace: the child is killed, the task fails
    with TaskTimeout, the other task it held with WorkerCrashed, and a new child serves."""
    pool, collector = apool(4)
    procs = pool._processes()
    pool.submit([job("other", "async_sleep", 30)])
    wait_until(lambda: pool.running() == 1)
    pool.submit([job("hog", fn, 30, timeout=0.2)])
    err = error(collector.wait_id("hog"))
    assert err["type"] == "conveyor.errors.TaskTimeout"
    assert err["message"] == f"task {MOD}:{fn} exceeded its time limit of 0.2s"
    other = error(collector.wait_id("other"))
    assert other["type"] == "conveyor.errors.WorkerCrashed"
    assert f"killed because task {MOD}:{fn} passed its time limit" in other["message"]
    assert f"{MOD}:async_sleep" in other["message"]
    pool.submit([job("after", "async_square", 5)])
    assert value(collector.wait_id("after")) == 25
    assert pool._processes() != procs and not procs[0].is_alive()


def test_cancel_cancels_the_coroutine_and_keeps_the_child(apool):
    # A long grace: on a loaded machine the cancelled coroutine may take a while to report,
    # and this test is about the child being kept, not about the kill that follows a grace.
    pool, collector = apool(4, grace=30.0)
    procs = pool._processes()
    pool.submit([job("hang", "async_sleep", 60), job("stay", "async_sleep", 0.5)])
    wait_until(lambda: pool.running() == 2)
    assert pool.cancel("hang")
    assert error(collector.wait_id("hang"))["message"] == "task was cancelled"
    assert value(collector.wait_id("stay")) == 0.5
    assert not pool.cancel("hang")  # no longer held
    assert pool._processes() == procs and procs[0].is_alive()


def test_cancel_of_a_plain_task_kills_the_child_after_the_grace(apool, tmp_path):
    pool, collector = apool(2)
    procs = pool._processes()
    started = tmp_path / "started"
    pool.submit([job("hang", "touch_then_block", str(started), 60)])
    # Running in its thread, not merely sent (a cancel that comes first stops it cleanly).
    wait_until(started.exists)
    assert pool.cancel("hang")
    assert error(collector.wait_id("hang"))["message"] == "task was cancelled"
    pool.submit([job("after", "square", 4)])
    assert value(collector.wait_id("after")) == 16
    assert pool._processes() != procs


def test_crash_fails_every_task_it_held_and_the_pool_keeps_serving(apool):
    pool, collector = apool(4)
    pool.submit([job("waiting", "async_sleep", 30)])
    wait_until(lambda: pool.running() == 1)
    pool.submit([job("c", "crash")])
    for job_id in ("c", "waiting"):
        err = error(collector.wait_id(job_id))
        assert err["type"] == "conveyor.errors.WorkerCrashed"
        assert "code 3" in err["message"]
    assert f"{MOD}:crash" in error(collector.results["c"])["message"]
    pool.submit([job(f"a{i}", "async_square", i) for i in range(20)])
    results = collector.wait_for(22)
    assert all(value(results[f"a{i}"]) == i * i for i in range(20))
    wait_until(lambda: pool.running() == 0 and len(pool._processes()) == 1)


def test_killed_child_is_replaced_and_its_tasks_reported(apool):
    pool, collector = apool(4)
    pool.submit([job("s1", "async_sleep", 30), job("s2", "async_sleep", 30)])
    wait_until(lambda: pool.running() == 2)
    (proc,) = pool._processes()
    os.kill(proc.pid, signal.SIGKILL)
    for job_id in ("s1", "s2"):
        err = error(collector.wait_id(job_id))
        assert err["type"] == "conveyor.errors.WorkerCrashed" and "SIGKILL" in err["message"]
    pool.submit([job("after", "async_square", 6)])
    assert value(collector.wait_id("after")) == 36


def test_shutdown_wait_lets_running_tasks_finish(apool):
    pool, collector = apool(4)
    procs = pool._processes()
    pool.submit([job("a", "async_sleep", 0.3), job("b", "async_sleep", 0.2)])
    wait_until(lambda: pool.running() == 2)
    pool.shutdown(wait=True)
    assert value(collector.results["a"]) == 0.3 and value(collector.results["b"]) == 0.2
    assert procs[0].exitcode == 0  # asked to exit, not killed


def test_grace_must_be_a_number():
    with pytest.raises(ValueError, match="grace"):
        AsyncioPool(1, [MOD], Collector(), grace=-1)
