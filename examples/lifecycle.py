"""Worker lifecycle: hooks once per child, recycling by task count and by memory, autoscaling.

Run it from anywhere::

    python examples/lifecycle.py

- ``@conveyor.on_child_start`` / ``@conveyor.on_child_exit`` in a task module
  run once in each pool child (see ``lifecycle_tasks.py``: one database
  connection per process); ``@conveyor.on_worker_start`` / ``on_worker_stop``
  once in the worker.
- ``--max-tasks-per-child N``: a child is replaced after N tasks.
- ``--max-memory-per-child MB``: a child is replaced after the task that took
  its resident memory over MB (a leak stays bounded).
- ``--autoscale MIN,MAX``: children are added while work waits, and removed
  one at a time once idle for ``--autoscale-idle`` seconds (default 30).

These are process pool features; the asyncio pool takes the two recycling
flags, and the thread pool (no children) none of them.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import lifecycle_tasks as tasks

from conveyor.cluster import LocalCluster

HERE = Path(__file__).resolve().parent


def wait_for_line(cluster: LocalCluster, text: str, timeout: float = 30.0) -> bool:
    """True once the worker's log holds ``text``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(text in path.read_text(errors="replace") for path in cluster.log_dir.glob("*-worker.log")):
            return True
        time.sleep(0.1)
    return False


def main() -> None:
    with LocalCluster(workers=0, modules=["lifecycle_tasks"], cwd=HERE) as cluster:
        # Two children, each replaced after 3 tasks.
        cluster.start_worker("--concurrency", "2", "--max-tasks-per-child", "3")
        cluster.wait_for_workers(1)
        with cluster.client() as client:
            runs = [client.submit(tasks.record, i).result(30) for i in range(12)]
        per_child = Counter(run["pid"] for run in runs)
        print(f"--max-tasks-per-child 3: 12 tasks ran in {len(per_child)} children, "
              f"at most {max(per_child.values())} each")
        print(f"each child opened its connection once (on_child_start): "
              f"{all(run['opened'] == 1 for run in runs)}")

    with LocalCluster(workers=0, modules=["lifecycle_tasks"], cwd=HERE) as cluster:
        cluster.start_worker("--concurrency", "1", "--max-memory-per-child", "150")
        cluster.wait_for_workers(1)
        with cluster.client() as client:
            before = client.submit(tasks.busy, 0).result(30)
            leaky = client.submit(tasks.hog, 200).result(30)
            after = client.submit(tasks.busy, 0).result(30)
        print(f"--max-memory-per-child 150: the child that took 200 MB finished its task "
              f"({leaky == before}) and was replaced ({after != leaky})")

    with LocalCluster(workers=0, modules=["lifecycle_tasks"], cwd=HERE) as cluster:
        cluster.start_worker("--autoscale", "1,4", "--autoscale-idle", "1")
        cluster.wait_for_workers(1)
        with cluster.client() as client:
            pids = set(client.gather([client.submit(tasks.busy, 1.0) for _ in range(8)], timeout=60))
        print(f"--autoscale 1,4: 8 one-second tasks ran in {len(pids)} children")
        print(f"back to one child once idle: {wait_for_line(cluster, '(2 -> 1)')}")


if __name__ == "__main__":
    main()
