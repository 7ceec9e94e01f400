"""Plain-text tables whose columns fit their data.

Widths come from the cells, so a long queue or worker name never pushes the
next column out of line; a cell longer than a column's cap is cut with a
visible marker (``…``) rather than silently.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

CUT = "…"


def fit(text: str, cap: int | None) -> str:
    """``text``, or its first ``cap - 1`` characters and the cut marker."""
    if cap is None or len(text) <= cap:
        return text
    return text[: cap - 1] + CUT


def render(header: Sequence[str], rows: Sequence[Sequence[object]], *, right: Sequence[int] = (),
           caps: dict[int, int] | None = None, gap: str = "  ") -> list[str]:
    """The table as lines: ``right`` are the indexes of right-aligned (numeric) columns,
    ``caps`` the widest a column may be (cut with a marker beyond). The last column
    is not padded, so it may be as long as it needs."""
    caps = caps or {}
    cells = [[fit(str(c), caps.get(i)) for i, c in enumerate(row)] for row in [header, *rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = []
    for row in cells:
        parts = [cell.rjust(widths[i]) if i in right else cell.ljust(widths[i]) for i, cell in enumerate(row)]
        if len(header) - 1 not in right:
            parts[-1] = row[-1]
        lines.append(gap.join(parts).rstrip())
    return lines


def when(ts: float | None) -> str:
    """A wall-clock time in UTC to the second, or ``-``."""
    if not ts:
        return "-"
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")
