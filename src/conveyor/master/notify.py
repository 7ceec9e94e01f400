"""What a master hears from the other masters on its shared store.

The store announces, inside each committing transaction (so nothing that did
not commit is announced), the queues that got ready work, the tasks that
finished, the running tasks cancelled, progress reports and delayed work
(:data:`~conveyor.store.base.CHANNELS`).
:class:`Notices` listens on a thread of its own (the store's blocking
``listen``) and posts each announcement into the master's event loop, where:

* new work in a queue makes dispatch look at that queue again (a master that
  believed it empty leases from it);
* a finished task some local client waits for is re-read from the store and
  delivered (the result, a dependency failure or a cancellation);
* a cancelled task leased to a worker connected here is stopped on that worker;
* delayed work submitted elsewhere makes the leader look at the next due time;
* a progress report some local client waits for is re-read and passed on;
* room in a bounded queue (items left it through another master) lets the puts
  parked here on that queue try again.

Whenever listening (re)starts, anything may have been missed: every queue is
looked at again, every parked put tries again, and the tasks finished since the
lost connection last heard everything are re-read for the clients waiting here.
Announcements from this master itself are skipped (it acted on them when it made them).
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from typing import TYPE_CHECKING, Any

from .. import protocol
from ..ratelimit_log import RateLimitedLog
from ..store.base import (
    CANCEL_CHANNEL,
    DUE_CHANNEL,
    PROGRESS_CHANNEL,
    RESULTS_CHANNEL,
    SPACE_CHANNEL,
    WORK_CHANNEL,
)

if TYPE_CHECKING:
    from .context import Context
    from .queues import QueueService

log = logging.getLogger("conveyor.master")

#: Seconds before the lost listening connection's last sure moment from which finished
#: tasks are re-read (finish times come from the masters' clocks).
REREAD_MARGIN = 5.0
#: Seconds between tries of that re-read while the store cannot answer (doubling).
REREAD_RETRY_MIN = 0.1
REREAD_RETRY_MAX = 2.0


class Notices:
    """Listens to the other masters' announcements and acts on them in the master's loop."""

    def __init__(self, ctx: Context, master_id: str, *, queues: QueueService | None = None) -> None:
        self.ctx = ctx
        self.master_id = master_id
        # Every payload begins with its sender's id (json); this master's own announcements
        # are dropped on the listening thread, without waking the loop for nothing.
        self._own = "[" + json.dumps(master_id) + ","
        self.queues = queues  # whose parked puts room announced elsewhere wakes
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.heard = 0  # announcements acted on (for status and tests)
        self._logs = RateLimitedLog(log)

    def start(self) -> None:
        """Start listening (a daemon thread: the store's ``listen`` blocks)."""
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self.ctx.store.listen, args=(self._post, self._stop),
                                        name="conveyor-notices", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop listening (the thread ends within the store's poll interval)."""
        self._stop.set()
        for t in self._tasks:
            t.cancel()

    def _post(self, channel: str | None, payload: str) -> None:
        """On the listening thread: hand one announcement to the master's loop."""
        if channel is not None and payload.startswith(self._own):
            return
        loop = self._loop
        if loop is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(self.handle, channel, payload)
            except RuntimeError:  # the loop closed meanwhile: the master is gone
                pass

    def handle(self, channel: str | None, payload: str) -> None:
        """Act on one announcement (``channel`` None: listening restarted, re-read everything)."""
        ctx = self.ctx
        if channel is None:  # (re)started listening: anything may have been missed
            ctx.work_added()
            if self.queues is not None:
                self.queues.space_freed_anywhere()
            if payload:
                self._spawn(self._reread(float(payload) - REREAD_MARGIN))
            return
        try:
            sender, items = json.loads(payload)
        except (ValueError, TypeError):
            log.warning("ignored a malformed announcement on %s", channel)
            return
        if sender == self.master_id:
            return
        self.heard += 1
        if channel == WORK_CHANNEL:
            if items is None:
                ctx.work_added()
            else:
                for queue in items:
                    ctx.work_added(str(queue))
        elif channel == RESULTS_CHANNEL:
            wanted = [str(i) for i in items or () if ctx.subs.watched(str(i))]
            if wanted:
                self._spawn(self._deliver(wanted))
        elif channel == CANCEL_CHANNEL:
            self._stop_running(items or [])
        elif channel == DUE_CHANNEL:
            if ctx.leader:  # the leader promotes: learn the next due time now, not at the poll
                self._spawn(self._due())
        elif channel == SPACE_CHANNEL:
            if self.queues is not None:
                if items is None:
                    self.queues.space_freed_anywhere()
                else:
                    for queue in items:
                        self.queues.space_freed(str(queue))
        elif channel == PROGRESS_CHANNEL:
            wanted = [str(i) for i in items or () if ctx.subs.watched(str(i))]
            if wanted:
                self._spawn(self._progress(wanted))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _reread(self, since: float) -> None:
        """Deliver the results local clients wait for among the tasks finished since ``since``.

        Tried again (backing off) until it succeeds: listening often comes back before the
        store's own connection does (the database restarting or failing over), and a
        result missed here would reach its client only if it asked again."""
        ctx = self.ctx
        pause = REREAD_RETRY_MIN
        while True:
            try:
                ids = await ctx.runner.call(ctx.store.finished_since, since)
                break
            except Exception as exc:
                if self._stop.is_set():
                    return
                self._logs.warning("reread", "could not re-read the results finished while not "
                                   "listening (trying again in %.1fs): %s", pause, exc)
            await asyncio.sleep(pause)
            pause = min(REREAD_RETRY_MAX, pause * 2)
        wanted = [i for i in ids if ctx.subs.watched(i)]
        if wanted:
            await self._deliver(wanted)

    async def _deliver(self, ids: list[str]) -> None:
        """Read the finished tasks local clients wait for, and deliver their results."""
        ctx = self.ctx
        try:
            results = await ctx.runner.call(ctx.store.results, ids)
        except Exception:
            log.exception("could not read results another master stored")
            return
        ctx.subs.deliver(list(results.values()))

    async def _due(self) -> None:
        ctx = self.ctx
        try:
            next_due = await ctx.runner.call(ctx.store.next_due)
        except Exception:
            log.exception("could not read the next due time")
            return
        if next_due is not None:
            ctx.delays.due_at(next_due)

    async def _progress(self, ids: list[str]) -> None:
        """Pass the latest progress reports of tasks local clients wait for on to them."""
        ctx = self.ctx
        store = ctx.store
        try:
            found = await ctx.runner.call(lambda: [(i, store.get(i)) for i in ids])
        except Exception:
            log.exception("could not read progress another master stored")
            return
        for tid, info in found:
            if info is not None and info.progress is not None:
                for sub in ctx.subs.subscribers(tid):
                    sub.push(protocol.PROGRESS, {"id": tid, **info.progress})

    def _stop_running(self, items: list[Any]) -> None:
        """Tell the workers connected here that run cancelled tasks to stop them."""
        stop: dict[str, list[str]] = {}
        for item in items:
            owner, _, tid = str(item).partition(" ")
            if tid and owner in self.ctx.sessions:
                stop.setdefault(owner, []).append(tid)
        for owner, tids in stop.items():
            holder = self.ctx.sessions[owner]
            for tid in tids:
                holder.inflight.pop(tid, None)
            holder.push(protocol.CANCEL, {"ids": tids})
