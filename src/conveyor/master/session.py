"""One authenticated connection to the master, as the master sees it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from .. import protocol
from .backpressure import Backlog


class Writer(Protocol):
    """Where a session's bytes go: the connection's transport."""

    def write(self, data: bytes) -> None: ...

    def close(self) -> None: ...


class WriteHold:
    """While active, what any session writes waits for :meth:`release`.

    The master holds writes while it handles one read with cheap commits: the
    store calls of the whole read share one commit, and no reply or push
    leaves before the commit that made it true.
    """

    __slots__ = ("active", "held")

    def __init__(self) -> None:
        self.active = False
        self.held: list[Session] = []

    def begin(self) -> None:
        """Hold every session's writes from now on."""
        self.active = True

    def release(self, last: Session | None = None) -> None:
        """Send what was held; ``last``'s after everyone else's (those are the peers its
        request made work for, such as a worker waiting for the task it submitted)."""
        self.active = False
        held, self.held = self.held, []
        for s in held:
            if s is not last:
                s.uncork()
        if last is not None and last in held:
            last.uncork()

    def drop(self) -> list[Session]:
        """Send nothing that was held (its commit failed); the sessions that had frames held."""
        self.active = False
        held, self.held = self.held, []
        for s in held:
            s.discard_corked()
        return held


@dataclass(eq=False)
class Session:
    """A connected client or worker: who it is, what it holds, how to reach it."""

    id: str  # also the lease owner for a worker's tasks
    peer: str
    writer: Writer
    conn: protocol.Connection
    role: str | None = None  # "client" | "worker" after hello
    name: str = ""
    host: str = ""
    pid: int | None = None
    queues: list[str] = field(default_factory=list)
    weights: list[int] | None = None  # served by weighted choice instead of in order
    concurrency: int = 0
    credit: int = 0
    inflight: dict[str, int] = field(default_factory=dict)  # task id -> lease token
    # Leases the worker reported started (task id -> (token, wall-clock start)); entries
    # whose lease has since left ``inflight`` are pruned by :meth:`running`.
    started: dict[str, tuple[int, float]] = field(default_factory=dict)
    holds_items: bool = False  # has leased plain-queue items: release them when it goes
    last_seen: float = 0.0  # monotonic time of its last bytes (the master's injected clock)
    hold: WriteHold | None = field(default=None, repr=False)  # the master's, while it holds writes
    closed: bool = False
    # Its transport holds too much unsent (its peer does not read): nothing more is pushed
    # to it, and results for it wait in the store, noted in ``backlog`` (master/backpressure.py).
    output_paused: bool = False
    backlog: Backlog = field(default_factory=Backlog, repr=False)
    # While corked, frames collect here and go out in one write (one send syscall) on uncork.
    _corked: list[bytes] | None = field(default=None, repr=False)

    def mark_started(self, pairs: list[tuple[str, int]], now: float) -> None:
        """The worker began these leases: only a lease it still holds, at that token, counts."""
        for tid, token in pairs:
            if self.inflight.get(tid) == token:
                self.started[tid] = (token, now)
        if len(self.started) > 2 * len(self.inflight) + 64:
            self.running()  # prune, so settled leases cannot pile up

    def running(self) -> int:
        """Leases the worker holds and reported started (the rest are prefetched)."""
        live = {tid: st for tid, st in self.started.items() if self.inflight.get(tid) == st[0]}
        if len(live) != len(self.started):
            self.started = live
        return len(live)

    def started_at(self, task_id: str) -> float | None:
        """When the worker reported this lease started; None while it is only prefetched."""
        st = self.started.get(task_id)
        return st[1] if st is not None and self.inflight.get(task_id) == st[0] else None

    def free_slots(self) -> int:
        """Slots with no lease in them: concurrency minus every lease held (running or not)."""
        return max(0, self.concurrency - len(self.inflight))

    def cork(self) -> None:
        """Hold what is written until :meth:`uncork` (the master handling one read's messages)."""
        if self._corked is None:
            self._corked = []

    def uncork(self) -> None:
        """Write what was held, in one piece."""
        held = self._corked
        self._corked = None
        if held:
            self._write(held[0] if len(held) == 1 else b"".join(held))

    def discard_corked(self) -> None:
        """Forget what is held without sending it."""
        self._corked = None

    def _write(self, data: bytes) -> None:
        if self.closed:
            return
        if self._corked is None and self.hold is not None and self.hold.active:
            self._corked = []
            self.hold.held.append(self)
        if self._corked is not None:
            self._corked.append(data)
            return
        try:
            self.writer.write(data)
        except (ConnectionError, RuntimeError, OSError):
            self.close()

    def reply(self, rid: int, fields: dict[str, Any]) -> None:
        """Answer request ``rid``."""
        if rid:
            self._write(protocol.encode_frame(protocol.OK, rid, fields))

    def error(self, rid: int, kind: str, message: str) -> None:
        """Refuse request ``rid`` with an error type name and message."""
        self._write(protocol.encode_frame(protocol.ERR, rid, {"type": kind, "message": message}))

    def push(self, op: str, fields: dict[str, Any]) -> None:
        """Send an unsolicited message (tasks to a worker, results to a client)."""
        self._write(protocol.encode_frame(op, 0, fields))

    def close(self) -> None:
        """Close the connection (idempotent)."""
        if not self.closed:
            self.uncork()  # what was answered before the close still goes out
            self.closed = True
            try:
                self.writer.close()
            except Exception:  # already gone
                pass
