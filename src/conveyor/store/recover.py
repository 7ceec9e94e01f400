"""``conveyor store recover DIR NEW_DIR``: salvage every readable task and result of a damaged
SQLite store into a fresh one.

The damaged file is never written: it is copied (with its WAL) into NEW_DIR first, and
read from the copy. Two ways to read it, the first that works:

1. SQLite's own ``.recover`` (the ``sqlite3`` shell), which reads the file page by page and
   also finds rows whose parent pages are gone. It needs a shell built with the
   ``sqlite_dbpage`` table; many distributions' shells are not (Debian 12's 3.40.1 fails
   with "SQL logic error"), so it is tried once and its output used only if it ran to its
   ``COMMIT``.
2. A salvage through SQLite's own b-tree code: each table is read forward and backward
   from its ends until damage stops the scan, every rowid its readable indexes still list
   is fetched one by one, and the gaps between what was read are probed rowid by rowid.
   Then the tasks that no path reaches any more (their leaf page is intact, a page above
   it is not) are read straight from the file's pages (:mod:`conveyor.store.pages`, the
   file format ``.recover`` reads), skipping the freelist. A row on a destroyed page is
   lost; every other one is kept.

The rows go into a new store made by :class:`~conveyor.store.sqlite.SQLiteStore` (the
current schema), rows that break its constraints are skipped and counted, and the
per-state counts are rebuilt from the tasks. Leased tasks stay leased: the master
hands every lease back when it starts on NEW_DIR.
"""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import StoreError
from ..records import STATES
from .pages import leaf_rows
from .sqlite import DB_NAME, SQLiteStore

#: Tables copied, in this order; counts and totals are rebuilt from tasks instead.
TABLES = ("tasks", "deps", "schedules", "attempts", "unsettled")
#: Most single-rowid probes of gaps between readable ranges, per table (bounds the time).
MAX_PROBES = 5_000_000
_SOURCE = "damaged-copy.db"


@dataclass
class RecoverReport:
    """What a recovery salvaged: rows per table, rows skipped, and how it read the file."""

    source: Path
    target: Path
    method: str = ""
    rows: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)
    #: How many tasks the damaged store's own counts said it held (None if unreadable).
    expected_tasks: int | None = None
    results: int = 0  # finished tasks with a stored result
    seconds: float = 0.0

    def summary(self) -> str:
        """A few lines for the command line."""
        tasks = self.rows.get("tasks", 0)
        of = f" of {self.expected_tasks}" if self.expected_tasks is not None else ""
        lines = [f"recovered {tasks}{of} task(s) ({self.results} with a result) from {self.source} "
                 f"into {self.target} in {self.seconds:.1f}s ({self.method})"]
        others = [f"{n} {t}" for t, n in self.rows.items() if t != "tasks" and n]
        if others:
            lines.append("also: " + ", ".join(others))
        lost = [f"{n} {t}" for t, n in self.skipped.items() if n]
        if lost:
            lines.append("skipped unusable rows: " + ", ".join(lost))
        return "\n".join(lines)


def recover(source_dir: str | Path, target_dir: str | Path, *, use_shell: bool = True) -> RecoverReport:
    """Salvage the store in ``source_dir`` into a new store in ``target_dir`` (which must not hold one)."""
    started = time.perf_counter()
    src_dir, dst_dir = Path(source_dir), Path(target_dir)
    src = src_dir / DB_NAME
    if not src.is_file():
        raise StoreError(f"no store to recover: {src} does not exist")
    if src_dir.resolve() == dst_dir.resolve():
        raise StoreError("recover into a new directory, not the damaged store's own")
    if (dst_dir / DB_NAME).exists():
        raise StoreError(f"{dst_dir / DB_NAME} exists: recover into a new, empty directory")
    dst_dir.mkdir(parents=True, exist_ok=True)
    report = RecoverReport(src, dst_dir / DB_NAME)
    work = dst_dir / ".recover"
    work.mkdir(exist_ok=True)
    try:
        copy = work / _SOURCE
        shutil.copyfile(src, copy)  # the damaged file itself is only ever read
        wal = src.with_name(DB_NAME + "-wal")
        if wal.exists():
            shutil.copyfile(wal, copy.with_name(_SOURCE + "-wal"))
            _fold_wal(copy)  # the file's pages are then its latest state (read page by page below)
        readable = copy
        report.method = ("salvage through SQLite's b-tree reads (forward, backward, by index, by rowid) "
                         "and of orphaned leaf pages")
        if use_shell:
            recovered = _shell_recover(copy, work / "recovered.db")
            if recovered is not None:
                readable, report.method = recovered, "sqlite3 .recover"
        SQLiteStore(dst_dir, exclusive=False).close()  # the current schema, empty
        _copy_into(readable, report, orphans=readable == copy)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report.seconds = time.perf_counter() - started
    return report


