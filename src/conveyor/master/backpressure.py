"""The master's memory bounds: what it buffers for a peer, and what it takes from one.

Two limits, both enforced by pausing a connection rather than by buffering:

- **Output.** A session whose transport holds more than :data:`OUTPUT_HIGH`
  unsent bytes (its peer does not read) is *paused*: the master stops
  reading from it (no new requests, so no new replies), dispatch stops
  pushing tasks to it, and results for it are not pushed but noted by id
  (:class:`Backlog`): they stay in the store and are read back from it and
  pushed once the transport drained below :data:`OUTPUT_LOW`.
- **Partial frames.** Every connection in the middle of a frame holds that
  frame's announced size from one budget shared by all connections
  (:class:`FrameBudget`, :data:`PARTIAL_BUDGET` by default). A connection
  whose frame does not fit waits, not reading, until another frame completes
  or its connection goes; waiting is first come, first served, and a frame is
  always let in when no other is under way, so the largest frame the master
  accepts can always arrive. Too many bytes already read by waiting
  connections (:data:`WAITING_LIMIT`) closes the newcomer instead.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict, deque
from typing import TYPE_CHECKING, Protocol

from .. import protocol, wire
from ..ratelimit_log import RateLimitedLog

if TYPE_CHECKING:
    from .context import Context
    from .session import Session

log = logging.getLogger("conveyor.master")
limited = RateLimitedLog(log)

#: Unsent bytes in a session's transport above which it is paused ...
OUTPUT_HIGH = 1 << 20
#: ... and below which it resumes.
OUTPUT_LOW = 256 << 10
#: The bytes of partial frames all connections together may hold.
PARTIAL_BUDGET = 64 << 20
#: The bytes already read by connections waiting for the budget beyond which a
#: newcomer is closed rather than made to wait.
WAITING_LIMIT = 16 << 20
#: Results read back from the store per call when a paused session drained.
REDELIVER_BATCH = 256


class Waiter(Protocol):
    """What the budget needs of a connection: how to let it read again."""

    def budget_granted(self) -> None:
        """The frame it waits for fits now: read on."""


class FrameBudget:
    """One budget of bytes for the partial frames of every connection (see the module docstring)."""

    def __init__(self, total: int = PARTIAL_BUDGET, waiting_limit: int = WAITING_LIMIT) -> None:
        self.total = total
        self.waiting_limit = waiting_limit
        self.used = 0
        self._held: dict[Waiter, int] = {}  # connection -> bytes reserved for its frame
        self._waiting: OrderedDict[Waiter, tuple[int, int]] = OrderedDict()  # -> (wanted, bytes read)

    @property
    def waiting(self) -> int:
        """Connections waiting for room."""
        return len(self._waiting)

    def held(self, who: Waiter) -> int:
        """The bytes reserved for ``who``'s frame."""
        return self._held.get(who, 0)

    def want(self, who: Waiter, size: int, buffered: int) -> bool | None:
        """``who`` is receiving a frame of ``size`` bytes (0: none under way), ``buffered`` read.

        True: it may read on. False: it must wait (stop reading) until
        :meth:`Waiter.budget_granted`. None: too much is waiting already; close it.
        """
        have = self._held.get(who, 0)
        if size == have and who not in self._waiting:
            return True
        self.release(who, wake=False)
        if size == 0:
            self._wake()
            return True
        if not self._waiting and (self.used + size <= self.total or self.used == 0):
            self._held[who] = size
            self.used += size
            return True
        if sum(b for _, b in self._waiting.values()) + buffered > self.waiting_limit:
            self._wake()
            return None
        self._waiting[who] = (size, buffered)
        self._wake()
        # Let in at once when what it queued behind fit too (its own frame just completed
        # and freed room, say): then it must not stop reading.
        return who in self._held

    def release(self, who: Waiter, *, wake: bool = True) -> None:
        """``who`` is gone or its frame is complete: its bytes go back to the budget."""
        self._waiting.pop(who, None)
        size = self._held.pop(who, 0)
        self.used -= size
        if wake and size:
            self._wake()

    def _wake(self) -> None:
        """Let waiting connections in, in arrival order, while their frames fit."""
        while self._waiting:
            who, (size, _) = next(iter(self._waiting.items()))
            if self.used + size > self.total and self.used != 0:
                return
            del self._waiting[who]
            self._held[who] = size
            self.used += size
            who.budget_granted()


class Backlog:
    """Results for a paused session, by task id: pushed, read back from the store, once it drained.

    Only ids are kept (tens of bytes each), never payloads.
    """

    __slots__ = ("ids", "task")

    def __init__(self) -> None:
        self.ids: deque[str] = deque()
        self.task: asyncio.Task[None] | None = None

    def __len__(self) -> int:
        return len(self.ids)


def defer(s: Session, tid: str) -> None:
    """Note a result for paused ``s``: it stays in the store until ``s`` drained."""
    s.backlog.ids.append(tid)


def redeliver(ctx: Context, s: Session) -> None:
    """``s`` drained: push the results noted while it was paused, read back in batches.

    Stops (keeping the rest) as soon as it is paused again. One such task per session.
    """
    backlog = s.backlog
    if not backlog.ids or backlog.task is not None or s.closed:
        return

    async def run() -> None:
        try:
            while backlog.ids and not s.output_paused and not s.closed:
                ids = [backlog.ids.popleft() for _ in range(min(REDELIVER_BATCH, len(backlog.ids)))]
                found = await ctx.runner.call(ctx.store.results, ids)
                if s.closed:
                    return
                if found:
                    s.push(protocol.RESULTS, {"results": [wire.result_to_wire(r) for r in found.values()]})
        finally:
            backlog.task = None

    def done(task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            limited.error("redeliver", "delivering stored results to %s failed", s.peer, exc_info=task.exception())

    backlog.task = asyncio.get_running_loop().create_task(run())
    backlog.task.add_done_callback(done)
