"""Job-control commands: cancel, retry, purge, inspect, tasks.

The bulk ones (``purge``, ``retry --queue``, ``cancel --queue``) say how many
tasks they will touch and ask first, unless ``--yes``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
from typing import Any

from ..errors import NotFound
from ..records import CANCELLED, DEAD, DELAYED, FAILED, FINISHED, LEASED, READY, STATES, WAITING
from .common import CliError, add_common, add_connect, add_yes, confirm, connect
from .table import render, when

#: States ``cancel --queue`` cancels by default: every task not finished yet.
UNFINISHED = (WAITING, DELAYED, READY, LEASED)
RETRYABLE = (DEAD, FAILED, CANCELLED)
NAME_CAP = 48


def _when_ms(ts: float | None) -> str:
    if not ts:
        return "-"
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + "Z"


def _worker(w: dict[str, Any] | None) -> str | None:
    if not w:
        return None
    return f"{w.get('name')} host {w.get('host', '-')} pid {w.get('pid', '-')}"


def _json(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, default=repr)


def format_task(t: dict[str, Any]) -> str:
    """A task as ``conveyor inspect`` prints it: arguments, timings, and every attempt's error."""
    lines = [f"task      {t['id']}", f"name      {t['name'] or '(queue item)'}", f"queue     {t['queue']}",
             f"state     {t['state']}", f"priority  {t['priority']}", f"attempts  {t['attempts']}"]
    if "args" in t:  # sent by masters that decode the payload (a pickle payload is described, not opened)
        lines.append(f"args      {_json(t['args'])}")
    if t.get("kwargs"):
        lines.append(f"kwargs    {_json(t['kwargs'])}")
    if t.get("worker"):
        lines.append(f"worker    {_worker(t['worker'])}")
    lines += [f"created   {_when_ms(t['created_at'])}", f"not before {_when_ms(t['not_before'])}",
              f"started   {_when_ms(t['started_at'])}", f"finished  {_when_ms(t['finished_at'])}"]
    if t.get("progress"):
        p = t["progress"]
        lines.append(f"progress  {p.get('done')}/{p.get('total')} {p.get('message') or ''}".rstrip())
    if t.get("after"):
        lines.append(f"after     {', '.join(t['after'])}")
    if t.get("dependents"):
        lines.append(f"dependents {', '.join(t['dependents'])}")
    if t.get("options"):
        lines.append(f"options   {json.dumps(t['options'], default=str)}")
    result = t.get("result")
    if result is not None:
        if result["ok"]:
            lines.append(f"result    {result['value']}")
        else:
            e = result["error"]
            lines.append(f"error     {e['type']}: {e['message']}")
    if t.get("attempt_log"):
        lines += _attempt_lines(t["attempt_log"])
        return "\n".join(lines)
    for i, e in enumerate(_failures(t), 1):  # a master without attempt records: the errors
        by = _worker(e.get("worker")) if isinstance(e.get("worker"), dict) else e.get("worker")
        lines.append(f"\nattempt {i} failed{f' on {by}' if by else ''}: {e['type']}: {e['message']}")
        if e.get("traceback"):
            lines.append(e["traceback"].rstrip())
        if e.get("output"):
            lines.append("output:\n" + str(e["output"]).rstrip())
    return "\n".join(lines)


# Attempt outcomes that are failures of the task's code: printed "failed (outcome)".
_FAILED_OUTCOMES = {"retried": "failed (retried)", "failed": "failed"}


def _attempt_lines(log: list[dict[str, Any]]) -> list[str]:
    """Each attempt: how it ended and on which worker, its error traceback, times and output."""
    lines: list[str] = []
    for a in log:
        how = _FAILED_OUTCOMES.get(a["outcome"], a["outcome"])
        by = _worker(a.get("worker"))
        e = a.get("error")
        head = f"\nattempt {a['number']} {how}{f' on {by}' if by else ''}"
        lines.append(f"{head}: {e['type']}: {e['message']}" if e else head)
        if e and e.get("traceback"):
            lines.append(e["traceback"].rstrip())
        lines.append(f"leased {_when_ms(a.get('leased_at'))}  started {_when_ms(a.get('started_at'))}"
                     f"  finished {_when_ms(a.get('finished_at'))}")
        if a.get("output"):
            lines.append("output:\n" + str(a["output"]).rstrip())
    return lines


