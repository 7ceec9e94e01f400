"""``queue.Queue`` over the network: durable, shared by every process that names it.

Items live in the master's store. ``put`` returns once the item is
committed. ``get`` leases the item to this consumer; how it is acknowledged
depends on ``ack``:

- ``"task_done"``: ``task_done()`` acknowledges the oldest item this consumer
  got and has not acknowledged; an item whose consumer dies or disconnects
  first goes back to the queue for someone else.
- ``"get"``: acknowledged as it is handed out (fast, and as lossy as a
  ``queue.Queue`` in a dying process).
- ``"auto"``: acknowledged when this consumer comes back for its next item,
  calls ``task_done()``, or its process exits normally; redelivered if the
  process dies or exits with an uncaught exception. This is what
  ``conveyor.managers`` proxies use.

``prefetch=N`` (N > 1, with ``"task_done"`` or ``"auto"`` only; RabbitMQ's
``basic.qos``) lets one ``get`` lease up to N items in one round trip and
hand the others to the next ``get`` calls from memory. It is sound because
a prefetched item stays leased to this consumer, not acknowledged: one never
handed out goes back to the queue when the consumer releases it
(:meth:`NetworkQueue.release_prefetched`), closes, disconnects or dies.
Meanwhile it is not in ``qsize()`` and no other consumer gets it; the
default (1) prefetches nothing.
"""

from __future__ import annotations

import atexit
import concurrent.futures as cf
import math
import os
import queue as stdqueue
import sys
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .. import protocol, serde, timing
from ..ids import new_id

if TYPE_CHECKING:
    from .client import Client

ACK_MODES = ("task_done", "get", "auto")
MAX_PREFETCH = 1000
_GRACE = 2.0  # how long past its timeout a get waits for the master's own answer
_MAX_WAIT = threading.TIMEOUT_MAX


def _check_timeout(block: bool, timeout: float | None) -> float | None:
    """The timeout to send: 0 for non-blocking, None to wait forever; ValueError if negative."""
    if not block:
        return 0.0
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or math.isnan(timeout):
        raise TypeError("'timeout' must be a number or None")
    if timeout < 0:
        raise ValueError("'timeout' must be a non-negative number")
    return float(timeout)


