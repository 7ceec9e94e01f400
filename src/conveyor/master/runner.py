"""Runs store calls on one dedicated thread, many calls to one commit.

The asyncio loop must never wait on a disk. Calls queue up while the
previous batch commits; the next batch takes them all in one transaction
(group commit), so a thousand clients' submits cost one fsync, not a thousand.
Calls run in the order they were made.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

from ..store import Store


class StoreRunner:
    """Serialises store calls onto one thread and batches them into transactions."""

    def __init__(self, store: Store, loop: asyncio.AbstractEventLoop, *, max_batch: int = 512) -> None:
        self.store = store
        self._loop = loop
        self._max_batch = max_batch
        self._pending: list[tuple[Callable[..., Any], tuple, asyncio.Future]] = []
        self._cv = threading.Condition()
        self._closing = False
        self.commits = 0
        self._thread = threading.Thread(target=self._run, name="conveyor-store", daemon=True)
        self._thread.start()

    def call(self, fn: Callable[..., Any], *args: Any) -> asyncio.Future:
        """Schedule ``fn(*args)`` on the store thread; the future resolves after its commit."""
        fut = self._loop.create_future()
        with self._cv:
            if self._closing:
                raise RuntimeError("store runner is closed")
            self._pending.append((fn, args, fut))
            if len(self._pending) == 1:
                self._cv.notify()
        return fut

    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._pending and not self._closing:
                    self._cv.wait()
                if not self._pending and self._closing:
                    return
                batch = self._pending[: self._max_batch]
                del self._pending[: self._max_batch]
            outcomes: list[tuple[asyncio.Future, bool, Any]] = []
            try:
                with self.store.transaction():
                    for fn, args, fut in batch:
                        try:
                            outcomes.append((fut, True, fn(*args)))
                        except Exception as exc:  # that call fails; the others still commit
                            outcomes.append((fut, False, exc))
                self.commits += 1
            except Exception as exc:  # the commit itself failed: nothing in the batch happened
                outcomes = [(fut, False, exc) for _, _, fut in batch]
            try:
                self._loop.call_soon_threadsafe(_settle, outcomes)
            except RuntimeError:  # loop closed during shutdown
                return

    def close(self) -> None:
        """Finish the calls already queued, then stop the thread."""
        with self._cv:
            self._closing = True
            self._cv.notify()
        self._thread.join(timeout=30)


def _settle(outcomes: list[tuple[asyncio.Future, bool, Any]]) -> None:
    for fut, ok, value in outcomes:
        if fut.cancelled():
            continue
        if ok:
            fut.set_result(value)
        else:
            fut.set_exception(value)
