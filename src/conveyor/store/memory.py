"""An in-memory store: the reference semantics, for tests and ``--data :memory:``.

Nothing survives the process. Every method holds one re-entrant lock, and
``transaction()`` holds it for the whole block, so the store is safe to share
between threads. A block that raises is rolled back (an undo log of record
snapshots), exactly like the SQLite store.
"""

from __future__ import annotations

import contextlib
import heapq
import threading
from collections.abc import Iterator, Sequence

from .base import (
    DEAD,
    DELAYED,
    DUPLICATE,
    FAILED,
    FINISHED,
    LEASED,
    READY,
    STALE,
    STATES,
    STORED,
    SUCCEEDED,
    UNKNOWN,
    Lease,
    NewTask,
    Outcome,
    QueueStats,
    Result,
    Store,
    TaskInfo,
)

_FINISHED = frozenset(FINISHED)


class _Rec:
    """One stored task (mutable; indexes refer to it by id)."""

    __slots__ = (
        "seq", "id", "queue", "name", "state", "priority", "attempts", "created_at",
        "not_before", "lease_owner", "lease_deadline", "started_at", "finished_at",
        "payload", "codec", "options", "errors", "result_ok", "result_payload", "result_codec",
    )

    def copy(self) -> _Rec:
        other = _Rec.__new__(_Rec)
        for name in _Rec.__slots__:
            setattr(other, name, getattr(self, name))
        other.errors = list(self.errors)
        return other

    def result(self) -> Result | None:
        if self.state not in _FINISHED:
            return None
        return Result(self.id, bool(self.result_ok), self.result_payload or b"",
                      self.result_codec or "msgpack", self.state, self.finished_at)


