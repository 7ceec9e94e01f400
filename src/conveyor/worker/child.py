"""A process pool's child: its main loop and the framing of the pipe to its parent.

A child is started with ``spawn``, so it imports this module afresh: it and
what it imports are kept to what running a task needs (no asyncio, no
client, no store) to make a child's start-up short.
"""

from __future__ import annotations

import collections
import multiprocessing
import multiprocessing.connection
import os
import signal
import struct
import sys
import threading
from typing import Any

from .. import serde
from ..context import CurrentTask
from ..tasks import Registry
from .execute import _execute, _soft_limit

_MSG_READY = "ready"
_MSG_ERROR = "error"
_MSG_PROGRESS = "p"
_MSG_RESULTS = "r"
#: How much of a child's pipe the loop reads at once.
_READ_SIZE = 1 << 18
_HEADER = struct.Struct("!i")  # multiprocessing.Connection's frame header...
_LONG_HEADER = struct.Struct("!Q")  # ...and its size after a -1 header, for frames over 2 GiB


def _child_start(conn: multiprocessing.connection.Connection, modules: list[str]) -> Registry:
    """What every pool child does first: ignore the signals the parent handles, exit
    with the parent, import the task modules, and tell the parent it is ready (or why
    not, then exit)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop,
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # even when a service manager signals the group
    parent = multiprocessing.parent_process()
    if parent is not None:  # an orphan stops at once, even in the middle of a task
        threading.Thread(target=_exit_with_parent, args=(parent.sentinel,), daemon=True,
                         name="conveyor-parent-watch").start()
    try:
        if os.getcwd() not in sys.path and "" not in sys.path:
            sys.path.insert(0, "")
        registry = Registry.from_modules(modules)
    except BaseException as exc:
        try:
            conn.send_bytes(serde.packb([_MSG_ERROR, f"{type(exc).__name__}: {exc}"]))
        finally:
            sys.exit(1)
    conn.send_bytes(serde.packb([_MSG_READY, os.getpid()]))
    return registry


def _child_main(conn: multiprocessing.connection.Connection, modules: list[str],
                allow_pickle: bool) -> None:
    """A pool child: import the modules once, then run batches until told to stop."""
    signal.signal(signal.SIGALRM, _soft_limit)
    registry = _child_start(conn, modules)

    def send_progress(report: dict[str, Any]) -> None:
        try:
            conn.send_bytes(serde.packb([_MSG_PROGRESS, report]))
        except OSError:
            pass

    # One read per batch (recv_bytes makes two): the parent writes each batch in one frame.
    fd, buf, frames = conn.fileno(), bytearray(), collections.deque[bytes]()
    while True:
        while not frames:
            try:
                chunk = os.read(fd, _READ_SIZE)
            except OSError:
                return  # the parent is gone
            if not chunk:
                return
            frames.extend(_frames_from(buf, chunk))
        data = frames.popleft()
        if not data:
            return  # asked to stop
        results = [_execute(registry, name, payload, codec, allow_pickle,
                            CurrentTask(tid, name, token, send_progress, headers=headers or {}), soft)
                   for tid, token, name, payload, codec, soft, headers in serde.unpackb(data)]
        try:
            conn.send_bytes(serde.packb([_MSG_RESULTS, results]))
        except OSError:
            return


def _exit_with_parent(sentinel: int) -> None:
    multiprocessing.connection.wait([sentinel])
    os._exit(1)


def _exit_description(code: int | None) -> str:
    if code is None:
        return "worker process exited"
    if code < 0:
        try:
            signame = signal.Signals(-code).name
        except ValueError:
            signame = f"signal {-code}"
        return f"worker process exited with code {code} ({signame})"
    return f"worker process exited with code {code}"




def _frame(body: bytes) -> bytes:
    """``body`` framed as ``Connection.send_bytes`` frames it (the child reads with ``recv_bytes``)."""
    n = len(body)
    if n > 0x7FFFFFFF:
        return _HEADER.pack(-1) + _LONG_HEADER.pack(n) + body
    return _HEADER.pack(n) + body


def _frames_from(buf: bytearray, chunk: bytes) -> list[bytes]:
    """The complete frames in what ``buf`` held plus ``chunk``; the rest stays in ``buf``."""
    if not buf and len(chunk) >= 4 and _HEADER.unpack_from(chunk)[0] == len(chunk) - 4:
        return [chunk[4:]]  # the usual case: exactly one whole frame
    buf += chunk
    return _split_frames(buf)


def _split_frames(buf: bytearray) -> list[bytes]:
    """Take the complete ``Connection.send_bytes`` frames off the front of ``buf``."""
    bodies = []
    pos, end = 0, len(buf)
    while end - pos >= 4:
        (size,) = _HEADER.unpack_from(buf, pos)
        start = pos + 4
        if size == -1:
            if end - start < 8:
                break
            (size,) = _LONG_HEADER.unpack_from(buf, start)
            start += 8
        if end - start < size:
            break
        bodies.append(bytes(buf[start:start + size]))
        pos = start + size
    del buf[:pos]
    return bodies