def _failures(t: dict[str, Any]) -> list[dict[str, Any]]:
    """Every failed attempt's error: the stored list, and the final error when it is not in it
    (a task that fails with no retries left keeps its error only as its result)."""
    errors = list(t.get("errors") or [])
    result = t.get("result")
    if result is not None and not result["ok"] and result["error"].get("type") != "concurrent.futures.CancelledError":
        last = result["error"]
        if not errors or (errors[-1].get("type"), errors[-1].get("message"), errors[-1].get("traceback")) != (
                last.get("type"), last.get("message"), last.get("traceback")):
            errors.append(last)
    return errors


def _count(status: dict[str, Any], queue: str | None, states: tuple[str, ...] | list[str]) -> int:
    """How many tasks of ``queue`` (or of every queue) are in ``states``, from the status counts."""
    queues = status["queues"]
    picked = [queues.get(queue, {})] if queue is not None else list(queues.values())
    return sum(counts.get(s, 0) for counts in picked for s in states)


def _scope(queue: str | None, states: tuple[str, ...] | list[str]) -> str:
    return f"{'queue ' + repr(queue) if queue is not None else 'every queue'}, state {'/'.join(states)}"


def cmd_cancel(args: argparse.Namespace) -> int:
    """Cancel tasks by id, or (``--queue``) every unfinished task of a queue."""
    if bool(args.task_ids) == bool(args.queue):
        raise CliError("give TASK_ID(s), or --queue Q to cancel every unfinished task of a queue")
    with connect(args) as client:
        if args.queue:
            return _cancel_queue(client, args)
        rc = 0
        for tid in args.task_ids:
            out = client.cancel(tid)
            if out["unknown"]:
                raise CliError(f"no task {tid}")
            if out["cancelled"]:
                print(f"{tid} cancelled")
            else:
                print(f"{tid} already finished: not cancelled")
                rc = 1
    return rc


def _cancel_queue(client: Any, args: argparse.Namespace) -> int:
    states = tuple(args.state or UNFINISHED)
    count = _count(client.status(), args.queue, states)
    if count == 0:
        print(f"no tasks to cancel ({_scope(args.queue, states)})")
        return 0
    if not confirm(f"cancel ({_scope(args.queue, states)})", count, args.yes):
        print("not cancelled")
        return 1
    done, seen = 0, set[str]()
    for state in states:
        while len(seen) < count:  # at most what was confirmed: tasks submitted since are left alone
            page = [t for t in client.tasks(queue=args.queue, state=state, limit=min(1000, count - len(seen)))
                    if t["id"] not in seen]
            if not page:
                break
            for t in page:
                seen.add(t["id"])
                done += len(client.cancel(t["id"])["cancelled"])
    print(f"cancelled {done} task(s)")
    return 0


def cmd_retry(args: argparse.Namespace) -> int:
    """Requeue tasks by id, or every task of a queue in the given states (dead by default)."""
    if not args.task_ids and not args.queue:
        raise CliError("give TASK_ID(s), or --queue Q to retry every dead task of a queue")
    states = args.state or [DEAD]
    with connect(args) as client:
        if args.queue and not args.task_ids:
            count = _count(client.status(), args.queue, states)
            if not confirm(f"retry ({_scope(args.queue, states)})", count, args.yes):
                print("not retried")
                return 1
        out = client.retry(args.task_ids, queue=args.queue, states=states if args.state else None)
    if out["unknown"]:
        raise CliError(f"no task {out['unknown'][0]}")
    for tid in out["requeued"]:
        print(f"{tid} requeued")
    given: Any = out.get("reasons")  # typed with the id lists, but a dict of id -> why
    reasons: dict[str, str] = dict(given or {})
    for tid in out["skipped"]:
        print(f"{tid} not retried: {reasons.get(tid, 'it is not dead, failed or cancelled')}")
    if not out["requeued"] and args.queue and not args.task_ids:
        print(f"no {'/'.join(states)} tasks in queue {args.queue}")
    return 1 if out["skipped"] else 0


def cmd_purge(args: argparse.Namespace) -> int:
    """Delete finished tasks (dead by default), after saying how many and asking."""
    states = args.state or [DEAD]
    with connect(args) as client:
        count = _count(client.status(), args.queue, states)
        if count == 0:
            print(f"no tasks to purge ({_scope(args.queue, states)})")
            return 0
        if not confirm(f"purge ({_scope(args.queue, states)})", count, args.yes):
            print("not purged")
            return 1
        n = client.purge(queue=args.queue, states=states)
    print(f"purged {n} task(s)")
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    """Print everything the master knows about one task."""
    with connect(args) as client:
        try:
            t = client.inspect(args.task_id)
        except NotFound:
            raise CliError(f"no task {args.task_id}") from None
    print(json.dumps(t, indent=2, default=str) if args.json else format_task(t))
    return 0


