"""``conveyor store check DIR`` and ``conveyor store recover DIR NEW_DIR``: a store at rest.

Both work on a stopped master's data directory (a running master keeps its file
locked): ``check`` runs SQLite's ``PRAGMA integrity_check`` (every page, every index;
``--quick`` for the bounded check a master runs at each start), ``recover`` salvages
every readable task and result into a new store (see :mod:`conveyor.store.recover`).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from .common import CliError


def _stopped(data: str) -> None:
    """CliError unless ``data`` is a directory no master holds."""
    from ..serving import DataDirInUse, lock_data_dir

    if not os.path.isdir(data):
        raise CliError(f"{data} is not a directory")
    try:
        handle = lock_data_dir(data)
    except DataDirInUse as exc:
        raise CliError(f"{exc}: stop it first") from None
    if handle is not None:
        handle.close()  # only asked: nobody else holds it


def cmd_check(args: argparse.Namespace) -> int:
    """Check a store; exit 0 if it is sound, 1 (with what is wrong and what to do) if not."""
    import sqlite3

    from ..store.check import integrity_check, quick_check, what_to_do
    from ..store.sqlite import DB_NAME

    _stopped(args.dir)
    path = Path(args.dir) / DB_NAME
    if not path.is_file():
        raise CliError(f"no store at {path}")
    if args.quick:
        conn = sqlite3.connect(path, isolation_level=None)
        try:
            report = quick_check(conn, path)
        except sqlite3.DatabaseError as exc:  # not even the schema reads
            from ..store.check import CheckReport
            report = CheckReport(path, [str(exc)])
        finally:
            conn.close()
        how = "quick check" + ("" if report.complete else " (time budget reached before the last page)")
    else:
        report = integrity_check(path)
        how = "integrity_check"
    if report.ok:
        print(f"ok: {path} passed {how} in {report.seconds:.1f}s")
        return 0
    print(f"corrupt: {path} failed {how}:")
    for line in report.problems[:20]:
        print(f"  {line}")
    if len(report.problems) > 20:
        print(f"  ... and {len(report.problems) - 20} more")
    print(what_to_do(args.dir))
    return 1


def cmd_recover(args: argparse.Namespace) -> int:
    """Salvage a damaged store's readable tasks and results into NEW_DIR."""
    from ..store.recover import recover

    _stopped(args.dir)
    report = recover(args.dir, args.new_dir, use_shell=not args.no_shell)
    print(report.summary())
    print(f"start the master on it: conveyor master --data {args.new_dir}")
    return 0


def add_store_commands(sub: Any) -> None:
    """Register ``conveyor store check`` and ``conveyor store recover``."""
    p = sub.add_parser("store", help="check or recover a stopped master's SQLite store")
    cmds = p.add_subparsers(dest="store_command", metavar="COMMAND", required=True,
                            parser_class=type(p))
    c = cmds.add_parser("check", help="check a store (PRAGMA integrity_check); exit 1 if damaged")
    c.add_argument("dir", metavar="DIR", help="the data directory (the master's --data)")
    c.add_argument("--quick", action="store_true",
                   help="only the bounded check a master runs at each start")
    c.set_defaults(func=cmd_check)
    r = cmds.add_parser("recover", help="salvage every readable task and result into a new store")
    r.add_argument("dir", metavar="DIR", help="the damaged data directory (never written)")
    r.add_argument("new_dir", metavar="NEW_DIR", help="a new, empty data directory for the salvaged store")
    r.add_argument("--no-shell", action="store_true",
                   help="do not try the sqlite3 shell's .recover; use the salvage through SQLite's reads")
    r.set_defaults(func=cmd_recover)
