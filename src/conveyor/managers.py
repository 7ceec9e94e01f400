"""A drop-in for the queue part of ``multiprocessing.managers``.

Code written for the classic tutorials runs unchanged apart from the import::

    from conveyor.managers import BaseManager        # was: from multiprocessing.managers import ...

    task_queue = queue.Queue()

    class QueueManager(BaseManager):
        pass

    QueueManager.register("get_task_queue", callable=lambda: task_queue)
    manager = QueueManager(address=("", 5000), authkey=b"abc")
    manager.start()                                   # a conveyor master in a child process
    task = manager.get_task_queue()                   # a durable network queue
    task.put(7)

Each registered ``typeid`` is one named durable queue on a conveyor master
(the queue's name is the typeid). The serving side calls each ``callable``
once, at :meth:`BaseManager.start` or :meth:`BaseManager.get_server`, only to
learn the queue's ``maxsize``; the items themselves live in the master's
SQLite store, so they survive a ``kill -9`` of any process, the master
included. A proxy (``manager.get_task_queue()``) is a
:class:`conveyor.client.queues.NetworkQueue` in ``ack="auto"`` mode: an item
is acknowledged when its consumer comes back for the next one, calls
``task_done()`` or exits normally, and is handed to another consumer if the
one that got it dies first — a worker killed between ``task.get()`` and
``result.put()`` loses nothing.

Where the data lives: the ``data_dir`` argument, else the
``CONVEYOR_MANAGERS_DATA`` environment variable, else
``./conveyor-managers-data/<port>``. Restarting a manager on the same data
directory brings back every item not yet consumed.

What is supported: ``BaseManager`` and ``SyncManager`` with queue typeids —
``register(typeid, callable)`` where ``callable()`` returns a ``queue.Queue``
(or a FIFO subclass, ``queue.SimpleQueue`` or a ``multiprocessing`` queue);
``start()``, ``connect()``, ``get_server().serve_forever()``,
``shutdown()``, ``join()``, ``address``, the context manager;
``SyncManager.Queue()`` / ``JoinableQueue()`` (anonymous durable queues);
and proxies handed to ``multiprocessing`` children (pickled or inherited
through fork). LIFO and priority queues, custom proxy types,
``method_to_typeid``, ``create_method=False`` and the non-queue
``SyncManager`` types (``dict``, ``list``, ``Lock``, ``Value``...) are
refused with an error naming what is.

Differences from the stdlib: ``start()`` runs the master in a fresh
interpreter that never imports your script (the tutorials have no
``if __name__ == "__main__"`` guard, which spawn would need), and that
master stops when the manager's process exits, however it exits. Each
typeid is one queue shared by every caller: typeid methods take no
arguments, and items already in the local ``queue.Queue`` stay there.

Security: like ``multiprocessing.managers``, items travel pickled once the
authkey handshake has succeeded, so any picklable object (a ``Job`` instance
of your own class) goes through a queue. Anyone holding the authkey can
therefore run code in every process that reads from the queues: use it on
trusted networks only, with a real authkey. The master refuses to listen on
a non-loopback address with an empty authkey.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import errno
import json
import logging
import multiprocessing
import multiprocessing.managers
import multiprocessing.queues
import multiprocessing.synchronize
import multiprocessing.util
import os
import queue as stdqueue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

from . import loops, protocol, serde, timing
from .auth import as_key, is_loopback
from .client import queues as _queues
from .client.client import ENV_ADDRESS, Client
from .client.queues import NetworkQueue
from .errors import AuthenticationError, ConnectionLost, ConveyorError
from .link import parse_addresses
from .serving import check_port_free, listen_error, lock_data_dir

__all__ = [
    "AuthenticationError",
    "BaseManager",
    "ConnectionRefused",
    "MasterGone",
    "ENV_DATA",
    "QueueProxy",
    "Server",
    "SyncManager",
    "UnknownTypeid",
]

ENV_DATA = "CONVEYOR_MANAGERS_DATA"
DEFAULT_DATA_ROOT = "conveyor-managers-data"
QUEUE_METHODS = frozenset({"put", "get", "put_nowait", "get_nowait", "qsize", "empty", "full",
                           "task_done", "join"})
SUPPORTED = ("queue typeids registered with register(typeid, callable) where callable() returns "
             "a queue.Queue (or a FIFO subclass, queue.SimpleQueue or a multiprocessing queue)")
SYNC_SUPPORTED = ("Queue", "JoinableQueue")
SYNC_UNSUPPORTED = ("dict", "list", "Lock", "RLock", "Semaphore", "BoundedSemaphore", "Condition",
                    "Event", "Barrier", "Value", "Array", "Namespace", "Pool")
_START_TIMEOUT = 30.0
_UNFINISHED = ("waiting", "delayed", "ready", "leased")  # item states that a new run would be handed
log = logging.getLogger("conveyor.managers")
_INITIAL, _STARTED, _SHUTDOWN = "initial", "started", "shutdown"


class UnknownTypeid(ConveyorError, KeyError, multiprocessing.managers.RemoteError):
    """The master serves no queue by that typeid.

    The stdlib raises a ``RemoteError`` wrapping the server's ``KeyError``;
    this is both, so either ``except`` clause catches it.
    """

    def __init__(self, typeid: str, served: list[str]) -> None:
        super().__init__(typeid, served)
        self.typeid = typeid
        self.served = served

    def __str__(self) -> str:
        served = ", ".join(self.served) or "none"
        return (f"the manager's master serves no typeid {self.typeid!r} (it serves: {served}); "
                "register it with a callable on the serving side")


class ConnectionRefused(ConnectionLost, ConnectionRefusedError):
    """No master answers at the manager's address (the stdlib raises ConnectionRefusedError)."""


