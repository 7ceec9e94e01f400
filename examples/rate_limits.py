"""Rate limits: at most N runs of a task per second, minute, hour or day, cluster-wide.

Run it from anywhere::

    python examples/rate_limits.py

``rate_limit="5/s"`` (also ``"100/m"``, ``"1000/h"``, ``"10/d"``, or
``"1/10s"``: one per 10 seconds) is enforced by the master, per task name,
across every worker: a token bucket holding N tokens, refilled
continuously. A full bucket lets a burst of N start at once; after that, one
starts every 1/N of the period. A task beyond the rate waits in its queue
(not counted as a failed attempt). Set it per submit or per task
(``@conveyor.task(rate_limit="5/s")``).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import example_tasks as tasks

from conveyor.cluster import LocalCluster

HERE = Path(__file__).resolve().parent


def main() -> None:
    with LocalCluster(workers=2, concurrency=4, modules=["example_tasks"], cwd=HERE) as cluster:
        cluster.wait_for_workers()
        with cluster.client() as client:
            n = 15
            futures = [client.submit(tasks.stamp, i, rate_limit="5/s") for i in range(n)]
            runs = sorted((f.result(timeout=60) for f in futures), key=lambda r: r[1])
            starts = [started for _, started, _ in runs]
            t0 = starts[0]
            print(f"{n} tasks with rate_limit='5/s', start times (s): "
                  f"{' '.join(f'{t - t0:.2f}' for t in starts)}")
            # The bucket starts full: 5 may start at once, the other 10 wait for a
            # token each, one every 0.2 s - so the last can start no sooner than 2 s in.
            span = starts[-1] - t0
            print(f"observed: {n} tasks in {span:.2f}s = a burst of 5, "
                  f"then {(n - 5) / span:.1f} tasks/s")
            per_worker = Counter(worker_pid for _, _, worker_pid in runs)
            print(f"tasks run by each of the {len(per_worker)} workers: {sorted(per_worker.values())}")

            try:
                client.submit(tasks.stamp, 0, rate_limit="fast")
            except ValueError as exc:
                print(f"rate_limit='fast' -> ValueError: {exc}")


if __name__ == "__main__":
    main()
