"""What a process checks before it serves a master: the port is free, the data directory is its own.

``conveyor master`` and :mod:`conveyor.managers` both run these checks, so a
second master started by either hears the same one-line reason, instead of
the store's "database is locked" from a directory another master holds.
"""

from __future__ import annotations

import errno
import os
import socket
from typing import IO

from .errors import ConveyorError


class DataDirInUse(ConveyorError):
    """Another master holds the data directory (one master per directory: a second would void the
    first one's leases)."""


def listen_error(host: str, port: int, exc: OSError) -> str:
    """The one line for a port a master cannot listen on (the errno's own words where there is one:
    asyncio wraps them in a sentence of its own)."""
    return f"cannot listen on {host}:{port}: {os.strerror(exc.errno) if exc.errno else exc}"


def check_port_free(host: str, port: int) -> None:
    """OSError (with the one-line message) if ``port`` cannot be bound on ``host`` now.

    Checked before the store is opened: the store of a second master on the
    same port (the managers name their directory after the port) is the
    first one's, and would only say it is locked. Port 0 is always free.
    """
    if not port:
        return
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the master's listener does
        try:
            s.bind((host, port))
        except OSError as exc:
            raise OSError(exc.errno or errno.EADDRINUSE, listen_error(host, port, exc)) from None


def lock_data_dir(data: str | os.PathLike[str]) -> IO[str] | None:
    """Lock ``data`` for this process: the open lock file (keep it open), or None if it cannot be made.

    None when the directory does not exist or is not writable: opening the
    store then says why (or makes it, and the caller tries again).
    DataDirInUse names the process holding it.
    """
    import fcntl

    path = os.path.join(data, "master.lock")
    try:
        handle = open(path, "a+")  # noqa: SIM115 - held open for as long as the master runs
    except OSError:
        return None
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.seek(0)
        owner = handle.read().strip() or "another process"
        handle.close()
        raise DataDirInUse(f"data directory {data} is in use by another master (pid {owner})") from None
    handle.seek(0)
    handle.truncate()
    handle.write(str(os.getpid()))
    handle.flush()
    return handle
