"""Logging context with middleware: the submitter's request id in the task's log lines.

Run it from anywhere::

    python examples/logging_context.py

``middleware_tasks.RequestContext`` is registered in the task module, which this
script imports too, so it runs on both sides: on the client its ``before_submit``
copies the current request id into the task's headers (they travel with the task);
on the worker its ``before_task`` sets it in a context variable that a logging
filter puts on every record the task writes, next to ``conveyor.current_task().id``.
The same pattern carries a tenant, a user or a trace id (see ``conveyor.otel``).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import middleware_tasks as tasks

from conveyor.cluster import LocalCluster

HERE = Path(__file__).resolve().parent


def main() -> None:
    with tempfile.TemporaryDirectory() as tmpdir:
        task_log = Path(tmpdir) / "tasks.log"
        os.environ["EXAMPLE_TASK_LOG"] = str(task_log)  # where the workers' task logger writes
        with LocalCluster(workers=1, concurrency=2, modules=["middleware_tasks"], cwd=HERE) as cluster:
            cluster.wait_for_workers()
            with cluster.client() as client:
                for request, order in (("req-7f3a", "order-1"), ("req-91bc", "order-2")):
                    token = tasks.current_request.set(request)  # a web framework does this per request
                    try:
                        fut = client.submit(tasks.charge, order, 10.0)
                    finally:
                        tasks.current_request.reset(token)
                    print(f"{request}: {fut.result(timeout=30)}")
                print(f"no request: {client.submit(tasks.charge, 'order-3', 1.0).result(timeout=30)}")
        print("task log:")
        for line in task_log.read_text().splitlines():
            print(f"  {line}")


if __name__ == "__main__":
    main()
