"""Progress: a task reports it, the client sees it.

Run it from anywhere::

    python examples/progress.py

- Inside a task, ``conveyor.current_task().progress(done, total, message)``
  reports progress (reports closer than 50 ms apart are coalesced, except
  the last one, ``done == total``).
- The submitting client gets it on ``future.progress`` (``{"done", "total",
  "message"}``) and in callbacks added with
  ``future.add_progress_callback(fn)`` (called from the client's I/O
  thread: keep them short); ``client.inspect(task_id)["progress"]`` and
  ``conveyor inspect TASK_ID`` show the latest report.
- ``client.map(fn, items, progress=True)`` draws a tqdm progress bar over the
  whole map, on stderr.
"""

from __future__ import annotations

import time
from pathlib import Path

import example_tasks as tasks

from conveyor.cluster import LocalCluster

HERE = Path(__file__).resolve().parent


def main() -> None:
    with LocalCluster(workers=2, concurrency=2, modules=["example_tasks"], cwd=HERE) as cluster:
        cluster.wait_for_workers()
        with cluster.client() as client:
            fut = client.submit(tasks.resize_images, 5, 0.1)

            def show(f):
                p = f.progress
                print(f"  progress: {p['done']}/{p['total']} {p['message']}", flush=True)

            fut.add_progress_callback(show)
            print(f"resize_images(5): {fut.result(timeout=60)} images")
            # Progress and result travel separately: the last report may land
            # just after the result.
            deadline = time.monotonic() + 10
            while (fut.progress or {}).get("done") != 5 and time.monotonic() < deadline:
                time.sleep(0.05)
            print(f"future.progress = {fut.progress}")
            info = client.inspect(fut.task_id)
            print(f"inspect()['progress'] = {info['progress']}")

            # A progress bar over a map (tqdm, drawn on stderr).
            results = list(client.map(tasks.slow_square, range(40), [0.02] * 40, progress=True))
            print(f"map with progress=True: {len(results)} results, sum {sum(results)}")


if __name__ == "__main__":
    main()
