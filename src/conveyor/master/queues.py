"""Plain network queues on the master: bounded puts, blocking gets, acks and join.

A queue item is a task without a call, in the same store, under the same
lease and ack mechanism. What this module adds is waiting: a ``get`` on an
empty queue, a ``put`` on a full one and a ``join`` are parked here until
the queue changes or their timeout passes. The master's dispatcher serves
parked getters exactly as it serves workers with credit.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .. import protocol, wire
from ..errors import ProtocolError
from ..records import STORED, Lease, NewTask, Outcome
from ..serde import CODECS, PICKLE

if TYPE_CHECKING:
    from .server import Master
    from .session import Session

MAX_GET = 10_000


@dataclass(eq=False)
class Getter:
    """A parked ``get``: served by the dispatcher when its queue has items."""

    session: Session
    rid: int
    queue: str
    max: int
    ack: bool
    handle: asyncio.TimerHandle | None = None
    done: bool = False


@dataclass(eq=False)
class Putter:
    """A parked ``put`` on a full queue: retried when items leave the queue."""

    session: Session
    rid: int
    queue: str
    tasks: list[NewTask]
    maxsize: int
    accepted: int = 0
    handle: asyncio.TimerHandle | None = None
    done: bool = False


@dataclass(eq=False)
class Joiner:
    """A parked ``join``: answered when nothing put in the queue is unacknowledged."""

    session: Session
    rid: int
    queue: str
    handle: asyncio.TimerHandle | None = None
    done: bool = False


def _timeout(f: dict[str, Any]) -> float | None:
    t = f.get("timeout")
    if t is None:
        return None
    if isinstance(t, bool) or not isinstance(t, (int, float)) or t < 0:
        raise ProtocolError("timeout must be a non-negative number or None")
    return float(t)


def _queue(f: dict[str, Any]) -> str:
    q = f.get("queue")
    if not isinstance(q, str) or not q or len(q) > wire.MAX_NAME:
        raise ProtocolError("queue must be a non-empty string")
    return q


@dataclass
class QueueService:
    """The master's queue operations and the requests parked on them."""

    master: Master
    declared: dict[str, int] = field(default_factory=dict)  # queue -> maxsize, from the master's config
    getters: dict[str, deque[Getter]] = field(default_factory=dict)
    putters: dict[str, deque[Putter]] = field(default_factory=dict)
    joiners: dict[str, list[Joiner]] = field(default_factory=dict)
    _retrying: set[str] = field(default_factory=set)

    # -- put ---------------------------------------------------------------
    async def on_qput(self, s: Session, rid: int, f: dict) -> None:
        q = _queue(f)
        timeout = _timeout(f)
        maxsize = f.get("maxsize", 0)
        if not isinstance(maxsize, int) or isinstance(maxsize, bool):
            raise ProtocolError("maxsize must be an integer")
        maxsize = self.declared.get(q, maxsize)
        items = f.get("items")
        if not isinstance(items, list) or not items:
            raise ProtocolError("qput: items must be a non-empty list")
        tasks = []
        for item in items:
            if not (isinstance(item, list) and len(item) == 3 and isinstance(item[1], bytes)
                    and item[2] in CODECS):
                raise ProtocolError("qput: an item must be [id, payload, codec]")
            tasks.append(NewTask(wire.id_list([item[0]])[0], q, None, item[1], item[2]))
        if not self.master.allow_pickle and any(t.codec == PICKLE for t in tasks):
            s.error(rid, "SerializationError", "the pickle codec is disabled on this master")
            return
        p = Putter(s, rid, q, tasks, maxsize)
        await self._try_put(p)
        if p.done:
            return
        if timeout == 0:
            self._finish_put(p)
            return
        self.putters.setdefault(q, deque()).append(p)
        if timeout is not None:
            p.handle = asyncio.get_running_loop().call_later(timeout, self._finish_put, p)

    async def _try_put(self, p: Putter) -> None:
        m = self.master
        if p.maxsize > 0:
            accepted = await m._runner.call(self._bounded_enqueue, p.queue, p.tasks, p.maxsize, m.clock())
        else:  # unbounded: the store call alone (an id put twice is accepted, and stored once)
            await m._runner.call(m.store.enqueue, p.tasks, m.clock())
            accepted = len(p.tasks)
        if accepted:
            p.accepted += accepted
            del p.tasks[:accepted]
            m.counters["submitted"] += accepted
            m.queues.changed(p.queue)
            m._wake.set()
        if not p.tasks:
            self._finish_put(p)

    def _bounded_enqueue(self, queue: str, tasks: list[NewTask], maxsize: int, now: float) -> int:
        store = self.master.store
        n = len(tasks)
        if maxsize > 0:
            ready, delayed, _ = store.pending_counts(queue)
            n = max(0, min(n, maxsize - ready - delayed))
        if n:
            store.enqueue(tasks[:n], now)
        return n

    def _finish_put(self, p: Putter) -> None:
        if p.done:
            return
        p.done = True
        if p.handle is not None:
            p.handle.cancel()
        waiting = self.putters.get(p.queue)
        if waiting is not None and p in waiting:
            waiting.remove(p)
        p.session.reply(p.rid, {"accepted": p.accepted})

    def space_freed(self, queue: str) -> None:
        """Items left ``queue``: let parked putters try again, oldest first."""
        if self.putters.get(queue) and queue not in self._retrying:
            self._retrying.add(queue)
            asyncio.ensure_future(self._retry_putters(queue))

    async def _retry_putters(self, queue: str) -> None:
        try:
            while True:
                # Re-read every time: a session that goes away replaces the deque.
                waiting = self.putters.get(queue)
                if not waiting:
                    break
                p = waiting[0]
                if p.done:
                    waiting.popleft()
                    continue
                before = p.accepted
                await self._try_put(p)
                if not p.done and p.accepted == before:
                    break  # still full
        finally:
            self._retrying.discard(queue)

    # -- get ---------------------------------------------------------------
    async def on_qget(self, s: Session, rid: int, f: dict) -> None:
        q = _queue(f)
        timeout = _timeout(f)
        n = f.get("max", 1)
        if not isinstance(n, int) or not 0 < n <= MAX_GET:
            raise ProtocolError(f"qget: max must be an integer from 1 to {MAX_GET}")
        s.holds_items = True
        g = Getter(s, rid, q, n, bool(f.get("ack", False)))
        m = self.master
        mark = m.queues.mark(q)
        store = m.store
        got = await (m._runner.call(store.take, q, n, s.id, m.clock()) if g.ack else
                     m._runner.call(store.lease, q, n, s.id, m.clock(), m.lease_for, durable=False))
        if got or timeout == 0:
            if len(got) < n:
                m.queues.empty(q, mark)
            self.deliver(g, got)
            return
        m.queues.empty(q, mark)
        if s.closed:
            return
        self.getters.setdefault(q, deque()).append(g)
        if timeout is not None:
            g.handle = asyncio.get_running_loop().call_later(timeout, self.deliver, g, [])
        if not m.queues.is_empty(q):
            m._wake.set()

    def lease_for(self, g: Getter, now: float) -> list[Lease]:
        """Lease (and with ack-on-get, acknowledge) items for a getter; store thread."""
        store = self.master.store
        if g.ack:
            return store.take(g.queue, g.max, g.session.id, now)
        return store.lease(g.queue, g.max, g.session.id, now, self.master.lease_for)

    def deliver(self, g: Getter, got: list[Lease]) -> None:
        """Answer a getter (an empty list: its timeout passed)."""
        m = self.master
        if g.done:
            if got:  # answered meanwhile: hand these back
                fut = m._runner.call(m.store.release, [(x.id, x.token) for x in got], m.clock())
                fut.add_done_callback(m._after_release)
            return
        g.done = True
        if g.handle is not None:
            g.handle.cancel()
        waiting = self.getters.get(g.queue)
        if waiting is not None and g in waiting:
            waiting.remove(g)
            if not waiting:
                del self.getters[g.queue]
        if got and not g.ack:
            for x in got:
                g.session.inflight[x.id] = x.token
        g.session.reply(g.rid, {"items": [[x.id, x.token, x.payload, x.codec] for x in got]})
        if got:
            if g.ack:
                self.joiners_may_be_done()
            self.space_freed(g.queue)

    def plan(self) -> list[tuple[Getter, str, int]]:
        """The parked getters the dispatcher should try now, oldest first per queue."""
        out = []
        for q, waiting in self.getters.items():
            if waiting and not self.master.queues.is_empty(q):
                g = waiting[0]
                if not g.done and not g.session.closed:
                    out.append((g, q, g.max))
        return out

    # -- ack, join, size ---------------------------------------------------
    async def on_qack(self, s: Session, rid: int, f: dict) -> None:
        items = wire.lease_pairs(f.get("items"), "qack: items")
        for tid, _ in items:
            s.inflight.pop(tid, None)
        m = self.master
        outcomes = [Outcome(tid, token, True, b"") for tid, token in items]
        statuses = await m._runner.call(m.store.complete, outcomes, m.clock()) if outcomes else []
        stored = statuses.count(STORED)
        m.counters["acknowledged"] += stored
        s.reply(rid, {"n": stored})
        self.joiners_may_be_done()

    async def on_qjoin(self, s: Session, rid: int, f: dict) -> None:
        q = _queue(f)
        timeout = _timeout(f)
        j = Joiner(s, rid, q)
        self.joiners.setdefault(q, []).append(j)
        if timeout is not None:
            j.handle = asyncio.get_running_loop().call_later(timeout, self._finish_join, j, False)
        await self._check_joiners(q)

    def _finish_join(self, j: Joiner, done: bool) -> None:
        if j.done:
            return
        j.done = True
        if j.handle is not None:
            j.handle.cancel()
        waiting = self.joiners.get(j.queue)
        if waiting is not None and j in waiting:
            waiting.remove(j)
            if not waiting:
                del self.joiners[j.queue]
        j.session.reply(j.rid, {"done": done})

    def joiners_may_be_done(self) -> None:
        """Something was acknowledged: answer the joins whose queue is now settled."""
        for q in list(self.joiners):
            asyncio.ensure_future(self._check_joiners(q))

    async def _check_joiners(self, q: str) -> None:
        if not self.joiners.get(q):
            return
        counts = await self.master._runner.call(self.master.store.pending_counts, q)
        if sum(counts) == 0:
            for j in list(self.joiners.get(q, ())):
                self._finish_join(j, True)

    async def on_qsize(self, s: Session, rid: int, f: dict) -> None:
        q = _queue(f)
        ready, delayed, leased = await self.master._runner.call(self.master.store.pending_counts, q)
        s.reply(rid, {"ready": ready, "delayed": delayed, "leased": leased,
                      "maxsize": self.declared.get(q)})

    async def on_qinfo(self, s: Session, rid: int, f: dict) -> None:
        q = _queue(f)
        s.reply(rid, {"declared": q in self.declared, "maxsize": self.declared.get(q, 0),
                      "queues": sorted(self.declared)})

    # -- sessions ----------------------------------------------------------
    def drop(self, s: Session) -> None:
        """A session went away: forget what it had parked."""
        for table in (self.getters, self.putters):
            for q in list(table):
                kept = deque(w for w in table[q] if w.session is not s)
                for w in table[q]:
                    if w.session is s:
                        w.done = True
                        if w.handle is not None:
                            w.handle.cancel()
                if kept:
                    table[q] = kept
                else:
                    del table[q]
        for q in list(self.joiners):
            for j in self.joiners[q]:
                if j.session is s:
                    j.done = True
                    if j.handle is not None:
                        j.handle.cancel()
            kept_j = [j for j in self.joiners[q] if j.session is not s]
            if kept_j:
                self.joiners[q] = kept_j
            else:
                del self.joiners[q]


HANDLERS = {
    protocol.QPUT: QueueService.on_qput,
    protocol.QGET: QueueService.on_qget,
    protocol.QACK: QueueService.on_qack,
    protocol.QJOIN: QueueService.on_qjoin,
    protocol.QSIZE: QueueService.on_qsize,
    protocol.QINFO: QueueService.on_qinfo,
}
