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
from ..hooks import CHILD_EXIT, CHILD_START, HookFailed, run_hooks
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


def child_settings(*, capture: bool = True, measure_memory: bool = False) -> dict[str, Any]:
    """What a pool child is told at start (plain data, it crosses ``spawn``): log as this
    process does (:func:`conveyor.logs.current_config`), capture each attempt's output,
    and whether to measure its memory after each batch."""
    from ..logs import current_config

    config = current_config()
    return {"log": config.to_list() if config is not None else None, "capture": capture,
            "memory": measure_memory}


def _setup_child_logging(settings: dict[str, Any]) -> None:
    """Log as the worker does (same level, format and file) and capture tasks' output."""
    from ..logs import LogConfig, capture_output, setup_logging

    if settings.get("log"):
        config = LogConfig.from_list(settings["log"])
        setup_logging(config.level, config.format, config.file)
    if settings.get("capture"):
        capture_output(streams=True)


def _child_start(conn: multiprocessing.connection.Connection, modules: list[str],
                 settings: dict[str, Any] | None = None) -> Registry:
    """What every pool child does first: ignore the signals the parent handles, exit
    with the parent, set up logging, import the task modules, run the
    ``on_child_start`` hooks, and tell the parent it is ready (or why not, then exit)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop,
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # even when a service manager signals the group
    parent = multiprocessing.parent_process()
    if parent is not None:  # an orphan stops at once, even in the middle of a task
        threading.Thread(target=_exit_with_parent, args=(parent.sentinel,), daemon=True,
                         name="conveyor-parent-watch").start()
    try:
        if os.getcwd() not in sys.path and "" not in sys.path:
            sys.path.insert(0, "")
        _setup_child_logging(settings or {})
        registry = Registry.from_modules(modules)
        run_hooks(CHILD_START, stop_on_error=True)
    except BaseException as exc:
        why = str(exc) if isinstance(exc, HookFailed) else f"{type(exc).__name__}: {exc}"
        try:
            conn.send_bytes(serde.packb([_MSG_ERROR, why]))
        finally:
            sys.exit(1)
    conn.send_bytes(serde.packb([_MSG_READY, os.getpid()]))
    return registry


def _child_main(conn: multiprocessing.connection.Connection, modules: list[str],
                allow_pickle: bool, settings: dict[str, Any] | None = None) -> None:
    """A pool child: import the modules once, then run batches until told to stop.

    Each batch's answer is ``["r", results, rss]``: ``rss`` is the child's resident
    memory in bytes after the batch when the pool measures it (else None).
    """
    signal.signal(signal.SIGALRM, _soft_limit)
    settings = settings or {}
    registry = _child_start(conn, modules, settings)
    capture = bool(settings.get("capture"))
    measure = bool(settings.get("memory"))
    if measure:
        from .lifecycle import rss_bytes

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
            _child_exit()  # asked to stop
            return
        results = [_execute(registry, name, payload, codec, allow_pickle,
                            CurrentTask(tid, name, token, send_progress, headers=headers or {}), soft,
                            capture=capture)
                   for tid, token, name, payload, codec, soft, headers in serde.unpackb(data)]
        try:
            conn.send_bytes(serde.packb([_MSG_RESULTS, results, rss_bytes() if measure else None]))
        except OSError:
            return


def _child_exit() -> None:
    """The parent asked this child to exit: run the ``on_child_exit`` hooks (failures are
    logged), and flush what they and the tasks printed."""
    run_hooks(CHILD_EXIT, stop_on_error=False)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass


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