class MasterGone(ConnectionLost, BrokenPipeError, EOFError):
    """A proxy's master shut down (or cannot be reached again): the call cannot be served.

    The stdlib raises EOFError for the first call on a proxy whose manager
    went away and BrokenPipeError after; this is both (and a
    ``conveyor.ConnectionLost``), so code written for either catches it.
    """

    def __init__(self, message: str) -> None:
        super().__init__(errno.EPIPE, message)

    def __str__(self) -> str:
        return str(self.strerror)


class _Entry(NamedTuple):
    callable: Callable[[], Any] | None
    exposed: tuple[str, ...] | None


# -- what a queue typeid may be ---------------------------------------------
def _check_typeid(typeid: Any) -> None:
    if not isinstance(typeid, str) or not typeid or len(typeid) > 200:
        raise TypeError(f"typeid must be a non-empty string, not {typeid!r}")


def _check_queue_class(typeid: str, cls: type) -> None:
    """Refuse a class that is not a FIFO queue (register time, when the callable is a class)."""
    if issubclass(cls, (stdqueue.LifoQueue, stdqueue.PriorityQueue)):
        raise ValueError(f"register({typeid!r}): {cls.__name__} is not supported: conveyor.managers "
                         f"serves FIFO queues only ({SUPPORTED})")
    if not issubclass(cls, (stdqueue.Queue, stdqueue.SimpleQueue, multiprocessing.queues.Queue,
                            multiprocessing.queues.SimpleQueue)):
        raise TypeError(f"register({typeid!r}): {cls.__name__} is not a queue; conveyor.managers "
                        f"supports {SUPPORTED}")


def _queue_maxsize(typeid: str, obj: Any) -> int:
    """The maxsize of the queue ``callable()`` returned; refuse anything but a FIFO queue."""
    if isinstance(obj, (stdqueue.LifoQueue, stdqueue.PriorityQueue)):
        raise ValueError(f"typeid {typeid!r}: a {type(obj).__name__} is not supported: "
                         f"conveyor.managers serves FIFO queues only ({SUPPORTED})")
    if isinstance(obj, stdqueue.Queue):
        for name in ("_init", "_qsize", "_put", "_get"):
            if getattr(type(obj), name) is not getattr(stdqueue.Queue, name):
                raise ValueError(f"typeid {typeid!r}: {type(obj).__name__} overrides Queue.{name}, so its "
                                 "order may not be FIFO; conveyor.managers serves FIFO queues only")
        return max(0, int(obj.maxsize))
    if isinstance(obj, (stdqueue.SimpleQueue, multiprocessing.queues.SimpleQueue)):
        return 0
    if isinstance(obj, multiprocessing.queues.Queue):
        size = int(getattr(obj, "_maxsize", 0))
        limit: int = multiprocessing.synchronize.SEM_VALUE_MAX  # type: ignore[attr-defined]  # untyped in typeshed
        return size if 0 < size < limit else 0
    raise TypeError(f"typeid {typeid!r}: the callable returned a {type(obj).__name__}, not a queue; "
                    f"conveyor.managers supports {SUPPORTED}")


# -- addresses and data ------------------------------------------------------
_HOST_PORT = re.compile(r"((tcp|tls)://)?(\[[^\]\s]+\]|[^:/\\\s\[\]]+):\d+")
_ADDRESS_FORMS = ("a (host, port) tuple, a list of (host, port) pairs or a \"host:port,host:port\" "
                  "string (several masters of one cluster)")


def _check_address(address: Any) -> tuple[str, int] | None:
    if address is None:
        return None
    if (not isinstance(address, (tuple, list)) or len(address) != 2 or not isinstance(address[0], str)
            or isinstance(address[1], bool) or not isinstance(address[1], int) or not 0 <= address[1] < 65536):
        raise ValueError(f"address must be a (host, port) tuple with a port from 0 to 65535, not {address!r} "
                         "(conveyor.managers speaks TCP only: no Unix sockets or named pipes)")
    return address[0], address[1]


