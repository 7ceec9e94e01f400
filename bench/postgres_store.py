"""The PostgreSQL store beside the SQLite store, on this machine (not a test).

Store level (one process, the store's own API, as the master's store thread calls it):

- cycle: enqueue a batch, lease it, complete it, each step one transaction, batch sizes 1/100/500;
- commit latency: one single-task enqueue in its own transaction, p50 and p99.

End to end (a master with 2 workers, as bench/throughput.py measures it): N no-op
tasks through ``client.map`` and one task at a time, submit to result (p50).

It creates a database with a random name on the server (default the machine's,
``postgresql://postgres@127.0.0.1:5432``) and drops it at the end.

    python bench/postgres_store.py
    python bench/postgres_store.py --server postgresql://postgres@127.0.0.1:5432 --tasks 5000
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import psycopg

from conveyor.cluster import LocalCluster
from conveyor.records import NewTask, Outcome
from conveyor.store.base import Store
from conveyor.store.postgres import PostgresStore
from conveyor.store.sqlite import SQLiteStore


@contextmanager
def scratch_database(server: str) -> Iterator[str]:
    """A fresh database on ``server``; its URL. Dropped afterwards."""
    name = f"conveyor_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(f"{server}/postgres", autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    try:
        yield f"{server}/{name}"
    finally:
        with psycopg.connect(f"{server}/postgres", autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def _tasks(prefix: str, n: int) -> list[NewTask]:
    return [NewTask(f"{prefix}{i}", "q", "f", b"x", "msgpack", 0, 0.0, {}) for i in range(n)]


def cycle_rate(store: Store, total: int, batch: int) -> float:
    """Tasks per second through enqueue -> lease -> complete, ``batch`` per transaction."""
    now = time.time()
    start = time.perf_counter()
    for b in range(total // batch):
        with store.transaction():
            store.enqueue(_tasks(f"c{batch}-{b}-", batch), now)
        with store.transaction(durable=False):
            leases = store.lease("q", batch, "w", now, 60)
        with store.transaction():
            store.complete([Outcome(x.id, x.token, True, b"") for x in leases], now)
    return (total // batch) * batch / (time.perf_counter() - start)


def commit_latency(store: Store, samples: int) -> tuple[float, float]:
    """p50 and p99 in ms of one single-task enqueue committed alone."""
    lat = []
    for i in range(samples):
        t = _tasks(f"l{i}-", 1)
        t0 = time.perf_counter()
        with store.transaction():
            store.enqueue(t, time.time())
        lat.append(time.perf_counter() - t0)
    lat.sort()
    return statistics.median(lat) * 1000, lat[int(len(lat) * 0.99)] * 1000


def end_to_end(master_args: list[str], data: str, n_tasks: int, samples: int) -> tuple[float, float]:
    """(tasks/s of ``n_tasks`` through client.map, one-task p50 ms) with 2 workers."""
    with LocalCluster(workers=2, data=data, master_args=master_args) as cluster:
        cluster.wait_for_workers(2)
        with cluster.client() as client:
            assert list(client.map("conveyor.demo:square", range(200))) == [i * i for i in range(200)]
            start = time.perf_counter()
            assert sum(client.map("conveyor.demo:square", range(n_tasks))) == \
                sum(i * i for i in range(n_tasks))
            rate = n_tasks / (time.perf_counter() - start)
            lat = []
            for i in range(samples):
                t0 = time.perf_counter()
                client.submit("conveyor.demo:square", i).result(60)
                lat.append(time.perf_counter() - t0)
    return rate, statistics.median(lat) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--server", default="postgresql://postgres@127.0.0.1:5432")
    parser.add_argument("--cycle-tasks", type=int, default=10_000)
    parser.add_argument("--samples", type=int, default=500)
    parser.add_argument("--tasks", type=int, default=5_000, help="end-to-end tasks")
    parser.add_argument("--no-end-to-end", action="store_true")
    args = parser.parse_args()

    with scratch_database(args.server) as dsn, tempfile.TemporaryDirectory() as tmp:
        stores: list[tuple[str, Callable[[], Store]]] = [
            ("postgres", lambda: PostgresStore(dsn)),
            ("sqlite normal", lambda: SQLiteStore(f"{tmp}/normal", sync="normal")),
            ("sqlite full", lambda: SQLiteStore(f"{tmp}/full", sync="full")),
        ]
        print(f"{'store':<16}{'cycle b=1':>12}{'b=100':>12}{'b=500':>12}{'commit p50':>12}{'p99':>10}")
        for label, make in stores:
            store = make()
            try:
                rates = [cycle_rate(store, min(args.cycle_tasks, 2000 if b == 1 else args.cycle_tasks), b)
                         for b in (1, 100, 500)]
                p50, p99 = commit_latency(store, args.samples)
            finally:
                store.close()
            print(f"{label:<16}" + "".join(f"{r:>10.0f}/s" for r in rates)
                  + f"{p50:>10.3f}ms{p99:>8.2f}ms", flush=True)
        if args.no_end_to_end:
            return
        print(f"\nend to end, 2 workers, {args.tasks} tasks:")
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("TRUNCATE tasks, deps, schedules")
        for label, master_args, data in (
                ("postgres", ["--store", dsn], f"{tmp}/unused"),
                ("sqlite normal", [], f"{tmp}/e2e")):
            rate, p50 = end_to_end(master_args, data, args.tasks, min(args.samples, 300))
            print(f"{label:<16}{rate:>10.0f} tasks/s   one-task p50 {p50:.2f} ms", flush=True)


if __name__ == "__main__":
    main()