class MemoryStore(Store):
    """Thread-safe in-memory :class:`Store` with heap-ordered per-queue ready sets."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._records: dict[str, _Rec] = {}
        self._seq = 0
        # One undo map per open transaction level: id -> snapshot (None: did not exist).
        self._undo: list[dict[str, _Rec | None]] = []
        self._reset_indexes()

    # -- indexes -----------------------------------------------------------

    def _reset_indexes(self) -> None:
        self._ready: dict[str, list[tuple[int, int, str]]] = {}  # queue -> heap(-prio, seq, id)
        self._delayed: list[tuple[float, int, str]] = []  # heap(not_before, seq, id)
        self._deadlines: list[tuple[float, int, int, str]] = []  # heap(deadline, seq, token, id)
        self._finished: list[tuple[float, int, str]] = []  # heap(finished_at, seq, id)
        self._owners: dict[str, set[str]] = {}
        self._counts: dict[str, dict[str, int]] = {}
        self._leased = 0

    def _rebuild_indexes(self) -> None:
        self._reset_indexes()
        for rec in self._records.values():
            self._count(rec.queue, rec.state, 1)
            self._index(rec)
        for heap in self._ready.values():
            heapq.heapify(heap)
        for heap in (self._delayed, self._deadlines, self._finished):
            heapq.heapify(heap)

    def _index(self, rec: _Rec) -> None:
        """Add ``rec`` to the index of its (new) state; counts are kept by _move."""
        state = rec.state
        if state == READY:
            heapq.heappush(self._ready.setdefault(rec.queue, []), (-rec.priority, rec.seq, rec.id))
        elif state == DELAYED:
            heapq.heappush(self._delayed, (rec.not_before, rec.seq, rec.id))
        elif state == LEASED:
            self._owners.setdefault(rec.lease_owner, set()).add(rec.id)
            self._push_deadline(rec)
            self._leased += 1
        else:
            heapq.heappush(self._finished, (rec.finished_at, rec.seq, rec.id))

    def _push_deadline(self, rec: _Rec) -> None:
        heap = self._deadlines
        heapq.heappush(heap, (rec.lease_deadline, rec.seq, rec.attempts, rec.id))
        if len(heap) > 2 * self._leased + 1024:  # drop entries left behind by extensions
            live = []
            for entry in heap:
                r = self._records.get(entry[3])
                if r is not None and r.state == LEASED and r.lease_deadline == entry[0] \
                        and r.attempts == entry[2]:
                    live.append(entry)
            heapq.heapify(live)
            self._deadlines = live

    def _count(self, queue: str, state: str, delta: int) -> None:
        counts = self._counts.get(queue)
        if counts is None:
            counts = self._counts[queue] = dict.fromkeys(STATES, 0)
        counts[state] += delta
        if delta < 0 and not any(counts.values()):
            del self._counts[queue]

    def _move(self, rec: _Rec, state: str) -> None:
        """Change ``rec``'s state, keeping counts and the owner index right.

        The caller sets the fields of the new state first; the new state's
        index entry is added here.
        """
        old = rec.state
        if old == LEASED:
            owned = self._owners.get(rec.lease_owner)
            if owned is not None:
                owned.discard(rec.id)
                if not owned:
                    del self._owners[rec.lease_owner]
            self._leased -= 1
        if state != LEASED:
            rec.lease_owner = None
            rec.lease_deadline = None
        self._count(rec.queue, old, -1)
        self._count(rec.queue, state, 1)
        rec.state = state
        self._index(rec)

    # -- transactions ------------------------------------------------------

    def _touch(self, rec: _Rec) -> None:
        """Remember ``rec`` as it was before this transaction level changed it."""
        top = self._undo[-1]
        if rec.id not in top:
            top[rec.id] = rec.copy()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """Hold the lock for the block; roll its changes back if it raises."""
        with self._lock:
            self._undo.append({})
            try:
                yield
            except BaseException:
                undo = self._undo.pop()
                if undo:
                    for task_id, snap in undo.items():
                        if snap is None:
                            self._records.pop(task_id, None)
                        else:
                            self._records[task_id] = snap
                    self._rebuild_indexes()
                raise
            else:
                undo = self._undo.pop()
                if self._undo:
                    parent = self._undo[-1]
                    for task_id, snap in undo.items():
                        parent.setdefault(task_id, snap)

    # -- the Store interface -------------------------------------------------

    def enqueue(self, tasks: Sequence[NewTask], now: float) -> list[bool]:
        """Insert tasks; False for ids that exist already (nothing changes)."""
        out: list[bool] = []
        with self.transaction():
            undo = self._undo[-1]
            for t in tasks:
                if t.id in self._records:
                    out.append(False)
                    continue
                self._seq += 1
                rec = _Rec()
                rec.seq = self._seq
                rec.id = t.id
                rec.queue = t.queue
                rec.name = t.name
                rec.state = DELAYED if t.not_before > now else READY
                rec.priority = int(t.priority)
                rec.attempts = 0
                rec.created_at = now
                rec.not_before = float(t.not_before)
                rec.lease_owner = None
                rec.lease_deadline = None
                rec.started_at = None
                rec.finished_at = None
                rec.payload = bytes(t.payload)
                rec.codec = t.codec
                rec.options = dict(t.options) if t.options else {}
                rec.errors = []
                rec.result_ok = None
                rec.result_payload = None
                rec.result_codec = None
                undo.setdefault(t.id, None)
                self._records[t.id] = rec
                self._count(rec.queue, rec.state, 1)
                self._index(rec)
                out.append(True)
        return out

    def lease(self, queue: str, limit: int, owner: str, now: float, lease_for: float) -> list[Lease]:
        """Lease up to ``limit`` ready tasks, highest priority first, FIFO within one."""
        out: list[Lease] = []
        with self.transaction():
            heap = self._ready.get(queue)
            deadline = now + lease_for
            while heap and len(out) < limit:
                _, seq, task_id = heapq.heappop(heap)
                rec = self._records.get(task_id)
                if rec is None or rec.state != READY or rec.seq != seq:
                    continue  # left ready some other way (a rolled-back change)
                self._touch(rec)
                rec.attempts += 1
                rec.lease_owner = owner
                rec.lease_deadline = deadline
                rec.started_at = now
                self._move(rec, LEASED)
                out.append(Lease(rec.id, rec.queue, rec.name, rec.payload, rec.codec,
                                 rec.attempts, dict(rec.options)))
            if heap is not None and not heap:
                del self._ready[queue]
        return out

    def _finish(self, rec: _Rec, state: str, ok: bool, payload: bytes, codec: str,
                now: float) -> None:
        self._touch(rec)
        rec.result_ok = ok
        rec.result_payload = bytes(payload)
        rec.result_codec = codec
        rec.finished_at = now
        self._move(rec, state)

    def complete(self, outcomes: Sequence[Outcome], now: float) -> list[str]:
        """Store results; STORED, DUPLICATE, STALE or UNKNOWN for each outcome."""
        out: list[str] = []
        with self.transaction():
            for o in outcomes:
                rec = self._records.get(o.id)
                if rec is None:
                    out.append(UNKNOWN)
                elif rec.state in _FINISHED:
                    out.append(DUPLICATE)
                elif o.ok and 1 <= o.token <= rec.attempts:
                    self._finish(rec, SUCCEEDED, True, o.payload, o.codec, now)
                    out.append(STORED)
                elif not o.ok and rec.state == LEASED and o.token == rec.attempts:
                    self._finish(rec, FAILED, False, o.payload, o.codec, now)
                    out.append(STORED)
                else:
                    out.append(STALE)
        return out

    def _holds(self, task_id: str, token: int) -> _Rec | None:
        rec = self._records.get(task_id)
        if rec is None or rec.state != LEASED or rec.attempts != token:
            return None
        return rec

    def nack(self, task_id: str, token: int, now: float, *, delay: float = 0.0,
             error: bytes | None = None, dead: bool = False) -> bool:
        """Give a leased task back to ready, delayed or dead; False if ``token`` is stale."""
        with self.transaction():
            rec = self._holds(task_id, token)
            if rec is None:
                return False
            self._touch(rec)
            if error is not None:
                rec.errors.append(bytes(error))
            if dead:
                last = rec.errors[-1] if rec.errors else b""
                self._finish(rec, DEAD, False, last, "msgpack", now)
            elif delay > 0:
                rec.not_before = now + delay
                self._move(rec, DELAYED)
            else:
                self._move(rec, READY)
            return True

    def _requeue(self, rec: _Rec) -> None:
        self._touch(rec)
        self._move(rec, READY)

    def release(self, leases: Sequence[tuple[str, int]], now: float) -> int:
        """Hand back the leases whose token still holds; how many did."""
        n = 0
        with self.transaction():
            for task_id, token in leases:
                rec = self._holds(task_id, token)
                if rec is not None:
                    self._requeue(rec)
                    n += 1
        return n

    def _sorted_recs(self, ids: Sequence[str] | set[str]) -> list[_Rec]:
        return sorted((self._records[i] for i in ids), key=lambda r: r.seq)

    def release_owner(self, owner: str, now: float) -> list[str]:
        """Hand back every task leased to ``owner``; their ids in enqueue order."""
        with self.transaction():
            recs = self._sorted_recs(self._owners.get(owner, ()))
            for rec in recs:
                self._requeue(rec)
            return [rec.id for rec in recs]

    def release_all(self, now: float) -> int:
        """Hand back every leased task; how many."""
        with self.transaction():
            ids = [i for owned in self._owners.values() for i in owned]
            for rec in self._sorted_recs(ids):
                self._requeue(rec)
            return len(ids)

    def extend_owner(self, owner: str, now: float, lease_for: float) -> int:
        """Set the deadline of every lease ``owner`` holds to ``now + lease_for``."""
        with self.transaction():
            owned = self._owners.get(owner, ())
            deadline = now + lease_for
            for task_id in owned:
                rec = self._records[task_id]
                self._touch(rec)
                rec.lease_deadline = deadline
                self._push_deadline(rec)
            return len(owned)

    def expire_leases(self, now: float) -> list[str]:
        """Hand back every task whose lease deadline is at or before ``now``."""
        out: list[str] = []
        with self.transaction():
            heap = self._deadlines
            while heap and heap[0][0] <= now:
                deadline, _, token, task_id = heapq.heappop(heap)
                rec = self._records.get(task_id)
                if rec is None or rec.state != LEASED or rec.attempts != token \
                        or rec.lease_deadline != deadline:
                    continue  # extended, finished or handed back since
                self._requeue(rec)
                out.append(task_id)
        return out

    def promote_due(self, now: float) -> list[str]:
        """Make delayed tasks with ``not_before <= now`` ready; their queues, deduplicated."""
        queues: dict[str, None] = {}
        with self.transaction():
            heap = self._delayed
            while heap and heap[0][0] <= now:
                not_before, _, task_id = heapq.heappop(heap)
                rec = self._records.get(task_id)
                if rec is None or rec.state != DELAYED or rec.not_before != not_before:
                    continue
                self._requeue(rec)
                queues[rec.queue] = None
        return list(queues)

    def next_due(self) -> float | None:
        """The earliest ``not_before`` of any delayed task, or None."""
        with self._lock:
            heap = self._delayed
            while heap:
                not_before, _, task_id = heap[0]
                rec = self._records.get(task_id)
                if rec is not None and rec.state == DELAYED and rec.not_before == not_before:
                    return not_before
                heapq.heappop(heap)
            return None

    def results(self, ids: Sequence[str]) -> dict[str, Result]:
        """Stored results of the finished tasks among ``ids``."""
        out: dict[str, Result] = {}
        with self._lock:
            for task_id in ids:
                rec = self._records.get(task_id)
                if rec is not None and rec.state in _FINISHED:
                    out[task_id] = rec.result()
        return out

    def get(self, task_id: str) -> TaskInfo | None:
        """Everything stored about one task, or None."""
        with self._lock:
            rec = self._records.get(task_id)
            if rec is None:
                return None
            return TaskInfo(
                id=rec.id, queue=rec.queue, name=rec.name, state=rec.state,
                priority=rec.priority, attempts=rec.attempts, created_at=rec.created_at,
                not_before=rec.not_before, lease_owner=rec.lease_owner,
                lease_deadline=rec.lease_deadline, started_at=rec.started_at,
                finished_at=rec.finished_at, options=dict(rec.options),
                errors=list(rec.errors), result=rec.result(),
            )

    def purge_finished(self, before: float) -> int:
        """Delete finished tasks that finished before ``before``; how many."""
        n = 0
        with self.transaction():
            heap = self._finished
            undo = self._undo[-1]
            while heap and heap[0][0] < before:
                _, seq, task_id = heapq.heappop(heap)
                rec = self._records.get(task_id)
                if rec is None or rec.seq != seq or rec.state not in _FINISHED:
                    continue
                undo.setdefault(task_id, rec)  # the record itself is the snapshot
                del self._records[task_id]
                self._count(rec.queue, rec.state, -1)
                n += 1
        return n

    def pending_counts(self, queue: str) -> tuple[int, int, int]:
        """(ready, delayed, leased) counts of one queue."""
        with self._lock:
            counts = self._counts.get(queue)
            if counts is None:
                return 0, 0, 0
            return counts[READY], counts[DELAYED], counts[LEASED]

    def stats(self) -> dict[str, QueueStats]:
        """Counts by state for every queue that has tasks."""
        with self._lock:
            return {q: QueueStats(**counts) for q, counts in sorted(self._counts.items())}

    def __repr__(self) -> str:
        return f"MemoryStore({len(self._records)} tasks)"

