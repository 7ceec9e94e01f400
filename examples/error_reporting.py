"""Error reporting with middleware: one hook sees every failed attempt, wherever it ran.

Run it from anywhere::

    python examples/error_reporting.py

``middleware_tasks.ErrorReporter`` is a ``conveyor.Middleware`` registered with
``conveyor.add_middleware`` in the task module. Its ``on_failure`` runs in the pool
child, right after the task raised, with the exception itself; ``on_retry`` runs in
the worker when a failure is retried, with the delay. Here they write JSON lines to
a file; in production they would call an error tracker. A hook that raises is
logged by the worker and changes nothing else.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import middleware_tasks as tasks

import conveyor
from conveyor.cluster import LocalCluster

HERE = Path(__file__).resolve().parent


def main() -> None:
    with tempfile.TemporaryDirectory() as tmpdir:
        reports = Path(tmpdir) / "errors.jsonl"
        os.environ["EXAMPLE_ERROR_REPORTS"] = str(reports)  # the workers inherit it
        with LocalCluster(workers=1, concurrency=2, modules=["middleware_tasks"], cwd=HERE) as cluster:
            cluster.wait_for_workers()
            with cluster.client() as client:
                print(client.submit(tasks.charge, "order-1", 19.99).result(timeout=30))
                try:
                    client.submit(tasks.charge, "order-2", -5).result(timeout=30)
                except conveyor.TaskError as exc:
                    print(f"order-2 failed: {exc.type_name}: {exc.message}")
                flaky = client.submit(tasks.flaky, str(Path(tmpdir) / "count"), 1, retries=2,
                                      retry_backoff=0.1)
                print(flaky.result(timeout=30))
        print("error reports:")
        for line in reports.read_text().splitlines():
            r = json.loads(line)
            if "retry_in" in r:
                print(f"  {r['task']} will retry after {r['type']} (in {r['retry_in']:.2f}s)")
            else:
                print(f"  {r['task']} failed: {r['type']}: {r['message']}")


if __name__ == "__main__":
    main()