def _page(client: Any, args: argparse.Namespace) -> list[dict[str, Any]]:
    """One page of tasks, newest first unless ``--oldest``.

    The master lists in submit order; the newest page is found from the end,
    with the total taken from the status counts of the same filter.
    """
    if args.oldest:
        return list(client.tasks(queue=args.queue, state=args.state, limit=args.limit, offset=args.offset))
    total = _count(client.status(), args.queue, [args.state] if args.state else list(STATES))
    end = total - args.offset
    if end <= 0:
        return []
    start = max(0, end - args.limit)
    rows = client.tasks(queue=args.queue, state=args.state, limit=end - start, offset=start)
    return list(reversed(rows))


def format_tasks(rows: list[dict[str, Any]]) -> list[str]:
    """Tasks as the ``conveyor tasks`` table, columns as wide as their data."""
    table = [[t["id"], t["state"], t["queue"], t["attempts"], when(t.get("created_at")),
              when(t.get("finished_at")), t["name"] or "-"] for t in rows]
    return render(["TASK", "STATE", "QUEUE", "ATTEMPTS", "SUBMITTED", "FINISHED", "NAME"], table,
                  right=(3,), caps={2: NAME_CAP})


def cmd_tasks(args: argparse.Namespace) -> int:
    """List tasks by queue and state, newest first, a page at a time."""
    if not 1 <= args.limit <= 1000 or args.offset < 0:
        raise CliError("--limit must be 1 to 1000 and --offset at least 0")
    with connect(args) as client:
        rows = _page(client, args)
    if args.json:
        print(json.dumps(rows, indent=2, default=str))
        return 0
    if not rows:
        where = [f"in queue {args.queue!r}" if args.queue else "", f"in state {args.state}" if args.state else "",
                 f"at offset {args.offset}" if args.offset else ""]
        print(" ".join(["no tasks", *filter(None, where)]))
        return 0
    print("\n".join(format_tasks(rows)))
    if len(rows) == args.limit:
        print(f"(more: --offset {args.offset + args.limit})")
    return 0


def add_job_commands(sub: Any) -> None:
    """Register the job-control subcommands on the ``conveyor`` parser."""

    def command(name: str, func: Any, help: str) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = sub.add_parser(name, help=help)
        p.set_defaults(func=func)
        return p

    p = command("cancel", cmd_cancel, "cancel tasks: queued or delayed ones never run, running ones are stopped")
    p.add_argument("task_ids", nargs="*", metavar="TASK_ID")
    p.add_argument("--queue", "-q", default=None, help="cancel every unfinished task of this queue (asks first)")
    p.add_argument("--state", action="append", choices=list(UNFINISHED),
                   help="with --queue: only tasks in this state (repeatable; default every unfinished one)")
    add_yes(p)
    add_connect(p)
    add_common(p)
    p = command("retry", cmd_retry, "send dead (or failed, cancelled) tasks back to their queue")
    p.add_argument("task_ids", nargs="*", metavar="TASK_ID")
    p.add_argument("--queue", "-q", default=None, help="retry every dead task of this queue (asks first)")
    p.add_argument("--state", action="append", choices=list(RETRYABLE),
                   help="states to retry (repeatable; default dead)")
    add_yes(p)
    add_connect(p)
    add_common(p)
    p = command("purge", cmd_purge, "delete finished tasks (dead ones by default; asks first)")
    p.add_argument("--queue", "-q", default=None, help="only this queue")
    p.add_argument("--state", action="append", choices=list(FINISHED), help="states to purge (default dead)")
    add_yes(p)
    add_connect(p)
    add_common(p)
    p = command("inspect", cmd_inspect, "show a task: arguments, state, attempts and their errors, worker, timings")
    p.add_argument("task_id", metavar="TASK_ID")
    p.add_argument("--json", action="store_true")
    add_connect(p)
    add_common(p)
    p = command("tasks", cmd_tasks, "list tasks by queue and state, newest first, a page at a time")
    p.add_argument("--queue", "-q", default=None)
    p.add_argument("--state", "-s", default=None, choices=list(STATES))
    p.add_argument("--limit", type=int, default=50, help="page size (1-1000, default 50)")
    p.add_argument("--offset", type=int, default=0)
    p.add_argument("--oldest", action="store_true", help="oldest first (default newest first)")
    p.add_argument("--json", action="store_true")
    add_connect(p)
    add_common(p)