def _host_port(host: str, port: int) -> str:
    host = _connect_host(host)
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _check_addresses(address: Any) -> tuple[tuple[str, int] | None, str | None]:
    """``address`` as (the one (host, port), the masters to connect to or None).

    One (host, port) pair is the stdlib's form (served, or connected to). A list
    of pairs, or a comma-separated ``"host:port,host:port"`` string, names several
    masters of one cluster: connect() then fails over between them, and the
    masters string is what the clients get (None for one pair)."""
    if isinstance(address, str):
        try:
            # Each entry names its port: a bare word could be a Unix socket path or a named pipe.
            bad = [part for part in address.split(",") if not _HOST_PORT.fullmatch(part.strip())]
            if bad:
                raise ValueError(f"{bad[0].strip()!r} is not host:port")
            masters = parse_addresses(address)
        except ValueError as exc:
            raise ValueError(f"address {address!r}: {exc}; expected {_ADDRESS_FORMS} (conveyor.managers "
                             "speaks TCP only: no Unix sockets or named pipes)") from None
        return (masters[0].host, masters[0].port), ",".join(
            ("tls://" if a.tls else "") + _host_port(a.host, a.port) for a in masters)
    if (isinstance(address, (list, tuple)) and address
            and any(isinstance(x, (list, tuple)) for x in address)):
        pairs = []
        for i, entry in enumerate(address):
            try:
                host, port = _check_address(entry) or ("", 0)
            except ValueError:
                raise ValueError(f"address entry {i} is {entry!r}: each master must be a (host, port) "
                                 "pair with a port from 1 to 65535") from None
            if port == 0:
                raise ValueError(f"address entry {i} is {entry!r}: a master's port cannot be 0 "
                                 "(port 0 only means \"pick a free port\" when serving one address)")
            pairs.append((host, port))
        return pairs[0], ",".join(_host_port(h, p) for h, p in pairs)
    if isinstance(address, (list, tuple)) and not address:
        raise ValueError(f"address is an empty list: expected {_ADDRESS_FORMS}")
    return _check_address(address), None


def _bind_host(host: str) -> str:
    return "0.0.0.0" if host == "" else host


def _connect_host(host: str) -> str:
    return "127.0.0.1" if host in ("", "0.0.0.0") else ("::1" if host == "::" else host)


def data_dir_for(port: int, data_dir: str | os.PathLike[str] | None = None) -> Path:
    """The data directory a manager on ``port`` uses: ``data_dir``, else
    ``$CONVEYOR_MANAGERS_DATA``, else ``./conveyor-managers-data/<port>``."""
    if data_dir is not None:
        return Path(data_dir).absolute()
    env = os.environ.get(ENV_DATA)
    if env:
        return Path(env).absolute()
    return Path.cwd() / DEFAULT_DATA_ROOT / str(port)


def _free_port(host: str) -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


# -- the serving side --------------------------------------------------------
class Server:
    """A conveyor master serving a manager's queues, bound and ready to serve.

    What :meth:`BaseManager.get_server` returns; :meth:`serve_forever` runs it
    in the current process until SIGINT/SIGTERM (Ctrl-C) or :meth:`stop`.
    ``address`` is the bound (host, port); ``data_dir`` the store's directory.
    """

    def __init__(self, address: tuple[str, int], authkey: bytes, queues: dict[str, int],
                 data_dir: str | os.PathLike[str] | None = None) -> None:
        from .master import Master
        from .store import open_store

        host, port = address
        if not is_loopback(_bind_host(host)) and not authkey:
            raise ValueError(f"refusing to serve on {host or 'every interface'} with an empty authkey: "
                             "pass authkey=... (only loopback addresses may go without one)")
        self.queues = dict(queues)
        self._lock: Any = None
        self._loop = loops.new_event_loop()
        # Port 0: choose a free port first, so the default data directory can be named after it
        # (and so a name like "localhost" binds one port on every address it has).
        attempts = 1 if port else 20
        for attempt in range(attempts):
            bind_port = port or _free_port(_bind_host(host))
            self.data_dir = data_dir_for(bind_port, data_dir)
            try:
                # The port, then the directory, before the store: a second master on the
                # same port would otherwise open the first one's store and hear "locked".
                check_port_free(_bind_host(host), bind_port)
                self.data_dir.mkdir(parents=True, exist_ok=True)
                self._lock = lock_data_dir(self.data_dir)
            except BaseException:
                self._loop.close()
                raise
            self.store = open_store(self.data_dir)
            self.master = Master(self.store, authkey=authkey, host=_bind_host(host), port=bind_port,
                                 allow_pickle=True, queues=self.queues)
            try:
                self._loop.run_until_complete(self.master.start())
                break
            except BaseException as exc:
                self._loop.run_until_complete(self.master.close())
                self.store.close()
                self._unlock()
                if getattr(exc, "errno", None) != errno.EADDRINUSE or attempt == attempts - 1:
                    self._loop.close()
                    if isinstance(exc, OSError) and exc.errno is not None:
                        raise OSError(exc.errno, listen_error(host or "*", bind_port, exc)) from None
                    raise
        self.address = (host, self.master.port)
        self.leftover = self._leftover()
        self._closed = False

    def _leftover(self) -> dict[str, int]:
        """Items already in the declared queues: left by an earlier run on this data directory."""
        stats = self.store.stats()
        counts = {q: sum(stats[q].as_dict().get(s, 0) for s in _UNFINISHED) for q in self.queues if q in stats}
        return {q: n for q, n in counts.items() if n}

    def _unlock(self) -> None:
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def serve_forever(self, signals: tuple[int, ...] = (signal.SIGINT, signal.SIGTERM)) -> None:
        """Serve until interrupted (SIGINT/SIGTERM) or :meth:`stop`; then close the master and store."""
        installed = []
        if threading.current_thread() is threading.main_thread():
            for sig in signals:
                try:
                    self._loop.add_signal_handler(sig, self.stop)
                    installed.append(sig)
                except (NotImplementedError, RuntimeError, ValueError):  # not on this platform
                    pass
        try:
            self._loop.run_until_complete(self.master.serve_forever())
        except KeyboardInterrupt:
            pass
        finally:
            for sig in installed:
                self._loop.remove_signal_handler(sig)
            self.close()

    def stop(self) -> None:
        """Ask :meth:`serve_forever` to return (thread-safe)."""
        if not self._loop.is_closed():
            self._loop.call_soon_threadsafe(lambda: asyncio.ensure_future(self.master.close()))

    def close(self) -> None:
        """Close the master and the store (idempotent)."""
        if self._closed:
            return
        self._closed = True
        try:
            self._loop.run_until_complete(self.master.close())
        finally:
            self.store.close()
            self._unlock()
            self._loop.close()


