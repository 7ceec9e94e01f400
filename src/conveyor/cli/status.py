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
