"""Job-control commands: cancel, retry, purge, inspect, tasks."""

from __future__ import annotations

import argparse
import datetime as dt
import json
from collections.abc import Callable
from typing import Any

from .errors import NotFound
from .records import FINISHED, STATES


def _when(ts: float | None) -> str:
    if not ts:
        return "-"
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + "Z"


def format_task(t: dict[str, Any]) -> str:
    """A task as ``conveyor inspect`` prints it."""
    lines = [f"task      {t['id']}", f"name      {t['name'] or '(queue item)'}", f"queue     {t['queue']}",
             f"state     {t['state']}", f"priority  {t['priority']}", f"attempts  {t['attempts']}"]
    if t.get("worker"):
        w = t["worker"]
        lines.append(f"worker    {w.get('name')} host {w.get('host', '-')} pid {w.get('pid', '-')}")
    lines += [f"created   {_when(t['created_at'])}", f"not before {_when(t['not_before'])}",
              f"started   {_when(t['started_at'])}", f"finished  {_when(t['finished_at'])}"]
    if t.get("progress"):
        p = t["progress"]
        lines.append(f"progress  {p.get('done')}/{p.get('total')} {p.get('message') or ''}".rstrip())
    if t.get("after"):
        lines.append(f"after     {', '.join(t['after'])}")
    if t.get("options"):
        lines.append(f"options   {json.dumps(t['options'], default=str)}")
    result = t.get("result")
    if result is not None:
        if result["ok"]:
            lines.append(f"result    {result['value']}")
        else:
            e = result["error"]
            lines.append(f"error     {e['type']}: {e['message']}")
    for i, e in enumerate(t.get("errors") or [], 1):
        lines.append(f"\nattempt {i} failed: {e['type']}: {e['message']}")
        if e.get("traceback"):
            lines.append(e["traceback"].rstrip())
    return "\n".join(lines)


def add_job_commands(sub: Any, add_connect: Callable, add_common: Callable, connect: Callable,
                     error: type[Exception]) -> None:
    """Register the job-control subcommands on the ``conveyor`` parser."""

    def cmd_cancel(args: argparse.Namespace) -> int:
        with connect(args) as client:
            rc = 0
            for tid in args.task_ids:
                out = client.cancel(tid)
                if out["unknown"]:
                    raise error(f"no task {tid}")
                if out["cancelled"]:
                    print(f"{tid} cancelled")
                else:
                    print(f"{tid} already finished: not cancelled")
                    rc = 1
        return rc

    def cmd_retry(args: argparse.Namespace) -> int:
        if not args.task_ids and not args.queue:
            raise error("give TASK_ID(s), or --queue Q to retry every dead task of a queue")
        with connect(args) as client:
            out = client.retry(args.task_ids, queue=args.queue)
        if out["unknown"]:
            raise error(f"no task {out['unknown'][0]}")
        for tid in out["requeued"]:
            print(f"{tid} requeued")
        reasons = out.get("reasons") or {}
        for tid in out["skipped"]:
            print(f"{tid} not retried: {reasons.get(tid, 'it is not dead, failed or cancelled')}")
        if not out["requeued"] and args.queue and not args.task_ids:
            print(f"no dead tasks in queue {args.queue}")
        return 1 if out["skipped"] else 0

    def cmd_purge(args: argparse.Namespace) -> int:
        with connect(args) as client:
            n = client.purge(queue=args.queue, states=args.state or ["dead"])
        print(f"purged {n} task(s)")
        return 0

    def cmd_inspect(args: argparse.Namespace) -> int:
        with connect(args) as client:
            try:
                t = client.inspect(args.task_id)
            except NotFound:
                raise error(f"no task {args.task_id}") from None
        print(json.dumps(t, indent=2, default=str) if args.json else format_task(t))
        return 0

    def cmd_tasks(args: argparse.Namespace) -> int:
        if not 1 <= args.limit <= 1000 or args.offset < 0:
            raise error("--limit must be 1 to 1000 and --offset at least 0")
        with connect(args) as client:
            rows = client.tasks(queue=args.queue, state=args.state, limit=args.limit, offset=args.offset)
        if args.json:
            print(json.dumps(rows, indent=2, default=str))
            return 0
        print(f"{'TASK':<34}{'STATE':<11}{'QUEUE':<14}{'ATTEMPTS':>9}  NAME")
        for t in rows:
            print(f"{t['id']:<34}{t['state']:<11}{t['queue'][:13]:<14}{t['attempts']:>9}  {t['name'] or '-'}")
        if len(rows) == args.limit:
            print(f"(more: --offset {args.offset + args.limit})")
        return 0

    def command(name: str, func: Callable, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help)
        p.set_defaults(func=func)
        return p

    p = command("cancel", cmd_cancel, "cancel tasks: queued or delayed ones never run, running ones are stopped")
    p.add_argument("task_ids", nargs="+", metavar="TASK_ID")
    add_connect(p)
    add_common(p)
    p = command("retry", cmd_retry, "send dead (or failed, cancelled) tasks back to their queue")
    p.add_argument("task_ids", nargs="*", metavar="TASK_ID")
    p.add_argument("--queue", "-q", default=None, help="retry every dead task of this queue")
    add_connect(p)
    add_common(p)
    p = command("purge", cmd_purge, "delete finished tasks (dead ones by default)")
    p.add_argument("--queue", "-q", default=None, help="only this queue")
    p.add_argument("--state", action="append", choices=list(FINISHED), help="states to purge (default dead)")
    add_connect(p)
    add_common(p)
    p = command("inspect", cmd_inspect, "show a task: state, attempts and their errors, worker, timings, progress")
    p.add_argument("task_id", metavar="TASK_ID")
    p.add_argument("--json", action="store_true")
    add_connect(p)
    add_common(p)
    p = command("tasks", cmd_tasks, "list tasks by queue and state, a page at a time")
    p.add_argument("--queue", "-q", default=None)
    p.add_argument("--state", "-s", default=None, choices=list(STATES))
    p.add_argument("--limit", type=int, default=50, help="page size (1-1000, default 50)")
    p.add_argument("--offset", type=int, default=0)
    p.add_argument("--json", action="store_true")
    add_connect(p)
    add_common(p)