def _child_main() -> None:
    """The master process ``start()`` runs: config on stdin, the bound port on stdout.

    It ignores SIGINT (Ctrl-C in the terminal reaches the manager's script,
    which shuts it down), stops on SIGTERM, and stops when its manager's
    process goes away (stdin reaches EOF), so it never outlives it.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    config = json.loads(sys.stdin.readline())
    try:
        server = Server((config["host"], config["port"]), bytes.fromhex(config["authkey"]),
                        config["queues"], config["data_dir"])
    except Exception as exc:
        # OSError and our own errors are already one line for a user (as the CLI prints them).
        plain = isinstance(exc, (OSError, ConveyorError)) and not isinstance(exc, ConnectionLost)
        error = (exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)) if plain \
            else f"{type(exc).__name__}: {exc}"
        print(json.dumps({"error": error, "errno": getattr(exc, "errno", None)}), flush=True)
        raise SystemExit(1) from None
    print(json.dumps({"port": server.address[1], "data_dir": str(server.data_dir),
                      "leftover": server.leftover}), flush=True)

    def watch_parent() -> None:
        fd = sys.stdin.fileno()  # the raw fd: a thread blocked in sys.stdin would hang the exit
        try:
            while os.read(fd, 1 << 16):
                pass
        except (OSError, ValueError):
            pass
        try:
            server.stop()
        except RuntimeError:  # the loop closed meanwhile
            pass

    threading.Thread(target=watch_parent, name="conveyor-managers-parent", daemon=True).start()
    server.serve_forever(signals=(signal.SIGTERM,))


# -- proxies -----------------------------------------------------------------
_clients: dict[tuple[Any, ...], Client] = {}
_clients_lock = threading.Lock()


#: Where a manager's client connects: one (host, port), or several masters of one
#: cluster as a comma-separated string ("a:7700,b:7700", from CONVEYOR_ADDRESS).
_Target = tuple[str, int] | str


def _where(address: _Target) -> str:
    """``address`` for a message: host:port, or the list of masters."""
    return address if isinstance(address, str) else f"{address[0]}:{address[1]}"


def _shared_client(address: _Target, authkey: bytes) -> Client:
    """One pickle-codec client per (process, address, authkey), for proxies unpickled here."""
    key = (os.getpid(), address, authkey)
    with _clients_lock:
        client = _clients.get(key)
        if client is None or client.closed:
            client = _clients[key] = _connect(address, authkey)
        return client


def _rebuild_proxy(address: _Target, authkey: bytes | None, name: str, maxsize: int) -> QueueProxy:
    if authkey is None:
        authkey = bytes(multiprocessing.current_process().authkey)
    return QueueProxy(_shared_client(address, authkey), name, maxsize, address=address, authkey=authkey)


class QueueProxy(NetworkQueue):
    """What a typeid method returns: a durable ``NetworkQueue`` (``ack="auto"``, pickle codec).

    It can be passed to another process like a stdlib proxy: pickled, it
    reconnects there with that process's authkey (the manager's own key when
    pickled to start a child process, as the stdlib does); inherited through
    ``fork``, it opens its own connection on first use.
    """

    def __init__(self, client: Client, name: str, maxsize: int = 0, *, address: _Target,
                 authkey: bytes) -> None:
        self._address = address
        self._authkey = authkey
        super().__init__(client, name, maxsize, ack="auto", codec=serde.PICKLE)
        _install_process_hooks()
        _live_proxies.add(self)

    _client_obj: Client
    _pid: int

    @property
    def _client(self) -> Client:
        if self._pid != os.getpid():  # inherited through fork: the parent's connection is not ours
            self._client_obj = _shared_client(self._address, self._authkey)
            self._pid = os.getpid()
        return self._client_obj

    @_client.setter
    def _client(self, client: Client) -> None:
        self._client_obj = client
        self._pid = os.getpid()

    def _request(self, op: str, fields: dict[str, Any], wait: float | None,
                 acks: list[list[Any]] | None = None) -> dict[str, Any]:
        """As NetworkQueue's, but a master that is gone fails the call (MasterGone), as the stdlib's
        proxies fail, instead of a get that times out as ``queue.Empty`` or a put that waits for ever.

        A master that comes back within ``timing.PROXY_MASTER_GRACE`` seconds
        (restarted on its data directory) is waited for: nothing is lost then.
        """
        if self._client.down_for >= timing.PROXY_MASTER_GRACE:
            raise self._gone(None)  # gone already (past the grace): fail at once, as the stdlib does
        try:
            cfut = self._send_request(op, fields, acks)
        except ConnectionLost as exc:
            raise self._gone(exc) from None
        deadline = None if wait is None else time.monotonic() + wait
        while True:
            now = time.monotonic()
            step = timing.PROXY_POLL if deadline is None else max(0.0, min(timing.PROXY_POLL, deadline - now))
            try:
                reply: dict[str, Any] = self._client.wait(cfut, step)
                return reply
            except (TimeoutError, cf.TimeoutError):
                now = time.monotonic()
                down_for = self._client.down_for
                gone = down_for >= timing.PROXY_MASTER_GRACE
                if deadline is not None and now >= deadline:
                    gone = down_for > 0  # no master to have answered: not "empty"
                if gone or (deadline is not None and now >= deadline):
                    if op == protocol.QGET:  # items leased to us after we gave up go back
                        cfut.add_done_callback(self._give_back)
                    if gone:
                        raise self._gone(None) from None
                    raise
            except ConnectionLost as exc:
                raise self._gone(exc) from None

    def _gone(self, exc: BaseException | None) -> MasterGone:
        why = f" ({exc})" if exc is not None else ""
        return MasterGone(f"the manager's master at {_where(self._address)} is gone{why}: "
                          f"queue {self.name!r} cannot be used")

    def forget_parent_items(self) -> None:
        """In a child made by fork: drop what the parent got and has not acknowledged (the
        parent acknowledges it), and the acknowledgements it had in flight."""
        self._lock = threading.Lock()  # another parent thread may have held it at the fork
        self._unacked.clear()
        self._acks = []

    def uses_client(self, client: Client) -> bool:
        return self._client_obj is client and self._pid == os.getpid()  # never opens a connection

    def __repr__(self) -> str:
        return f"<conveyor.managers proxy for queue {self.name!r} at {_where(self._address)}>"

    def __reduce__(self) -> tuple[Any, ...]:
        from multiprocessing.context import get_spawning_popen

        authkey = self._authkey if get_spawning_popen() is not None else None
        return _rebuild_proxy, (self._address, authkey, self.name, self.maxsize)


_live_proxies: weakref.WeakSet[QueueProxy] = weakref.WeakSet()


def _forget_parent_items() -> None:
    """In a child made by fork: the items the parent got are the parent's to acknowledge."""
    for proxy in list(_live_proxies):
        proxy.forget_parent_items()


