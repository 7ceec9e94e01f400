"""``conveyor schedule add | list | remove``: periodic schedules on the master."""

from __future__ import annotations

import argparse
import datetime as dt
import json
from typing import Any

from ..errors import NotFound, SerializationError
from ..schedule import MISSED, RUN_ONCE, make_schedule
from .common import CliError as error
from .common import add_common, add_connect, connect


def _when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _timing(s: dict[str, Any]) -> str:
    if s.get("cron") is not None:
        return f"cron {s['cron']}" + ("" if s.get("tz") in (None, "UTC") else f" {s['tz']}")
    every = float(s["every"])
    return f"every {int(every) if float(every).is_integer() else every}s"


def format_schedules(rows: list[dict[str, Any]]) -> str:
    """Schedules as the table ``conveyor schedule list`` prints."""
    if not rows:
        return "(no schedules)"
    table = [("NAME", "WHEN", "QUEUE", "MISSED", "SOURCE", "LAST RUN", "NEXT RUN", "TASK")]
    for s in rows:
        call = s["task"]
        if s.get("args") or s.get("kwargs"):
            call += " " + json.dumps(s.get("args"), default=repr)
            if s.get("kwargs"):
                call += " " + json.dumps(s["kwargs"], default=repr)
        table.append((s["name"], _timing(s), s["queue"], s["missed"], s["source"],
                      _when(s.get("last_slot")), _when(s.get("next_slot")), call))
    widths = [min(40, max(len(row[i]) for row in table)) for i in range(len(table[0]) - 1)]
    return "\n".join("  ".join(cell[:w].ljust(w) for cell, w in zip(row, widths)) + "  " + row[-1]
                     for row in table)


def _parse_arg(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def add_schedule_commands(sub: Any) -> None:
    """Register ``conveyor schedule`` and its subcommands on the ``conveyor`` parser."""

    def cmd_add(args: argparse.Namespace) -> int:
        if (args.cron is None) == (args.every is None):
            raise error("give exactly one of --cron EXPR or --every SECONDS")
        every = args.every
        if every is not None:
            try:
                every = float(every)
            except ValueError:
                raise error(f"every: the interval must be a positive number of seconds, not {every!r}") from None
        values = [_parse_arg(a) for a in args.args]
        try:  # bad input is refused before any connection is made
            make_schedule(args.name, args.task, values, cron=args.cron, every=every, tz=args.tz,
                          queue=args.queue or "default", missed=args.missed)
        except (ValueError, SerializationError) as exc:
            raise error(str(exc)) from None
        with connect(args) as client:
            try:
                s = client.schedule(args.name, args.task, *values, cron=args.cron, every=every,
                                    tz=args.tz, queue=args.queue, missed=args.missed,
                                    replace=args.replace)
            except (ValueError, SerializationError) as exc:
                raise error(str(exc)) from None
        print(f"schedule {s['name']}: {args.task} {_timing(s)}, next run {_when(s.get('next_slot'))}")
        return 0

    def cmd_list(args: argparse.Namespace) -> int:
        with connect(args) as client:
            rows = client.schedules()
        print(json.dumps(rows, indent=2, default=repr) if args.json else format_schedules(rows))
        return 0

    def cmd_remove(args: argparse.Namespace) -> int:
        with connect(args) as client:
            try:
                client.unschedule(args.name)
            except NotFound:
                raise error(f"no schedule named {args.name!r}") from None
        print(f"removed schedule {args.name}")
        return 0

    schedule = sub.add_parser("schedule", help="periodic schedules: add, list, remove")
    schedule.set_defaults(func=lambda args: schedule.print_help() or 2)
    commands = schedule.add_subparsers(dest="schedule_command", metavar="SUBCOMMAND",
                                       parser_class=type(schedule))

    p = commands.add_parser("add", help="run MODULE:FUNC periodically (cron in a time zone, or an interval)")
    p.add_argument("name", metavar="NAME", help="the schedule's name (unique on the master)")
    p.add_argument("task", metavar="MODULE:FUNC")
    p.add_argument("args", nargs="*", metavar="ARG", help="arguments (JSON where they parse)")
    p.add_argument("--cron", metavar="EXPR", default=None,
                   help="a 5-field cron expression, e.g. '*/5 * * * *' (or @hourly, @daily...)")
    p.add_argument("--every", metavar="SECONDS", default=None, help="a fixed interval in seconds")
    p.add_argument("--tz", default="UTC", help="time zone of the cron expression (default UTC)")
    p.add_argument("--queue", "-q", default=None, help="queue (default: 'default')")
    p.add_argument("--missed", default=RUN_ONCE, metavar="|".join(MISSED),
                   help="a slot missed while the master was down: run it once (default) or skip it")
    p.add_argument("--replace", action="store_true", help="replace a schedule of the same name")
    add_connect(p)
    add_common(p)
    p.set_defaults(func=cmd_add)

    p = commands.add_parser("list", help="show the schedules, their last and next runs")
    p.add_argument("--json", action="store_true", help="print them as JSON")
    add_connect(p)
    add_common(p)
    p.set_defaults(func=cmd_list)

    p = commands.add_parser("remove", help="remove a schedule (tasks it enqueued still run)")
    p.add_argument("name", metavar="NAME")
    add_connect(p)
    add_common(p)
    p.set_defaults(func=cmd_remove)
