"""A peer that speaks the wire protocol by hand (blocking socket), to send what no
conveyor client or worker would: forged acks, foreign tokens, pickled results."""

from __future__ import annotations

import socket
import time
from typing import Any

from conveyor import protocol


class RawPeer:
    """One authenticated session with the master at ``address`` (``host:port``)."""

    def __init__(self, address: str, authkey: bytes, role: str, **hello: Any) -> None:
        host, port = address.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=10)
        self.conn = protocol.Connection("client", authkey)
        self.sock.sendall(self.conn.initiate())
        while not self.conn.authenticated:
            self.conn.receive_data(self.sock.recv(65536))
            out = self.conn.data_to_send()
            if out:
                self.sock.sendall(out)
        self.inbox: list[protocol.Message] = []
        self._rid = 0
        fields = {"role": role, **hello}
        if role == "worker":
            fields.setdefault("queues", ["default"])
            fields.setdefault("concurrency", 1)
        self.session = self.request(protocol.HELLO, **fields).fields["session"]

    def send(self, op: str, rid: int = 0, **fields: Any) -> None:
        self.sock.sendall(protocol.encode_frame(op, rid, fields))

    def request(self, op: str, **fields: Any) -> protocol.Message:
        """Send a request and return its answer (OK or ERR)."""
        self._rid += 1
        rid = self._rid
        self.send(op, rid, **fields)
        return self.wait(lambda m: m.rid == rid and m.op in (protocol.OK, protocol.ERR))

    def wait(self, match: Any, timeout: float = 30.0) -> protocol.Message:
        """The first message (already received or coming) that ``match`` accepts."""
        deadline = time.monotonic() + timeout
        while True:
            for i, m in enumerate(self.inbox):
                if match(m):
                    return self.inbox.pop(i)
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError("the master did not send the expected message")
            self.sock.settimeout(left)
            data = self.sock.recv(1 << 20)
            if not data:
                raise ConnectionError("the master closed the connection")
            self.inbox.extend(ev for ev in self.conn.receive_data(data) if isinstance(ev, protocol.Message))

    def take_tasks(self, n: int) -> list[list[Any]]:
        """Grant credit for ``n`` tasks and return the ``n`` the master pushes."""
        self.send(protocol.CREDIT, n=n)
        got: list[list[Any]] = []
        while len(got) < n:
            got.extend(self.wait(lambda m: m.op == protocol.TASKS).fields["tasks"])
        return got

    def close(self) -> None:
        self.sock.close()
