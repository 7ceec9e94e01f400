"""An in-memory store: the reference semantics, for tests and ``--data :memory:``.

Nothing survives the process. Every method holds one re-entrant lock, and
``transaction()`` holds it for the whole block, so the store is safe to share
between threads. A block that raises is rolled back (an undo log of record
snapshots), exactly like the SQLite store.
"""

from __future__ import annotations

import bisect
import contextlib
import heapq
import threading
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from .. import serde
from ..records import (
    ALL_TASKS,
    ATTEMPT_CANCELLED,
    ATTEMPT_DEFERRED,
    ATTEMPT_FAILED,
    ATTEMPT_LOST,
    ATTEMPT_RELEASED,
    ATTEMPT_RETRIED,
    ATTEMPT_SUCCEEDED,
    ATTEMPTS_KEPT,
    CANCELLED,
    DEAD,
    DELAYED,
    DUPLICATE,
    FAILED,
    LEASED,
    READY,
    RETRIED,
    STALE,
    STATES,
    STORED,
    SUCCEEDED,
    UNKNOWN,
    WAITING,
    AttemptNote,
    AttemptRecord,
    Lease,
    NewTask,
    Outcome,
    QueueStats,
    Result,
    TaskCount,
    TaskFilter,
    TaskInfo,
    TaskPage,
    TaskSummary,
    attempt_record,
    note_of,
    task_id_for_key,
)
from . import paging
from .base import Store, dependency_failed_error, new_token
from .schedules import MemorySchedules, ScheduleRecord
from .validate import (
    FINISHED_STATES,
    MAX_BATCH,
    MAX_COUNT_CAP,
    check_filter,
    check_int,
    check_limit,
    check_listing,
    check_page,
    finished_states,
)

_Key = tuple[str, str | None, str]  # (queue, task name, state or outcome)


class _Rec:
    """One stored task (mutable; indexes refer to it by id)."""

    __slots__ = (
        "seq", "id", "queue", "name", "state", "priority", "attempts", "token", "created_at",
        "not_before", "lease_owner", "lease_deadline", "started_at", "finished_at",
        "payload", "codec", "options", "errors", "result_ok", "result_payload", "result_codec",
        # Dependencies: ``after`` (a tuple, replaced, never changed in place) lists the
        # ids this task waits for; ``dependents`` (a list or None) the tasks waiting for
        # it, in enqueue order. ``progress`` is the last progress report, msgpack.
        "after", "dependents", "progress",
        # ``history``: the last ATTEMPTS_KEPT attempt records, oldest first
        # (replaced, never changed in place, so snapshots share it).
        "history",
    )
    seq: int
    id: str
    queue: str
    name: str | None
    state: str
    priority: int
    attempts: int
    token: int | None  # the last lease's random token (None: never leased)
    created_at: float
    not_before: float
    lease_owner: str | None
    lease_deadline: float | None
    started_at: float | None
    finished_at: float | None
    payload: bytes
    codec: str
    options: dict[str, Any]
    errors: list[bytes]
    result_ok: bool | None
    result_payload: bytes | None
    result_codec: str | None
    after: tuple[str, ...]
    dependents: list[str] | None
    progress: bytes | None
    history: tuple[AttemptRecord, ...]

    def copy(self) -> _Rec:
        """A snapshot for the undo log: the lists changed in place are copied too.

        Every lease and result snapshots the record it changes, so this is on
        the hot path: one assignment per slot is about four times faster than a
        getattr/setattr loop over ``__slots__``. ``options``, ``after`` and ``history`` are
        replaced, never changed in place, so they are shared. (A unit test checks
        that every slot is copied.)
        """
        other = _Rec.__new__(_Rec)
        other.seq = self.seq
        other.id = self.id
        other.queue = self.queue
        other.name = self.name
        other.state = self.state
        other.priority = self.priority
        other.attempts = self.attempts
        other.token = self.token
        other.created_at = self.created_at
        other.not_before = self.not_before
        other.lease_owner = self.lease_owner
        other.lease_deadline = self.lease_deadline
        other.started_at = self.started_at
        other.finished_at = self.finished_at
        other.payload = self.payload
        other.codec = self.codec
        other.options = self.options
        other.result_ok = self.result_ok
        other.result_payload = self.result_payload
        other.result_codec = self.result_codec
        other.after = self.after
        other.progress = self.progress
        other.history = self.history
        other.errors = list(self.errors)
        other.dependents = list(self.dependents) if self.dependents else self.dependents
        return other

    def result(self) -> Result | None:
        if self.state not in FINISHED_STATES or self.finished_at is None:
            return None  # (a finished task always has its finish time)
        return Result(self.id, bool(self.result_ok), self.result_payload or b"",
                      self.result_codec or "msgpack", self.state, self.finished_at)