def _ack_at_process_exit() -> None:
    """multiprocessing's exit hook: a ``Process`` child made by fork leaves with ``os._exit``,
    skipping atexit, so the ack="auto" promise (acknowledged at a normal exit) is kept here."""
    exc = sys.exc_info()[1]  # set when run() raised: this hook runs in a finally clause
    if _queues.crashing() or (exc is not None and not (isinstance(exc, SystemExit) and exc.code in (0, None))):
        return
    for proxy in list(_live_proxies):
        proxy.ack_outstanding()


def _register_exit_ack(_: object) -> None:
    multiprocessing.util.Finalize(None, _ack_at_process_exit, exitpriority=100)


class _Hook:
    pass


_hook = _Hook()  # register_after_fork needs an object to hang the hook on
_hooks_installed = False


def _install_process_hooks() -> None:
    """Install, once, by the first proxy (not at import): forgetting the parent's items in a
    forked child, and acknowledging at a ``Process`` child's normal exit."""
    global _hooks_installed
    if _hooks_installed:
        return
    _hooks_installed = True
    if hasattr(os, "register_at_fork"):
        os.register_at_fork(after_in_child=_forget_parent_items)
    multiprocessing.util.register_after_fork(_hook, _register_exit_ack)  # a Process child clears finalizers
    if multiprocessing.parent_process() is not None:  # a child whose first proxy is its own
        _register_exit_ack(None)


def _connect(address: _Target, authkey: bytes, timeout: float = 10.0) -> Client:
    try:
        return Client(address, authkey, codec=serde.PICKLE, connect_timeout=timeout)
    except AuthenticationError:
        raise
    except ConnectionLost as exc:
        raise ConnectionRefused(errno.ECONNREFUSED, f"{exc} (is the manager's master running?)") from None


