"""A peer on a real socket that speaks the protocol by hand: it authenticates and says
hello, then sends what a test wants (however large, however slowly) and reads only
when told to. The attacker of the memory-bound fault tests."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

from conveyor import protocol
from conveyor.link.address import parse_addresses
from conveyor.link.opening import Opening, hello_fields


class RawPeer:
    """One authenticated connection to a master at ``address`` (``host:port``)."""

    def __init__(self, address: str, authkey: bytes, *, rcvbuf: int | None = 65536, timeout: float = 30.0) -> None:
        host, port = address.rsplit(":", 1)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:  # a small kernel buffer: what we do not read stays with the master
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(timeout)
        self.sock.connect((host, int(port)))
        opening = Opening(parse_addresses(address)[0], authkey, hello_fields("client"), 1)
        self.sock.sendall(opening.start())
        while not opening.done:
            opening.receive_data(self.sock.recv(65536))
            out = opening.data_to_send()
            if out:
                self.sock.sendall(out)
        self.welcome = opening.welcome
        self.conn = opening.connection
        self.early = list(opening.early)
        self._rid = 1

    def send(self, op: str, fields: dict[str, Any]) -> int:
        """Send one request; its request id."""
        self._rid += 1
        self.sock.sendall(protocol.encode_frame(op, self._rid, fields))
        return self._rid

    def read(self) -> list[protocol.Message]:
        """What one recv brings (blocking up to the socket's timeout); [] once the master closed."""
        data = self.sock.recv(1 << 20)
        if not data:
            return []
        return [e for e in self.conn.receive_data(data) if isinstance(e, protocol.Message)]

    def closed_by_master(self) -> bool:
        """True when the master closed this connection (reads what is pending to find out)."""
        try:
            while True:
                data = self.sock.recv(1 << 20)
                if not data:
                    return True
        except (TimeoutError, BlockingIOError):
            return False
        except OSError:  # reset
            return True

    def closed_by_master_nowait(self) -> bool:
        """:meth:`closed_by_master` without waiting for bytes that have not come."""
        self.sock.setblocking(False)
        try:
            return self.closed_by_master()
        finally:
            self.sock.setblocking(True)

    def close(self) -> None:
        self.sock.close()


def rss(pid: int, field: str = "VmRSS") -> int:
    """A process's resident memory in bytes, from /proc/PID/status (VmRSS now, VmHWM its peak)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field} in /proc/{pid}/status")
