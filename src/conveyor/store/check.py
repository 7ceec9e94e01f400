"""Checking an SQLite store: what an SQLite error means, the quick check at every start,
and the thorough one (``conveyor master --check``, ``conveyor store check DIR``).

SQLite's own ``PRAGMA quick_check`` reads every page of the file: O(size), seconds at a
million tasks. The master's start cannot afford that at any size, so it checks what is
cheap and catches most damage (:func:`quick_check`): the header, the schema, the first
and last entry of every table and index, and then ``quick_check`` for at most
:data:`START_CHECK_BUDGET` seconds (the whole of it on a store of up to a few hundred
thousand tasks). ``PRAGMA integrity_check`` (:func:`integrity_check`) reads everything
and also checks that every index agrees with its table.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import StoreCorrupt, StoreError, StoreFull, StoreIOError

#: Seconds of CPU of ``PRAGMA quick_check`` a master spends at start before it trusts the rest.
START_CHECK_BUDGET = 1.0

# SQLite's primary result codes (an extended code's low byte).
_SQLITE_IOERR, _SQLITE_CORRUPT, _SQLITE_FULL, _SQLITE_NOTADB = 10, 11, 13, 26
_HEADER = b"SQLite format 3\x00"


def what_to_do(directory: str | os.PathLike[str]) -> str:
    """The advice the one line about a corrupt store ends with."""
    return (f"run `conveyor store check {directory}` to see the damage and "
            f"`conveyor store recover {directory} NEW_DIR` to salvage it, then start the master on NEW_DIR")


def corrupt(path: Path, detail: object, prefix: str | None = None) -> StoreCorrupt:
    """The error for a damaged store file, with what to do in the same line."""
    detail = " ".join(str(detail).split())  # SQLite's reports span lines: the error is one
    return StoreCorrupt(f"{prefix or f'store at {path}'}: the file is corrupt ({detail}); "
                        f"{what_to_do(path.parent)}")


def classify(exc: sqlite3.Error, path: Path, prefix: str | None = None) -> StoreError:
    """The StoreError an SQLite error stands for: StoreFull, StoreIOError, StoreCorrupt, or plain.

    By its result code (Python 3.11 gives it), else by SQLite's words for it. ``prefix``
    begins the message (default: "store at PATH failed").
    """
    code = getattr(exc, "sqlite_errorcode", None)
    primary = code & 0xFF if isinstance(code, int) else None
    text = str(exc)
    head = prefix or f"store at {path} failed"
    if primary == _SQLITE_FULL or "database or disk is full" in text:
        return StoreFull(f"{head}: disk full ({text})")
    if primary == _SQLITE_IOERR or "disk I/O error" in text:
        name = getattr(exc, "sqlite_errorname", None) or "SQLITE_IOERR"
        return StoreIOError(f"{head}: I/O error ({text}, {name})")
    if primary in (_SQLITE_CORRUPT, _SQLITE_NOTADB) or "malformed" in text or "not a database" in text:
        return corrupt(path, text, prefix)
    return StoreError(f"{head}: {text}")


def _header_problem(path: Path) -> str | None:
    """What is wrong with the file's header and size, if anything (a cheap read of 100 bytes)."""
    try:
        size = path.stat().st_size
        if size == 0:
            return None  # a new file
        with open(path, "rb") as f:
            head = f.read(100)
    except OSError as exc:
        return f"cannot read it: {exc.strerror or exc}"
    if len(head) < 100 or not head.startswith(_HEADER):
        return "it has no SQLite header"
    page_size = int.from_bytes(head[16:18], "big")
    page_size = 65536 if page_size == 1 else page_size
    if page_size < 512 or page_size & (page_size - 1):
        return f"its header names an impossible page size ({page_size})"
    if size % page_size:
        return f"its size ({size} bytes) is not a whole number of {page_size}-byte pages"
    return None


def _trees(conn: sqlite3.Connection) -> list[tuple[str, str, str]]:
    """(type, name, table) of every table and index in the schema."""
    return [(str(t), str(n), str(tbl)) for t, n, tbl in conn.execute(
        "SELECT type, name, tbl_name FROM sqlite_master WHERE type IN ('table', 'index') "
        "AND name NOT LIKE 'sqlite_%'")]


