"""Dependencies: a chain, a chord, gather, and what a failure upstream does.

Run it from anywhere::

    python examples/dependencies.py

- ``after=[f1, f2]`` (futures or task ids; one future alone works too): the
  task waits, in the master's store, until every one of them succeeded.
- ``pass_results=True`` (with ``after=``): the task gets the list of their
  results, in ``after`` order, as its first argument.
- If a task it waits for fails, dies or is cancelled, the task does not run:
  it fails with ``TaskError`` whose ``type_name`` is
  ``"conveyor.errors.DependencyFailed"``, naming the task that failed; its
  own dependents fail the same way.
- ``client.gather(futures)`` returns their results in order (the first
  failure raises).
"""

from __future__ import annotations

from pathlib import Path

import example_tasks as tasks

import conveyor
from conveyor.cluster import LocalCluster

HERE = Path(__file__).resolve().parent


def main() -> None:
    with LocalCluster(workers=2, concurrency=2, modules=["example_tasks"], cwd=HERE) as cluster:
        cluster.wait_for_workers()
        with cluster.client() as client:
            # A chain: download -> word_count -> publish, each fed the previous result.
            page = client.submit(tasks.download, "https://example.com")
            count = client.submit(tasks.word_count, after=[page], pass_results=True)
            post = client.submit(tasks.publish, "#stats", after=count, pass_results=True)
            print(f"chain: {post.result(timeout=60)}")
            print(f"inspect(publish)['after'] == [word_count id]: "
                  f"{client.inspect(post.task_id)['after'] == [count.task_id]}")

            # A chord: a group of tasks, then one task over all their results.
            group = [client.submit(tasks.slow_square, n, 0.05) for n in range(1, 5)]
            summed = client.submit(tasks.total, extra=100, after=group, pass_results=True)
            print(f"gather(group) = {client.gather(group, timeout=60)}")
            print(f"chord: total(squares, extra=100) = {summed.result(timeout=60)}")

            # A failure in the middle of a chain: what comes after never runs.
            first = client.submit(tasks.square, 3)
            middle = client.submit(tasks.fail, "middle step broke", after=[first])
            last = client.submit(tasks.square, 4, after=[middle])
            print(f"first: {first.result(timeout=60)}")
            for name, fut in (("middle", middle), ("last", last)):
                try:
                    fut.result(timeout=60)
                except conveyor.TaskError as exc:
                    print(f"{name}: {exc.type_name}: {exc.message}")

            # A dependency the master does not know is refused at submit.
            try:
                client.submit(tasks.square, 1, after=["0" * 32])
            except ValueError as exc:
                print(f"after=[unknown id] -> ValueError: {exc}")


if __name__ == "__main__":
    main()
