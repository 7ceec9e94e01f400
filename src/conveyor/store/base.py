"""The store interface: the durable semantics every store implements.

Everything the master knows about work lives behind this interface; the
master keeps nothing in memory that a restart on the same store would need.
Every method takes ``now`` (wall-clock seconds, ``time.time()``) as an
argument instead of reading a clock, so expiry and delays are unit tests.

A task moves through these states::

    delayed ──promote_due──► ready ──lease──► leased ──complete──► succeeded / failed
                               ▲                 │
                               └──── release / release_owner / expire_leases / nack(delay=0)
                                                 │
                                                 └── nack(delay>0) ──► delayed
                                                 └── nack(dead=True) ──► dead

Every lease carries a *token*: 64 random bits (:func:`new_token`), new for
every lease, so nobody can guess one they were not handed. (The attempt
number is kept apart, for retries and inspection.) Every operation that
settles or changes a leased task (complete, nack, extend, release, progress)
must name the token of the lease that holds the task; any other token is
*stale* and changes nothing. The token of the last lease stays with a task
that was handed back (its worker's connection dropped) until the next lease:
that worker may still :meth:`Store.adopt` it, or report its result, until
someone else leases it. The first stored result wins; later ones are
duplicates.

Calls made inside one ``with store.transaction():`` block commit together
(group commit); a call made outside one commits by itself.
"""

from __future__ import annotations

import abc
import contextlib
import dataclasses
import secrets
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from ..ratelimit import TokenBucket
from ..records import (  # re-exported: the store interface speaks in these records
    ALL_TASKS,
    ATTEMPTS_KEPT,
    CANCELLED,
    DEAD,
    DELAYED,
    DUPLICATE,
    FAILED,
    FINISHED,
    LEASED,
    OUTCOMES,
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
    BulkResult,
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
)
from .validate import FINISHED_STATES, check_listing

__all__ = [
    "ALL_TASKS", "ATTEMPTS_KEPT", "AttemptNote", "AttemptRecord", "CANCELLED", "DEAD", "DELAYED", "DUPLICATE", "FAILED", "FINISHED", "LEASED",
    "OUTCOMES", "READY", "RETRIED", "STALE", "STATES", "STORED", "SUCCEEDED", "UNKNOWN", "WAITING",
    "BulkResult", "Lease", "NewTask", "Outcome", "QueueStats", "Result", "TaskCount", "TaskFilter",
    "TaskInfo", "TaskPage", "TaskSummary", "Store", "dependency_failed_error",
    "TOKEN_BITS", "TOKEN_OFFSET", "new_token",
    "CANCEL_CHANNEL", "CHANNELS", "DUE_CHANNEL", "PROGRESS_CHANNEL", "RESULTS_CHANNEL", "SPACE_CHANNEL",
    "WORK_CHANNEL",
]

#: Bits of randomness in a lease token (a uint64 on the wire).
TOKEN_BITS = 64
#: What SQL stores subtract from a token to keep it in a signed 64-bit column
#: (stored = token - TOKEN_OFFSET; all 64 random bits are kept).
TOKEN_OFFSET = 1 << 63


def new_token() -> int:
    """A fresh lease token: 64 bits from the OS's CSPRNG (0 <= token < 2**64)."""
    return secrets.randbits(TOKEN_BITS)


# The channels several masters on one store announce changes on (LISTEN/NOTIFY on
# PostgreSQL); each payload is JSON ``[sender master id, items]``.
#: Items: queues that got ready work (null instead of a list: any queue may have).
WORK_CHANNEL = "conveyor_work"
#: Items: ids of tasks that finished (their results are in the store).
RESULTS_CHANNEL = "conveyor_results"
#: Items: ``"<lease owner session> <task id>"`` of running tasks cancelled.
CANCEL_CHANNEL = "conveyor_cancel"
#: Items: ids of leased tasks whose progress report changed.
PROGRESS_CHANNEL = "conveyor_progress"
#: Items: queues that got delayed tasks (the leader looks at the next due time again).
DUE_CHANNEL = "conveyor_due"
#: Items: bounded queues (a maxsize in the shared queues table) that items left: putters
#: parked on them may go on (null instead of a list: any bounded queue may have room).
SPACE_CHANNEL = "conveyor_space"
CHANNELS = (WORK_CHANNEL, RESULTS_CHANNEL, CANCEL_CHANNEL, PROGRESS_CHANNEL, DUE_CHANNEL, SPACE_CHANNEL)


