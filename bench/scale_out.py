"""Several masters on one PostgreSQL beside one master on SQLite and the managers
tutorial pattern (not a test): end-to-end throughput of N no-op tasks and the
one-task p50, submit to result.

Runs, in one go:

- the ``multiprocessing.managers`` pattern (bench/throughput.py's peer), 2 workers;
- one master on SQLite (sync normal), 2 workers;
- 1, 2 and 3 masters on one PostgreSQL database, with ``synchronous_commit`` on and
  off (set on the database): 2 workers for one master, one worker per master for
  more; a client per master submits its share of the tasks at once (``client.map``)
  and the one-task latency goes through the first master, whose worker may be
  connected to another (a cross-master result, heard through LISTEN/NOTIFY).

For each PostgreSQL run it also says where the time goes: CPU seconds of the
PostgreSQL server processes and of the masters per 1,000 tasks, and commits per
task (pg_stat_database), so the numbers can be projected to a database on a
machine of its own. It creates a database with a random name on the server and
drops it at the end.

    python bench/scale_out.py
    python bench/scale_out.py --tasks 20000 --samples 300 --server postgresql://postgres@127.0.0.1:5432
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
import uuid
from contextlib import ExitStack
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))
from postgres_store import scratch_database  # noqa: E402 (bench/ is not a package)
from throughput import bench_managers  # noqa: E402

from conveyor.cluster import LocalCluster  # noqa: E402

_TICK = os.sysconf("SC_CLK_TCK")


def _cpu(pids: list[int] | None = None, comm: str | None = None) -> float:
    """CPU seconds (user + system) of ``pids``, or of every process named ``comm``."""
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or (pids is not None and int(entry) not in pids):
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        name = stat[stat.index("(") + 1:stat.rindex(")")]
        if comm is not None and name != comm:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        total += int(fields[11]) + int(fields[12])
    return total / _TICK


def _commits(dsn: str) -> int:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SELECT xact_commit FROM pg_stat_database "
                           "WHERE datname = current_database()").fetchone()
    return int(row[0]) if row else 0


def _map_all(clients: list, n_tasks: int) -> float:
    """Seconds for every client to submit its share (client.map) and get every result."""
    shares = [range(i, n_tasks, len(clients)) for i in range(len(clients))]
    errors: list[BaseException] = []

    def run(client, share: range) -> None:
        try:
            assert sum(client.map("conveyor.demo:square", share)) == sum(i * i for i in share)
        except BaseException as exc:  # noqa: BLE001 - re-raised below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(c, s)) for c, s in zip(clients, shares)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return time.perf_counter() - start


def _p50(client, samples: int) -> float:
    lat = []
    for i in range(samples):
        t0 = time.perf_counter()
        client.submit("conveyor.demo:square", i).result(60)
        lat.append(time.perf_counter() - t0)
    return statistics.median(lat) * 1000


def run_masters(store_args: list[str], n_masters: int, n_tasks: int, samples: int, tmp: str,
                dsn: str | None = None) -> dict[str, float]:
    """Throughput and p50 with ``n_masters`` masters (each with ``store_args``)."""
    workers = [2] if n_masters == 1 else [1] * n_masters
    authkey = uuid.uuid4().hex.encode()
    with ExitStack() as stack:
        clusters = []
        for i, w in enumerate(workers):
            c = stack.enter_context(LocalCluster(
                workers=w, authkey=authkey, data=f"{tmp}/data{i}", log_dir=f"{tmp}/logs{i}",
                master_args=store_args))
            c.wait_for_workers(w)
            clusters.append(c)
        clients = [stack.enter_context(c.client()) for c in clusters]
        for client in clients:  # warm-up: every worker connected and running
            assert list(client.map("conveyor.demo:square", range(200))) == [i * i for i in range(200)]
        masters = [c.master.pid for c in clusters if c.master is not None]
        pg_cpu, master_cpu = _cpu(comm="postgres"), _cpu(pids=masters)
        commits = _commits(dsn) if dsn else 0
        elapsed = _map_all(clients, n_tasks)
        out = {"tasks_per_s": n_tasks / elapsed,
               "pg_cpu_per_k": (_cpu(comm="postgres") - pg_cpu) / n_tasks * 1000,
               "master_cpu_per_k": (_cpu(pids=masters) - master_cpu) / n_tasks * 1000,
               "commits_per_task": (_commits(dsn) - commits) / n_tasks if dsn else 0.0}
        out["p50_ms"] = _p50(clients[0], samples)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--server", default="postgresql://postgres@127.0.0.1:5432")
    parser.add_argument("--tasks", type=int, default=20_000)
    parser.add_argument("--samples", type=int, default=300, help="one-task latency samples")
    parser.add_argument("--masters", default="1,2,3")
    args = parser.parse_args()
    counts = [int(x) for x in args.masters.split(",")]
    print(f"{args.tasks} no-op tasks, {args.samples} latency samples; python "
          f"{sys.version.split()[0]}; {os.cpu_count()} CPUs shared by PostgreSQL, masters, "
          "workers and clients", flush=True)
    rows: list[tuple[str, dict[str, float]]] = []
    rows.append(("multiprocessing.managers", bench_managers(args.tasks, args.samples, 2)))
    print(f"  {rows[-1][0]}: {rows[-1][1]['tasks_per_s']:,.0f} tasks/s", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        rows.append(("1 master, SQLite", run_masters(["--sync", "normal"], 1, args.tasks,
                                                     args.samples, f"{tmp}/sqlite")))
        print(f"  {rows[-1][0]}: {rows[-1][1]['tasks_per_s']:,.0f} tasks/s", flush=True)
        for sync in ("on", "off"):
            for n in counts:
                with scratch_database(args.server) as dsn:
                    with psycopg.connect(dsn, autocommit=True) as conn:
                        conn.execute(f"ALTER DATABASE {dsn.rsplit('/', 1)[1]} "
                                     f"SET synchronous_commit = {sync}")
                    name = f"{n} master{'s' if n > 1 else ''}, PG sync {sync}"
                    rows.append((name, run_masters(["--store", dsn], n, args.tasks, args.samples,
                                                   f"{tmp}/pg-{sync}-{n}", dsn)))
                    print(f"  {name}: {rows[-1][1]['tasks_per_s']:,.0f} tasks/s", flush=True)
    peer = rows[0][1]
    one = {sync: r for name, r in rows for sync in ("on", "off") if name == f"1 master, PG sync {sync}"}
    print(f"\n{'':26}{'tasks/s':>9}{'p50 ms':>8}{'x mgrs':>8}{'x 1 PG':>8}"
          f"{'PG cpu':>8}{'mst cpu':>8}{'commit':>8}")
    for name, r in rows:
        base = one.get("on" if "sync on" in name else "off") if "PG" in name else None
        vs_one = f"{r['tasks_per_s'] / base['tasks_per_s']:>8.2f}" if base else f"{'':>8}"
        extra = (f"{r['pg_cpu_per_k']:>8.3f}{r['master_cpu_per_k']:>8.3f}{r['commits_per_task']:>8.3f}"
                 if "PG" in name else "")
        print(f"{name:26}{r['tasks_per_s']:>9,.0f}{r['p50_ms']:>8.2f}"
              f"{r['tasks_per_s'] / peer['tasks_per_s']:>8.2f}{vs_one}{extra}")
    print("\nx mgrs: throughput / the managers pattern's; x 1 PG: / one master on PostgreSQL with the "
          "same synchronous_commit;\nPG cpu, mst cpu: CPU seconds of the PostgreSQL server and of "
          "the masters per 1,000 tasks; commit: commits per task")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
