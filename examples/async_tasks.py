"""``async def`` tasks on an asyncio-pool worker: many at once in one process.

Run it from anywhere::

    python examples/async_tasks.py

A worker started with ``--pool asyncio`` runs ``--concurrency`` tasks at once
on an event loop in one child process: 100 tasks that each wait a second
take about a second, not 100. ``timeout`` cancels the task's coroutine,
``soft_timeout`` raises ``conveyor.SoftTimeLimitExceeded`` inside it, and
``conveyor.current_task()`` is each coroutine's own. A plain ``def`` task
runs too, on a thread of the child. (The process and thread pools run an
``async def`` task as well, one at a time per process or thread.)

The tasks are defined here; the worker imports this file as ``async_tasks``.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import conveyor

HERE = Path(__file__).resolve().parent


async def fetch(i: int, seconds: float) -> int:
    """Stand-in for an HTTP call: wait ``seconds`` on the loop, return ``i``."""
    await asyncio.sleep(seconds)
    return i


async def crawl(pages: int) -> str:
    """Crawl page after page; when the soft time limit passes, stop and say how far it got."""
    done = 0
    try:
        for _ in range(pages):
            await asyncio.sleep(0.1)
            done += 1
            conveyor.current_task().progress(done, pages)
    except conveyor.SoftTimeLimitExceeded:
        return f"stopped at the soft limit after {done} of {pages} pages"
    return f"crawled {pages} pages"


def checksum(data: str) -> int:
    """A plain function: it runs on a thread of the asyncio pool's child."""
    return sum(data.encode()) % 65536


def main() -> None:
    from conveyor.cluster import LocalCluster

    with LocalCluster(workers=1, concurrency=100, modules=["async_tasks"], cwd=HERE,
                      worker_args=["--pool", "asyncio"]) as cluster:
        cluster.wait_for_workers()
        with cluster.client() as client:
            # 100 tasks of one second each, all at once on one worker.
            started = time.monotonic()
            results = client.gather([client.submit(fetch, i, 1.0) for i in range(100)], timeout=60)
            print(f"100 fetches of 1 s each on one worker: {len(results)} results, sum {sum(results)}, "
                  f"in {time.monotonic() - started:.1f}s")

            # A hard limit cancels the coroutine; the worker and its other tasks go on.
            try:
                client.submit(fetch, 0, 60, timeout=0.5).result(timeout=30)
            except conveyor.TaskError as exc:
                print(f"fetch(60 s) with timeout=0.5: {exc.type_name}")

            # A soft limit is raised inside the coroutine, which stops and returns.
            fut = client.submit(crawl, 100, soft_timeout=1.0, timeout=20)
            print(f"crawl(100) with soft_timeout=1.0: {fut.result(timeout=30)}")

            print(f"plain def checksum('conveyor') = {client.submit(checksum, 'conveyor').result(timeout=30)}")


if __name__ == "__main__":
    main()
