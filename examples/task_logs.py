"""Task logs: one line per task event on the worker, as text or JSON, in a file.

Run it from anywhere::

    python examples/task_logs.py

The worker is started with ``--log-format json --log-file PATH`` (the master
takes the same flags). Each task event is one line under the logger
``conveyor.worker.tasks``: started, succeeded in how long with its
result, failed with the error, retry in how long, timed out, crashed,
cancelled (and, at DEBUG, received). A record that a task logs itself carries ``task_id`` and
``task_name`` too, and the last 64 KiB of what each attempt logged and printed
is sent to the master with its outcome. In text format (the default) the lines
read ``... INFO conveyor.worker.tasks: Task lifecycle_tasks:resize[ID] succeeded in 0.001s: 'cat.png.thumb.png'``.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import lifecycle_tasks as tasks

import conveyor
from conveyor.cluster import LocalCluster

HERE = Path(__file__).resolve().parent


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="conveyor-example-") as tmp:
        log_file = Path(tmp) / "worker.jsonl"
        with LocalCluster(workers=0, modules=["lifecycle_tasks"], cwd=HERE, concurrency=1,
                          worker_args=["--log-format", "json", "--log-file", str(log_file)]) as cluster:
            cluster.start_worker()
            cluster.wait_for_workers(1)
            with cluster.client() as client:
                good = client.submit(tasks.resize, "cat.png")
                print(f"resize('cat.png') = {good.result(30)!r}")
                bad = client.submit(tasks.broken, "notes.txt")
                try:
                    bad.result(30)
                except conveyor.TaskError as exc:
                    print(f"broken('notes.txt') failed: {exc.type_name}: {exc.message}")
            # The lines are written as the events happen; the last one may trail the result.
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and "failed in" not in log_file.read_text():
                time.sleep(0.05)
            lines = [json.loads(line) for line in log_file.read_text().splitlines()]
        print(f"the worker wrote {len(lines)} JSON lines, each with {sorted(lines[0])[:4]}...")
        for fut in (good, bad):
            for doc in lines:
                if doc.get("task_id") == fut.task_id:
                    print(f"  {doc['level']:<7} {doc['logger']:<22} {doc['message'].replace(fut.task_id, 'ID')}")


if __name__ == "__main__":
    main()
