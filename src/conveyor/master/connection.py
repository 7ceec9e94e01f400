"""One connection to the master: the handshake, then its session's messages.

Until the mutual HMAC handshake succeeds nothing but the handshake is
decoded; a connection that does not finish it in time is closed. After it,
the bytes of each read go to the master (its :class:`ConnectionHost`) in the
loop turn they came in.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Sequence
from typing import Protocol, cast

from .. import protocol
from ..errors import ProtocolError
from .session import Session

log = logging.getLogger("conveyor.master")


class ConnectionHost(Protocol):
    """What a connection needs of the master."""

    authkey: bytes
    max_frame_size: int
    handshake_timeout: float

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

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.peer = peer_name(transport)
        if self.host.stopping:
            self.close()
            return
        self.host.opened(self)
        self._timer = asyncio.get_running_loop().call_later(self.host.handshake_timeout, self._handshake_timed_out)

    def _handshake_timed_out(self) -> None:
        self._timer = None
        if self.session is None and not self._closed:
            log.warning("closing %s: handshake not finished within %.0fs", self.peer, self.host.handshake_timeout)
            self.close()

    def data_received(self, data: bytes) -> None:
        if self._closed:
            return
        s = self.session
        try:
            if s is not None:
                if s.closed:  # closed by the master (a missed heartbeat, a failed write)
                    return
                self.host.received(s, self.conn.receive_data(data))
                return
            events = self._handshake(data)
            if events is not None and self.session is not None:
                self.host.received(self.session, events)
        except ProtocolError as exc:
            log.warning("closing %s: %s", self.peer, exc)
            self.close()
        except (ConnectionError, OSError, ssl.SSLError):
            self.close()

    def _handshake(self, data: bytes) -> list[object] | None:
        """Feed handshake bytes; the events that came after it once it succeeded, else None."""
        assert self.transport is not None  # set by connection_made
        events = self.conn.receive_data(data)
        out = self.conn.data_to_send()
        if out:
            self.transport.write(out)
        for i, ev in enumerate(events):
            if isinstance(ev, protocol.HandshakeFailed):
                log.warning("refused %s: %s", self.peer, ev.reason)
                self.close()  # the transport sends the verdict before it closes
                return None
            if isinstance(ev, protocol.HandshakeDone):
                if self._timer is not None:
                    self._timer.cancel()
                    self._timer = None
                self.session = self.host.new_session(self.peer, self.transport, self.conn)
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
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.host.closed(self)
        if self.session is not None:
            self.host.drop(self.session)


def peer_name(transport: asyncio.BaseTransport) -> str:
    """``host:port`` of the peer, for logs."""
    peer = transport.get_extra_info("peername")
    if isinstance(peer, tuple) and len(peer) >= 2:
        return f"{peer[0]}:{peer[1]}"
    return str(peer)
