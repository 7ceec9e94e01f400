"""Pool lifecycle: the autoscale rule (pure, no clock), recycling rules, hooks, and the
process and asyncio pools recycling, scaling and running hooks in real children."""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from conveyor import hooks
from conveyor.worker.lifecycle import Lifecycle, autoscale_target, parse_autoscale
from conveyor.worker.pool import AsyncioPool, PoolStartError, ProcessPool, ThreadPool, make_pool

from .test_pool import WAIT, Collector, job, value, wait_until

LT = "tests.integration.ltasks"


def ltask(job_id: str, fn: str, *args) -> object:
    return job(job_id, fn, *args, name=f"{LT}:{fn}")


@pytest.fixture(autouse=True)
def isolated_hooks(monkeypatch):
    """Hooks are per process: what a test's modules register here is dropped after it (the
    failing hook of badhook_tasks must not reach the thread pools of later tests)."""
    monkeypatch.setattr(hooks, "_hooks", {kind: [] for kind in hooks._hooks})


# -- the autoscale rule --------------------------------------------------------------------

def target(now: float = 100.0, *, children: int, busy: int, waiting: int,
           idle_since: float | None = None, minimum: int = 1, maximum: int = 4) -> int:
    return autoscale_target(now, children=children, busy=busy, waiting=waiting, idle_since=idle_since,
                            minimum=minimum, maximum=maximum, idle_after=10.0)


def test_autoscale_grows_at_once_while_work_waits_for_a_busy_pool():
    assert target(children=1, busy=1, waiting=1) == 2
    assert target(children=1, busy=1, waiting=2) == 3
    assert target(children=2, busy=2, waiting=50) == 4  # never past MAX


def test_autoscale_does_not_grow_while_a_child_is_free_for_the_waiting_work():
    assert target(children=3, busy=1, waiting=2) == 3
    assert target(children=3, busy=1, waiting=3) == 4  # one more than the free children take


def test_autoscale_shrinks_one_child_only_after_the_idle_period():
    assert target(now=105.0, children=3, busy=0, waiting=0, idle_since=100.0) == 3
    assert target(now=110.0, children=3, busy=0, waiting=0, idle_since=100.0) == 2
    assert target(now=110.0, children=3, busy=2, waiting=0, idle_since=100.0) == 2  # not below busy
    assert target(now=110.0, children=1, busy=0, waiting=0, idle_since=100.0, minimum=1) == 1
    assert target(now=500.0, children=3, busy=0, waiting=0, idle_since=None) == 3  # nobody idle


def test_autoscale_stays_within_its_bounds():
    assert target(children=1, busy=0, waiting=0, minimum=2) == 2
    assert target(children=6, busy=6, waiting=0, maximum=4) == 4


def test_autoscale_flag_and_lifecycle_validation():
    assert parse_autoscale("2,8") == (2, 8)
    assert parse_autoscale("5") == (1, 5)
    for bad in ("", "a,b", "3,2", "0,2", "1,2,3"):
        with pytest.raises(ValueError, match="--autoscale"):
            parse_autoscale(bad)
    with pytest.raises(ValueError, match="max_tasks_per_child"):
        Lifecycle(max_tasks_per_child=0)
    with pytest.raises(ValueError, match="autoscale"):
        Lifecycle(autoscale=(3, 1))


def test_recycling_rule_counts_tasks_and_memory():
    life = Lifecycle(max_tasks_per_child=3, max_memory_per_child=100)
    assert life.tasks_left(1) == 2 and life.tasks_left(5) == 0
    assert life.should_recycle(2, 10 * 2**20) is None
    assert "ran 3 task(s)" in (life.should_recycle(3, None) or "")
    assert "--max-memory-per-child 100" in (life.should_recycle(1, 101 * 2**20) or "")
    assert Lifecycle().tasks_left(10**6) is None and not Lifecycle().active


# -- hooks ---------------------------------------------------------------------------------

def test_run_hooks_in_order_and_a_failing_start_hook_names_itself():
    calls: list[str] = []

    @hooks.on_child_start
    def first() -> None:
        calls.append("first")

    @hooks.on_child_start
    def broken() -> None:
        raise OSError("no database")

    @hooks.on_child_start
    def third() -> None:
        calls.append("third")

    hooks.on_child_start(first)  # registering again does not run it twice
    with pytest.raises(hooks.HookFailed, match=r"child-start hook .*broken failed: OSError: no database"):
        hooks.run_hooks(hooks.CHILD_START, stop_on_error=True)
    assert calls == ["first"]
    calls.clear()
    hooks.run_hooks(hooks.CHILD_START, stop_on_error=False)  # failures logged, the rest still run
    assert calls == ["first", "third"]


