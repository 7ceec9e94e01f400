"""Time limits: a hard ``timeout`` that kills, a ``soft_timeout`` that warns.

Run it from anywhere::

    python examples/time_limits.py

- ``timeout=S``: past S seconds the task's process is killed; the task fails
  with ``conveyor.TaskError`` whose ``type_name`` is
  ``"conveyor.errors.TaskTimeout"`` (and is retried if ``retries=`` allows),
  and the worker replaces the process and goes on.
- ``soft_timeout=S``: past S seconds ``conveyor.SoftTimeLimitExceeded`` is
  raised inside the task, which can clean up and return. Give a ``timeout``
  too, as the backstop. (Soft limits need the default process pool.)

Both can be defaults for a task: ``@conveyor.task(timeout=30, soft_timeout=25)``.
"""

from __future__ import annotations

import time
from pathlib import Path

import example_tasks as tasks

import conveyor
from conveyor.cluster import LocalCluster

HERE = Path(__file__).resolve().parent


def main() -> None:
    with LocalCluster(workers=1, concurrency=2, modules=["example_tasks"], cwd=HERE) as cluster:
        cluster.wait_for_workers()
        with cluster.client() as client:
            # A task that would hang for a minute, stopped after one second.
            started = time.monotonic()
            fut = client.submit(tasks.hang, 60, timeout=1.0)
            try:
                fut.result(timeout=30)
            except conveyor.TaskError as exc:
                print(f"hang(60) with timeout=1.0: {exc.type_name} after "
                      f"{time.monotonic() - started:.1f}s ({exc.message})")

            # The worker is still there, with a fresh process.
            print(f"next task on the same worker: square(6) = {client.submit(tasks.square, 6).result(30)}")

            # A soft limit: the task is told, saves what it has, and returns.
            fut = client.submit(tasks.process_items, 100, 0.05, soft_timeout=0.5, timeout=10)
            print(f"process_items with soft_timeout=0.5: {fut.result(timeout=30)}")

            # Bad values are refused at submit, naming the option.
            for bad in ({"timeout": 0}, {"soft_timeout": -1}):
                try:
                    client.submit(tasks.square, 1, **bad)
                except ValueError as exc:
                    print(f"submit(..., {bad}) -> ValueError: {exc}")


if __name__ == "__main__":
    main()
