"""Quick start: submit tasks, collect results, map, an Executor, and a failing task.

Run it from anywhere::

    python examples/quickstart.py

It starts a local master and two workers (real processes on 127.0.0.1)
serving ``example_tasks``, and stops them at the end. Against your own
cluster, start them yourself::

    conveyor master --bind 127.0.0.1:7700 --data ./conveyor-data
    conveyor worker example_tasks --connect 127.0.0.1:7700   # from examples/

and use ``conveyor.connect("127.0.0.1:7700")`` instead of ``cluster.client()``.
"""

from __future__ import annotations

from pathlib import Path

import example_tasks as tasks

import conveyor
from conveyor.cluster import LocalCluster

HERE = Path(__file__).resolve().parent  # workers import example_tasks from here


def main() -> None:
    with LocalCluster(workers=2, concurrency=2, modules=["example_tasks"], cwd=HERE) as cluster:
        cluster.wait_for_workers()
        with cluster.client() as client:
            # submit() returns once the master has committed the task; the
            # future is a concurrent.futures.Future with the task's id.
            fut = client.submit(tasks.square, 7)
            print(f"submitted {fut.task_id}")
            print(f"square(7) = {fut.result(timeout=30)}")

            # Any task's result by id, from any client (while the result is kept).
            print(f"client.result(id) = {client.result(fut.task_id, timeout=30)}")

            # map: streamed in batches, results in order.
            print(f"map(square, range(10)) = {list(client.map(tasks.square, range(10)))}")
            print(f"sum of squares below 10,000 = {sum(client.map(tasks.square, range(10_000)))}")

            # A concurrent.futures.Executor: code written for ProcessPoolExecutor
            # runs on the cluster's workers unchanged.
            with client.executor() as ex:
                print(f"executor.map = {list(ex.map(tasks.square, [1, 2, 3]))}")
                print(f"executor.submit = {ex.submit(tasks.slow_square, 4, delay=0.05).result()}")

            # as_completed: futures in the order they finish (here the
            # shortest task, submitted last, usually comes first).
            futures = [client.submit(tasks.slow_square, n, delay=0.6 - 0.3 * n) for n in range(3)]
            order = [f.result() for f in conveyor.as_completed(futures, timeout=30)]
            print(f"as_completed yielded results {order}")

            # A task that raises fails with conveyor.TaskError on the client,
            # carrying the remote type, message and traceback.
            try:
                client.submit(tasks.divide, 1, 0).result(timeout=30)
            except conveyor.TaskError as exc:
                print(f"divide(1, 0) failed: {exc.type_name}: {exc.message}")
                print(f"remote traceback ends with: {exc.remote_traceback.strip().splitlines()[-1]}")


if __name__ == "__main__":
    main()
