"""Opening a connection, sans-IO: the HMAC handshake, then HELLO and its answer.

``Opening`` is fed the bytes the master sent and says what to send back and
where the sequence stands; it never touches a socket or a clock, so the
asyncio and blocking edges (link/aio.py, link/blocking.py) share it and tests
drive it byte for byte. Its errors are the ones the reconnect policy sorts:
``AuthenticationError`` (a wrong key), ``ProtocolError`` (a peer that is not a
master), ``RemoteError`` (a master that refused the hello), ``ConnectionLost``
(the peer closed the connection part-way).
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from typing import Any

from .. import protocol, timing
from ..errors import ConnectionLost, FrameTooLarge, RemoteError
from .address import Address


def hello_fields(role: str, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """What a peer says about itself in HELLO: its role, host and pid, and ``extra``."""
    return {"role": role, "host": socket.gethostname(), "pid": os.getpid(), **(extra or {})}


def check_request_size(op: str, frame: bytes, limit: int) -> None:
    """Refuse, before it is sent, a request larger than the master accepts.

    A master closes a connection that announces a frame over its limit; a
    request resent after every reconnect would loop forever, so it fails here,
    in the caller, naming both sizes. ``limit`` is the largest frame body.
    """
    size = len(frame) - 4  # the length prefix is not counted
    if size > limit:
        raise FrameTooLarge(f"{op} request of {size} bytes exceeds the master's frame limit of {limit} bytes; "
                            "it was not sent (split it, or raise the master's --max-frame-size)")


@dataclass(frozen=True, slots=True)
class Welcome:
    """The master's answer to HELLO: the session it opened, how often to ping it, and the
    largest frame body it accepts (None from a master that does not say)."""

    session: str | None
    ping_every: float
    max_frame: int | None = None
    #: The master's heartbeat timeout (seconds of silence before it drops us), if it said.
    master_timeout: float | None = None


class Opening:
    """One connection attempt from the first handshake byte to the answered HELLO.

    Use: send ``start()``; then for every chunk received call
    ``receive_data(chunk)`` (``b""`` when the peer closed) and, even when it
    raised, send ``data_to_send()`` (a refused proof is still answered, so the
    master logs the failure). When ``done`` is true, ``welcome`` holds the
    master's answer, ``early`` the messages that arrived behind it, and
    ``connection`` the framing to read the rest of the connection with.
    """

    def __init__(
        self,
        address: Address,
        authkey: bytes,
        hello: dict[str, Any],
        hello_rid: int,
        *,
        heartbeat: float = timing.HEARTBEAT,
        max_frame_size: int = protocol.DEFAULT_MAX_FRAME,
        nonce: bytes | None = None,
    ) -> None:
        self.address = address
        self.connection = protocol.Connection("client", authkey, max_frame_size=max_frame_size, nonce=nonce)
        self.heartbeat = heartbeat
        self._hello = hello
        self._rid = hello_rid
        self._out = bytearray()
        #: "start" -> "handshake" -> "hello" -> "done" (or "failed")
        self.state = "start"
        self.welcome: Welcome | None = None
        self.early: list[protocol.Message] = []

    @property
    def done(self) -> bool:
        """True once the master answered HELLO: the connection is ready for requests."""
        return self.state == "done"

    def start(self) -> bytes:
        """The bytes that open the handshake."""
        if self.state != "start":
            raise RuntimeError("start() opens a new attempt once")
        self.state = "handshake"
        return self.connection.initiate()

    def data_to_send(self) -> bytes:
        """Bytes the sequence produced for the master, to write now."""
        out = bytes(self._out)
        self._out.clear()
        return out

    def receive_data(self, data: bytes) -> None:
        """Feed bytes from the master (``b""``: it closed); raises when the attempt failed."""
        if self.state not in ("handshake", "hello"):
            raise RuntimeError(f"receive_data() while {self.state}")
        if not data:
            stage = "the handshake" if self.state == "handshake" else "hello"
            self.state = "failed"
            raise ConnectionLost(f"master at {self.address} closed the connection during {stage}")
        try:
            events = self.connection.receive_data(data)
        except Exception:
            self.state = "failed"
            raise
        finally:
            self._out += self.connection.data_to_send()
        if self.state == "handshake":
            for i, ev in enumerate(events):
                if isinstance(ev, protocol.HandshakeDone):
                    self.state = "hello"
                    self._out += protocol.encode_frame(protocol.HELLO, self._rid, self._hello)
                    events = events[i + 1:]
                    break
            else:
                return
        for i, ev in enumerate(events):
            if isinstance(ev, protocol.Message) and ev.rid == self._rid:
                self._accept(ev)
                self.early = [e for e in events[i + 1:] if isinstance(e, protocol.Message)]
                return

    def _accept(self, reply: protocol.Message) -> None:
        if reply.op == protocol.ERR:
            self.state = "failed"
            raise RemoteError(str(reply.fields.get("type")), str(reply.fields.get("message")))
        session = reply.fields.get("session")
        master_timeout = reply.fields.get("heartbeat")
        if not isinstance(master_timeout, (int, float)) or isinstance(master_timeout, bool):
            master_timeout = None
        max_frame = reply.fields.get("max_frame")
        if not isinstance(max_frame, int) or isinstance(max_frame, bool) or max_frame <= 0:
            max_frame = None
        self.welcome = Welcome(session if isinstance(session, str) else None,
                               timing.ping_interval(self.heartbeat, master_timeout), max_frame,
                               float(master_timeout) if master_timeout is not None else None)
        self.state = "done"
