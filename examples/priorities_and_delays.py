"""Priorities, weighted queues, and delayed tasks (countdown and eta).

Run it from anywhere::

    python examples/priorities_and_delays.py

- ``priority=N`` (an integer, default 0): in a queue, higher priorities are
  handed out first, and equal priorities in submit order. Priority orders
  what is *waiting*: to see it, the tasks are submitted before the worker
  starts, and the worker takes one task at a time (``--concurrency 1
  --prefetch 1``); a worker that already holds prefetched tasks runs those
  first.
- ``--queues high:3,low:1`` on a worker serves two queues by weight: when
  both have work, about 3 tasks from ``high`` for 1 from ``low``
  (``--queues high,low`` would drain ``high`` first).
- ``countdown=S`` runs the task no sooner than S seconds from now;
  ``eta=datetime`` no sooner than that time, which must be timezone-aware.
  A delayed task is kept in the store, so it survives a master restart.
"""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path
from zoneinfo import ZoneInfo

import example_tasks as tasks

from conveyor.cluster import LocalCluster

HERE = Path(__file__).resolve().parent


def main() -> None:
    # No workers yet: the tasks wait in the queue until one starts.
    with LocalCluster(workers=0, modules=["example_tasks"], cwd=HERE) as cluster:
        with cluster.client() as client:
            # -- priorities ------------------------------------------------------------
            plan = [("a", 0), ("b", 0), ("c", 5), ("d", 9), ("e", 5), ("f", 0)]
            futures = [client.submit(tasks.stamp, label, priority=prio) for label, prio in plan]
            print(f"submitted (label, priority): {plan}")
            cluster.start_worker("--concurrency", "1", "--prefetch", "1")
            ran = sorted((f.result(timeout=60) for f in futures), key=lambda r: r[1])
            print(f"ran in this order: {' '.join(label for label, _, _ in ran)}")

            # -- weighted queues -------------------------------------------------------
            high = [client.submit(tasks.stamp, f"h{i}", queue="high") for i in range(40)]
            low = [client.submit(tasks.stamp, f"l{i}", queue="low") for i in range(40)]
            cluster.start_worker("--queues", "high:3,low:1", "--concurrency", "1", "--prefetch", "1")
            ran = sorted((f.result(timeout=60) for f in high + low), key=lambda r: r[1])
            first = [label[0] for label, _, _ in ran[:20]]
            print(f"--queues high:3,low:1, first 20 tasks: {first.count('h')} from high, "
                  f"{first.count('l')} from low")

            # -- delays ----------------------------------------------------------------
            submitted = time.time()
            later = client.submit(tasks.stamp, "countdown", countdown=1.0)
            print(f"countdown=1.0: state right after submit is {client.inspect(later.task_id)['state']!r}")
            # eta: any time zone, as long as it is aware (naive datetimes are refused).
            eta = dt.datetime.now(ZoneInfo("Asia/Tokyo")) + dt.timedelta(seconds=1.5)
            at_eta = client.submit(tasks.stamp, "eta", eta=eta)
            for fut, name in ((later, "countdown=1.0"), (at_eta, f"eta={eta:%H:%M:%S.%f %Z}")):
                _, started, _ = fut.result(timeout=30)
                print(f"{name}: started {started - submitted:.2f}s after submit")
            try:
                client.submit(tasks.stamp, "naive", eta=dt.datetime.now() + dt.timedelta(seconds=1))
            except ValueError as exc:
                print(f"naive eta -> ValueError: {exc}")


if __name__ == "__main__":
    main()
