"""Runs store calls in batches, many calls to one commit (group commit).

Calls made while the event loop handles one burst of messages are queued
and run together, in the order they were made, in one transaction at the
end of that loop iteration. With ``--sync full`` the fsync of one batch
blocks the loop, and whatever arrives meanwhile becomes the next, larger
batch: a thousand clients' submits cost a handful of fsyncs, not a
thousand. Running on the loop thread (not a store thread) saves two thread
hand-offs per call, which is most of a task's latency on a fast disk.

When commits are cheap (no fsync) calls run at once instead ("inline"), and
the master brackets the handling of one read with :meth:`StoreRunner.begin`
and :meth:`StoreRunner.end`: everything that read caused (a submit and the
lease that hands it to a worker, say) shares one commit.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from ..store import Store


class StoreRunner:
    """Queues store calls and runs each loop iteration's calls in one transaction."""

    def __init__(self, store: Store, loop: asyncio.AbstractEventLoop, *, max_batch: int = 1024,
                 inline: bool = False) -> None:
        self.store = store
        # inline: with nothing queued, run a call at once in its own commit. Worth it
        # when commits are cheap (no fsync): it saves the loop turns a deferred batch costs.
        self.inline = inline
        self._loop = loop
        self._max_batch = max_batch
        self._pending: list[tuple[Callable[..., Any], tuple, asyncio.Future, bool]] = []
        self._scheduled = False
        self._closing = False
        self._batching = False  # between begin() and end(): inline calls share one transaction
        self._batch: Any = None  # that transaction, once a call opened it
        self.commits = 0

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
        except Exception:
            return False
        self.commits += 1
        return True

    def call(self, fn: Callable[..., Any], *args: Any, durable: bool = True) -> asyncio.Future:
        """Schedule ``fn(*args)``; the future resolves after the commit that includes it.

        ``durable=False`` marks a change a restart undoes anyway (a lease, a
        lease extension, a progress report): a batch of only such calls is
        committed without an fsync, even with ``--sync full``.
        """
        if self._closing:
            raise RuntimeError("store runner is closed")
        fut = self._loop.create_future()
        if self.inline and not self._pending:
            try:
                if self._batching:
                    if self._batch is None:
                        batch = self.store.transaction()
                        batch.__enter__()
                        self._batch = batch  # only once begun: end() commits what is open
                    # Each store method is a savepoint inside it: its error undoes it alone.
                    value = fn(*args)
                else:
                    # A store method alone in its transaction needs no savepoint: its error rolls back all.
                    alone = getattr(fn, "__self__", None) is self.store
                    with self.store.transaction(durable=durable, savepoints=not alone):
                        value = fn(*args)
                    self.commits += 1
            except Exception as exc:
                fut.set_exception(exc)
            else:
                fut.set_result(value)
            return fut
        self._pending.append((fn, args, fut, durable))
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self._flush)
        return fut

    def _flush(self) -> None:
        self._scheduled = False
        while self._pending:
            batch = self._pending[: self._max_batch]
            del self._pending[: self._max_batch]
            outcomes: list[tuple[asyncio.Future, bool, Any]] = []
            try:
                with self.store.transaction(durable=any(call[3] for call in batch)):
                    for fn, args, fut, _ in batch:
                        try:
                            outcomes.append((fut, True, fn(*args)))
                        except Exception as exc:  # that call fails (and is rolled back); the others commit
                            outcomes.append((fut, False, exc))
                self.commits += 1
            except Exception as exc:  # the commit itself failed: nothing in the batch happened
                outcomes = [(fut, False, exc) for _, _, fut, _ in batch]
            for fut, ok, value in outcomes:
                if fut.cancelled():
                    continue
                if ok:
                    fut.set_result(value)
                else:
                    fut.set_exception(value)

    def close(self) -> None:
        """Run the calls already queued; refuse new ones."""
        self._flush()
        self._closing = True