def shell_works() -> bool:
    """True if an ``sqlite3`` shell is installed and its ``.recover`` runs (on an empty database)."""
    shell = shutil.which("sqlite3")
    if shell is None:
        return False
    try:
        run = subprocess.run([shell, ":memory:", ".recover"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return False
    return run.returncode == 0 and "COMMIT" in run.stdout and "error" not in run.stderr.lower()


def _shell_recover(copy: Path, out: Path) -> Path | None:
    """Run ``sqlite3 COPY .recover`` and load its SQL into ``out``; None if the shell cannot."""
    shell = shutil.which("sqlite3")
    if shell is None or not shell_works():
        return None
    try:
        dump = subprocess.run([shell, str(copy), ".recover"], capture_output=True, timeout=3600)
        if dump.returncode != 0 or b"COMMIT;" not in dump.stdout[-200:]:
            return None
        load = subprocess.run([shell, str(out)], input=dump.stdout, capture_output=True, timeout=3600)
    except (OSError, subprocess.SubprocessError):
        return None
    return out if load.returncode == 0 else None


# -- the salvage -------------------------------------------------------------------

def _columns(conn: sqlite3.Connection, table: str) -> list[str]:
    try:
        return [str(r[1]) for r in conn.execute(f'PRAGMA table_info("{table}")')]
    except sqlite3.DatabaseError:
        return []


def _has_rowid(conn: sqlite3.Connection, table: str) -> bool:
    row = conn.execute("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)).fetchone()
    return not (row and "WITHOUT ROWID" in str(row[0]).upper())


def _scan(conn: sqlite3.Connection, sql: str, params: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """The rows of ``sql`` until damage stops it (the rows before the damage are kept)."""
    try:
        for row in conn.execute(sql, params):
            yield tuple(row)
    except sqlite3.DatabaseError:
        return


def salvage(conn: sqlite3.Connection, table: str, cols: list[str]) -> dict[Any, tuple[Any, ...]]:
    """Every readable row of ``table``, by rowid (or by the row itself for a WITHOUT ROWID table)."""
    quoted = ", ".join(f'"{c}"' for c in cols)
    if not _has_rowid(conn, table):
        rows = list(_scan(conn, f'SELECT {quoted} FROM "{table}"'))
        rows += _scan(conn, f'SELECT {quoted} FROM "{table}" ORDER BY 1 DESC, 2 DESC')
        return {r: r for r in rows}
    found: dict[Any, tuple[Any, ...]] = {}
    select = f'SELECT rowid, {quoted} FROM "{table}"'
    for order in ("ASC", "DESC"):  # from each end up to the damage
        for row in _scan(conn, f"{select} ORDER BY rowid {order}"):
            found[row[0]] = row[1:]
    # Rowids the table's indexes still list, where its own pages are gone or cut off.
    wanted: set[int] = set()
    indexes = list(_scan(conn, "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = ? "
                               "AND sql IS NOT NULL", (table,)))
    for index, sql in indexes:
        # A partial index is read only under its own WHERE.
        where = " WHERE " + str(sql).split(" WHERE ", 1)[1] if " WHERE " in str(sql) else ""
        for order in ("", " DESC"):
            wanted.update(r[0] for r in _scan(
                conn, f'SELECT rowid FROM "{table}" INDEXED BY "{index}"{where} ORDER BY rowid{order}')
                if isinstance(r[0], int))
    # The gaps between what was read, probed one rowid at a time.
    known = sorted(set(found) | wanted)
    probes = 0
    for lo, hi in zip(known, known[1:]):
        for rowid in range(lo + 1, hi):
            if probes >= MAX_PROBES:
                break
            probes += 1
            wanted.add(rowid)
    for rowid in sorted(wanted - found.keys()):
        for row in _scan(conn, f"{select} WHERE rowid = ?", (rowid,)):
            found[row[0]] = row[1:]
    return found


def _expected_tasks(conn: sqlite3.Connection) -> int | None:
    for (n,) in _scan(conn, "SELECT sum(n) FROM counts"):
        return int(n) if n is not None else 0
    return None


def _usable_task(row: dict[str, Any]) -> bool:
    """A task row the new store can hold and the master can serve."""
    return (isinstance(row.get("id"), str) and isinstance(row.get("queue"), str)
            and row.get("state") in STATES and isinstance(row.get("payload"), bytes)
            and isinstance(row.get("codec"), str) and isinstance(row.get("created_at"), (int, float)))


def _fold_wal(copy: Path) -> None:
    """Checkpoint the copy's WAL into it (a page copy: it works on a damaged file too)."""
    conn = sqlite3.connect(copy, isolation_level=None)
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
    except sqlite3.DatabaseError:
        pass  # the b-tree reads still see the WAL; only orphaned pages may be older
    finally:
        conn.close()


def _orphan_tasks(readable: Path, have: list[str], cols: list[str],
                  rows: dict[Any, tuple[Any, ...]]) -> None:
    """Add to ``rows`` the tasks on leaf pages no b-tree path reaches (by the shape of their
    record: the tasks table's columns, seq being the rowid)."""
    idx = cols.index("id")
    known = {row[idx] for row in rows.values()}
    for rowid, fields in leaf_rows(readable):
        # A row stored before a column was added has one field fewer (tasks.progress).
        if rowid in rows or len(fields) not in (len(have), len(have) - 1):
            continue
        row = dict(zip(have, fields + [None] * (len(have) - len(fields))))
        row["seq"] = rowid
        if _usable_task(row) and row["id"] not in known:
            known.add(row["id"])
            rows[rowid] = tuple(row[c] for c in cols)


def _copy_into(readable: Path, report: RecoverReport, *, orphans: bool = False) -> None:
    src = sqlite3.connect(readable, isolation_level=None)  # a copy: the damaged file is never opened
    dst = sqlite3.connect(report.target, isolation_level=None)
    try:
        report.expected_tasks = _expected_tasks(src)
        dst.execute("BEGIN IMMEDIATE")
        for table in TABLES:
            have = _columns(src, table)
            want = set(_columns(dst, table))
            cols = [c for c in have if c in want]
            if not cols:
                continue
            rows = salvage(src, table, cols)
            is_tasks = table == "tasks"
            if is_tasks and orphans and "seq" in cols and "id" in cols:
                _orphan_tasks(readable, have, cols, rows)
            keep_rowid = _has_rowid(src, table) and "seq" not in cols and table != "schedules"
            names = (["rowid"] if keep_rowid else []) + cols
            sql = (f'INSERT OR IGNORE INTO "{table}" ({", ".join(names)}) '
                   f'VALUES ({", ".join("?" * len(names))})')
            stored = skipped = 0
            for key, row in rows.items():
                values = ([key] if keep_rowid else []) + list(row)
                if is_tasks and not _usable_task(dict(zip(cols, row))):
                    skipped += 1
                    continue
                try:
                    cur = dst.execute(sql, values)
                except sqlite3.Error:
                    skipped += 1
                    continue
                stored += cur.rowcount
                skipped += 1 - cur.rowcount
            report.rows[table] = stored
            report.skipped[table] = skipped
        # The per-state counts and outcome totals, from the tasks recovered (as migration 4 does).
        dst.execute("DELETE FROM counts")
        dst.execute("DELETE FROM totals")
        dst.execute("INSERT INTO counts SELECT queue, coalesce(name, ''), state, count(*) FROM tasks "
                    "GROUP BY 1, 2, 3")
        dst.execute("INSERT INTO totals SELECT queue, coalesce(name, ''), state, count(*) FROM tasks "
                    "WHERE state IN ('succeeded', 'failed', 'dead', 'cancelled') GROUP BY 1, 2, 3")
        report.results = int(dst.execute(
            "SELECT count(*) FROM tasks WHERE result_payload IS NOT NULL").fetchone()[0])
        dst.execute("COMMIT")
    finally:
        src.close()
        dst.close()
