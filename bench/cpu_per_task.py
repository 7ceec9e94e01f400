"""CPU time per no-op task, by process: master, workers, pool children, client.

Wall-clock throughput on a shared, loaded machine says more about the other
tenants than about conveyor; the CPU each process spends per task does not.
This starts, as real processes, a master (SQLite, default settings), 2 workers
(process pool, default log level INFO) and one client, runs a map of no-op
tasks (``conveyor.demo:square``) and prints the microseconds of CPU (user +
system, from ``/proc/<pid>/stat``) that each kind of process spent per task.

The client process reads nothing but its own work; the numbers are taken by
this (parent) process between the client's "ready" and "done", so start-up,
connection and warm-up are not counted. Pool children are found by walking
``/proc/*/stat`` for processes whose parent is a worker.

    python bench/cpu_per_task.py                    # 20,000 tasks, 3 rounds, median shown
    python bench/cpu_per_task.py --tasks 50000 --rounds 1
    python bench/cpu_per_task.py --worker-log-level WARNING
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from conveyor.cluster import LocalCluster

_TICKS = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> tuple[int, float] | None:
    """(parent pid, CPU seconds of user + system) of a live process, None if it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after its last ')'.
    fields = text[text.rindex(")") + 2:].split()
    ppid, utime, stime = int(fields[1]), int(fields[11]), int(fields[12])
    return ppid, (utime + stime) / _TICKS


def _children(parents: set[int]) -> list[int]:
    """Live processes whose parent is in ``parents`` (pool children of the workers)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            st = _stat(int(entry))
            if st is not None and st[0] in parents:
                found.append(int(entry))
    return found


def _snapshot(groups: dict[str, list[int]]) -> dict[int, float]:
    cpu = {}
    for pids in groups.values():
        for pid in pids:
            st = _stat(pid)
            if st is not None:
                cpu[pid] = st[1]
    return cpu


def _client_main(address: str, n_tasks: int) -> int:
    """The client process: warm up, say ready, wait for go, run the map, say done, wait."""
    from conveyor.client.client import Client
    with Client(address, os.environ["CONVEYOR_AUTHKEY"]) as client:
        assert list(client.map("conveyor.demo:square", range(200))) == [i * i for i in range(200)]
        print("ready", flush=True)
        sys.stdin.readline()
        total = sum(client.map("conveyor.demo:square", range(n_tasks)))
        assert total == sum(i * i for i in range(n_tasks)), "wrong results"
        print("done", flush=True)
        sys.stdin.readline()  # stay alive until the parent has read our CPU time
    return 0


def one_round(n_tasks: int, worker_log_level: str | None) -> dict[str, float]:
    """Start a cluster and a client, run one map, return µs of CPU per task by process kind."""
    worker_args = ["--log-level", worker_log_level] if worker_log_level else []
    with tempfile.TemporaryDirectory() as tmp, \
            LocalCluster(workers=2, data=f"{tmp}/data", worker_args=worker_args) as cluster:
        cluster.wait_for_workers(2)
        client = subprocess.Popen([sys.executable, __file__, "--client", cluster.address, str(n_tasks)],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=cluster.env(), text=True)
        try:
            assert client.stdin is not None and client.stdout is not None
            if client.stdout.readline().strip() != "ready":
                raise RuntimeError("the client did not start")
            assert cluster.master is not None
            workers = [w.pid for w in cluster.workers]
            groups = {"master": [cluster.master.pid], "workers": workers,
                      "children": _children(set(workers)), "client": [client.pid]}
            before = _snapshot(groups)
            client.stdin.write("go\n")
            client.stdin.flush()
            if client.stdout.readline().strip() != "done":
                raise RuntimeError("the client failed")
            after = _snapshot(groups)
            client.stdin.write("bye\n")
            client.stdin.flush()
            client.wait(30)
        finally:
            if client.poll() is None:
                client.kill()
                client.wait(5)
    return {kind: sum(after.get(pid, before.get(pid, 0.0)) - before.get(pid, 0.0) for pid in pids)
            * 1e6 / n_tasks for kind, pids in groups.items()}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--client"]:
        return _client_main(argv[1], int(argv[2]))
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3, help="clusters started; the median is shown")
    parser.add_argument("--worker-log-level", default=None,
                        help="the workers' --log-level (default: theirs, INFO)")
    args = parser.parse_args(argv)
    kinds = ("master", "workers", "children", "client")
    print(f"{args.tasks} no-op tasks, master (sqlite) + 2 workers (process pool) + 1 client; "
          f"µs of CPU per task (user+system, clock tick {1e6 / _TICKS:.0f} µs); "
          f"load average {os.getloadavg()[0]:.2f}", flush=True)
    print(f"{'round':>6}" + "".join(f"{k:>10}" for k in kinds) + f"{'total':>10}", flush=True)
    rounds = []
    for i in range(args.rounds):
        r = one_round(args.tasks, args.worker_log_level)
        rounds.append(r)
        print(f"{i + 1:>6}" + "".join(f"{r[k]:>10.1f}" for k in kinds) + f"{sum(r.values()):>10.1f}", flush=True)
    med = {k: statistics.median(r[k] for r in rounds) for k in kinds}
    print(f"{'median':>6}" + "".join(f"{med[k]:>10.1f}" for k in kinds)
          + f"{statistics.median(sum(r.values()) for r in rounds):>10.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
