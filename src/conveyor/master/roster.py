"""Who worked for this master: each connected worker's record, and the workers gone.

The status document shows, per worker, when its session began, its pool and
loop (from its hello), and the tasks it settled; and the last
:data:`GONE_KEPT` workers that disconnected, with when. Kept by session id,
apart from :class:`~conveyor.master.session.Session`, so the connection's
record stays about the connection.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

#: Disconnected workers remembered, newest first.
GONE_KEPT = 50


@dataclass(slots=True)
class WorkerRecord:
    """One worker session's life on this master."""

    started_at: float  # wall-clock time of its hello
    pool: str | None = None
    loop: str | None = None
    done: int = 0  # tasks it ran that succeeded
    failed: int = 0  # tasks it ran whose failure was final (failed or dead)


class Roster:
    """The records of connected worker sessions, and the workers gone."""

    def __init__(self) -> None:
        self.workers: dict[str, WorkerRecord] = {}
        self.gone: deque[dict[str, Any]] = deque(maxlen=GONE_KEPT)

    def joined(self, session_id: str, now: float, pool: str | None, loop: str | None) -> None:
        """A worker said hello at ``now``."""
        self.workers[session_id] = WorkerRecord(now, pool, loop)

    def settled(self, session_id: str, done: int, failed: int) -> None:
        """A worker reported ``done`` successes and ``failed`` final failures."""
        rec = self.workers.get(session_id)
        if rec is not None:
            rec.done += done
            rec.failed += failed

    def left(self, session_id: str, name: str, host: str, pid: int | None, now: float) -> None:
        """A worker's session ended at ``now``."""
        if self.workers.pop(session_id, None) is not None:
            self.gone.appendleft({"name": name, "host": host, "pid": pid, "gone_at": now})

    def get(self, session_id: str) -> WorkerRecord | None:
        return self.workers.get(session_id)
