"""Durable network queues: ``client.queue(name)`` has the ``queue.Queue`` interface.

Run it from anywhere::

    python examples/queues.py

No workers are involved: a queue is a named list of items in the master's
store, shared by every client that names it, on any machine. ``put`` returns
once the item is committed. How a ``get`` is acknowledged is the ``ack=``
mode:

- ``ack="task_done"`` (the default): ``task_done()`` acknowledges the oldest
  item this consumer got. An item whose consumer disconnects or dies before
  ``task_done()`` goes back to the queue for another consumer.
- ``ack="get"``: acknowledged as it is handed out - fast, and lost if the
  consumer dies with it, as with a ``queue.Queue``.
- ``ack="auto"``: acknowledged when the consumer comes back for its next item,
  calls ``task_done()`` or exits normally (what ``conveyor.managers`` uses).

``put_many``/``get_many`` move many items per round trip; ``join()`` waits
until every item put (by anyone) is acknowledged; ``maxsize`` bounds the
queue for all producers together.
"""

from __future__ import annotations

import queue
import threading
from pathlib import Path

from conveyor.cluster import LocalCluster

HERE = Path(__file__).resolve().parent


def consumer(cluster: LocalCluster, name: str, done: list) -> None:
    """A consumer with its own connection (it could be another process or machine)."""
    with cluster.client() as client:
        jobs = client.queue("jobs")  # ack="task_done"
        while True:
            try:
                item = jobs.get(timeout=1)
            except queue.Empty:
                return
            done.append((name, item * item))
            jobs.task_done()


def main() -> None:
    with LocalCluster(workers=0, cwd=HERE) as cluster:
        with cluster.client() as client:
            jobs = client.queue("jobs")

            # A consumer that takes an item and goes away without task_done():
            # the item goes back to the queue.
            jobs.put("first")
            with cluster.client() as flaky:
                got = flaky.queue("jobs").get(timeout=5)
                print(f"flaky consumer got {got!r} and disconnected without task_done()")
            print(f"got again by the next consumer: {jobs.get(timeout=5)!r}")
            jobs.task_done()

            # Producer/consumers: put_many in one round trip, two consumers, join.
            print(f"put_many: {jobs.put_many(range(20))} items")
            done: list = []
            threads = [threading.Thread(target=consumer, args=(cluster, f"c{i}", done)) for i in range(2)]
            for t in threads:
                t.start()
            print(f"join() -> {jobs.join(timeout=30)}: every item acknowledged")
            for t in threads:
                t.join()
            by = {name: sum(1 for n, _ in done if n == name) for name in ("c0", "c1")}
            print(f"consumed {len(done)} items {by}, sum of squares {sum(v for _, v in done)}")

            # ack="get": acknowledged when handed out; get_many takes a batch.
            fast = client.queue("events", ack="get")
            fast.put_many([{"event": i} for i in range(5)])
            print(f"get_many(10) with ack='get': {fast.get_many(10, timeout=5)}")
            print(f"events left: {fast.qsize()}, join() -> {fast.join(timeout=5)}")

            # A bounded queue: put_nowait raises queue.Full past maxsize.
            small = client.queue("small", maxsize=2)
            small.put_many(["a", "b"])
            try:
                small.put_nowait("c")
            except queue.Full:
                print("maxsize=2: third put_nowait raised queue.Full")


if __name__ == "__main__":
    main()