# -- managers ------------------------------------------------------------------
class _State:
    """What a manager's finalizer needs: shut down at shutdown() or at interpreter exit."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.client: Client | None = None
        self.process: subprocess.Popen[bytes] | None = None
        self.proxies: weakref.WeakSet[QueueProxy] = weakref.WeakSet()
        self.declared: list[str] = []
        self.timeout = 1.0


def _finalize(state: _State) -> None:
    if os.getpid() != state.pid:  # a child made by fork: the master and connection are the parent's
        return
    if not _queues.crashing():  # a normal exit acknowledges what was got, as ack="auto" promises
        for proxy in list(state.proxies):
            proxy.ack_outstanding()
        if state.process is not None and state.client is not None:
            _drain(state)
    if state.client is not None:
        state.client.close()
    proc = state.process
    if proc is not None:
        _stop_process(proc, state.timeout)


def _drain(state: _State) -> None:
    """Before stopping our master: give consumers up to ``timeout`` s to acknowledge what they got.

    A worker that puts its last result and exits acknowledges its last task
    on the way out; a master that shuts down the moment it reads that result
    would otherwise keep the task, and hand it out again after a restart.
    """
    assert state.client is not None and state.process is not None
    names = sorted(set(state.declared) | {p.name for p in state.proxies})
    deadline = time.monotonic() + state.timeout
    while names and state.process.poll() is None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return
        try:
            futures = [state.client.request(protocol.QSIZE, {"queue": n}) for n in names]
            if not any(f.result(remaining)["leased"] for f in futures):
                return
        except Exception:  # the master went away, or did not answer in time
            return
        time.sleep(0.02)


def _stop_process(proc: subprocess.Popen[bytes], timeout: float) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    for stream in (proc.stdin, proc.stdout):
        if stream is not None:
            try:
                stream.close()
            except OSError:
                pass


class BaseManager:
    """``multiprocessing.managers.BaseManager`` for queues, on a durable conveyor master.

    ``address`` is ``(host, port)``: ``("", port)`` or ``("0.0.0.0", port)``
    serve every interface, port 0 picks a free port (read it back from
    :attr:`address`). To connect to a cluster of masters on one shared store,
    ``address`` may also be a list of ``(host, port)`` pairs or a
    ``"host:port,host:port"`` string: ``connect()`` reaches whichever answers
    and its proxies move to another master when theirs fails (serving such an
    address is an error). ``authkey`` is bytes or str (UTF-8); it defaults to
    ``multiprocessing.current_process().authkey`` like the stdlib.
    ``data_dir`` is where the serving side keeps its queues (see the module
    docstring). ``serializer`` must be "pickle"; ``ctx`` is accepted and
    ignored (the master is always a fresh interpreter).
    """

    _registry: dict[str, _Entry] = {}

    def __init__(self, address: tuple[str, int] | list[tuple[str, int]] | str | None = None,
                 authkey: bytes | str | None = None,
                 serializer: str = "pickle", ctx: Any = None, *, shutdown_timeout: float = 1.0,
                 data_dir: str | os.PathLike[str] | None = None) -> None:
        if serializer != "pickle":
            raise ValueError(f"serializer {serializer!r} is not supported: conveyor.managers uses pickle")
        if authkey is None:
            authkey = bytes(multiprocessing.current_process().authkey)
        self._authkey = as_key(authkey)
        #: Several masters (comma-separated), given as ``address`` or read by connect()
        #: from CONVEYOR_ADDRESS; ``_address`` is then the first of them.
        self._address, self._masters = _check_addresses(address)
        self._data_dir = data_dir
        self._state = _INITIAL
        self._s = _State()
        self._s.timeout = shutdown_timeout
        self._finalizer = weakref.finalize(self, _finalize, self._s)
        self.data_dir: Path | None = None

    # -- registration --------------------------------------------------------
    @classmethod
    def register(cls, typeid: str, callable: Callable[[], Any] | None = None, proxytype: Any = None,
                 exposed: Any = None, method_to_typeid: Any = None, create_method: bool = True) -> None:
        """Register ``typeid`` as a queue; on the serving side ``callable()`` returns a ``queue.Queue``.

        Registrations are per class and inherited (a subclass copies its
        parent's on its first own registration), as in the stdlib.
        """
        _check_typeid(typeid)
        if proxytype is not None:
            raise ValueError(f"register({typeid!r}): proxytype is not supported: typeids are queues and "
                             "their proxies are conveyor NetworkQueues; supported: " + SUPPORTED)
        if exposed is not None:
            extra = sorted(set(exposed) - QUEUE_METHODS)
            if extra:
                raise ValueError(f"register({typeid!r}): exposed {extra} are not queue methods; "
                                 f"supported: {', '.join(sorted(QUEUE_METHODS))}")
            exposed = tuple(exposed)
        if method_to_typeid:
            raise ValueError(f"register({typeid!r}): method_to_typeid is not supported; supported: {SUPPORTED}")
        if not create_method:
            raise ValueError(f"register({typeid!r}): create_method=False is not supported: a typeid is "
                             "reached through the manager method of that name")
        if callable is not None:
            if not _is_callable(callable):
                raise TypeError(f"register({typeid!r}): callable must be callable, not {type(callable).__name__}")
            if isinstance(callable, type):
                _check_queue_class(typeid, callable)
        if "_registry" not in cls.__dict__:
            cls._registry = cls._registry.copy()
        cls._registry[typeid] = _Entry(callable, exposed)

        def method(self: BaseManager, /, *args: Any, **kwds: Any) -> QueueProxy:
            return self._create(typeid, *args, **kwds)

        method.__name__ = method.__qualname__ = typeid
        method.__doc__ = f"The proxy of the durable queue {typeid!r}."
        setattr(cls, typeid, method)

    # -- serving side --------------------------------------------------------
    def _declared_queues(self) -> dict[str, int]:
        """Call each registered callable once to learn its queue's maxsize."""
        return {typeid: _queue_maxsize(typeid, entry.callable())
                for typeid, entry in self._registry.items() if entry.callable is not None}

    def _check_initial(self) -> None:
        if self._state == _STARTED:
            raise multiprocessing.ProcessError("Already started server")
        if self._state == _SHUTDOWN:
            raise multiprocessing.ProcessError("Manager has shut down")

    def _check_serving(self, what: str) -> None:
        if self._masters is not None:
            raise ValueError(f"{what} serves one address, but this manager was given several masters "
                             f"({self._masters}): pass one (host, port) to serve, or call connect() to "
                             "use the cluster")

    def get_server(self) -> Server:
        """A :class:`Server` bound to this manager's address, to run with ``serve_forever()`` here."""
        self._check_initial()
        self._check_serving("get_server()")
        server = Server(self._address or ("127.0.0.1", 0), self._authkey, self._declared_queues(),
                        self._data_dir)
        self._address = server.address
        self.data_dir = server.data_dir
        _warn_leftover(server.leftover, server.data_dir)
        return server

    def start(self, initializer: Callable[..., Any] | None = None, initargs: tuple[Any, ...] = ()) -> None:
        """Run a conveyor master for this manager in a child process; return once it listens."""
        self._check_initial()
        if initializer is not None:
            raise NotImplementedError("conveyor.managers: start(initializer=...) is not supported: the "
                                      "server is a conveyor master that runs no user code (it already "
                                      "ignores SIGINT)")
        self._check_serving("start()")
        queues = self._declared_queues()
        self._s.declared = list(queues)
        host, port = self._address or ("127.0.0.1", 0)
        if not is_loopback(_bind_host(host)) and not self._authkey:
            raise ValueError(f"refusing to serve on {host or 'every interface'} with an empty authkey")
        data_dir = None
        if self._data_dir is not None or os.environ.get(ENV_DATA):
            data_dir = str(data_dir_for(port, self._data_dir))
        config = {"host": host, "port": port, "authkey": self._authkey.hex(), "queues": queues,
                  "data_dir": data_dir}
        env = dict(os.environ)
        src = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # import conveyor as here
        env["PYTHONPATH"] = os.pathsep.join([src, *filter(None, [env.get("PYTHONPATH")])])
        if data_dir is None:
            env.pop(ENV_DATA, None)
        proc = subprocess.Popen(
            [sys.executable, "-c", "from conveyor.managers import _child_main; _child_main()"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, cwd=os.getcwd(),
        )
        self._s.process = proc
        try:
            assert proc.stdin is not None
            proc.stdin.write(json.dumps(config).encode() + b"\n")
            proc.stdin.flush()
            reply = _read_line(proc, _START_TIMEOUT)
            if "error" in reply:
                message = f"{reply['error']} (the manager's master did not start)"
                if reply.get("errno"):  # cannot listen there (EADDRINUSE...): an OSError, as the stdlib's
                    raise OSError(reply["errno"], message)
                raise RuntimeError(message)
            self._address = (host, int(reply["port"]))
            self.data_dir = Path(reply["data_dir"])
            _warn_leftover(reply.get("leftover") or {}, self.data_dir)
            self._s.client = _connect((_connect_host(host), self._address[1]), self._authkey)
        except BaseException:
            _stop_process(proc, self._s.timeout)
            self._s.process = None
            raise
        self._state = _STARTED

    # -- connecting side -----------------------------------------------------
    def connect(self) -> None:
        """Connect to the master serving this manager's address.

        With several masters (a list of (host, port) pairs or a comma-separated
        string), the client reaches whichever answers first and moves to another
        when its master fails. Without an address, ``CONVEYOR_ADDRESS`` names the master, or several
        masters of one cluster comma-separated (``a:7700,b:7700``): the client
        then moves to another when its master fails. ``ConnectionRefused`` (a
        ``ConnectionRefusedError``) if none answers; ``conveyor.AuthenticationError``
        (a ``multiprocessing.AuthenticationError``) if it holds another authkey.
        """
        if self._address is None and os.environ.get(ENV_ADDRESS):
            masters = parse_addresses(os.environ[ENV_ADDRESS])  # a bad value raises ValueError here
            self._masters = ",".join(str(a) for a in masters)
            self._address = (masters[0].host, masters[0].port)
        if self._address is None or self._address[1] == 0:
            raise ValueError("connect() needs the master's address: BaseManager(address=(host, port), ...) "
                             f"or ${ENV_ADDRESS}")
        if self._s.client is not None:
            self._s.client.close()
        self._s.client = _connect(self._target(), self._authkey)
        self._state = _STARTED

    def _target(self) -> _Target:
        """Where this manager's clients connect: its address, or the masters ``connect()`` read."""
        if self._masters is not None:
            return self._masters
        assert self._address is not None
        return _connect_host(self._address[0]), self._address[1]

    def _require_client(self) -> Client:
        if self._s.client is None or self._state != _STARTED:
            raise ValueError("the manager is not started or connected: call start() or connect() first")
        if os.getpid() != self._s.pid:  # used in a child made by fork: a connection of its own
            return _shared_client(self._target(), self._authkey)
        return self._s.client

    def _proxy(self, name: str, maxsize: int) -> QueueProxy:
        proxy = QueueProxy(self._require_client(), name, maxsize, address=self._target(), authkey=self._authkey)
        self._s.proxies.add(proxy)
        return proxy

    def _create(self, typeid: str, *args: Any, **kwds: Any) -> QueueProxy:
        if args or kwds:
            raise TypeError(f"{typeid}() takes no arguments in conveyor.managers: each typeid is one "
                            "named durable queue")
        info = self._require_client().queue_info(typeid)
        if not info.get("declared"):
            raise UnknownTypeid(typeid, list(info.get("queues") or []))
        return self._proxy(typeid, int(info.get("maxsize") or 0))

    # -- life cycle ----------------------------------------------------------
    @property
    def _process(self) -> subprocess.Popen[bytes] | None:
        """The master child process ``start()`` ran (as the stdlib's ``_process``)."""
        return self._s.process

    @property
    def address(self) -> tuple[str, int] | None:
        """(host, port); after ``start()`` or ``get_server()`` with port 0, the port chosen
        (given several masters, the first of them)."""
        return self._address

    def join(self, timeout: float | None = None) -> None:
        """Wait for the master child process to exit (after ``shutdown()``)."""
        if self._s.process is not None:
            try:
                self._s.process.wait(timeout)
            except subprocess.TimeoutExpired:
                pass

    def shutdown(self) -> None:
        """Acknowledge what this process got, disconnect, and stop the master if ``start()`` ran it."""
        self._finalizer()
        self._state = _SHUTDOWN

    def __enter__(self) -> BaseManager:
        if self._state == _INITIAL:
            self.start()
        if self._state != _STARTED:
            raise multiprocessing.ProcessError("Manager has shut down")
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()


def _warn_leftover(leftover: dict[str, int], data_dir: Path) -> None:
    """Say (one line) that the queues hold items from an earlier run, and how to start empty.

    Durable queues bring back what an interrupted run left, which a script
    written for the stdlib does not expect: it would print the old results.
    """
    if not leftover:
        return
    held = ", ".join(f"{q} ({n} item{'s' if n != 1 else ''})" for q, n in sorted(leftover.items()))
    log.warning("conveyor.managers: queues already hold items from an earlier run: %s, kept in %s; "
                "to start empty, delete that directory first or pass another data_dir=", held, data_dir)


def _is_callable(obj: Any) -> bool:
    return callable(obj)


def _read_line(proc: subprocess.Popen[bytes], timeout: float) -> dict[str, Any]:
    """The child's first stdout line as JSON, within ``timeout`` seconds."""
    box: list[bytes] = []

    def read() -> None:
        assert proc.stdout is not None
        box.append(proc.stdout.readline())

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(timeout)
    if not box or not box[0]:
        code = proc.poll()
        state = f"exited with status {code}" if code is not None else f"did not listen within {timeout:.0f}s"
        raise RuntimeError(f"the manager's master {state}")
    doc: dict[str, Any] = json.loads(box[0])
    return doc


class SyncManager(BaseManager):
    """``multiprocessing.managers.SyncManager`` for queues: ``Queue()`` and ``JoinableQueue()``.

    Each call makes a new anonymous durable queue on the master. The other
    SyncManager types raise NotImplementedError.
    """

    def Queue(self, maxsize: int = 0) -> QueueProxy:  # noqa: N802 - the stdlib's name
        """A new anonymous durable queue (FIFO, bounded by ``maxsize`` if > 0)."""
        if isinstance(maxsize, bool) or not isinstance(maxsize, int):
            raise TypeError("maxsize must be an integer")
        return self._proxy(f"anon-{uuid.uuid4().hex}", max(0, maxsize))

    def JoinableQueue(self, maxsize: int = 0) -> QueueProxy:  # noqa: N802 - the stdlib's name
        """A new anonymous durable queue with ``task_done()`` and ``join()``."""
        return self.Queue(maxsize)


def _unsupported(name: str) -> Callable[..., Any]:
    def method(self: SyncManager, /, *args: Any, **kwds: Any) -> Any:
        raise NotImplementedError(f"SyncManager.{name}() is not supported by conveyor.managers; "
                                  f"supported: {', '.join(SYNC_SUPPORTED)} and registered queue typeids")

    method.__name__ = method.__qualname__ = name
    return method


for _name in SYNC_UNSUPPORTED:
    setattr(SyncManager, _name, _unsupported(_name))
del _name
