"""Runs store calls in batches, many calls to one commit (group commit).

Calls made while the event loop handles one burst of messages are queued
and run together, in the order they were made, in one transaction at the
end of that loop iteration. Each call's future resolves only after the
commit that includes it; if that commit fails, every call of the batch
fails with its error (nothing of it happened, so nothing is answered).

Where a store runs its calls depends on what it says it is
(:attr:`~conveyor.store.base.Store.blocking_io`):

* **In-process stores** (memory, SQLite) run on the loop thread. With
  ``--sync full`` the fsync of one batch blocks the loop, and whatever arrives
  meanwhile becomes the next, larger batch: a thousand clients' submits cost a
  handful of fsyncs, not a thousand. Running on the loop thread (not a store
  thread) saves two thread hand-offs per call, which is most of a task's
  latency on a fast disk. When commits are cheap (no fsync) calls run at once
  instead ("inline"), and the master brackets the handling of one read with
  :meth:`StoreRunner.begin` and :meth:`StoreRunner.end`: everything that read
  caused (a submit and the lease that hands it to a worker, say) shares one
  commit.
* **Networked stores** (``blocking_io = True``) never run on the loop: each
  batch runs on one dedicated store thread (so every transaction stays on the
  one connection that thread uses), one batch at a time, while the loop goes on
  serving pings, heartbeats and everything that needs no store. Calls made
  while a batch is in flight become the next batch, the same group commit.
  Such a runner is never inline: a call cannot return at once.

When commits fail (a full disk, an I/O error) an inline runner stops being inline for
:data:`DEGRADED_FOR` seconds: each call then fails alone, through its future, so the
master answers each request with the error instead of closing the connections a failed
shared commit would have answered. A corrupt store is reported to :attr:`StoreRunner.on_fatal`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from concurrent.futures import Future as ThreadFuture
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NamedTuple

from ..store.base import Store
from .storefaults import is_fatal, is_store_fault

#: Seconds an inline runner runs calls in batches after a store write failed (see above).
DEGRADED_FOR = 5.0


class _Call(NamedTuple):
    """One queued store call and the future its caller awaits."""

    fn: Callable[..., Any]
    args: tuple[Any, ...]
    future: asyncio.Future[Any]
    durable: bool


#: What became of one call: (its future, whether it returned, its value or exception).
_Outcome = tuple["asyncio.Future[Any]", bool, Any]


class StoreRunner:
    """Queues store calls and runs each loop iteration's calls in one transaction."""

    def __init__(self, store: Store, loop: asyncio.AbstractEventLoop, *, max_batch: int = 1024,
                 inline: bool = False) -> None:
        self.store = store
        #: True when the store's calls run on the store thread, never on the loop.
        self.off_loop = store.blocking_io
        # inline: with nothing queued, run a call at once in its own commit. Worth it
        # when commits are cheap (no fsync): it saves the loop turns a deferred batch costs.
        self._inline = inline and not self.off_loop
        self._degraded_until = 0.0  # monotonic time until which calls run in batches (a write failed)
        self._loop = loop
        self._max_batch = max_batch
        self._pending: list[_Call] = []
        self._scheduled = False
        self._closing = False
        self._batching = False  # between begin() and end(): inline calls share one transaction
        self._batch: contextlib.AbstractContextManager[None] | None = None  # that transaction, once open
        self._batch_started = 0.0  # perf_counter() when that transaction began
        # Off the loop: one thread, so the store's connection is only ever used from it,
        # and the batch running there (one at a time, in call order).
        self._thread: ThreadPoolExecutor | None = None
        self._in_flight: ThreadFuture[list[_Outcome]] | None = None
        if self.off_loop:
            self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="conveyor-store")
        self.commits = 0
        #: Told how long each transaction took, from its start to its commit (seconds):
        #: the master's store commit time histogram. Called on whichever thread committed.
        self.on_commit: Callable[[float], None] | None = None
        #: Told of a store error the master cannot go on with (a corrupt file); on any thread.
        self.on_fatal: Callable[[BaseException], None] | None = None
        #: Why the last commit of :meth:`end` failed (None after one that succeeded).
        self.failure: BaseException | None = None

    @property
    def inline(self) -> bool:
        """True while a call with nothing queued runs at once (cheap commits, no recent write failure)."""
        return self._inline and time.monotonic() >= self._degraded_until

    def _fault(self, exc: BaseException) -> None:
        """A call or a commit failed with ``exc``: stop on corruption, run in batches for a while
        after a write failure."""
        if is_fatal(exc):
            if self.on_fatal is not None:
                self.on_fatal(exc)
        elif is_store_fault(exc) and self._inline:
            self._degraded_until = time.monotonic() + DEGRADED_FOR

    def _committed(self, started: float) -> None:
        self.commits += 1
        if self.on_commit is not None:
            self.on_commit(time.perf_counter() - started)

    def begin(self) -> None:
        """Inline calls from now to :meth:`end` run in one transaction, committed by ``end``.

        Their futures resolve as each call returns, before that commit: the caller
        (the master, handling one read) holds every reply and push until ``end``
        says the commit succeeded.
        """
        self._batching = True

    def end(self) -> bool:
        """Commit what ran since :meth:`begin`; False if that commit failed (nothing of it stays)."""
        self._batching = False
        batch, self._batch = self._batch, None
        if batch is None:
            return True
        try:
            batch.__exit__(None, None, None)
        except Exception as exc:
            self.failure = exc
            self._fault(exc)
            return False
        self.failure = None
        self._committed(self._batch_started)
        return True

    def call(self, fn: Callable[..., Any], *args: Any, durable: bool = True) -> asyncio.Future[Any]:
        """Schedule ``fn(*args)``; the future resolves after the commit that includes it.

        ``durable=False`` marks a change a restart undoes anyway (a lease, a
        lease extension, a progress report): a batch of only such calls is
        committed without an fsync, even with ``--sync full``. For a store off
        the loop, ``fn`` runs on the store thread: it must touch nothing but
        the store and its own arguments.
        """
        if self._closing:
            raise RuntimeError("store runner is closed")
        fut = self._loop.create_future()
        if self.inline and not self._pending:
            try:
                if self._batching:
                    if self._batch is None:
                        self._batch_started = time.perf_counter()
                        batch = self.store.transaction()
                        batch.__enter__()
                        self._batch = batch  # only once begun: end() commits what is open
                    # Each store method is a savepoint inside it: its error undoes it alone.
                    value = fn(*args)
                else:
                    # A store method alone in its transaction needs no savepoint: its error rolls back all.
                    alone = getattr(fn, "__self__", None) is self.store
                    started = time.perf_counter()
                    with self.store.transaction(durable=durable, savepoints=not alone):
                        value = fn(*args)
                    self._committed(started)
            except Exception as exc:
                self._fault(exc)
                fut.set_exception(exc)
            else:
                fut.set_result(value)
            return fut
        self._pending.append(_Call(fn, args, fut, durable))
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self._flush)
        return fut

    # -- running batches -------------------------------------------------------

    def _take(self) -> list[_Call]:
        batch = self._pending[: self._max_batch]
        del self._pending[: self._max_batch]
        return batch

    def _run(self, batch: list[_Call]) -> list[_Outcome]:
        """Run ``batch`` in one transaction (on whichever thread owns the store); never raises."""
        outcomes: list[_Outcome] = []
        started = time.perf_counter()
        try:
            with self.store.transaction(durable=any(call.durable for call in batch)):
                for call in batch:
                    try:
                        outcomes.append((call.future, True, call.fn(*call.args)))
                    except Exception as exc:  # that call fails (and is rolled back); the others commit
                        self._fault(exc)
                        outcomes.append((call.future, False, exc))
            self._committed(started)
        except Exception as exc:  # the commit itself failed: nothing in the batch happened
            self._fault(exc)
            if len(batch) > 1 and not self.off_loop and is_store_fault(exc):
                # A full disk fails the writes, not the reads that shared their commit: each
                # call again, alone, so status, fetches and inspection are still answered.
                return [outcome for call in batch for outcome in self._run([call])]
            outcomes = [(call.future, False, exc) for call in batch]
        return outcomes

    @staticmethod
    def _deliver(outcomes: list[_Outcome]) -> None:
        """Resolve the futures of a committed (or failed) batch; on the loop thread only."""
        for fut, ok, value in outcomes:
            if fut.cancelled():
                continue
            if ok:
                fut.set_result(value)
            else:
                fut.set_exception(value)

    def _flush(self) -> None:
        self._scheduled = False
        if self.off_loop:
            if self._in_flight is None:
                self._send()
            return  # else: what is queued goes when the batch in flight lands
        while self._pending:
            self._deliver(self._run(self._take()))

    def _send(self) -> None:
        """Hand the next batch to the store thread (off-loop stores)."""
        if not self._pending or self._thread is None:
            return
        in_flight = self._thread.submit(self._run, self._take())
        self._in_flight = in_flight
        in_flight.add_done_callback(self._landed_elsewhere)

    def _landed_elsewhere(self, in_flight: ThreadFuture[list[_Outcome]]) -> None:
        # On the store thread: the futures belong to the loop, so resolve them there.
        with contextlib.suppress(RuntimeError):  # the loop is closed: close() delivered them
            self._loop.call_soon_threadsafe(self._landed, in_flight)

    def _landed(self, in_flight: ThreadFuture[list[_Outcome]]) -> None:
        if in_flight is not self._in_flight:
            return  # close() delivered it already
        self._in_flight = None
        self._deliver(in_flight.result())
        self._send()  # the calls made meanwhile: the next batch

    def close(self) -> None:
        """Run the calls already queued; refuse new ones.

        Off the loop this waits (blocking the loop, once, at shutdown) for the
        batch in flight and the ones queued, and stops the store thread.
        """
        if self._thread is not None:
            if self._in_flight is not None:
                in_flight, self._in_flight = self._in_flight, None
                self._deliver(in_flight.result())
            while self._pending:
                self._deliver(self._thread.submit(self._run, self._take()).result())
            self._thread.shutdown(wait=True)
        else:
            self._flush()
        self._closing = True
