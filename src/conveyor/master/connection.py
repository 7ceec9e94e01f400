"""One connection to the master: the handshake, then its session's messages.

Until the mutual HMAC handshake succeeds nothing but the handshake is
decoded; a connection that does not finish it in time is closed. After it,
the bytes of each read go to the master (its :class:`ConnectionHost`) in the
loop turn they came in.

Reading stops while the peer does not read what is sent to it (the transport's
write buffer is above its high-water mark) and while its partial frame waits
for room in the master's budget for partial frames (master/backpressure.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Sequence
from typing import Protocol, cast

from .. import protocol
from ..errors import ProtocolError
from ..ratelimit_log import RateLimitedLog
from . import backpressure
from .session import Session

log = logging.getLogger("conveyor.master")
#: How long an oversized request's error has to reach its peer before the connection closes.
REFUSAL_GRACE = 0.5


class ConnectionHost(Protocol):
    """What a connection needs of the master."""

    authkey: bytes
    max_frame_size: int
    handshake_timeout: float
    budget: backpressure.FrameBudget
    #: Refused frames and handshakes can come by the thousand: one line per kind per interval.
    limited: RateLimitedLog

    @property
    def stopping(self) -> bool: ...

    def opened(self, conn: Connection) -> None:
        """A connection was accepted (not yet authenticated)."""

    def closed(self, conn: Connection) -> None:
        """A connection is gone."""

    def new_session(self, peer: str, transport: asyncio.Transport, conn: protocol.Connection) -> Session:
        """The handshake succeeded: the session of this connection, registered."""

    def received(self, s: Session, events: Sequence[object]) -> None:
        """Handle the events of one read."""

    def drop(self, s: Session) -> None:
        """Forget a session whose connection is gone."""

    def drained(self, s: Session) -> None:
        """``s``'s peer read what was waiting: push to it again."""


