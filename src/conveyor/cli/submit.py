"""``conveyor submit MODULE:FUNC ARG... NAME=VALUE... [options]``: one task, every option of Python's submit."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from .common import CliError, add_common, add_connect, connect


def _parse_arg(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def split_call(words: list[str]) -> tuple[list[Any], dict[str, Any]]:
    """A task's arguments from the command line: ``name=value`` is a keyword argument,
    anything else positional; values are JSON where they parse (``'"a=b"'`` is the string)."""
    args: list[Any] = []
    kwargs: dict[str, Any] = {}
    for word in words:
        name, sep, value = word.partition("=")
        if sep and name.isidentifier():
            kwargs[name] = _parse_arg(value)
        elif kwargs:
            raise CliError(f"positional argument {word!r} follows keyword arguments")
        else:
            args.append(_parse_arg(word))
    return args, kwargs


def _add_submit_options(p: argparse.ArgumentParser) -> None:
    """One flag per option of conveyor.options: the CLI can pass whatever Python can."""
    from ..options import OPTIONS

    for opt in OPTIONS.values():
        flag = "--" + opt.name.replace("_", "-")
        names = [flag, "-q"] if opt.name == "queue" else [flag]
        if opt.cli_action == "flag":
            p.add_argument(*names, dest=opt.name, action="store_true", default=None, help=opt.help)
        elif opt.cli_action == "bool":
            p.add_argument(*names, dest=opt.name, action=argparse.BooleanOptionalAction, default=None,
                           help=opt.help)
        else:
            p.add_argument(*names, dest=opt.name, type=_cli_value(opt.name, opt.cli_type), default=None,
                           action=opt.cli_action or "store", metavar=opt.metavar, help=opt.help)


def _cli_value(name: str, parse: Any) -> Any:
    """Wrap an option's text parser so a bad value is argparse's one-line error naming the flag."""
    def convert(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    convert.__name__ = name  # argparse names the type in its message
    return convert


def unserved_warning(status: dict[str, Any], queue: str) -> str | None:
    """The warning for a queue that no connected worker serves, or None if one does."""
    if any(queue in w.get("queues", ()) for w in status.get("workers", ())):
        return None
    return (f"warning: no connected worker serves queue {queue!r}: "
            "the task waits in the queue until one does")


def _queue_of(client: Any, task_id: str) -> str | None:
    """The queue the master put the task in (a task may name its own default queue)."""
    from ..errors import NotFound

    try:
        return str(client.inspect(task_id)["queue"])
    except NotFound:  # already finished and purged: nothing left to warn about
        return None


def cmd_submit(args: argparse.Namespace) -> int:
    """Submit one task; print its id, or with ``--wait`` its result."""
    from ..errors import TaskError
    from ..options import OPTIONS

    values, kwargs = split_call(args.args)
    options = {name: getattr(args, name) for name in OPTIONS if getattr(args, name, None) is not None}
    with connect(args) as client:
        try:
            fut = client.submit_call(args.task, values, kwargs, **options)
        except (ValueError, TypeError) as exc:
            raise CliError(str(exc)) from None
        # After the submit (a bad option is refused first), before any wait: the hint
        # a user needs when nothing would ever run the task.
        queue = options.get("queue") or _queue_of(client, fut.task_id)
        warning = unserved_warning(client.status(), queue) if queue else None
        if warning:
            print(warning, file=sys.stderr, flush=True)
        if not args.wait:
            print(fut.task_id)
            return 0
        try:
            value = fut.result(args.wait_timeout)
        except TaskError as exc:
            print(f"{fut.task_id} failed: {exc.type_name}: {exc.message}", file=sys.stderr)
            return 1
        except TimeoutError:
            raise CliError(f"no result for {fut.task_id} within {args.wait_timeout}s") from None
        print(json.dumps(value) if not isinstance(value, bytes) else repr(value))
    return 0


def add_submit_command(sub: Any) -> None:
    """Register ``conveyor submit``."""
    p = sub.add_parser("submit", help="submit MODULE:FUNC with arguments (JSON where they parse)")
    p.add_argument("task", metavar="MODULE:FUNC")
    p.add_argument("args", nargs="*", metavar="ARG",
                   help="positional arguments, then NAME=VALUE keyword arguments (JSON where they parse)")
    add_connect(p, ("--connect-timeout",))
    _add_submit_options(p)
    p.add_argument("--wait", "-w", action="store_true", help="wait for the result and print it as JSON")
    p.add_argument("--wait-timeout", type=float, default=None, help="give up waiting after this many seconds")
    add_common(p)
    p.set_defaults(func=cmd_submit)
