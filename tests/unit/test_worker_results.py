"""How the worker passes results from its pool to the master: at once on its own loop,
and in one wake-up of the loop for everything that pool threads reported meanwhile."""

from __future__ import annotations

import asyncio
import threading

from conveyor import protocol
from conveyor.worker.pool import JobResult
from conveyor.worker.worker import Worker


class FakeCore:
    """Records what the worker sends instead of sending it."""

    connected = True

    def __init__(self) -> None:
        self.requests: list[tuple[str, dict]] = []
        self.pushes: list[tuple[str, dict]] = []

    def request_nowait(self, op: str, fields: dict) -> asyncio.Future:
        self.requests.append((op, fields))
        return asyncio.get_running_loop().create_future()

    def push(self, op: str, fields: dict) -> None:
        self.pushes.append((op, fields))

    def acked(self) -> list[list[str]]:
        """The task ids of each ACK sent, in order."""
        return [[r[0] for r in fields["results"]] for op, fields in self.requests if op == protocol.ACK]


class FakePool:
    avg_duration = 0.0

    def running(self) -> int:
        return 0

    def pending(self) -> int:
        return 0

    def discard_pending(self) -> list:
        return []


def result(task_id: str) -> JobResult:
    return JobResult(task_id, 1, True, b"\x01", "msgpack", 0.001)


def worker_on_this_loop() -> tuple[Worker, FakeCore]:
    worker = Worker(["tests.unit.pool_tasks"], "127.0.0.1:1", b"key", concurrency=2)
    core = FakeCore()
    worker._loop = asyncio.get_running_loop()
    worker._loop_thread = threading.get_ident()
    worker._core = core  # type: ignore[assignment]
    worker._pool = FakePool()
    worker._outstanding = worker.window()  # the window is full
    return worker, core


def test_results_on_the_loop_are_acked_in_the_same_turn():
    async def main() -> None:
        worker, core = worker_on_this_loop()
        worker._results_from_pool([result("a"), result("b")])
        assert core.acked() == [["a", "b"]]  # before this coroutine yields to the loop
        assert core.pushes == [(protocol.CREDIT, {"n": 2})]  # the window is topped up again
        worker._results_from_pool([result("c")])
        assert core.acked() == [["a", "b"], ["c"]]

    asyncio.run(main())


def test_results_from_threads_meanwhile_go_in_one_ack():
    async def main() -> None:
        worker, core = worker_on_this_loop()

        def pool_thread() -> None:
            worker._results_from_pool([result("a")])
            worker._results_from_pool([result("b"), result("c")])

        # The loop is busy while a pool thread reports twice.
        thread = threading.Thread(target=pool_thread)
        thread.start()
        thread.join()
        assert core.acked() == []  # not on the loop: nothing is sent from the pool's thread
        for _ in range(3):
            await asyncio.sleep(0)
        assert core.acked() == [["a", "b", "c"]]
        # Once taken, the next report from a thread wakes the loop again.
        thread = threading.Thread(target=worker._results_from_pool, args=([result("d")],))
        thread.start()
        thread.join()
        for _ in range(3):
            await asyncio.sleep(0)
        assert core.acked() == [["a", "b", "c"], ["d"]]

    asyncio.run(main())


class CountingPool(FakePool):
    """Counts a batch as running until its on_results call returns, as the pools do."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.in_flight = 0

    def running(self) -> int:
        return self.in_flight

    def report(self, results: list[JobResult]) -> None:
        try:
            self.worker._results_from_pool(results)
        finally:
            self.in_flight -= len(results)


def test_warm_stop_ends_when_the_last_result_needs_no_ack():
    """A task the master cancelled finishes anyway during a warm stop: nothing is acked,
    and the worker still notices it has nothing left once the pool counts it done."""
    async def main() -> None:
        worker, core = worker_on_this_loop()
        pool = CountingPool(worker)
        worker._pool = pool  # type: ignore[assignment]
        worker._held["x"] = ({}, 0, "m:f")
        pool.in_flight = 1
        worker._cancel(["x"])  # the pool cannot stop it (FakePool has no cancel)
        worker.request_stop()
        assert not worker._stopped.is_set()
        pool.report([result("x")])
        await asyncio.wait_for(worker._stopped.wait(), 5)
        assert core.acked() == []

    asyncio.run(main())