class Store(abc.ABC):
    """The durable semantics of queues, leases and results."""

    #: True when a commit costs no fsync, so batching commits gains little.
    cheap_commits: bool = True

    #: True when a call waits on I/O the master's event loop must not wait for (a
    #: database across the network): the store runner then runs this store's calls
    #: on one thread of its own, one transaction at a time. False for in-process
    #: stores (memory, SQLite), whose calls are cheap enough to run on the loop.
    blocking_io: bool = False

    #: The most dependents one call (complete, nack, cancel) frees or fails; the
    #: rest of that cascade is kept, durably, for :meth:`settle_pending`. None
    #: (the default) settles every one in the call itself. A master that sets it
    #: calls settle_pending regularly (and at start): until then the rest stay
    #: WAITING, which no lease hands out, so nothing runs that should not.
    cascade_limit: int | None = None

    @abc.abstractmethod
    def enqueue(self, tasks: Sequence[NewTask], now: float) -> list[bool]:
        """Insert tasks; one bool each: True if new, False if that id existed (nothing changes).

        Idempotent by id, so a client that resubmits after a reconnect never
        creates a second task. Tasks with ``not_before > now`` become delayed.

        Dependencies: a task whose ``after`` names tasks that have not all
        succeeded yet is WAITING; when the last of them succeeds it becomes
        ready (or delayed, if its ``not_before`` is still ahead). If any of
        them fails, dies or is cancelled — now or later — the waiting task is
        finished as FAILED with the result from :func:`dependency_failed_error`
        naming that dependency, and so on down the chain. Every id in
        ``after`` must exist (in the store or earlier in the same batch):
        otherwise ValueError naming it, and nothing of the batch is inserted.
        """

    @abc.abstractmethod
    def lease(self, queue: str, limit: int, owner: str, now: float, lease_for: float) -> list[Lease]:
        """Lease up to ``limit`` ready tasks of ``queue`` to ``owner``.

        Highest priority first, FIFO (enqueue order) within a priority. Each
        leased task's attempt count goes up by one and it gets a new random
        token (:func:`new_token`); its lease ends at ``now + lease_for`` unless
        extended.
        """

    @abc.abstractmethod
    def adopt(self, pairs: Sequence[tuple[str, int]], owner: str, now: float,
              lease_for: float) -> list[str]:
        """A worker that reconnected (a new session ``owner``, maybe on another master)
        claims the leases it still holds: each (id, token) whose token is still the
        task's lease token passes to ``owner`` with its deadline at ``now + lease_for``
        — a task still leased (to its old session), or one handed back to ready when
        that session dropped and not leased since (leased again, same token and
        attempt). Returns the ids adopted; the rest are lost to the worker."""

    def take(self, queue: str, limit: int, owner: str, now: float) -> list[Lease]:
        """Lease up to ``limit`` ready tasks and acknowledge them at once (an empty
        success): what a plain-queue ``get`` that acknowledges on get does. The
        same as ``lease`` then ``complete`` of each lease; stores may do it in one step.
        """
        got = self.lease(queue, limit, owner, now, 0.0)
        if got:
            self.complete([Outcome(x.id, x.token, True, b"") for x in got], now)
        return got

    @abc.abstractmethod
    def complete(self, outcomes: Sequence[Outcome], now: float) -> list[str]:
        """Store final results; one of STORED, DUPLICATE, STALE, UNKNOWN for each.

        A failure is stored only from the attempt that holds the lease now (its
        token); from any other it is STALE. A success is stored from the token of
        the last lease, also when that lease was handed back since (its worker's
        connection dropped) and nobody leased the task again; from any other
        token it is STALE. A stored result
        makes the task succeeded or failed and ends its lease, and adds the
        attempt to the task's history (its worker, start and output from the
        Outcome) in the same transaction.
        """

    @abc.abstractmethod
    def nack(self, task_id: str, token: int, now: float, *, delay: float = 0.0,
             error: bytes | None = None, dead: bool = False,
             note: AttemptNote | None = None) -> bool:
        """Give a leased task back after a failed attempt: to ready (or delayed by
        ``delay`` seconds), or to dead. ``error`` (when given) is appended to the
        task's error history; with ``error=None`` the attempt is not counted as a
        failure (a deferral, e.g. by a rate limit). False (and nothing changes) if
        ``token`` does not hold the lease. A dead task's dependents fail. The
        attempt joins the task's history (retried, failed, or deferred when given
        a ``note``, unless ``note.outcome`` says more, e.g. timed out); a deferral
        with no error and no note (a rate limit, before any worker ran it) does not."""

    @abc.abstractmethod
    def release(self, leases: Sequence[tuple[str, int]], now: float, *,
                note: AttemptNote | None = None) -> int:
        """Hand leased tasks back to ready without a result (a worker's warm shutdown).

        Only pairs whose token still holds the lease count; returns how many did.
        Each such attempt joins its task's history as released (``note``: the worker).
        """

    @abc.abstractmethod
    def release_owner(self, owner: str, now: float, *,
                      note: AttemptNote | None = None) -> list[str]:
        """Hand back every task leased to ``owner`` (its connection dropped); their ids.

        Each attempt joins its task's history as a lost lease (``note``: the worker).
        """

    @abc.abstractmethod
    def release_all(self, now: float, *, limit: int | None = None) -> int:
        """Hand back every leased task (master start-up: no lease survives a restart).
        Each attempt joins its task's history as a lost lease.

        With ``limit`` (1..validate.MAX_BATCH), at most that many per call, each call
        one short transaction: call until it returns less than the limit.
        """

    @abc.abstractmethod
    def extend_owner(self, owner: str, now: float, lease_for: float) -> int:
        """Push the lease deadline of every task ``owner`` holds to ``now + lease_for``."""

    @abc.abstractmethod
    def expire_leases(self, now: float, *, limit: int | None = None,
                      workers: Mapping[str, dict[str, Any]] | None = None) -> list[str]:
        """Hand back every task whose lease deadline passed; their ids.

        Each attempt joins its task's history as a lost lease, with the worker
        ``workers`` gives for its lease owner (session id), if any.

        With ``limit``, the earliest deadlines first, at most that many per call:
        call until fewer than the limit come back.
        """

    @abc.abstractmethod
    def promote_due(self, now: float, *, limit: int | None = None) -> list[str]:
        """Make delayed tasks whose ``not_before`` has come ready; their queues (deduplicated).

        With ``limit``, at most that many (earliest due first) per call: call again
        while :meth:`next_due` is at or before ``now``.
        """

    @abc.abstractmethod
    def settle_pending(self, now: float, *, limit: int = 1000) -> bool:
        """Continue the dependency cascades :attr:`cascade_limit` cut short: settle
        about ``limit`` more dependents in one transaction. True while more remain."""

    @abc.abstractmethod
    def next_due(self) -> float | None:
        """The earliest ``not_before`` of any delayed task, or None."""

    @abc.abstractmethod
    def results(self, ids: Sequence[str]) -> dict[str, Result]:
        """Stored results of the finished tasks among ``ids`` (others are absent)."""

    @abc.abstractmethod
    def get(self, task_id: str) -> TaskInfo | None:
        """Everything stored about one task, or None."""

    @abc.abstractmethod
    def dependents(self, task_id: str, limit: int = 100) -> list[str]:
        """Ids of at most ``limit`` (1..validate.MAX_BATCH) tasks whose ``after``
        names ``task_id``, in id order (an index lookup, never a scan of every task)."""

    @abc.abstractmethod
    def cancel(self, task_id: str, now: float, error: bytes) -> tuple[str, str | None] | None:
        """Cancel a task that has not finished: it becomes CANCELLED with a failed
        result whose payload is ``error`` (its dependents fail, as for any failure).

        Returns (the state it had, the lease owner if it was leased) — so the
        caller can stop it where it runs — or None for an unknown id. A
        finished task is left as it is (its state is returned).
        """

    @abc.abstractmethod
    def requeue(self, now: float, *, ids: Sequence[str] = (), queue: str | None = None,
                states: Sequence[str] = (DEAD,)) -> list[str]:
        """Send finished tasks in ``states`` back to ready (``conveyor retry``): the
        given ``ids``, or every such task of ``queue``. Their results are cleared,
        their error history is kept, and ``options["retry_base"]`` is set to the
        number of errors so far so the retry budget starts again. Returns the ids
        requeued (in enqueue order); ids not in ``states`` are skipped."""

    @abc.abstractmethod
    def purge(self, *, queue: str | None = None, states: Sequence[str] = (DEAD,),
              limit: int | None = None) -> int:
        """Delete every task in ``states`` (of ``queue``, or of every queue); how many.

        With ``limit``, at most that many per call (by state name, then oldest
        first): call until it returns less than the limit.
        """

    @abc.abstractmethod
    def list_tasks(self, *, queue: str | None = None, state: str | None = None,
                   limit: int = 50, offset: int = 0) -> list[TaskInfo]:
        """Tasks filtered by queue and/or state, in enqueue order, paged."""

    @abc.abstractmethod
    def set_progress(self, task_id: str, token: int, progress: dict[str, Any]) -> bool:
        """Record the latest progress report of the attempt holding the lease
        (False, nothing changes, for a stale token or a task not leased)."""

    @abc.abstractmethod
    def pending_counts(self, queue: str) -> tuple[int, int, int]:
        """(ready, delayed, leased) counts of one queue; cheap enough to call per put."""

    @abc.abstractmethod
    def purge_finished(self, before: float, *, limit: int | None = None) -> int:
        """Delete finished tasks (and their results) that finished before ``before``.

        With ``limit``, at most that many per call (earliest finished first): call
        until it returns less than the limit (result-TTL expiry in bounded steps).
        """

    @abc.abstractmethod
    def stats(self) -> dict[str, QueueStats]:
        """Counts by state for every queue that has tasks.

        From counters kept in the transactions that change task states: its cost
        does not grow with the number of tasks.
        """

    @abc.abstractmethod
    def task_counts(self) -> dict[tuple[str, str | None, str], int]:
        """Tasks now in each (queue, task name, state) that has any (name None: plain
        queue items). From the same counters as :meth:`stats`: O(queues x names)."""

    @abc.abstractmethod
    def outcome_totals(self) -> dict[tuple[str, str | None, str], int]:
        """Monotonic counters (queue, task name, outcome) -> how many ever, for each
        outcome in OUTCOMES (succeeded, failed, dead, cancelled, retried): what
        Prometheus counters read. Purges never decrease them; a rolled-back
        transaction leaves them as they were. (A SQLite file made before they
        existed starts them from the finished tasks it holds.)"""

    # -- listings, counts and bulk actions by filter (the dashboard) ----------

    @abc.abstractmethod
    def list_page(self, flt: TaskFilter = ALL_TASKS, *, limit: int = 50,
                  cursor: str | None = None, newest_first: bool = True) -> TaskPage:
        """A page of summaries of the tasks ``flt`` selects, in enqueue order (newest
        or oldest first), and the cursor of the next page.

        Keyset paging: ``cursor`` (a previous page's) resumes after its last row,
        without OFFSET, and each call examines a bounded number of rows, so a page
        costs the same at any depth; a sparse filter may give short or empty pages
        with a cursor (ask again). ``limit`` 1..validate.MAX_PAGE. Bad arguments
        raise ValueError naming the argument, before anything is read.
        """

    @abc.abstractmethod
    def count_tasks(self, flt: TaskFilter = ALL_TASKS, *, cap: int = 100_000) -> TaskCount:
        """How many tasks ``flt`` selects (what a bulk action would touch): exact when
        the counters answer it (states, queue and name only), else counted up to
        ``cap`` (1..validate.MAX_COUNT_CAP) within a bounded scan; ``exact`` False
        means "at least n"."""

    def requeue_matching(self, flt: TaskFilter, now: float, *, limit: int = 500,
                         cursor: str | None = None) -> BulkResult:
        """One bounded batch of "retry what this filter selects", in one transaction:
        :meth:`requeue` the finished tasks among the next ``limit`` (1..MAX_PAGE) that
        ``flt`` selects, oldest first. Call again with the returned cursor until it
        is None. Tasks whose dependency failed are skipped (as in :meth:`requeue`)."""
        check_listing(flt, limit, cursor, False)
        wanted = _eligible(flt, FINISHED_STATES)
        if not wanted:
            return BulkResult([], None)
        with self.transaction():
            page = self.list_page(_with_states(flt, wanted), limit=limit, cursor=cursor,
                                  newest_first=False)
            done = self.requeue(now, ids=[t.id for t in page.tasks], states=sorted(wanted)) \
                if page.tasks else []
        return BulkResult(done, page.cursor)

    def cancel_matching(self, flt: TaskFilter, now: float, error: bytes, *, limit: int = 500,
                        cursor: str | None = None) -> BulkResult:
        """One bounded batch of "cancel what this filter selects", in one transaction:
        :meth:`cancel` the unfinished tasks among the next ``limit`` that ``flt``
        selects, oldest first. ``cancelled`` names each one's state before and its
        lease owner (to stop it where it runs). Call again with the returned cursor
        until it is None."""
        check_listing(flt, limit, cursor, False)
        wanted = _eligible(flt, frozenset(STATES) - FINISHED_STATES)
        if not wanted:
            return BulkResult([], None)
        out = BulkResult([], None)
        with self.transaction():
            page = self.list_page(_with_states(flt, wanted), limit=limit, cursor=cursor,
                                  newest_first=False)
            for t in page.tasks:
                got = self.cancel(t.id, now, error)
                if got is not None and got[0] not in FINISHED_STATES:
                    out.ids.append(t.id)
                    out.cancelled.append((t.id, got[0], got[1]))
        out.cursor = page.cursor
        return out

    # -- periodic schedules (conveyor.schedule; the master's scheduler loop) --
    # A record is a dict: name, task, queue, payload (the encoded arguments),
    # codec, cron, every, tz, missed, options, source ("code" | "cli"),
    # created_at, last_slot (the latest slot enqueued, or None).
    @abc.abstractmethod
    def save_schedule(self, record: dict[str, Any]) -> None:
        """Insert or replace the schedule ``record["name"]``, its ``last_slot`` included
        (``record.get("last_slot")``: None means no slot enqueued yet)."""

    @abc.abstractmethod
    def schedules(self) -> list[dict[str, Any]]:
        """Every schedule record, by name."""

    @abc.abstractmethod
    def remove_schedule(self, name: str) -> bool:
        """Delete a schedule; False if there was none by that name."""

    @abc.abstractmethod
    def mark_slot(self, name: str, slot: float) -> None:
        """Record that ``slot`` of schedule ``name`` was enqueued. ``last_slot`` only
        moves forward (an older slot leaves it as it is); an unknown name is ignored."""

    @contextlib.contextmanager
    def transaction(self, durable: bool = True, savepoints: bool = True) -> Iterator[None]:
        """Group the calls inside into one commit (a no-op where commits are free).

        ``durable=False`` lets a store skip forcing the commit to disk (no
        fsync even with sync "full"): for changes a restart undoes anyway,
        such as leases, which every master start voids. A later durable
        commit makes it durable too. ``savepoints=False`` tells a store that
        any error inside ends the whole transaction, so the calls directly
        inside need no savepoints of their own.
        """
        yield

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release files and connections."""

    # -- several masters on one store (PostgreSQL) ------------------------------
    # A store several masters may share says ``shared = True`` and implements these.
    # The defaults are the single-master versions (memory, SQLite: one master per
    # store): that master is alive, leads, owns every lease and has no peers.

    #: True when several masters may serve this store at once.
    shared: bool = False

    def heartbeat_master(self, master_id: str, address: str, info: Mapping[str, Any],
                         now: float) -> float | None:
        """Register (first call) or refresh master ``master_id``: its address, what
        ``conveyor status`` shows of it (``info``), and a heartbeat on the store's own
        clock. From the first call on, the leases this store object hands out (and
        adopts) name that master. Returns the store's clock at the heartbeat (epoch
        seconds), or None for a store with no clock of its own (single master)."""
        return None

    def release_dead(self, timeout: float, now: float, *, limit: int | None = None) -> int:
        """Hand back the leases of masters whose heartbeat is older than ``timeout``
        seconds (by the store's clock), and of no master at all; forget such masters
        once they hold none. How many leases. Never touches a live master's leases.

        With ``limit``, at most that many per call: call until fewer come back."""
        return 0

    def masters(self) -> list[dict[str, Any]]:
        """Every registered master: ``id``, ``address``, ``started_at``,
        ``heartbeat_age`` (seconds since its last heartbeat, by the store's clock) and
        ``info``; oldest first. Empty for a single-master store."""
        return []

    def try_lead(self) -> bool:
        """True while this store object holds the cluster's leadership (taken if free;
        lost only with the connection holding it). The leader master alone runs the
        reaper's expiry, delay promotion, purges and periodic schedules."""
        return True

    def take_tokens(self, name: str, capacity: float, per: float, n: int) -> tuple[int, float]:
        """Take up to ``n`` tokens from the rate-limit bucket ``name`` (``capacity`` tokens,
        refilled at ``capacity / per`` a second on the store's clock; a new bucket is
        full): (how many were taken, the tokens left, below 1 when not all were). On a
        shared store every master takes from the one bucket, in the caller's transaction."""
        # One master per store: its buckets can live in this object (made on first use).
        buckets: dict[str, TokenBucket] = self.__dict__.setdefault("_local_buckets", {})
        bucket = buckets.get(name)
        if bucket is None:
            bucket = buckets[name] = TokenBucket(capacity, per)
        bucket.capacity, bucket.per = capacity, per
        now = time.monotonic()
        taken = 0
        while taken < n and bucket.take(now) == 0.0:
            taken += 1
        return taken, bucket.tokens

    def enqueue_bounded(self, queue: str, tasks: Sequence[NewTask], maxsize: int, now: float) -> int:
        """Enqueue the first of ``tasks`` while ``queue`` holds fewer than ``maxsize`` ready
        or delayed items; how many were enqueued. On a shared store the count and the
        insert hold the queue's lock, so masters putting at once never pass ``maxsize``."""
        ready, delayed, _ = self.pending_counts(queue)
        n = max(0, min(len(tasks), maxsize - ready - delayed))
        if n:
            self.enqueue(tasks[:n], now)
        return n

    def finished_since(self, since: float, limit: int = 10_000) -> list[str]:
        """Ids of at most ``limit`` tasks that finished at or after ``since`` (wall time),
        earliest first: what a master re-reads after it may have missed announcements.
        Empty for a single-master store (there is nobody else to miss)."""
        return []

    def listen(self, on_notice: Callable[[str | None, str], None], stop: threading.Event) -> None:
        """Hear other masters' announcements until ``stop`` is set (blocking: run it on a
        thread of its own). ``on_notice(channel, payload)`` for each; ``on_notice(None,
        since)`` each time listening (re)starts, when anything may have been missed:
        ``since`` is "" the first time, else the wall time (``repr(float)``) up to which
        the lost connection was known to hear everything. A single-master store has no
        peers: it just waits for ``stop``."""
        stop.wait()


def _eligible(flt: TaskFilter, allowed: frozenset[str]) -> frozenset[str]:
    """The states a bulk action may touch among those ``flt`` selects."""
    return frozenset(flt.states) & allowed if flt.states else allowed


def _with_states(flt: TaskFilter, states: frozenset[str]) -> TaskFilter:
    """``flt`` narrowed to ``states``."""
    return dataclasses.replace(flt, states=tuple(sorted(states)))


def dependency_failed_error(dependency_id: str, state: str) -> bytes:
    """The error stored for a task whose dependency ``dependency_id`` ended ``state``."""
    from ..serde import packb

    return packb({
        "type": "conveyor.errors.DependencyFailed",
        "message": f"dependency {dependency_id} {state}",
        "traceback": "",
        "dependency": dependency_id,
    })
