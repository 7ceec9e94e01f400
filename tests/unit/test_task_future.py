"""The slim TaskFuture: one Condition shared by every future, the Future API kept."""

from __future__ import annotations

import concurrent.futures as cf
import threading
import tracemalloc

import pytest

from conveyor.client.client import TaskFuture
from conveyor.records import Result


def running(n: int) -> list[TaskFuture]:
    fs = [TaskFuture(f"t{i}") for i in range(n)]
    for f in fs:
        f.set_running_or_notify_cancel()
    return fs


def test_a_waiter_is_not_woken_early_by_other_futures_resolving():
    others, mine = running(200), TaskFuture("mine")
    mine.set_running_or_notify_cancel()
    started = threading.Event()
    got: list[object] = []

    def wait() -> None:
        started.set()
        got.append(mine.result())  # no timeout: must sleep through every other notify

    t = threading.Thread(target=wait)
    t.start()
    started.wait()
    for i, f in enumerate(others):
        f.set_result(i)
    assert got == []  # every other future resolved; this one did not
    mine.set_result("done")
    t.join(30)
    assert got == ["done"]


def test_result_exception_timeout_cancel_and_callbacks():
    ok, bad, never, cancelled = running(4)
    seen: list[str] = []
    ok.add_done_callback(lambda f: seen.append(f.task_id))  # type: ignore[attr-defined]
    ok.set_result(4)
    bad.set_exception(KeyError("k"))
    assert ok.result() == 4 and ok.exception() is None and seen == ["t0"]
    with pytest.raises(KeyError):
        bad.result()
    assert isinstance(bad.exception(), KeyError)
    with pytest.raises(TimeoutError):
        never.result(timeout=0)
    with pytest.raises(TimeoutError):
        never.exception(timeout=0)
    cancelled(Result("t3", False, b"", "msgpack", "cancelled", 1.0))  # the master cancelled it
    assert cancelled.cancelled()
    with pytest.raises(cf.CancelledError):
        cancelled.result()


def test_wait_and_as_completed_work_with_task_futures():
    fs = running(50)

    def resolve() -> None:
        for i, f in enumerate(reversed(fs)):
            f.set_result(i)

    t = threading.Thread(target=resolve)
    t.start()
    assert len(list(cf.as_completed(fs, timeout=30))) == 50
    done, not_done = cf.wait(fs, timeout=30)
    t.join(30)
    assert len(done) == 50 and not not_done
    assert sorted(f.result() for f in fs) == list(range(50))


def test_a_held_future_costs_well_under_a_kilobyte():
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        fs = running(10_000)
        per_future = (tracemalloc.get_traced_memory()[0] - before) / len(fs)
    finally:
        tracemalloc.stop()
    assert per_future < 500  # a concurrent.futures.Future is ~1.7 KB