def _add_attempt(rec: _Rec, record: AttemptRecord) -> None:
    """Add ``record`` to ``rec``'s history (replacing an earlier record of the same
    attempt, as a late report does, like the SQL stores' upsert) and keep the last
    ATTEMPTS_KEPT attempts, in attempt order."""
    kept = [a for a in rec.history if a.number != record.number]
    kept.append(record)
    kept.sort(key=lambda a: a.number)
    rec.history = tuple(kept[-ATTEMPTS_KEPT:])


class _Undo:
    """What one open transaction level changed, as it was before the change.

    ``tasks``: task id -> the record's snapshot (None: it did not exist);
    ``schedules``: schedule name -> its record (None: it did not exist);
    ``totals``: what this level added to each outcome total.
    Restored if the level raises; merged into the enclosing level if it commits.
    """

    __slots__ = ("tasks", "schedules", "totals", "unsettled")

    def __init__(self) -> None:
        self.tasks: dict[str, _Rec | None] = {}
        self.schedules: dict[str, ScheduleRecord | None] = {}
        self.totals: dict[_Key, int] = {}
        self.unsettled: list[tuple[str, str]] | None = None  # the pending cascades before

    def merge_into(self, parent: _Undo) -> None:
        """Keep the older snapshot of each: the enclosing level undoes back to its own start."""
        for task_id, snap in self.tasks.items():
            parent.tasks.setdefault(task_id, snap)
        for key, n in self.totals.items():
            parent.totals[key] = parent.totals.get(key, 0) + n
        if parent.unsettled is None:
            parent.unsettled = self.unsettled
        for name, record in self.schedules.items():
            parent.schedules.setdefault(name, record)