class Connection(asyncio.Protocol):
    """One connection to the master: the handshake, then its session's messages.

    Received bytes are handled in ``data_received`` itself, with no reader task
    in between: decoding, the handlers' first steps, and (with cheap commits)
    the store calls and the replies all happen in the loop turn the bytes came in.
    """

    def __init__(self, host: ConnectionHost) -> None:
        self.host = host
        self.conn = protocol.Connection("server", host.authkey, max_frame_size=host.max_frame_size)
        self.transport: asyncio.Transport | None = None
        self.session: Session | None = None
        self.peer = "?"
        self._timer: asyncio.TimerHandle | None = None
        self._closed = False
        self._blocks: set[str] = set()  # why reading is paused: "output", "budget", "refused"
        self._write_paused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.peer = peer_name(transport)
        # Above the high-water mark asyncio calls pause_writing; below the low one, resume_writing.
        with contextlib.suppress(NotImplementedError):  # a transport without a buffer (tests' fakes)
            self.transport.set_write_buffer_limits(high=backpressure.OUTPUT_HIGH, low=backpressure.OUTPUT_LOW)
        if self.host.stopping:
            self.close()
            return
        self.host.opened(self)
        self._timer = asyncio.get_running_loop().call_later(self.host.handshake_timeout, self._handshake_timed_out)

    def _handshake_timed_out(self) -> None:
        self._timer = None
        if self.session is None and not self._closed:
            self.host.limited.warning("handshake timeout", "closing %s: handshake not finished within %.0fs",
                                      self.peer, self.host.handshake_timeout)
            self.close()

    def data_received(self, data: bytes) -> None:
        if self._closed:
            return
        s = self.session
        try:
            if s is not None:
                if s.closed:  # closed by the master (a missed heartbeat, a failed write)
                    return
                events = self.conn.receive_data(data)
                if self._reserve():
                    self.host.received(s, events)
                return
            handshake_events = self._handshake(data)
            if handshake_events is not None and self.session is not None and self._reserve():
                self.host.received(self.session, handshake_events)
        except protocol.OversizeFrame as exc:
            self._refuse(exc)
        except ProtocolError as exc:
            self.host.limited.warning(_kind(exc), "closing %s: %s", self.peer, exc)
            self.close()
        except (ConnectionError, OSError, ssl.SSLError):
            self.close()

    def _reserve(self) -> bool:
        """Hold the budget for the frame under way (or stop reading until it fits).

        False when the connection was closed instead (too much is waiting already).
        """
        granted = self.host.budget.want(self, self.conn.partial_frame(), self.conn.buffered)
        if granted is None:
            self.host.limited.warning("budget full", "closing %s: the master's budget for partially received "
                                      "frames is taken and too many connections wait for it", self.peer)
            self.close()
            return False
        if not granted:
            self._block("budget")
        return True

    def budget_granted(self) -> None:
        """The frame this connection waits to receive fits in the budget now: read on."""
        self._unblock("budget")

    def _refuse(self, exc: protocol.OversizeFrame) -> None:
        """An oversized frame: answer its request (when its id came with it) so the peer fails
        it rather than resending it, and close once the answer had time to leave."""
        self.host.limited.warning("oversized frame", "closing %s: %s", self.peer, exc)
        s = self.session
        if s is None or exc.rid is None:
            self.close()
            return
        s.error(exc.rid, "FrameTooLarge", f"request of {exc.size} bytes exceeds the master's frame "
                                          f"limit of {exc.limit} bytes")
        self._block("refused")  # read nothing more; the peer reads the error meanwhile
        asyncio.get_running_loop().call_later(REFUSAL_GRACE, self.close)

    def _block(self, reason: str) -> None:
        if not self._blocks and not self._closed and self.transport is not None:
            self.transport.pause_reading()
        self._blocks.add(reason)

    def _unblock(self, reason: str) -> None:
        if reason not in self._blocks:
            return
        self._blocks.discard(reason)
        if not self._blocks and not self._closed and self.transport is not None:
            self.transport.resume_reading()

    def pause_writing(self) -> None:
        """The transport holds more than the high-water mark: push nothing, read nothing."""
        self._write_paused = True
        if self.session is not None:
            self.session.output_paused = True
        self._block("output")

    def resume_writing(self) -> None:
        """The transport drained below the low-water mark: read and push again."""
        self._write_paused = False
        self._unblock("output")
        s = self.session
        if s is not None:
            s.output_paused = False
            if not s.closed:
                self.host.drained(s)

    def _handshake(self, data: bytes) -> list[object] | None:
        """Feed handshake bytes; the events that came after it once it succeeded, else None."""
        assert self.transport is not None  # set by connection_made
        events = self.conn.receive_data(data)
        out = self.conn.data_to_send()
        if out:
            self.transport.write(out)
        for i, ev in enumerate(events):
            if isinstance(ev, protocol.HandshakeFailed):
                self.host.limited.warning(f"refused {ev.reason}", "refused %s: %s", self.peer, ev.reason)
                self.close()  # the transport sends the verdict before it closes
                return None
            if isinstance(ev, protocol.HandshakeDone):
                if self._timer is not None:
                    self._timer.cancel()
                    self._timer = None
                self.session = self.host.new_session(self.peer, self.transport, self.conn)
                self.session.output_paused = self._write_paused
                return list(events[i + 1:])
        return None

    def close(self) -> None:
        """Close the connection (its session too, if it has one)."""
        if self._closed:
            return
        self._closed = True
        if self.session is not None:
            self.session.close()
        elif self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self.host.budget.release(self)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.host.closed(self)
        if self.session is not None:
            self.host.drop(self.session)


def _kind(exc: Exception) -> str:
    """The rate-limiting key of a refused frame: its error, without the peer."""
    return f"refused frame {type(exc).__name__}: {str(exc)[:40]}"


def peer_name(transport: asyncio.BaseTransport) -> str:
    """``host:port`` of the peer, for logs."""
    peer = transport.get_extra_info("peername")
    if isinstance(peer, tuple) and len(peer) >= 2:
        return f"{peer[0]}:{peer[1]}"
    return str(peer)
