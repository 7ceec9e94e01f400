"""One authenticated connection to the master, as the master sees it."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

from .. import protocol


@dataclass(eq=False)
class Session:
    """A connected client or worker: who it is, what it holds, how to reach it."""

    id: str  # also the lease owner for a worker's tasks
    peer: str
    writer: asyncio.StreamWriter
    conn: protocol.Connection
    role: str | None = None  # "client" | "worker" after hello
    name: str = ""
    host: str = ""
    pid: int | None = None
    queues: list[str] = field(default_factory=list)
    weights: list[int] | None = None  # served by weighted choice instead of in order
    concurrency: int = 0
    codecs: list[str] = field(default_factory=list)
    credit: int = 0
    inflight: dict[str, int] = field(default_factory=dict)  # task id -> lease token
    subscriptions: set[str] = field(default_factory=set)
    holds_items: bool = False  # has leased plain-queue items: release them when it goes
    last_seen: float = field(default_factory=time.monotonic)
    closed: bool = False

    def _write(self, data: bytes) -> None:
        if self.closed:
            return
        try:
            self.writer.write(data)
        except (ConnectionError, RuntimeError, OSError):
            self.close()

    def reply(self, rid: int, fields: dict[str, Any]) -> None:
        """Answer request ``rid``."""
        if rid:
            self._write(protocol.encode_frame(protocol.OK, rid, fields))

    def error(self, rid: int, kind: str, message: str) -> None:
        """Refuse request ``rid`` with an error type name and message."""
        self._write(protocol.encode_frame(protocol.ERR, rid, {"type": kind, "message": message}))

    def push(self, op: str, fields: dict[str, Any]) -> None:
        """Send an unsolicited message (tasks to a worker, results to a client)."""
        self._write(protocol.encode_frame(op, 0, fields))

    def close(self) -> None:
        """Close the connection (idempotent)."""
        if not self.closed:
            self.closed = True
            try:
                self.writer.close()
            except Exception:  # already gone
                pass