class NetworkQueue:
    """A named durable queue on a master, with the ``queue.Queue`` interface.

    Create it with :meth:`conveyor.Client.queue`. ``maxsize`` > 0 bounds the
    queue for every producer together (the master enforces it).
    """

    def __init__(self, client: Client, name: str, maxsize: int = 0, *, ack: str = "task_done",
                 codec: str | None = None, prefetch: int = 1) -> None:
        if not isinstance(name, str) or not name:
            raise ValueError("queue name must be a non-empty string")
        if ack not in ACK_MODES:
            raise ValueError(f"ack must be one of {', '.join(ACK_MODES)}, not {ack!r}")
        if isinstance(prefetch, bool) or not isinstance(prefetch, int) or not 1 <= prefetch <= MAX_PREFETCH:
            raise ValueError(f"prefetch must be an integer from 1 to {MAX_PREFETCH}, not {prefetch!r}")
        if prefetch > 1 and ack == "get":
            # An item acknowledged as the master hands it out would be lost with this
            # process while it waits here, never handed to get(): only leases are sound.
            raise ValueError("prefetch needs ack='task_done' or ack='auto' (with ack='get' a prefetched "
                             "item would be acknowledged before any get() took it)")
        if isinstance(maxsize, bool) or not isinstance(maxsize, int):
            raise TypeError("maxsize must be an integer")
        self._client = client
        self.name = name
        self.maxsize = maxsize
        self.ack = ack
        self.prefetch = prefetch
        self._prefetched: deque[list[Any]] = deque()  # leased, not yet handed out: [id, token, payload, codec]
        self.codec = serde.check_codec(codec or client.codec)
        self._allow_pickle = self.codec == serde.PICKLE
        self._unacked: deque[list[Any]] = deque()  # [id, token] in the order got
        self._lock = threading.Lock()
        self._acks: list[cf.Future[Any]] = []  # QACK requests in flight
        self._to_ack: list[list[Any]] = []  # acknowledged by task_done, not yet sent
        if ack == "auto":
            _AUTO_QUEUES.add(self)
            _watch_exit()
        if prefetch > 1:
            _PREFETCHING.add(self)

    def __repr__(self) -> str:
        return f"<NetworkQueue {self.name!r} on {self._client.address}>"

    def uses_client(self, client: Client) -> bool:
        """True if this queue talks through ``client``."""
        return self._client is client

    def _send_qack(self, items: list[Any]) -> cf.Future[Any]:
        """Acknowledge ``items`` (without waiting); exit and close wait for it."""
        fut = self._client.request(protocol.QACK, {"items": items})
        _ACKS_IN_FLIGHT.add(fut)
        return fut

    def __del__(self) -> None:
        # An auto queue dropped while its process lives (``m.get_queue().get()`` in a loop)
        # is done with what it got: acknowledge it now, not at the exit. Any queue dropped
        # hands back what it prefetched and never handed out.
        if sys.is_finalizing() or getattr(self, "_prefetched", None) is None:  # half-made: refused
            return
        try:
            if self.ack == "auto" and not _crashed:
                with self._lock:
                    items = self._to_ack + list(self._unacked)
                    self._to_ack = []
                    self._unacked.clear()
                if items:
                    self._send_qack(items)
            if self._prefetched:
                self.release_prefetched(wait=False)
        except Exception:  # the client is closed: its connection's end hands them back
            pass

    # -- plumbing ----------------------------------------------------------
    def _request(self, op: str, fields: dict[str, Any], wait: float | None,
                 acks: list[list[Any]] | None = None) -> dict[str, Any]:
        """A request's reply, waiting at most ``wait`` seconds (None: forever); ``acks``
        (and ``task_done`` calls not sent yet) are acknowledged just before it."""
        cfut = self._send_request(op, fields, acks)
        try:
            reply: dict[str, Any] = self._client.wait(cfut, _MAX_WAIT if wait is None else wait)
            return reply
        except (TimeoutError, cf.TimeoutError):
            if op == protocol.QGET:  # items leased to us after we gave up go back
                cfut.add_done_callback(self._give_back)
            raise

    def _send_request(self, op: str, fields: dict[str, Any], acks: list[list[Any]] | None) -> cf.Future[Any]:
        """Send a request, and before it, in the same write, the acknowledgements made before
        it (``task_done`` calls not sent yet, and ``acks``): the master handles both in one
        commit and answers both in one write. The future of the request's reply."""
        with self._lock:
            items = self._to_ack + (acks or [])
            self._to_ack = []
        if not items:
            return self._client.request(op, fields)
        qack, cfut = self._client.requests([(protocol.QACK, {"items": items}), (op, fields)])
        _ACKS_IN_FLIGHT.add(qack)
        with self._lock:
            self._acks = [f for f in self._acks if not f.done()]
            self._acks.append(qack)
        qack.add_done_callback(self._send_later_acks)  # acks made while it travels follow it
        return cfut

    def _give_back(self, cfut: cf.Future[Any]) -> None:
        if cfut.cancelled() or cfut.exception() is not None:
            return
        items = cfut.result().get("items") or []
        if items:
            self._client.request(protocol.RETURN, {"leases": [[i[0], i[1]] for i in items]})

    def _encode(self, item: Any) -> list[Any]:
        return [new_id(), serde.encode(item, self.codec), self.codec]

    # -- put ---------------------------------------------------------------
    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        """Put ``item``; returns once committed. ``queue.Full`` if no room in time."""
        if self.put_many([item], block, timeout) != 1:
            raise stdqueue.Full

    def put_nowait(self, item: Any) -> None:
        """Put without blocking; ``queue.Full`` if the queue is full."""
        self.put(item, block=False)

    def put_many(self, items: Any, block: bool = True, timeout: float | None = None) -> int:
        """Put several items in one round trip; returns how many went in (all, unless full)."""
        wait = _check_timeout(block, timeout)
        encoded = [self._encode(i) for i in items]
        if not encoded:
            return 0
        deadline = None if wait is None else time.monotonic() + wait
        accepted = 0
        for start in range(0, len(encoded), 5000):
            chunk = encoded[start:start + 5000]
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            reply = self._request(protocol.QPUT, {"queue": self.name, "items": chunk, "maxsize": self.maxsize,
                                                  "timeout": remaining},
                                  None if remaining is None else remaining + _GRACE)
            accepted += reply["accepted"]
            if reply["accepted"] < len(chunk):
                break
        return accepted

    # -- get ---------------------------------------------------------------
    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        """Remove and return an item; ``queue.Empty`` if none arrives in time."""
        return self.get_many(1, block=block, timeout=timeout)[0]

    def get_nowait(self) -> Any:
        """Get without blocking; ``queue.Empty`` if the queue is empty."""
        return self.get(block=False)

    def get_many(self, max_items: int, timeout: float | None = None, *, block: bool = True) -> list[Any]:
        """Up to ``max_items`` items in one round trip (at least one); ``queue.Empty`` if none in time."""
        if not isinstance(max_items, int) or max_items < 1:
            raise ValueError("max_items must be a positive integer")
        wait = _check_timeout(block, timeout)
        previous: list[list[Any]] = []
        from_memory: list[list[Any]] = []
        send_acks = False
        with self._lock:
            if self.ack == "auto":  # coming back for more acknowledges what it got before
                previous = list(self._unacked)
                self._unacked.clear()
            if self._prefetched:  # handed out from memory: no round trip
                n = min(max_items, len(self._prefetched))
                from_memory = [self._prefetched.popleft() for _ in range(n)]
                self._unacked.extend([i[0], i[1]] for i in from_memory)
                self._to_ack.extend(previous)
                # An ack in flight takes these along when it is answered: one message for many.
                send_acks = bool(previous) and all(f.done() for f in self._acks)
        if from_memory:
            if send_acks:
                self._send_acks()
            return [serde.decode(i[2], i[3], allow_pickle=self._allow_pickle) for i in from_memory]
        fields: dict[str, Any] = {"queue": self.name, "max": max(max_items, self.prefetch), "timeout": wait,
                                  "ack": self.ack == "get"}
        try:
            reply = self._request(protocol.QGET, fields, None if wait is None else wait + _GRACE, previous)
        except (TimeoutError, cf.TimeoutError):
            raise stdqueue.Empty from None
        items = reply.get("items") or []
        if not items:
            raise stdqueue.Empty
        if self.ack != "get":
            with self._lock:
                self._prefetched.extend(items[max_items:])
                items = items[:max_items]
                self._unacked.extend([i[0], i[1]] for i in items)
        return [serde.decode(i[2], i[3], allow_pickle=self._allow_pickle) for i in items]

    # -- acknowledgement ---------------------------------------------------
    def task_done(self) -> None:
        """Acknowledge the oldest item this consumer got and has not acknowledged."""
        with self._lock:
            if not self._unacked:
                if self.ack == "get":
                    return  # acknowledged on get already
                raise ValueError("task_done() called too many times")
            self._to_ack.append(self._unacked.popleft())
            if any(not f.done() for f in self._acks):
                return  # an ack is on its way: this one follows when it is answered
        self._send_acks()

    def _send_acks(self) -> None:
        """Send the acknowledgements gathered so far, in one message."""
        with self._lock:
            items, self._to_ack = self._to_ack, []
            self._acks = [f for f in self._acks if not f.done()]
            if not items:
                return
        fut = self._send_qack(items)
        with self._lock:
            self._acks.append(fut)
        # Acks made while this one travels go in one message when it is answered.
        fut.add_done_callback(self._send_later_acks)

    def _send_later_acks(self, _: cf.Future[Any]) -> None:
        if self._to_ack:
            self._send_acks()

    def flush(self, timeout: float | None = 10.0) -> None:
        """Wait until this consumer's acknowledgements reached the master."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            self._send_acks()
            with self._lock:
                pending = list(self._acks)
            remaining = None if deadline is None else deadline - time.monotonic()
            if not pending or (remaining is not None and remaining <= 0):
                return
            cf.wait(pending, remaining)
            if not self._to_ack and all(f.done() for f in pending):
                return

    def release_prefetched(self, wait: bool = True) -> int:
        """Hand the items prefetched and not yet taken by ``get`` back to the queue (for
        other consumers); how many. Closing the client or disconnecting does it too."""
        with self._lock:
            items = [[i[0], i[1]] for i in self._prefetched]
            self._prefetched.clear()
        if items:
            fut = self._client.request(protocol.RETURN, {"leases": items})
            if wait:
                self._client.wait(fut, 30)
        return len(items)

    def ack_outstanding(self) -> None:
        """Acknowledge, and wait up to 5 s for, every item got and not yet acknowledged
        (an ``ack="auto"`` queue's promise at a normal exit)."""
        with self._lock:
            items = self._to_ack + list(self._unacked)
            self._to_ack = []
            self._unacked.clear()
        if items:
            try:
                wait_while_reachable([self._send_qack(items)], self._client)
            except Exception:
                pass

    def join(self, timeout: float | None = None) -> bool:
        """Block until every item put in this queue (by anyone) has been acknowledged.

        Returns True when it has; False if ``timeout`` passed first.
        """
        self.flush()
        wait = _check_timeout(True, timeout)
        try:
            reply = self._request(protocol.QJOIN, {"queue": self.name, "timeout": wait},
                                  None if wait is None else wait + _GRACE)
        except (TimeoutError, cf.TimeoutError):
            return False
        return bool(reply.get("done"))

    # -- size --------------------------------------------------------------
    def _counts(self) -> dict[str, Any]:
        return self._request(protocol.QSIZE, {"queue": self.name}, 30)

    def qsize(self) -> int:
        """Items waiting in the queue (not counting those handed out)."""
        c = self._counts()
        return int(c["ready"] + c["delayed"])

    def empty(self) -> bool:
        """True if no item is waiting."""
        return self.qsize() == 0

    def full(self) -> bool:
        """True if a bounded queue has ``maxsize`` items waiting."""
        c = self._counts()
        maxsize = c.get("maxsize") or self.maxsize
        return maxsize > 0 and c["ready"] + c["delayed"] >= maxsize


# Queues in ack="auto" mode: acknowledged at a normal exit, not after an uncaught exception.
# The hooks that tell the two apart are installed by the first auto queue, not at import:
# importing conveyor changes nothing global.
_AUTO_QUEUES: weakref.WeakSet[NetworkQueue] = weakref.WeakSet()
_crashed = False
_previous_hook: Callable[..., Any] | None = None  # the excepthook ours wraps, once installed
_watched_pid: int | None = None


def _excepthook(kind: type[BaseException], value: BaseException, tb: Any) -> None:
    global _crashed
    _crashed = True
    (_previous_hook or sys.__excepthook__)(kind, value, tb)


def crashing() -> bool:
    """True once an uncaught exception is ending this process (or its multiprocessing
    ``run()``): then ack="auto" items are not acknowledged, so the master hands them out again."""
    return _crashed


def _note_run_outcome() -> None:
    """In a multiprocessing child, in the finally clause around ``run()``: an exception
    leaving ``run()`` is visible here, where sys.excepthook never sees it (multiprocessing
    prints it and exits with code 1, running atexit hooks)."""
    global _crashed
    exc = sys.exc_info()[1]
    if exc is not None and not (isinstance(exc, SystemExit) and exc.code in (0, None)):
        _crashed = True


def _watch_exit() -> None:
    """Install, once, what an auto queue needs to tell a normal exit from a crash: the
    excepthook and the atexit acknowledgement in this process, and in each multiprocessing
    child that uses an auto queue, a hook around its ``run()``."""
    global _previous_hook, _watched_pid
    if _previous_hook is None:
        _previous_hook = sys.excepthook
        sys.excepthook = _excepthook
        atexit.register(_ack_at_exit)
    if _watched_pid == os.getpid():
        return
    import multiprocessing
    import multiprocessing.util

    if multiprocessing.parent_process() is not None:
        _watched_pid = os.getpid()
        multiprocessing.util.Finalize(None, _note_run_outcome, exitpriority=100)


_ACKS_IN_FLIGHT: weakref.WeakSet[cf.Future[Any]] = weakref.WeakSet()
_PREFETCHING: weakref.WeakSet[NetworkQueue] = weakref.WeakSet()  # queues with prefetch > 1


def ack_auto_items(client: Client) -> None:
    """Acknowledge what ``client``'s auto queues got and did not acknowledge (unless crashing),
    and wait a little for acknowledgements still travelling; hand back what its queues
    prefetched and never handed out (before the close: the next consumer finds them)."""
    if not _crashed:
        for q in list(_AUTO_QUEUES):
            if q.uses_client(client):
                q.ack_outstanding()
    for q in list(_PREFETCHING):
        if q.uses_client(client):
            try:
                q.release_prefetched()
            except Exception:  # the connection is down: its end hands them back
                pass
    wait_while_reachable(list(_ACKS_IN_FLIGHT), client)


def wait_while_reachable(futures: list[cf.Future[Any]], client: Client, limit: float = 5.0) -> None:
    """Wait up to ``limit`` seconds for ``futures``, but not for a master ``client`` has been
    cut off from for PROXY_MASTER_GRACE seconds: one restarting is waited for, one gone is not
    (what was not acknowledged then is delivered again, never lost)."""
    deadline = time.monotonic() + limit
    while futures and (left := deadline - time.monotonic()) > 0:
        _, pending = cf.wait(futures, min(timing.PROXY_POLL, left))
        if not pending or client.down_for >= timing.PROXY_MASTER_GRACE:
            return
        futures = list(pending)


def _ack_at_exit() -> None:
    if _crashed:
        return
    for q in list(_AUTO_QUEUES):
        q.ack_outstanding()
    cf.wait(list(_ACKS_IN_FLIGHT), 5)
