"""``conveyor status [--watch [SECONDS]]``: queues, workers and rates."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from .common import add_common, add_connect, connect
from .table import render

NAME_CAP = 48  # a queue, worker or host name wider than this is cut with a marker
QUEUE_COLUMNS = ("waiting", "delayed", "ready", "leased", "succeeded", "failed", "dead", "cancelled")


def format_status(st: dict[str, Any]) -> str:
    """The status document as the tables ``conveyor status`` prints."""
    lines = [f"master {st['version']} pid {st['pid']} up {st['uptime']:.0f}s, store {st['store']}, "
             f"loop {st.get('loop', '?')}, "
             f"{st['clients']} client(s), {len(st['workers'])} worker(s)", ""]
    if st["queues"]:
        rows = [[q, *(counts.get(c, 0) for c in QUEUE_COLUMNS)] for q, counts in st["queues"].items()]
        lines += render(["QUEUE", *(c.upper() for c in QUEUE_COLUMNS)], rows,
                        right=range(1, len(QUEUE_COLUMNS) + 1), caps={0: NAME_CAP})
    else:
        lines.append("(no queues yet)")
    lines.append("")
    lines += format_workers(st["workers"])
    if st.get("masters"):
        lines.append("")
        lines += format_masters(st)
    rates = st["rates"]
    c = st["counters"]
    lines.append("")
    lines.append(f"completed/s: {rates['completed_10s']} (10s), {rates['completed_60s']} (60s); "
                 f"submitted {c.get('submitted', 0)}, completed {c.get('completed', 0)}, "
                 f"duplicate results dropped {c.get('duplicates', 0)}, stale reports {c.get('stale', 0)}")
    return "\n".join(lines)


def format_workers(workers: list[dict[str, Any]]) -> list[str]:
    """The workers table: RUNNING and PREFETCHED when the master reports them, else INFLIGHT."""
    if not workers:
        return ["(no workers connected)"]
    split = all("running" in w and "prefetched" in w for w in workers)
    counts = ["RUNNING", "PREFETCHED"] if split else ["INFLIGHT"]
    header = ["WORKER", "HOST", "PID", "CONC", *counts, "QUEUES"]
    rows = []
    for w in workers:
        busy = [w["running"], w["prefetched"]] if split else [w["inflight"]]
        rows.append([w["name"], w["host"], w["pid"] or "-", w["concurrency"], *busy, ",".join(w["queues"])])
    return render(header, rows, right=range(2, 4 + len(counts)), caps={0: NAME_CAP, 1: NAME_CAP})


def format_masters(st: dict[str, Any]) -> list[str]:
    """Every master on the shared store (this one marked ``*``), then the workers
    connected through the others (from the rows they heartbeat every second)."""
    rows, others = [], []
    for m in st["masters"]:
        info = m.get("info") or {}
        me = m["id"] == st.get("master_id")
        rows.append([("* " if me else "  ") + m["id"][:12], m["address"], info.get("host", "-"),
                     info.get("pid", "-"), "yes" if (st.get("leader") if me else info.get("leader")) else "",
                     f"{m['heartbeat_age']:.1f}s", info.get("worker_count", 0), info.get("clients", 0)])
        if not me:
            others += [[w.get("name") or "-", w.get("host") or "-", w.get("pid") or "-",
                        w.get("concurrency", 0), w.get("inflight", 0), ",".join(w.get("queues") or []),
                        m["address"]] for w in info.get("workers", [])]
    lines = render(["MASTER", "ADDRESS", "HOST", "PID", "LEADER", "HEARTBEAT", "WORKERS", "CLIENTS"],
                   rows, right=range(3, 8), caps={1: NAME_CAP, 2: NAME_CAP})
    if others:
        lines.append("")
        lines += render(["WORKER", "HOST", "PID", "CONC", "INFLIGHT", "QUEUES", "VIA MASTER"], others,
                        right=range(2, 5), caps={0: NAME_CAP, 1: NAME_CAP})
    return lines


def cmd_status(args: argparse.Namespace) -> int:
    """Print the status once, or redraw it every ``--watch`` seconds until Ctrl+C."""
    with connect(args) as client:
        if args.watch is None:
            st = client.status()
            print(json.dumps(st, indent=2) if args.json else format_status(st))
            return 0
        clear = "\x1b[H\x1b[2J" if sys.stdout.isatty() else ""
        try:
            while True:
                st = client.status()
                frame = json.dumps(st) if args.json else format_status(st)
                # On a terminal the frame replaces the last; in a pipe frames follow each other.
                sys.stdout.write(f"{clear}{frame}\n{'' if clear else chr(10)}")
                sys.stdout.flush()
                time.sleep(args.watch)
        except KeyboardInterrupt:
            return 0


def _seconds(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"--watch needs a positive number of seconds, not {text!r}")
    return value


def add_status_command(sub: Any) -> None:
    """Register ``conveyor status``."""
    p = sub.add_parser("status", help="show queues, workers and rates")
    add_connect(p)
    p.add_argument("--json", action="store_true", help="print the raw status document as JSON")
    p.add_argument("--watch", "-W", nargs="?", const=2.0, default=None, type=_seconds, metavar="SECONDS",
                   help="redraw every SECONDS (default 2) until Ctrl+C")
    add_common(p)
    p.set_defaults(func=cmd_status)
