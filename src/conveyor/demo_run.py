"""``conveyor demo``: the quick start's main job, end to end on this machine."""

from __future__ import annotations

import random
import time

from tqdm import tqdm

from .cluster import LocalCluster
from .demo import square


def run_demo(*, tasks: int = 10_000, workers: int = 2, concurrency: int | None = None,
             data: str | None = None, sync: str = "normal") -> int:
    """Start a master and ``workers`` workers, square ``tasks`` random numbers, print a summary."""
    numbers = [random.randrange(10_000) for _ in range(tasks)]
    print(f"starting a master on the embedded SQLite store and {workers} worker(s)...", flush=True)
    with LocalCluster(workers=workers, concurrency=concurrency, data=data, sync=sync) as cluster:
        cluster.wait_for_workers()
        print(f"master at {cluster.address}, data in {cluster.data}", flush=True)
        failures = wrong = 0
        start = time.perf_counter()
        with cluster.client() as client:
            results = client.map(square, numbers)
            for n in tqdm(numbers, total=tasks, unit="task", desc="squaring", mininterval=0.2):
                try:
                    value = next(results)
                except Exception:
                    failures += 1
                    continue
                if value != n * n:
                    wrong += 1
            elapsed = time.perf_counter() - start
            status = client.status()
        print("shutting down...", flush=True)
    done = status["queues"].get("default", {}).get("succeeded", 0)
    print(f"\nsummary: {tasks} tasks in {elapsed:.2f}s = {tasks / elapsed:,.0f} tasks/s; "
          f"{failures} failed, {wrong} wrong results; {done} results stored by the master; "
          f"{len(status['workers'])} workers")
    return 0 if failures == 0 and wrong == 0 else 1