# -- real children -------------------------------------------------------------------------

@pytest.fixture
def hook_log(tmp_path, monkeypatch) -> Path:
    path = tmp_path / "hooks.log"
    monkeypatch.setenv("CONVEYOR_TEST_HOOK_LOG", str(path))  # children inherit it at spawn
    return path


def events(path: Path, kind: str) -> list[int]:
    if not path.exists():
        return []
    return [int(line.split()[1]) for line in path.read_text().splitlines() if line.split()[0] == kind]


@pytest.fixture
def pools() -> Iterator[Callable[..., tuple[ProcessPool, Collector]]]:
    made: list[ProcessPool] = []

    def factory(cls: type[ProcessPool] = ProcessPool, concurrency: int = 1, **life) -> tuple[ProcessPool, Collector]:
        collector = Collector()
        pool = cls(concurrency, [LT], collector, lifecycle=Lifecycle(**life))
        made.append(pool)
        pool.start()
        return pool, collector

    yield factory
    for pool in made:
        pool.shutdown(wait=False)


def run_one_by_one(pool: ProcessPool, collector: Collector, fn: str, *args, n: int,
                   prefix: str = "") -> list[int]:
    """Run ``n`` jobs one after another (each submitted once the last answered): their values."""
    pids = []
    for i in range(n):
        job_id = f"{prefix}{fn}{i}"
        pool.submit([ltask(job_id, fn, *args)])
        pids.append(value(collector.wait_id(job_id)))
    return pids


@pytest.mark.parametrize("cls", [ProcessPool, AsyncioPool])
def test_a_child_is_replaced_after_max_tasks_and_its_exit_hook_runs(pools, hook_log, cls):
    pool, collector = pools(cls, max_tasks_per_child=2)
    pids = run_one_by_one(pool, collector, "pid", n=6)
    assert pids[0] == pids[1] != pids[2] == pids[3] != pids[4] == pids[5]
    wait_until(lambda: set(events(hook_log, "child-exit")) >= {pids[0], pids[2]})
    assert events(hook_log, "child-start")[:3] == [pids[0], pids[2], pids[4]]


def test_a_batch_never_takes_a_child_past_its_task_limit(pools):
    pool, collector = pools(ProcessPool, max_tasks_per_child=3)
    run_one_by_one(pool, collector, "pid", n=1, prefix="sample-")  # a run-time sample: short tasks now batch
    pool.submit([ltask(f"b{i}", "pid") for i in range(30)])
    results = collector.wait_for(31)
    counts: dict[int, int] = {}
    for result in results.values():
        counts[value(result)] = counts.get(value(result), 0) + 1
    assert max(counts.values()) <= 3 and len(counts) >= 11


@pytest.mark.parametrize("cls", [ProcessPool, AsyncioPool])
def test_a_child_is_replaced_after_the_task_that_took_it_over_its_memory_limit(pools, cls):
    pool, collector = pools(cls, max_memory_per_child=150)
    before = run_one_by_one(pool, collector, "pid", n=2)
    assert before[0] == before[1]  # far under the limit: the same child
    pool.submit([ltask("big", "allocate", 200)])
    grown = value(collector.wait_id("big"))
    assert grown == before[0]  # the task that crossed the limit ran to its end in that child
    after = run_one_by_one(pool, collector, "pid", n=1, prefix="after-")
    assert after[0] != grown


def test_child_start_hooks_run_once_in_each_child_and_exit_hooks_at_shutdown(hook_log):
    collector = Collector()
    pool = ProcessPool(3, [LT], collector)
    pool.start()
    try:
        children = sorted(proc.pid for proc in pool._processes())
        assert sorted(events(hook_log, "child-start")) == children
        pool.submit([ltask(f"p{i}", "pid") for i in range(9)])
        collector.wait_for(9)
    finally:
        pool.shutdown(wait=True)
    assert sorted(events(hook_log, "child-start")) == children  # no child started twice
    assert sorted(events(hook_log, "child-exit")) == children


