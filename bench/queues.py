"""Network queues: conveyor's durable queue against a multiprocessing.managers queue.

Both in the same run, on this machine:

- batched throughput: 2 producer and 2 consumer processes move N items;
  conveyor uses put_many / get_many, the managers queue has no batch call
  (its producers and consumers go item by item, which is how it is used);
- item-by-item throughput: the same with put() / get() only, once with
  ``ack="task_done"`` (get + task_done per item) and once with ``ack="auto"``
  (what the ``conveyor.managers`` drop-in uses: get only);
- the same item by item again with consumer prefetch (``--prefetch``, default 32:
  ``c.queue(name, ack=..., prefetch=32)``; each get() still returns one item);
- latency: one item at a time, put then get, p50 and p99, per ack mode.

The managers queue keeps nothing; conveyor's is in its SQLite store.

    python bench/queues.py [--items 20000] [--samples 500] [--sync normal|full] [--prefetch 32]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import queue
import statistics
import sys
import tempfile
import time
from multiprocessing.managers import BaseManager

from conveyor.cluster import LocalCluster

AUTHKEY = b"bench"
_q: queue.Queue = queue.Queue()


def _get_q() -> queue.Queue:
    return _q


class _Manager(BaseManager):
    pass


_Manager.register("get_q", callable=_get_q)


# -- process bodies (spawned) ----------------------------------------------------------
def _mgr_producer(address, start, n, barrier):
    m = _Manager(address=address, authkey=AUTHKEY)
    m.connect()
    q = m.get_q()
    barrier.wait()
    for i in range(start, start + n):
        q.put(i)


def _mgr_consumer(address, n, out, barrier):
    m = _Manager(address=address, authkey=AUTHKEY)
    m.connect()
    q = m.get_q()
    barrier.wait()
    total = 0
    for _ in range(n):
        total += q.get()
    out.put(total)


def _cv_producer(address, authkey, name, start, n, batched, barrier):
    import conveyor

    with conveyor.connect(address, authkey) as c:
        q = c.queue(name)
        barrier.wait()
        items = range(start, start + n)
        if batched:
            for i in range(0, n, 1000):
                q.put_many(items[i:i + 1000])
        else:
            for i in items:
                q.put(i)


def _cv_consumer(address, authkey, name, n, batched, ack, prefetch, out, barrier):
    import conveyor

    with conveyor.connect(address, authkey) as c:
        q = c.queue(name, ack=ack, prefetch=prefetch) if prefetch > 1 else c.queue(name, ack=ack)
        barrier.wait()
        total = got = 0
        while got < n:
            if batched:
                items = q.get_many(min(1000, n - got), timeout=60)
            else:
                items = [q.get(timeout=60)]
            if ack == "task_done":
                for _ in items:
                    q.task_done()
            got += len(items)
            total += sum(items)
        q.flush()
        out.put(total)


def _run(procs, out, n_consumers, barrier) -> tuple[float, int]:
    """Start the processes, time from when all are connected to the last item consumed."""
    for p in procs:
        p.start()
    barrier.wait(timeout=120)
    start = time.perf_counter()
    totals = [out.get(timeout=300) for _ in range(n_consumers)]
    elapsed = time.perf_counter() - start
    for p in procs:
        p.join(60)
    return elapsed, sum(totals)


def _split(n: int, k: int) -> list[int]:
    return [n // k + (1 if i < n % k else 0) for i in range(k)]


# -- peers --------------------------------------------------------------------------------
def bench_managers(items: int, samples: int) -> dict[str, float]:
    ctx = mp.get_context("spawn")
    m = _Manager(address=("127.0.0.1", 0), authkey=AUTHKEY, ctx=ctx)
    m.start()
    try:
        out, barrier = ctx.Queue(), ctx.Barrier(5)
        shares = _split(items, 2)
        procs = [ctx.Process(target=_mgr_producer, args=(m.address, sum(shares[:i]), s, barrier))
                 for i, s in enumerate(shares)]
        procs += [ctx.Process(target=_mgr_consumer, args=(m.address, s, out, barrier)) for s in shares]
        elapsed, total = _run(procs, out, 2, barrier)
        assert total == sum(range(items))
        r = _latency(m.get_q(), samples)
    finally:
        m.shutdown()
    r["batched"] = r["task_done"] = r["auto"] = items / elapsed
    r["p50_task_done"] = r["p50_auto"] = r["p50_ms"]
    return r


def bench_conveyor(items: int, samples: int, sync: str, prefetch: int) -> dict[str, float]:
    ctx = mp.get_context("spawn")
    with tempfile.TemporaryDirectory() as tmp, LocalCluster(workers=0, data=f"{tmp}/data", sync=sync) as cl:
        r: dict[str, float] = {}
        runs = [("batched", True, "task_done", 1), ("task_done", False, "task_done", 1), ("auto", False, "auto", 1)]
        if prefetch > 1:
            runs += [("task_done_pf", False, "task_done", prefetch), ("auto_pf", False, "auto", prefetch)]
        for mode, batched, ack, pf in runs:
            out, barrier = ctx.Queue(), ctx.Barrier(5)
            name = f"bench-{mode}"
            shares = _split(items, 2)
            procs = [ctx.Process(target=_cv_producer,
                                 args=(cl.address, cl.authkey, name, sum(shares[:i]), s, batched, barrier))
                     for i, s in enumerate(shares)]
            procs += [ctx.Process(target=_cv_consumer, args=(cl.address, cl.authkey, name, s, batched, ack, pf, out, barrier))
                      for s in shares]
            elapsed, total = _run(procs, out, 2, barrier)
            assert total == sum(range(items)), (total, sum(range(items)))
            r[mode] = items / elapsed
        with cl.client() as c:
            for ack in ("task_done", "auto"):
                lat = _latency(c.queue(f"bench-latency-{ack}", ack=ack), samples)
                r[f"p50_{ack}"], r[f"p99_{ack}"] = lat["p50_ms"], lat["p99_ms"]
        return r


def _latency(q, samples: int) -> dict[str, float]:
    """p50 and p99 of one put followed by one get, in milliseconds."""
    lat = []
    for i in range(samples):
        t0 = time.perf_counter()
        q.put(i)
        q.get()
        if getattr(q, "ack", None) == "task_done":
            q.task_done()
        lat.append(time.perf_counter() - t0)
    lat.sort()
    return {"p50_ms": statistics.median(lat) * 1000, "p99_ms": lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=20_000)
    parser.add_argument("--samples", type=int, default=500)
    parser.add_argument("--sync", choices=["normal", "full"], default="normal")
    parser.add_argument("--prefetch", type=int, default=32, help="consumer prefetch for the extra item-by-item "
                                                                   "runs (1: skip them)")
    args = parser.parse_args(argv)
    print(f"{args.items} items, 2 producers + 2 consumers; {args.samples} latency samples; "
          f"python {sys.version.split()[0]}", flush=True)
    peer = bench_managers(args.items, args.samples)
    ours = bench_conveyor(args.items, args.samples, args.sync, args.prefetch)
    print(f"\n{'':34}{'batched/s':>11}{'task_done/s':>12}{'auto/s':>9}{'p50 td':>8}{'p50 auto':>9}")
    for name, r in (("multiprocessing.managers queue", peer), (f"conveyor queue (sync {args.sync})", ours)):
        print(f"{name:34}{r['batched']:>11,.0f}{r['task_done']:>12,.0f}{r['auto']:>9,.0f}"
              f"{r['p50_task_done']:>8.3f}{r['p50_auto']:>9.3f}")
    print(f"\nratios: batched throughput {ours['batched'] / peer['batched']:.2f}x (target >= 3)")
    for ack in ("task_done", "auto"):
        print(f"  ack={ack}: item-by-item throughput {ours[ack] / peer[ack]:.2f}x (target >= 1), "
              f"put+get p50 {ours[f'p50_{ack}'] / peer[f'p50_{ack}']:.2f}x (target <= 2)")
        if f"{ack}_pf" in ours:
            print(f"  ack={ack}, prefetch={args.prefetch}: item-by-item {ours[f'{ack}_pf']:,.0f}/s, "
                  f"{ours[f'{ack}_pf'] / peer[ack]:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