def _touch_ends(conn: sqlite3.Connection) -> None:
    """Read the first and last entry of every table and index (each b-tree's root and edges)."""
    for kind, name, table in _trees(conn):
        if kind == "table":
            for order in ("ASC", "DESC"):
                conn.execute(f'SELECT * FROM "{name}" ORDER BY rowid {order} LIMIT 1').fetchall() \
                    if _has_rowid(conn, name) else conn.execute(f'SELECT * FROM "{name}" LIMIT 1').fetchall()
        else:
            cols = [str(r[2]) for r in conn.execute(f'PRAGMA index_info("{name}")') if r[2] is not None]
            if not cols:
                continue
            first = cols[0]
            for order in ("ASC", "DESC"):
                # INDEXED BY makes SQLite read this index, not the table (a partial index needs
                # its WHERE, which SQLite cannot prove here: then it refuses, and we skip it).
                try:
                    conn.execute(f'SELECT "{first}" FROM "{table}" INDEXED BY "{name}" '
                                 f'ORDER BY "{first}" {order} LIMIT 1').fetchall()
                except sqlite3.OperationalError as exc:
                    if "no query solution" not in str(exc):
                        raise


def _has_rowid(conn: sqlite3.Connection, table: str) -> bool:
    sql = conn.execute("SELECT sql FROM sqlite_master WHERE name = ?", (table,)).fetchone()
    return not (sql and "WITHOUT ROWID" in str(sql[0]).upper())


def _problems(rows: list[str]) -> list[str]:
    """The problems of an integrity or quick check's rows, one line each: SQLite before 3.43
    returns them newline-joined in one row, after a ``*** in database main ***`` heading."""
    if rows == ["ok"]:
        return []
    lines = [line.strip() for row in rows for line in row.splitlines()]
    return [line for line in lines if line and not line.startswith("*** in database")]


def _quick_check_for(conn: sqlite3.Connection, budget: float) -> tuple[list[str], bool]:
    """``PRAGMA quick_check`` for at most ``budget`` seconds of CPU: (problems, whether it finished).

    CPU time, not wall time: a master starting on a busy machine checks as much as on a
    quiet one (and a small store always completely)."""
    deadline = time.process_time() + budget
    stopped = False

    def progress() -> int:
        nonlocal stopped
        if time.process_time() > deadline:
            stopped = True
            return 1  # interrupts the statement
        return 0

    conn.set_progress_handler(progress, 10_000)
    try:
        rows = [str(r[0]) for r in conn.execute("PRAGMA quick_check(20)")]
    except sqlite3.OperationalError as exc:
        if stopped and "interrupt" in str(exc):
            return [], False
        raise
    finally:
        conn.set_progress_handler(None, 0)
    return _problems(rows), True


@dataclass
class CheckReport:
    """What a check found: ``problems`` (empty when the store is sound) and how far it looked."""

    path: Path
    problems: list[str] = field(default_factory=list)
    complete: bool = True  # False: the time budget ran out before every page was read
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.problems


def quick_check(conn: sqlite3.Connection, path: Path, *, budget: float = START_CHECK_BUDGET) -> CheckReport:
    """The master's check at start: header, schema, every b-tree's ends, and a bounded
    ``quick_check``. Never raises for damage: it is in the report."""
    started = time.perf_counter()
    report = CheckReport(path)
    problem = _header_problem(path)
    if problem is not None:
        report.problems.append(problem)
    else:
        try:
            _touch_ends(conn)
            report.problems, report.complete = _quick_check_for(conn, budget)
        except sqlite3.DatabaseError as exc:
            report.problems.append(str(exc))
    report.seconds = time.perf_counter() - started
    return report


def integrity_check(path: Path, *, connect: Callable[[Path], sqlite3.Connection] | None = None,
                    max_errors: int = 100) -> CheckReport:
    """``PRAGMA integrity_check`` of the store file at ``path`` (reads every page, every index)."""
    started = time.perf_counter()
    report = CheckReport(path)
    problem = _header_problem(path)
    if problem is not None:
        report.problems.append(problem)
        report.seconds = time.perf_counter() - started
        return report
    conn = connect(path) if connect is not None else sqlite3.connect(path, isolation_level=None)
    try:
        rows = [str(r[0]) for r in conn.execute(f"PRAGMA integrity_check({int(max_errors)})")]
        report.problems.extend(_problems(rows))
    except sqlite3.DatabaseError as exc:
        report.problems.append(str(exc))
    finally:
        conn.close()
    report.seconds = time.perf_counter() - started
    return report