def test_a_failing_child_start_hook_stops_the_pool_start_with_its_error():
    for pool in (ProcessPool(1, ["tests.integration.badhook_tasks"], Collector()),
                 AsyncioPool(1, ["tests.integration.badhook_tasks"], Collector())):
        with pytest.raises(PoolStartError, match=r"child-start hook tests\.integration\.badhook_tasks"
                                                 r"\.connect_database failed: RuntimeError: no database"):
            pool.start()
        pool.shutdown(wait=False)


def test_the_thread_pool_runs_child_hooks_once_in_its_process_and_refuses_recycling(hook_log):
    tasks = importlib.import_module(LT)
    hooks._hooks[hooks.CHILD_START][:] = [tasks.child_started]  # as if imported afresh here
    hooks._hooks[hooks.CHILD_EXIT][:] = [tasks.child_exiting]
    pool = ThreadPool(3, [LT], Collector())
    pool.start()
    pool.shutdown(wait=True)
    assert events(hook_log, "child-start") == [os.getpid()]
    assert events(hook_log, "child-exit") == [os.getpid()]
    with pytest.raises(ValueError, match="thread pool has no child processes"):
        make_pool("thread", 1, [LT], Collector(), lifecycle=Lifecycle(max_tasks_per_child=1))
    with pytest.raises(ValueError, match="autoscale"):
        make_pool("asyncio", 1, [LT], Collector(), lifecycle=Lifecycle(autoscale=(1, 2)))


def test_autoscaling_adds_children_while_work_waits_and_removes_idle_ones(pools, tmp_path):
    pool, collector = pools(ProcessPool, autoscale=(1, 3), autoscale_idle=0.2)
    assert pool.children() == 1
    pool.submit([ltask(f"h{i}", "hold", str(tmp_path)) for i in range(3)])
    # All three hold at once only if the pool grew to three children.
    wait_until(lambda: len(list(tmp_path.glob("started-*"))) == 3)
    assert pool.children() == 3
    (tmp_path / "release").touch()
    results = collector.wait_for(3)
    assert len({value(r) for r in results.values()}) == 3
    wait_until(lambda: pool.children() == 1)  # idle children go, one per idle period, to MIN
    pool.submit([ltask("after", "pid")])
    assert value(collector.wait_id("after")) in {value(r) for r in results.values()}


def test_one_task_per_child_runs_every_task_in_a_fresh_child(pools):
    pool, collector = pools(ProcessPool, concurrency=2, max_tasks_per_child=1)
    pool.submit([ltask(f"s{i}", "pid") for i in range(8)])
    results = collector.wait_for(8, timeout=WAIT)
    assert len({value(r) for r in results.values()}) == 8


def test_the_hook_decorators_are_public_and_light():
    import conveyor

    assert conveyor.on_child_start is hooks.on_child_start and conveyor.on_worker_stop is hooks.on_worker_stop
    from .test_import import HEAVY, _loaded, _run

    doc = _run(f"""
        import json, sys
        import conveyor

        @conveyor.on_child_start
        def connect():
            pass

        print(json.dumps({{"heavy": {_loaded(HEAVY + ("conveyor.client", "conveyor.worker"))}}}))
    """)
    assert doc["heavy"] == []


def test_a_replacement_whose_start_hook_fails_is_logged_and_retried_with_backoff(tmp_path, monkeypatch, caplog):
    flag = tmp_path / "down"
    monkeypatch.setenv("CONVEYOR_TEST_HOOK_FAIL", str(flag))
    collector = Collector()
    pool = ProcessPool(1, ["tests.integration.flakyhook_tasks"], collector,
                       lifecycle=Lifecycle(max_tasks_per_child=1))
    pool.start()
    try:
        flag.touch()  # the child that runs the first task will not be replaced while this exists
        pool.submit([job("first", "pid", name="tests.integration.flakyhook_tasks:pid")])
        first = value(collector.wait_id("first"))
        wait_until(lambda: any("could not start a replacement pool process: child-start hook "
                               "tests.integration.flakyhook_tasks.connect_database failed: "
                               "ConnectionError: database is down" in r.getMessage() for r in caplog.records))
        pool.submit([job("second", "pid", name="tests.integration.flakyhook_tasks:pid")])
        flag.unlink()  # the database is back: the next attempt starts a child, which runs the task
        assert value(collector.wait_id("second")) != first
    finally:
        pool.shutdown(wait=False)