class MemoryStore(Store):
    """Thread-safe in-memory :class:`Store` with heap-ordered per-queue ready sets."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._records: dict[str, _Rec] = {}
        self._seq = 0
        self._schedules = MemorySchedules()
        self._totals: dict[_Key, int] = {}  # outcome totals: never rebuilt, undone by delta
        self._unsettled: deque[tuple[str, str]] = deque()  # cascades cut short by cascade_limit
        # One undo log per open transaction level, innermost last.
        self._undo: list[_Undo] = []
        self._reset_indexes()

    # -- indexes -----------------------------------------------------------

    def _reset_indexes(self) -> None:
        self._ready: dict[str, list[tuple[int, int, str]]] = {}  # queue -> heap(-prio, seq, id)
        self._delayed: list[tuple[float, int, str]] = []  # heap(not_before, seq, id)
        self._deadlines: list[tuple[float, int, int, str]] = []  # heap(deadline, seq, token, id)
        self._finished: list[tuple[float, int, str]] = []  # heap(finished_at, seq, id)
        self._owners: dict[str, set[str]] = {}
        self._counts: dict[str, dict[str, int]] = {}
        self._named: dict[_Key, int] = {}  # (queue, name, state) -> tasks now
        self._leased = 0
        # Enqueue order for listings: the seqs ascending (deleted ones linger until
        # compacted) and seq -> id of the tasks that exist.
        self._order: list[int] = []
        self._by_seq: dict[int, str] = {}

    def _rebuild_indexes(self) -> None:
        self._reset_indexes()
        for rec in sorted(self._records.values(), key=lambda r: r.seq):
            self._count(rec, rec.state, 1)
            self._index(rec)
            self._order.append(rec.seq)
            self._by_seq[rec.seq] = rec.id
        for ready in self._ready.values():
            heapq.heapify(ready)
        heapq.heapify(self._delayed)
        heapq.heapify(self._deadlines)
        heapq.heapify(self._finished)

    def _index(self, rec: _Rec) -> None:
        """Add ``rec`` to the index of its (new) state; counts are kept by _move."""
        state = rec.state
        if state == READY:
            heapq.heappush(self._ready.setdefault(rec.queue, []), (-rec.priority, rec.seq, rec.id))
        elif state == DELAYED:
            heapq.heappush(self._delayed, (rec.not_before, rec.seq, rec.id))
        elif state == LEASED:
            assert rec.lease_owner is not None  # a leased task has its owner and deadline
            self._owners.setdefault(rec.lease_owner, set()).add(rec.id)
            self._push_deadline(rec)
            self._leased += 1
        elif state != WAITING:  # waiting tasks are found through their dependencies
            assert rec.finished_at is not None  # a finished task has its finish time
            heapq.heappush(self._finished, (rec.finished_at, rec.seq, rec.id))

    def _push_deadline(self, rec: _Rec) -> None:
        heap = self._deadlines
        assert rec.lease_deadline is not None
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

    def _count(self, rec: _Rec, state: str, delta: int) -> None:
        """Add ``delta`` tasks of ``rec``'s queue and name to ``state``'s counts."""
        queue = rec.queue
        counts = self._counts.get(queue)
        if counts is None:
            counts = self._counts[queue] = dict.fromkeys(STATES, 0)
        counts[state] += delta
        if delta < 0 and not any(counts.values()):
            del self._counts[queue]
        key = (queue, rec.name, state)
        n = self._named.get(key, 0) + delta
        if n:
            self._named[key] = n
        else:
            del self._named[key]

    def _total(self, rec: _Rec, outcome: str) -> None:
        """Count one ``outcome`` of ``rec``'s queue and name (undone with the transaction)."""
        key = (rec.queue, rec.name, outcome)
        self._totals[key] = self._totals.get(key, 0) + 1
        undo = self._undo[-1].totals
        undo[key] = undo.get(key, 0) + 1

    def _move(self, rec: _Rec, state: str) -> None:
        """Change ``rec``'s state, keeping counts and the owner index right.

        The caller sets the fields of the new state first; the new state's
        index entry is added here.
        """
        old = rec.state
        if old == LEASED:
            owner = rec.lease_owner
            owned = None if owner is None else self._owners.get(owner)
            if owner is not None and owned is not None:
                owned.discard(rec.id)
                if not owned:
                    del self._owners[owner]
            self._leased -= 1
        if state != LEASED:
            rec.lease_owner = None
            rec.lease_deadline = None
        self._count(rec, old, -1)
        self._count(rec, state, 1)
        if state in FINISHED_STATES and old not in FINISHED_STATES:
            self._total(rec, state)
        elif old in FINISHED_STATES and state not in FINISHED_STATES:
            self._total(rec, RETRIED)
        rec.state = state
        self._index(rec)

    # -- transactions ------------------------------------------------------

    def _touch(self, rec: _Rec) -> None:
        """Remember ``rec`` as it was before this transaction level changed it."""
        top = self._undo[-1].tasks
        if rec.id not in top:
            top[rec.id] = rec.copy()

    @contextlib.contextmanager
    def transaction(self, durable: bool = True, savepoints: bool = True) -> Iterator[None]:
        """Hold the lock for the block; roll its changes back if it raises.

        Undo snapshots are cheap here, so ``savepoints`` changes nothing.
        """
        with self._lock:
            self._undo.append(_Undo())
            try:
                yield
            except BaseException:
                undo = self._undo.pop()
                for key, n in undo.totals.items():
                    self._totals[key] -= n
                if undo.unsettled is not None:
                    self._unsettled = deque(undo.unsettled)
                if undo.tasks:
                    for task_id, snap in undo.tasks.items():
                        if snap is None:
                            self._records.pop(task_id, None)
                        else:
                            self._records[task_id] = snap
                    self._rebuild_indexes()
                if undo.schedules:
                    self._schedules.restore(undo.schedules)
                raise
            else:
                undo = self._undo.pop()
                if self._undo:
                    undo.merge_into(self._undo[-1])

    # -- the Store interface -------------------------------------------------

    def enqueue(self, tasks: Sequence[NewTask], now: float) -> list[bool]:
        """Insert tasks; False for ids that exist already (nothing changes)."""
        out: list[bool] = []
        with self.transaction():
            if any(t.after for t in tasks):
                self._check_after(tasks)
            undo = self._undo[-1].tasks
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
                rec.token = None
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
                rec.after = ()
                rec.dependents = None
                rec.progress = None
                rec.history = ()
                undo.setdefault(t.id, None)
                self._records[t.id] = rec
                if t.after:
                    self._link(rec, t.after, now)
                self._count(rec, rec.state, 1)
                if rec.state == FAILED:  # a dependency had failed already
                    self._total(rec, FAILED)
                self._index(rec)
                self._order.append(rec.seq)
                self._by_seq[rec.seq] = rec.id
                out.append(True)
        return out

    def _check_after(self, tasks: Sequence[NewTask]) -> None:
        """ValueError unless every dependency of a new task exists or comes earlier in the batch."""
        seen: set[str] = set()
        for t in tasks:
            if t.id in self._records or t.id in seen:
                continue  # not new: nothing of it is used
            for dep in t.after:
                if dep not in self._records and dep not in seen:
                    raise ValueError(f"unknown dependency {dep}")
            seen.add(t.id)

    def _link(self, rec: _Rec, after: Sequence[str], now: float) -> None:
        """Record a new task's dependencies and set its state from theirs (before it is counted)."""
        rec.after = tuple(dict.fromkeys(after))
        failed: _Rec | None = None
        waiting = False
        for dep_id in rec.after:
            dep = self._records[dep_id]
            self._touch(dep)
            if dep.dependents is None:
                dep.dependents = []
            dep.dependents.append(rec.id)
            if dep.state == SUCCEEDED:
                continue
            if dep.state in FINISHED_STATES:
                failed = failed or dep
            else:
                waiting = True
        if failed is not None:
            rec.state = FAILED
            rec.result_ok = False
            rec.result_payload = dependency_failed_error(failed.id, failed.state)
            rec.result_codec = "msgpack"
            rec.finished_at = now
        elif waiting:
            rec.state = WAITING

    def _settle(self, task_id: str, state: str, now: float) -> None:
        """``task_id`` just finished as ``state``: free or fail the tasks waiting for it.

        A success makes each waiting dependent whose dependencies have all
        succeeded ready (or delayed); any other end fails every waiting
        dependent, and theirs in turn (breadth first, in enqueue order). At most
        :attr:`cascade_limit` dependents here; the rest wait for settle_pending.
        """
        self._cascade(deque([(task_id, state)]), now, self.cascade_limit)

    def _cascade(self, work: deque[tuple[str, str]], now: float, budget: int | None) -> None:
        """Settle the dependents of the (id, state) in ``work``, breadth first, at most
        ``budget`` of them; what is left joins ``_unsettled`` (undone with the transaction)."""
        steps = 0
        while work:
            if budget is not None and steps >= budget:
                undo = self._undo[-1]
                if undo.unsettled is None:
                    undo.unsettled = list(self._unsettled)
                self._unsettled.extend(work)
                return
            dep_id, dep_state = work.popleft()
            dep = self._records.get(dep_id)
            if dep is None or not dep.dependents:
                continue
            waiting = [r for r in self._sorted_recs([i for i in dep.dependents if i in self._records])
                       if r.state == WAITING]
            if budget is not None and len(waiting) > budget - steps:
                waiting = waiting[:budget - steps]
                work.appendleft((dep_id, dep_state))  # the rest of its dependents: later
            for rec in waiting:
                steps += 1
                if dep_state != SUCCEEDED:
                    self._finish(rec, FAILED, False, dependency_failed_error(dep_id, dep_state),
                                 "msgpack", now)
                    work.append((rec.id, FAILED))
                elif all(self._records[a].state == SUCCEEDED
                         for a in rec.after if a in self._records):
                    self._touch(rec)
                    self._move(rec, DELAYED if rec.not_before > now else READY)

    def settle_pending(self, now: float, *, limit: int = 1000) -> bool:
        """Continue cascades cut short by ``cascade_limit``; True while more remain."""
        check_int("limit", limit, 1, MAX_BATCH)
        with self.transaction():
            if not self._unsettled:
                return False
            undo = self._undo[-1]
            if undo.unsettled is None:
                undo.unsettled = list(self._unsettled)
            work = deque(self._unsettled.popleft() for _ in range(min(limit, len(self._unsettled))))
            self._cascade(work, now, limit)
            return bool(self._unsettled)

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
                rec.token = new_token()
                rec.lease_owner = owner
                rec.lease_deadline = deadline
                rec.started_at = now
                self._move(rec, LEASED)
                out.append(Lease(rec.id, rec.queue, rec.name, rec.payload, rec.codec,
                                 rec.token, dict(rec.options), len(rec.errors)))
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

    @staticmethod
    def _end_attempt(rec: _Rec, now: float, outcome: str, note: AttemptNote | None,
                     error: bytes | None = None) -> None:
        """Add the attempt that holds ``rec``'s lease to its history (call after
        ``_touch``, before the lease is dropped); the last ATTEMPTS_KEPT are kept."""
        _add_attempt(rec, attempt_record(rec.attempts, rec.lease_owner, rec.started_at, now,
                                               outcome, note, error))

    def complete(self, outcomes: Sequence[Outcome], now: float) -> list[str]:
        """Store results; STORED, DUPLICATE, STALE or UNKNOWN for each outcome."""
        out: list[str] = []
        with self.transaction():
            ended: list[_Rec] = []  # finished here with dependents: settled after the batch
            for o in outcomes:
                rec = self._records.get(o.id)
                if rec is None:
                    out.append(UNKNOWN)
                elif rec.state in FINISHED_STATES:
                    out.append(DUPLICATE)
                elif o.ok and o.token == rec.token:
                    self._touch(rec)
                    if rec.state == LEASED:
                        self._end_attempt(rec, now, ATTEMPT_SUCCEEDED, note_of(o))
                    else:  # the last lease's late success: that lease was handed back
                        _add_attempt(rec, attempt_record(
                            rec.attempts, None, None, now, ATTEMPT_SUCCEEDED, note_of(o)))
                    self._finish(rec, SUCCEEDED, True, o.payload, o.codec, now)
                    out.append(STORED)
                    if rec.dependents:
                        ended.append(rec)
                elif not o.ok and rec.state == LEASED and o.token == rec.token:
                    self._touch(rec)
                    self._end_attempt(rec, now, ATTEMPT_FAILED, note_of(o), o.payload)
                    self._finish(rec, FAILED, False, o.payload, o.codec, now)
                    out.append(STORED)
                    if rec.dependents:
                        ended.append(rec)
                else:
                    out.append(STALE)
            for rec in ended:
                self._settle(rec.id, rec.state, now)
        return out

    def _holds(self, task_id: str, token: int) -> _Rec | None:
        rec = self._records.get(task_id)
        if rec is None or rec.state != LEASED or rec.token != token:
            return None
        return rec

    def nack(self, task_id: str, token: int, now: float, *, delay: float = 0.0,
             error: bytes | None = None, dead: bool = False,
             note: AttemptNote | None = None) -> bool:
        """Give a leased task back to ready, delayed or dead; False if ``token`` is stale."""
        with self.transaction():
            rec = self._holds(task_id, token)
            if rec is None:
                return False
            self._touch(rec)
            ended = ATTEMPT_FAILED if dead else ATTEMPT_DEFERRED if error is None else ATTEMPT_RETRIED
            if error is not None or note is not None or dead:  # a bare deferral never ran
                self._end_attempt(rec, now, ended, note, error)
            if error is not None:
                rec.errors.append(bytes(error))
                if not dead:
                    self._total(rec, RETRIED)
            if dead:
                last = rec.errors[-1] if rec.errors else b""
                self._finish(rec, DEAD, False, last, "msgpack", now)
                if rec.dependents:
                    self._settle(rec.id, DEAD, now)
            elif delay > 0:
                rec.not_before = now + delay
                self._move(rec, DELAYED)
            else:
                self._move(rec, READY)
            return True

    def _requeue(self, rec: _Rec) -> None:
        self._touch(rec)
        self._move(rec, READY)

    def _hand_back(self, rec: _Rec, now: float, outcome: str = ATTEMPT_LOST,
                   note: AttemptNote | None = None) -> None:
        """End the attempt holding ``rec``'s lease with ``outcome`` and make it ready."""
        self._touch(rec)
        self._end_attempt(rec, now, outcome, note)
        self._move(rec, READY)

    def adopt(self, pairs: Sequence[tuple[str, int]], owner: str, now: float,
              lease_for: float) -> list[str]:
        """Pass the leases whose token still holds (leased, or handed back and not leased
        since) to ``owner``; their ids."""
        out: list[str] = []
        with self.transaction():
            for task_id, token in pairs:
                rec = self._records.get(task_id)
                if rec is None or rec.token != token or rec.state not in (LEASED, READY) \
                        or task_id in out:
                    continue
                self._touch(rec)
                if rec.state == LEASED:
                    assert rec.lease_owner is not None
                    owned = self._owners.get(rec.lease_owner)
                    if owned is not None:
                        owned.discard(rec.id)
                        if not owned:
                            del self._owners[rec.lease_owner]
                    self._owners.setdefault(owner, set()).add(rec.id)
                    rec.lease_owner = owner
                    rec.lease_deadline = now + lease_for
                    self._push_deadline(rec)
                else:  # handed back when its session dropped: leased again, same attempt
                    rec.lease_owner = owner
                    rec.lease_deadline = now + lease_for
                    rec.started_at = now
                    self._move(rec, LEASED)
                out.append(task_id)
        return out

    def release(self, leases: Sequence[tuple[str, int]], now: float, *,
                note: AttemptNote | None = None) -> int:
        """Hand back the leases whose token still holds; how many did."""
        n = 0
        with self.transaction():
            for task_id, token in leases:
                rec = self._holds(task_id, token)
                if rec is not None:
                    self._hand_back(rec, now, ATTEMPT_RELEASED, note)
                    n += 1
        return n

    def _sorted_recs(self, ids: Sequence[str] | set[str]) -> list[_Rec]:
        return sorted((self._records[i] for i in ids), key=lambda r: r.seq)

    def release_owner(self, owner: str, now: float, *,
                      note: AttemptNote | None = None) -> list[str]:
        """Hand back every task leased to ``owner``; their ids in enqueue order."""
        with self.transaction():
            recs = self._sorted_recs(self._owners.get(owner, ()))
            for rec in recs:
                self._hand_back(rec, now, ATTEMPT_LOST, note)
            return [rec.id for rec in recs]

    def release_all(self, now: float, *, limit: int | None = None) -> int:
        """Hand back every leased task (at most ``limit``); how many."""
        check_limit(limit)
        with self.transaction():
            ids = [i for owned in self._owners.values() for i in owned]
            recs = self._sorted_recs(ids)[:limit]
            for rec in recs:
                self._hand_back(rec, now)
            return len(recs)

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

    def expire_leases(self, now: float, *, limit: int | None = None,
                      workers: Mapping[str, dict[str, Any]] | None = None) -> list[str]:
        """Hand back every task whose lease deadline is at or before ``now`` (at most
        ``limit``, earliest first)."""
        check_limit(limit)
        out: list[str] = []
        with self.transaction():
            heap = self._deadlines
            while heap and heap[0][0] <= now and (limit is None or len(out) < limit):
                deadline, _, token, task_id = heapq.heappop(heap)
                rec = self._records.get(task_id)
                if rec is None or rec.state != LEASED or rec.attempts != token \
                        or rec.lease_deadline != deadline:
                    continue  # extended, finished or handed back since
                worker = workers.get(rec.lease_owner or "") if workers else None
                self._hand_back(rec, now, ATTEMPT_LOST, AttemptNote(worker) if worker else None)
                out.append(task_id)
        return out

    def promote_due(self, now: float, *, limit: int | None = None) -> list[str]:
        """Make delayed tasks with ``not_before <= now`` ready (at most ``limit``, earliest
        first); their queues, deduplicated."""
        check_limit(limit)
        queues: dict[str, None] = {}
        n = 0
        with self.transaction():
            heap = self._delayed
            while heap and heap[0][0] <= now and (limit is None or n < limit):
                not_before, _, task_id = heapq.heappop(heap)
                rec = self._records.get(task_id)
                if rec is None or rec.state != DELAYED or rec.not_before != not_before:
                    continue
                self._requeue(rec)
                queues[rec.queue] = None
                n += 1
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
                result = None if rec is None else rec.result()
                if result is not None:
                    out[task_id] = result
        return out

    def get(self, task_id: str) -> TaskInfo | None:
        """Everything stored about one task, or None."""
        with self._lock:
            rec = self._records.get(task_id)
            return None if rec is None else self._info(rec, with_log=True)

    @staticmethod
    def _info(rec: _Rec, *, with_log: bool = False) -> TaskInfo:
        """The TaskInfo of ``rec``; its attempt log only ``with_log`` (``get``), as
        the other stores fill it."""
        return TaskInfo(
            id=rec.id, queue=rec.queue, name=rec.name, state=rec.state,
            priority=rec.priority, attempts=rec.attempts, created_at=rec.created_at,
            not_before=rec.not_before, lease_owner=rec.lease_owner,
            lease_deadline=rec.lease_deadline, started_at=rec.started_at,
            finished_at=rec.finished_at, options=dict(rec.options),
            errors=list(rec.errors), result=rec.result(), after=list(rec.after),
            progress=serde.unpackb(rec.progress) if rec.progress is not None else None,
            attempt_log=list(rec.history) if with_log else [], payload=rec.payload, codec=rec.codec,
        )

    def dependents(self, task_id: str, limit: int = 100) -> list[str]:
        """Ids of at most ``limit`` tasks waiting on ``task_id``, in id order."""
        check_int("limit", limit, 1, MAX_BATCH)
        with self._lock:
            rec = self._records.get(task_id)
            return sorted(rec.dependents)[:limit] if rec is not None and rec.dependents else []

    def cancel(self, task_id: str, now: float, error: bytes) -> tuple[str, str | None] | None:
        """Cancel an unfinished task; (its state before, its lease owner) or None if unknown."""
        with self.transaction():
            rec = self._records.get(task_id)
            if rec is None:
                return None
            before = rec.state
            if before in FINISHED_STATES:
                return before, None
            owner = rec.lease_owner if before == LEASED else None
            if before == LEASED:
                self._touch(rec)
                self._end_attempt(rec, now, ATTEMPT_CANCELLED, None)
            self._finish(rec, CANCELLED, False, error, "msgpack", now)
            if rec.dependents:
                self._settle(rec.id, CANCELLED, now)
            return before, owner

    def requeue(self, now: float, *, ids: Sequence[str] = (), queue: str | None = None,
                states: Sequence[str] = (DEAD,)) -> list[str]:
        """Send finished tasks in ``states`` back to ready; their ids in enqueue order."""
        wanted = finished_states(states, "requeue")
        with self.transaction():
            if ids:
                found = {i for i in ids if i in self._records}
                recs = self._sorted_recs(found)
                if queue is not None:
                    recs = [r for r in recs if r.queue == queue]
            elif queue is not None:
                recs = [r for r in self._records.values() if r.queue == queue]
                recs.sort(key=lambda r: r.seq)
            else:
                return []
            out: list[str] = []
            for rec in recs:
                if rec.state not in wanted:
                    continue
                blocked = False
                waiting = False
                for dep_id in rec.after:
                    dep = self._records.get(dep_id)
                    if dep is None or dep.state == SUCCEEDED:
                        continue
                    if dep.state in FINISHED_STATES:
                        blocked = True  # it would fail again at once: retry the dependency too
                        break
                    waiting = True
                if blocked:
                    continue
                self._touch(rec)
                rec.result_ok = rec.result_payload = rec.result_codec = None
                rec.finished_at = None
                rec.progress = None
                rec.options = {**rec.options, "retry_base": len(rec.errors)}
                if waiting:
                    state = WAITING
                else:
                    state = DELAYED if rec.not_before > now else READY
                self._move(rec, state)
                out.append(rec.id)
            return out

    def _unlink(self, rec: _Rec) -> None:
        """Drop every dependency link to or from ``rec`` (it is being deleted)."""
        for dep_id in rec.after:
            dep = self._records.get(dep_id)
            if dep is not None and dep.dependents:
                self._touch(dep)
                dep.dependents = [i for i in dep.dependents if i != rec.id] or None
        for child_id in rec.dependents or ():
            child = self._records.get(child_id)
            if child is not None and rec.id in child.after:
                self._touch(child)
                child.after = tuple(i for i in child.after if i != rec.id)

    def _delete(self, rec: _Rec) -> None:
        self._undo[-1].tasks.setdefault(rec.id, rec)  # the record itself is the snapshot
        del self._records[rec.id]
        self._count(rec, rec.state, -1)
        del self._by_seq[rec.seq]
        if len(self._order) > 2 * len(self._by_seq) + 1024:  # drop the deleted seqs
            self._order = [q for q in self._order if q in self._by_seq]
        if rec.after or rec.dependents:
            self._unlink(rec)

    def purge(self, *, queue: str | None = None, states: Sequence[str] = (DEAD,),
              limit: int | None = None) -> int:
        """Delete every task in ``states`` (of ``queue``, or of every queue); how many
        (at most ``limit``, by state name, then oldest first)."""
        wanted = finished_states(states, "purge")
        check_limit(limit)
        with self.transaction():
            doomed = [rec for rec in self._records.values()
                      if rec.state in wanted and (queue is None or rec.queue == queue)]
            if limit is not None:  # the order the SQLite store's (state, seq) index gives
                doomed = sorted(doomed, key=lambda r: (r.state, r.seq))[:limit]
            for rec in doomed:
                self._delete(rec)
            return len(doomed)

    def list_tasks(self, *, queue: str | None = None, state: str | None = None,
                   limit: int = 50, offset: int = 0) -> list[TaskInfo]:
        """Tasks filtered by queue and/or state, in enqueue order, paged."""
        check_page(state, limit, offset)
        with self._lock:
            recs = [rec for rec in self._records.values()
                    if (queue is None or rec.queue == queue) and (state is None or rec.state == state)]
            recs.sort(key=lambda r: r.seq)
            return [self._info(rec) for rec in recs[offset:offset + limit]]

    def set_progress(self, task_id: str, token: int, progress: dict[str, Any]) -> bool:
        """Record the progress report of the attempt holding the lease; False if stale."""
        blob = serde.packb(progress)
        with self.transaction():
            rec = self._holds(task_id, token)
            if rec is None:
                return False
            self._touch(rec)
            rec.progress = blob
            return True

    def purge_finished(self, before: float, *, limit: int | None = None) -> int:
        """Delete finished tasks that finished before ``before`` (at most ``limit``,
        earliest finished first); how many."""
        check_limit(limit)
        n = 0
        with self.transaction():
            heap = self._finished
            while heap and heap[0][0] < before and (limit is None or n < limit):
                finished_at, seq, task_id = heapq.heappop(heap)
                rec = self._records.get(task_id)
                if rec is None or rec.seq != seq or rec.state not in FINISHED_STATES \
                        or rec.finished_at != finished_at:
                    continue  # purged, requeued or finished again since
                self._delete(rec)
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

    def task_counts(self) -> dict[tuple[str, str | None, str], int]:
        """Tasks now in each (queue, task name, state) that has any."""
        with self._lock:
            return dict(sorted(self._named.items(), key=lambda kv: (kv[0][0], kv[0][1] or "",
                                                                     kv[0][2])))

    def outcome_totals(self) -> dict[tuple[str, str | None, str], int]:
        """The outcome counters: (queue, task name, outcome) -> how many ever."""
        with self._lock:
            return {k: n for k, n in sorted(self._totals.items(),
                                            key=lambda kv: (kv[0][0], kv[0][1] or "", kv[0][2]))
                    if n}

    # -- listings and counts by filter (the dashboard) ------------------------

    @staticmethod
    def _matcher(flt: TaskFilter) -> Any:
        """A predicate on records for every field of ``flt``."""
        states = frozenset(flt.states)
        key_id = task_id_for_key(flt.key) if flt.key is not None else None

        def match(rec: _Rec) -> bool:
            return ((not states or rec.state in states)
                    and (flt.queue is None or rec.queue == flt.queue)
                    and (flt.name is None or rec.name == flt.name)
                    and (flt.id_prefix is None or rec.id.startswith(flt.id_prefix))
                    and (key_id is None or rec.id == key_id)
                    and (flt.created_from is None or rec.created_at >= flt.created_from)
                    and (flt.created_to is None or rec.created_at < flt.created_to))
        return match

    def _scan(self, start: int | None, newest_first: bool) -> Iterator[int]:
        """Positions in ``_order`` after the cursor seq ``start``, in page order."""
        order = self._order
        if newest_first:
            i = len(order) if start is None else bisect.bisect_left(order, start)
            return iter(range(i - 1, -1, -1))
        i = 0 if start is None else bisect.bisect_right(order, start)
        return iter(range(i, len(order)))

    def list_page(self, flt: TaskFilter = ALL_TASKS, *, limit: int = 50,
                  cursor: str | None = None, newest_first: bool = True) -> TaskPage:
        """A page of the tasks ``flt`` selects in enqueue order, and the next cursor."""
        start = check_listing(flt, limit, cursor, newest_first)
        match = self._matcher(flt)
        with self._lock:
            found: list[tuple[int, TaskSummary]] = []
            examined = 0
            reach: int | None = None
            for i in self._scan(start, newest_first):
                seq = self._order[i]
                task_id = self._by_seq.get(seq)
                examined += 1
                if task_id is not None:
                    rec = self._records[task_id]
                    if match(rec):
                        found.append((seq, self._summary(rec)))
                        if len(found) == limit:
                            reach = seq
                            break
                if examined >= paging.LIST_BUDGET:
                    reach = seq
                    break
            rows, nxt = paging.merge([paging.Stream(found, reach)], limit, newest_first)
        return TaskPage(rows, None if nxt is None else str(nxt))

    @staticmethod
    def _summary(rec: _Rec) -> TaskSummary:
        return TaskSummary(rec.id, rec.queue, rec.name, rec.state, rec.priority, rec.attempts,
                           len(rec.errors), rec.created_at, rec.not_before, rec.started_at,
                           rec.finished_at, rec.lease_owner)

    def count_tasks(self, flt: TaskFilter = ALL_TASKS, *, cap: int = MAX_COUNT_CAP) -> TaskCount:
        """How many tasks ``flt`` selects: exact from the counters for states, queue and
        name; else counted up to ``cap`` within a bounded scan."""
        check_filter(flt)
        check_int("cap", cap, 1, MAX_COUNT_CAP)
        states = set(flt.states) or set(STATES)
        with self._lock:
            if flt.id_prefix is None and flt.key is None and flt.created_from is None \
                    and flt.created_to is None:
                n = sum(c for (q, name, state), c in self._named.items()
                        if state in states and (flt.queue is None or q == flt.queue)
                        and (flt.name is None or name == flt.name))
                return TaskCount(n, True)
            match = self._matcher(flt)
            n = 0
            examined = 0
            for i in self._scan(None, False):
                if examined >= paging.COUNT_BUDGET:
                    return TaskCount(min(n, cap), False)
                examined += 1
                task_id = self._by_seq.get(self._order[i])
                if task_id is not None and match(self._records[task_id]):
                    n += 1
                    if n > cap:
                        return TaskCount(cap, False)
            return TaskCount(n, True)

    # -- periodic schedules (store/schedules.py keeps the records) ------------

    def save_schedule(self, record: dict[str, Any]) -> None:
        """Insert or replace the schedule ``record["name"]``."""
        with self.transaction():
            self._schedules.save(record, self._undo[-1].schedules)

    def schedules(self) -> list[dict[str, Any]]:
        """Every schedule record, by name."""
        with self._lock:
            return self._schedules.all()

    def remove_schedule(self, name: str) -> bool:
        """Delete a schedule; False if there was none by that name."""
        with self.transaction():
            return self._schedules.remove(name, self._undo[-1].schedules)

    def mark_slot(self, name: str, slot: float) -> None:
        """Record that ``slot`` of ``name`` was enqueued (``last_slot`` only moves forward)."""
        with self.transaction():
            self._schedules.mark_slot(name, slot, self._undo[-1].schedules)

    def __repr__(self) -> str:
        return f"MemoryStore({len(self._records)} tasks)"

