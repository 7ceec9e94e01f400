"""Cancellation: a queued task, a delayed task and a running task.

Run it from anywhere::

    python examples/cancellation.py

``future.cancel()`` (or ``client.cancel(task_id)``, or ``conveyor cancel
TASK_ID`` from the shell) cancels the task on the master: a queued or delayed
task never runs, a running one has its process stopped (the worker replaces
it and goes on). The future then raises ``concurrent.futures.CancelledError``
and ``inspect`` shows the state ``cancelled``. A task that already finished
is not cancelled: ``cancel()`` returns False.
"""

from __future__ import annotations

import concurrent.futures as cf
import time
from pathlib import Path

import example_tasks as tasks

from conveyor.cluster import LocalCluster

HERE = Path(__file__).resolve().parent


def main() -> None:
    with LocalCluster(workers=0, modules=["example_tasks"], cwd=HERE) as cluster:
        with cluster.client() as client:
            # No worker yet: these wait in the master's store.
            queued = client.submit(tasks.stamp, "queued")
            delayed = client.submit(tasks.stamp, "delayed", countdown=30)
            print(f"queued.cancel() -> {queued.cancel()}, state {client.inspect(queued.task_id)['state']}")
            # client.cancel takes an id and says what became of it.
            print(f"client.cancel(delayed id) -> {client.cancel(delayed.task_id)}")
            cf.wait([delayed], timeout=5)  # the master tells the future too
            print(f"delayed.cancelled() -> {delayed.cancelled()}")
            try:
                queued.result(timeout=5)
            except cf.CancelledError:
                print("queued.result() raised CancelledError")

            # A running task: the worker stops its process.
            cluster.start_worker("--concurrency", "1")
            running = client.submit(tasks.hang, 60)
            while client.inspect(running.task_id)["state"] != "leased":
                time.sleep(0.05)
            time.sleep(0.3)  # let it really start
            started = time.monotonic()
            print(f"running.cancel() -> {running.cancel()}")
            try:
                running.result(timeout=30)
            except cf.CancelledError:
                print(f"running task stopped: CancelledError after {time.monotonic() - started:.2f}s, "
                      f"state {client.inspect(running.task_id)['state']}")

            # The worker goes on with the next task.
            done = client.submit(tasks.square, 9)
            print(f"next task: square(9) = {done.result(timeout=30)}")
            print(f"cancel a finished task -> {done.cancel()}, {client.cancel(done.task_id)}")


if __name__ == "__main__":
    main()
