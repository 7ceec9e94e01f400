"""Idempotent submits: the same ``key`` twice is one task, run once.

Run it from anywhere::

    python examples/idempotency.py

``key="order-42"`` derives the task id from the key, and the master stores a
task id only once: submitting again with the same key (say, a client that
retries after a timeout, or two web servers handling the same webhook) gives
a future for the task that already exists - same id, same result - and the
task is not run again, even after it finished (while its record is kept:
``--result-ttl``, 24 h by default). ``task_id=`` does the same with an id you
choose; give one or the other, not both.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import example_tasks as tasks

from conveyor.cluster import LocalCluster

HERE = Path(__file__).resolve().parent


def main() -> None:
    with (tempfile.TemporaryDirectory() as tmp,
          LocalCluster(workers=2, concurrency=2, modules=["example_tasks"], cwd=HERE) as cluster):
        cluster.wait_for_workers()
        ledger = Path(tmp) / "ledger"  # charge() appends a line per execution
        with cluster.client() as client:
            first = client.submit(tasks.charge, "order-42", 19.99, str(ledger), key="order-42")
            again = client.submit(tasks.charge, "order-42", 19.99, str(ledger), key="order-42")
            print(f"same task id: {first.task_id == again.task_id} ({first.task_id})")
            print(f"results: {first.result(timeout=30)!r}, {again.result(timeout=30)!r}")

            # After it finished: still the same task, not a new charge.
            late = client.submit(tasks.charge, "order-42", 19.99, str(ledger), key="order-42")
            print(f"submitted again after it finished: {late.result(timeout=30)!r}")

            other = client.submit(tasks.charge, "order-43", 5.0, str(ledger), key="order-43")
            other.result(timeout=30)
            print(f"ledger lines: {ledger.read_text().splitlines()}")

            try:
                client.submit(tasks.charge, "x", 1, str(ledger), key="order-44", task_id="abc")
            except ValueError as exc:
                print(f"key and task_id -> ValueError: {exc}")


if __name__ == "__main__":
    main()
