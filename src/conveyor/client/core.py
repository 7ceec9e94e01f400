"""What every client adds to a link: tasks waiting for results, resubmitted after a reconnect.

Every request conveyor makes is safe to send twice (submits are idempotent by
task id), so when the connection drops the link (conveyor.link) reconnects with
backoff and resends the requests still unanswered, and ``ResultTracking``
resubscribes to every task whose result it has not seen (committed ones are in
the store: only their ids go again): a client whose master restarts loses nothing. ``ClientCore`` is the asyncio client's connection;
the sync client's is ``ThreadedCore`` (client/threaded.py).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from .. import protocol, wire
from ..errors import ProtocolError
from ..link.aio import AsyncLink
from ..link.state import LinkState
from ..records import NewTask, Result

log = logging.getLogger("conveyor.client")

ResultCallback = Callable[[Result], None]

#: Tasks per SUBMIT frame when pending tasks are resubmitted after a reconnect.
RESUBMIT_BATCH = 1000


class ResultTracking(LinkState):
    """Tasks submitted or watched through a link, until their results arrive.

    Mixed in before an I/O edge (``AsyncLink``, ``BlockingLink``): it adds
    ``submit_nowait`` and ``watch``, takes RESULTS pushes, and after each
    reconnect resubscribes every task still waiting whose submit was committed
    (the store has it: nothing accepted is lost) and resubmits the others and
    those with dependencies (a submit still unanswered is resent by the link itself).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # task id -> what waits for its result: ``(wire task, callbacks)`` while the task
        # must be resubmitted after a reconnect (its submit not committed yet, or it has
        # dependencies), else the callbacks alone (resubscribed by id). Callbacks are one
        # callback, or a list of several. A client may hold a million of these: no tuple
        # and no list per task in the common case keeps each small (and the GC's passes short).
        self._pending: dict[str, Any] = {}

    def _resend(self) -> None:
        """After a (re)connect: resend unanswered requests, then resubmit pending tasks."""
        with self._lock:
            super()._resend()
            resent_ids: set[str] = set()
            for op, fields, _fut in self._requests.values():
                if op == protocol.SUBMIT:
                    resent_ids.update(t[0] for t in fields["tasks"])
            rest: list[list[Any]] = []
            watched: list[str] = []
            for tid, entry in self._pending.items():
                if tid not in resent_ids:
                    if isinstance(entry, tuple):
                        rest.append(entry[0])
                    else:
                        watched.append(tid)
            for i in range(0, len(rest), RESUBMIT_BATCH):
                self._send(protocol.SUBMIT, 0, {"tasks": rest[i:i + RESUBMIT_BATCH]})
            for i in range(0, len(watched), RESUBMIT_BATCH):
                self._send(protocol.SUBSCRIBE, 0, {"ids": watched[i:i + RESUBMIT_BATCH]})

    def _on_push(self, msg: protocol.Message) -> None:
        if msg.op != protocol.RESULTS:
            super()._on_push(msg)
            return
        for item in msg.fields.get("results", ()):
            try:
                result = wire.result_from_wire(item)
            except ProtocolError:
                log.warning("ignoring a malformed result from the master")
                continue
            with self._lock:
                entry = self._pending.pop(result.id, None)
            for callback in _callbacks(entry):
                try:
                    callback(result)
                except Exception:  # a user callback must not kill the connection
                    log.exception("result callback failed")

    def submit_nowait(self, tasks: list[NewTask], callbacks: list[ResultCallback]) -> Any:
        """Send tasks; each callback gets its task's result. The future resolves on commit."""
        items = [wire.task_to_wire(t) for t in tasks]
        with self._lock:
            for item, cb in zip(items, callbacks):
                self._add_pending(item[0], item, cb)
        try:
            fut = self.request_nowait(protocol.SUBMIT, {"tasks": items})
        except BaseException:  # refused unsent (over the master's frame limit): nothing to resubmit
            with self._lock:
                for item in items:
                    self._pending.pop(item[0], None)
            raise

        def settled(f: Any) -> None:
            with self._lock:
                if f.cancelled() or f.exception() is not None:
                    for item in items:
                        self._pending.pop(item[0], None)  # the submit failed: its futures got the error
                    return
                # Committed: the store has the task now, so after a reconnect a SUBSCRIBE
                # (its id) is enough. Keeping only the id and the callbacks halves what a
                # held future costs here and spares a restarted master re-inserting
                # every waiting task. Not for a task with dependencies (``after``, the
                # wire item's last field): resubmitting it is what tells a restarted
                # master to follow it (to deliver its failure if a dependency fails).
                for item in items:
                    entry = self._pending.get(item[0])
                    if isinstance(entry, tuple) and entry[0] is item and not item[8]:
                        self._pending[item[0]] = entry[1]

        fut.add_done_callback(settled)
        return fut

    def watch(self, task_id: str, callback: ResultCallback) -> Any:
        """Get ``task_id``'s result through ``callback`` when it is stored (now if it is)."""
        with self._lock:
            self._add_pending(task_id, None, callback)
        return self.request_nowait(protocol.SUBSCRIBE, {"ids": [task_id]})

    def _add_pending(self, task_id: str, item: list[Any] | None, callback: ResultCallback) -> None:
        """Remember who waits for a task's result (several may: one key, one task)."""
        entry = self._pending.get(task_id)
        if entry is None:
            self._pending[task_id] = callback if item is None else (item, callback)
            return
        known, callbacks = entry if isinstance(entry, tuple) else (None, entry)
        callbacks = [*callbacks, callback] if isinstance(callbacks, list) else [callbacks, callback]
        if known is None:
            known = item
        self._pending[task_id] = callbacks if known is None else (known, callbacks)

    def waiting(self, task_id: str | None = None) -> list[ResultCallback]:
        """The callbacks waiting for ``task_id``'s result (None: for every task's)."""
        with self._lock:
            if task_id is not None:
                return _callbacks(self._pending.get(task_id))
            return [cb for entry in self._pending.values() for cb in _callbacks(entry)]


def _callbacks(entry: Any) -> list[ResultCallback]:
    """The callbacks of a ``_pending`` entry (None: none)."""
    if entry is None:
        return []
    if isinstance(entry, tuple):
        entry = entry[1]
    return list(entry) if isinstance(entry, list) else [entry]


class ClientCore(ResultTracking, AsyncLink):
    """The asyncio client's connection: an ``AsyncLink`` that tracks results."""
