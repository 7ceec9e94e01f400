"""The ``conveyor`` command wired together: the parser with every command group, and ``main``.

Every failure a user can cause ends as one line on stderr and a non-zero exit
status, never a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys

from .. import __version__
from ..errors import ConveyorError
from .common import (
    EXIT_USAGE,
    CliError,
    Parser,
    add_common,
    add_connect,
    client_ssl,
    parse_bind,
    read_authkey,
    setup_logging,
)

__all__ = ["build_parser", "cmd_dashboard", "main"]


def cmd_dashboard(args: argparse.Namespace) -> int:
    """``conveyor dashboard``: conveyor/http/cli.py does the work."""
    from ..http.cli import run_dashboard

    setup_logging(args.log_level)
    return run_dashboard(args, authkey=read_authkey(args.authkey_file), bind=parse_bind(args.bind),
                         ssl_context=client_ssl(args), error=CliError)


def cmd_demo(args: argparse.Namespace) -> int:
    """``conveyor demo``: a master and workers on this machine, and a summary."""
    from ..demo_run import run_demo

    return run_demo(tasks=args.tasks, workers=args.workers, concurrency=args.concurrency,
                    data=args.data, sync=args.sync)


def build_parser() -> argparse.ArgumentParser:
    """The ``conveyor`` argument parser with every subcommand."""
    from ..http.cli import add_dashboard_command
    from .jobs import add_job_commands
    from .schedule import add_schedule_commands
    from .servers import add_master_command, add_worker_command
    from .status import add_status_command
    from .store import add_store_commands
    from .submit import add_submit_command

    parser = Parser(prog="conveyor", description="A durable distributed task queue: master, workers, clients.")
    parser.add_argument("--version", action="version", version=f"conveyor {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    add_master_command(sub)
    add_worker_command(sub)
    add_status_command(sub)
    add_submit_command(sub)
    add_job_commands(sub)  # cancel, retry, purge, inspect, tasks
    add_schedule_commands(sub)  # conveyor schedule add|list|remove
    add_store_commands(sub)  # conveyor store check|recover
    add_dashboard_command(sub, add_connect, add_common, cmd_dashboard)

    p = sub.add_parser("demo", help="start a master and workers, square 10,000 numbers, print a summary")
    p.add_argument("--tasks", type=int, default=10_000, help="how many tasks (default 10000)")
    p.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    p.add_argument("--concurrency", type=int, default=None, help="slots per worker (default: CPU count)")
    p.add_argument("--data", default=None, help="data directory (default: a temporary one)")
    p.add_argument("--sync", choices=["normal", "full"], default="normal")
    p.set_defaults(func=cmd_demo)
    return parser


def _quiet_stdout() -> None:
    """The reader of our stdout is gone (``conveyor status | head -1``): send the rest nowhere,
    so that the interpreter's final flush does not raise again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``conveyor`` command."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    prog = f"conveyor {args.command}"
    try:
        rc = args.func(args) or 0
        sys.stdout.flush()  # a closed pipe is found here, not after main returns
        return rc
    except BrokenPipeError:
        _quiet_stdout()
        return 1
    except (CliError, ConveyorError) as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
