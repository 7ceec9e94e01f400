"""What one link remembers across reconnects, whatever does its I/O.

``LinkState`` holds the settings of the link, the requests waiting for
replies (resent after every reconnect: every conveyor request is safe to
send twice), and the decisions shared by the asyncio and blocking edges:
starting an attempt, the reconnect plan, and what a failed attempt means.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import contextlib
import itertools
import logging
import ssl
from collections.abc import Callable
from typing import Any

from .. import protocol, timing
from ..errors import (
    STORE_ERRORS,
    AuthenticationError,
    ConnectionLost,
    FrameTooLarge,
    NotFound,
    RemoteError,
    SerializationError,
)
from .address import Address, AddressesLike, parse_addresses
from .opening import Opening, check_request_size, hello_fields
from .policy import Failure, Reconnect, failure_kind, reconnect_log

log = logging.getLogger("conveyor.link")

#: The futures a flavour hands out: asyncio's or concurrent.futures'.
AnyFuture = asyncio.Future[Any] | cf.Future[Any]
_InvalidState = (asyncio.InvalidStateError, cf.InvalidStateError)


class LinkState:
    """The I/O-free half of one logical connection to a master.

    An I/O flavour (``AsyncLink``, ``BlockingLink``) supplies the futures and
    the writes; the blocking one also supplies a real lock (every method here
    may then be called from any thread; callbacks run outside the lock).
    """

    def __init__(
        self,
        address: AddressesLike,
        authkey: bytes | None,
        *,
        role: str = "client",
        hello: dict[str, Any] | None = None,
        ssl_context: ssl.SSLContext | None = None,
        connect_timeout: float = 10.0,
        heartbeat: float = timing.HEARTBEAT,
        max_frame_size: int = protocol.DEFAULT_MAX_FRAME,
        on_message: Callable[[protocol.Message], None] | None = None,
        reconnect_first: float = timing.RECONNECT_FIRST,
        reconnect_max: float = timing.RECONNECT_MAX,
    ) -> None:
        self.addresses = parse_addresses(address)
        self.plan = Reconnect(self.addresses, first=reconnect_first, maximum=reconnect_max)
        self.authkey = authkey or b""
        self.role = role
        self.hello_fields = dict(hello or {})
        if ssl_context is None and any(a.tls for a in self.addresses):
            from ..auth import client_tls_context

            ssl_context = client_tls_context()
        self._ssl_context = ssl_context
        self.connect_timeout = connect_timeout
        self.heartbeat = heartbeat
        #: The master's heartbeat timeout, as its hello answer said (None until then).
        self.master_timeout: float | None = None
        self.max_frame_size = max_frame_size
        #: The largest request body the master accepts: its own word once connected
        #: (the hello answer), our own limit until then.
        self.send_limit = max_frame_size
        self.on_message = on_message
        self.limited = reconnect_log()  # reconnect loops log one line per interval, not per attempt
        #: The session the master opened for the current (or last) connection.
        self.session: str | None = None
        self._lock: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()
        self._closing = False
        self._rids = itertools.count(1)
        self._requests: dict[int, tuple[str, dict[str, Any], AnyFuture]] = {}

    @property
    def address(self) -> Address:
        """The master address in use (or to be tried next)."""
        return self.plan.address

    def ssl_context_for(self, address: Address) -> ssl.SSLContext | None:
        """The TLS context for ``address``, or None to speak plain TCP."""
        return self._ssl_context if address.tls else None

    # -- what an I/O flavour provides ----------------------------------------
    def _new_future(self) -> AnyFuture:
        raise NotImplementedError

    def _target(self) -> Any:
        """Where a frame goes now (None while disconnected); read under the lock."""
        raise NotImplementedError

    def _send_to(self, target: Any, data: bytes) -> None:
        raise NotImplementedError

    def _send(self, op: str, rid: int, fields: dict[str, Any]) -> None:
        self._send_to(self._target(), protocol.encode_frame(op, rid, fields))

    # -- connecting ------------------------------------------------------------
    def _opening(self) -> Opening:
        """A new attempt at the current address (its HELLO request id never collides)."""
        # Host and pid are read per attempt: a forked process reconnects as itself.
        return Opening(self.address, self.authkey, hello_fields(self.role, self.hello_fields), next(self._rids),
                       heartbeat=self.heartbeat, max_frame_size=self.max_frame_size)

    def _attempt_failed(self, exc: Exception) -> float | None:
        """A reconnect attempt failed: the pause before the next one, or None to give up.

        A wrong key gives up and fails every waiting request; a master that is
        away is retried quietly; anything else is retried too, but said.
        """
        kind = failure_kind(exc)
        if kind is Failure.FATAL:
            log.error("reconnecting to %s: authentication failed", self.address)
            self._fail_all(AuthenticationError("authentication failed"))
            return None
        if kind is Failure.LOUD:
            self.limited.warning(f"reconnect failed {self.address}", "reconnecting to %s failed: %s: %s",
                                 self.address, type(exc).__name__, exc)
        return self.plan.failed()

    # -- after a reconnect -----------------------------------------------------
    def _resend(self) -> None:
        """After a (re)connect: resend every unanswered request (one over the master's
        frame limit fails instead: it would only be refused again)."""
        refused: list[tuple[AnyFuture, Exception]] = []
        with self._lock:
            target = self._target()
            for rid, (op, fields, fut) in list(self._requests.items()):
                frame = protocol.encode_frame(op, rid, fields)
                try:
                    check_request_size(op, frame, self.send_limit)
                except FrameTooLarge as too_large:
                    del self._requests[rid]
                    refused.append((fut, too_large))
                    continue
                self._send_to(target, frame)
        for fut, error in refused:
            with contextlib.suppress(*_InvalidState):
                if not fut.done():
                    fut.set_exception(error)

    # -- incoming --------------------------------------------------------------
    def _on_message(self, msg: protocol.Message) -> None:
        """One message from the master: a reply resolves its request; the rest go on."""
        if msg.op == protocol.OK or msg.op == protocol.ERR:
            with self._lock:
                entry = self._requests.pop(msg.rid, None)
            if entry is None:
                return
            fut = entry[2]
            if fut.done():
                return
            try:
                if msg.op == protocol.OK:
                    fut.set_result(msg.fields)
                else:
                    fut.set_exception(remote_error(msg.fields))
            except _InvalidState:  # cancelled by its waiter meanwhile
                pass
        else:
            self._on_push(msg)

    def _on_push(self, msg: protocol.Message) -> None:
        """A message that answers no request."""
        if self.on_message is not None:
            self.on_message(msg)

    def _fail_all(self, exc: BaseException) -> None:
        with self._lock:
            waiting = [fut for _, _, fut in self._requests.values()]
            self._requests.clear()
        for fut in waiting:
            if not fut.done():
                try:
                    fut.set_exception(exc)
                except _InvalidState:
                    pass

    # -- requests ----------------------------------------------------------------
    def push(self, op: str, fields: dict[str, Any]) -> None:
        """Send a message that expects no reply, if connected (it is not resent)."""
        self._send(op, 0, fields)

    def request_nowait(self, op: str, fields: dict[str, Any]) -> Any:
        """Send a request (now, or on reconnect) and return the future of its reply fields."""
        return self.requests_nowait([(op, fields)])[0]

    def requests_nowait(self, requests: list[tuple[str, dict[str, Any]]]) -> list[Any]:
        """Send several requests in one write, in order; the futures of their replies.

        One write lets the master read them together: their store calls share
        one commit and their replies leave in one write (an ack and the get
        after it, say), where separate writes cost a commit and a wake-up each.
        """
        if self._closing:
            raise ConnectionLost("client is closed")
        with self._lock:
            rids = [next(self._rids) for _ in requests]
        frames = []
        for (op, fields), rid in zip(requests, rids):
            frame = protocol.encode_frame(op, rid, fields)
            check_request_size(op, frame, self.send_limit)  # never sent, never resent: fails here
            frames.append(frame)
        futures = [self._new_future() for _ in requests]
        with self._lock:
            for (op, fields), rid, fut in zip(requests, rids, futures):
                self._requests[rid] = (op, fields, fut)
            target = self._target()
        if target is not None:
            self._send_to(target, frames[0] if len(frames) == 1 else b"".join(frames))
        return futures


def unreachable(address: Address, exc: OSError) -> ConnectionLost:
    """The error for a master that could not be reached at all (refused, timed out)."""
    reason = "timed out" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc))
    return ConnectionLost(f"cannot connect to master at {address}: {reason}")


def broken(address: Address, exc: OSError | ssl.SSLError) -> ConnectionLost:
    """The error for a connection that broke (or went quiet) while it was being opened."""
    if isinstance(exc, ConnectionLost):
        return exc
    if isinstance(exc, TimeoutError):
        return ConnectionLost(f"master at {address} did not answer the handshake in time")
    return ConnectionLost(f"connection to master at {address} failed: {exc}")


def remote_error(fields: dict[str, Any]) -> Exception:
    """The exception an ``err`` reply stands for."""
    kind = str(fields.get("type", "Error"))
    message = str(fields.get("message", ""))
    if kind == "SerializationError":
        return SerializationError(message)
    if kind == "ValueError":  # the master refused a value (an unknown dependency, a bad option)
        return ValueError(message)
    if kind == "NotFound":
        return NotFound(message)
    store_error = STORE_ERRORS.get(kind)
    if store_error is not None:  # the master could not commit it (disk full, I/O error, corrupt store)
        return store_error(message)
    if kind == "FrameTooLarge":  # an oversized request: failed, not resent
        return FrameTooLarge(message)
    return RemoteError(kind, message)
