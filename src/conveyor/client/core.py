"""The async connection every client shares: requests, pushed results, reconnection.

Every request conveyor makes is safe to send twice (submits are idempotent by
task id), so when the connection drops the core reconnects with backoff,
resends the requests still unanswered, and resubmits every task whose
result it has not seen: a client whose master restarts loses nothing.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import contextlib
import itertools
import logging
import os
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .. import protocol, wire
from ..errors import AuthenticationError, ConnectionLost, ProtocolError, RemoteError
from ..records import NewTask, Result

log = logging.getLogger("conveyor.client")

ResultCallback = Callable[[Result], None]
_InvalidState = (asyncio.InvalidStateError, cf.InvalidStateError)


@dataclass(frozen=True, slots=True)
class Address:
    """A master's address: host, port and whether to speak TLS."""

    host: str
    port: int
    tls: bool = False

    def __str__(self) -> str:
        return f"{'tls' if self.tls else 'tcp'}://{self.host}:{self.port}"


def parse_address(address: str | tuple[str, int] | Address, default_port: int = 7700) -> Address:
    """Parse ``host:port``, ``tcp://host:port``, ``tls://host:port`` or a (host, port) tuple."""
    if isinstance(address, Address):
        return address
    if isinstance(address, tuple):
        host, port = address
        return Address(host or "127.0.0.1", int(port))
    if not isinstance(address, str) or not address:
        raise ValueError(f"invalid address {address!r}: expected host:port")
    tls = False
    text = address
    if "://" in text:
        scheme, text = text.split("://", 1)
        if scheme not in ("tcp", "tls"):
            raise ValueError(f"invalid address {address!r}: scheme must be tcp:// or tls://")
        tls = scheme == "tls"
    if text.startswith("["):  # [ipv6]:port
        host, _, rest = text[1:].partition("]")
        port_text = rest.lstrip(":")
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep:
            host, port_text = text, str(default_port)
    try:
        port = int(port_text)
        if not 0 < port < 65536:
            raise ValueError
    except ValueError:
        raise ValueError(f"invalid address {address!r}: port must be a number from 1 to 65535") from None
    return Address(host or "127.0.0.1", port, tls)


class CoreState:
    """What one logical connection remembers across reconnects, whatever does its I/O.

    Requests waiting for replies, tasks waiting for results, and what to send
    again after a reconnect. ``ClientCore`` (asyncio) and ``ThreadedCore``
    (blocking sockets, client/threaded.py) supply the futures and the writes;
    a threaded core also supplies a real lock (every method here may then be
    called from any thread; callbacks run outside the lock).
    """

    def __init__(
        self,
        address: str | tuple[str, int] | Address,
        authkey: bytes | None,
        *,
        role: str = "client",
        hello: dict[str, Any] | None = None,
        ssl_context: ssl.SSLContext | None = None,
        connect_timeout: float = 10.0,
        heartbeat: float = 5.0,
        max_frame_size: int = protocol.DEFAULT_MAX_FRAME,
        on_message: Callable[[protocol.Message], None] | None = None,
    ) -> None:
        self.address = parse_address(address)
        self.authkey = authkey or b""
        self.role = role
        self.hello_fields = dict(hello or {})
        if self.address.tls and ssl_context is None:
            from ..auth import client_tls_context

            ssl_context = client_tls_context()
        self.ssl_context = ssl_context if self.address.tls else None
        self.connect_timeout = connect_timeout
        self.heartbeat = heartbeat
        self.max_frame_size = max_frame_size
        self.on_message = on_message
        self.session: str | None = None
        self.server_info: dict[str, Any] = {}
        self._lock: Any = contextlib.nullcontext()
        self._closing = False
        self._rids = itertools.count(1)
        self._requests: dict[int, tuple[str, dict, Any]] = {}
        # task id -> (wire task, or None when only watched; the callbacks waiting for its result)
        self._pending: dict[str, tuple[list | None, list[ResultCallback]]] = {}

    # -- what an I/O flavour provides ----------------------------------------
    def _new_future(self) -> Any:
        raise NotImplementedError

    def _target(self) -> Any:
        """Where a frame goes now (None while disconnected); read under the lock."""
        raise NotImplementedError

    def _send_to(self, target: Any, data: bytes) -> None:
        raise NotImplementedError

    def _send(self, op: str, rid: int, fields: dict) -> None:
        self._send_to(self._target(), protocol.encode_frame(op, rid, fields))

    # -- hello ---------------------------------------------------------------
    def _hello(self) -> tuple[int, bytes]:
        """The HELLO request that follows the handshake: its request id and frame."""
        rid = next(self._rids)
        fields = {"role": self.role, "host": socket.gethostname(), "pid": os.getpid(), **self.hello_fields}
        return rid, protocol.encode_frame(protocol.HELLO, rid, fields)

    def _accept_hello(self, reply: protocol.Message) -> None:
        """Take the master's answer to HELLO (RemoteError if it refused us)."""
        if reply.op == protocol.ERR:
            raise RemoteError(str(reply.fields.get("type")), str(reply.fields.get("message")))
        self.session = reply.fields.get("session")
        self.server_info = reply.fields
        master_heartbeat = reply.fields.get("heartbeat")
        if isinstance(master_heartbeat, (int, float)) and master_heartbeat > 0:
            # Ping often enough that the master never mistakes us for dead.
            self.heartbeat = min(self.heartbeat, master_heartbeat / 3)

    # -- after a reconnect -----------------------------------------------------
    def _resend(self) -> None:
        """After a (re)connect: resend unanswered requests and resubscribe pending tasks."""
        with self._lock:
            resent_ids: set[str] = set()
            for rid, (op, fields, _fut) in list(self._requests.items()):
                self._send(op, rid, fields)
                if op == protocol.SUBMIT:
                    resent_ids.update(t[0] for t in fields["tasks"])
            rest: list[list] = []
            watched: list[str] = []
            for tid, (item, _) in self._pending.items():
                if tid not in resent_ids:
                    if item is None:
                        watched.append(tid)
                    else:
                        rest.append(item)
            for i in range(0, len(rest), 1000):
                self._send(protocol.SUBMIT, 0, {"tasks": rest[i:i + 1000]})
            if watched:
                self._send(protocol.SUBSCRIBE, 0, {"ids": watched})

    # -- incoming --------------------------------------------------------------
    def _on_message(self, msg: protocol.Message) -> None:
        if msg.op == protocol.OK or msg.op == protocol.ERR:
            with self._lock:
                entry = self._requests.pop(msg.rid, None)
            if entry is None:
                return
            fut = entry[2]
            if fut.done():
                return
            try:
                if msg.op == protocol.OK:
                    fut.set_result(msg.fields)
                else:
                    fut.set_exception(_remote_error(msg.fields))
            except _InvalidState:  # cancelled by its waiter meanwhile
                pass
        elif msg.op == protocol.RESULTS:
            for item in msg.fields.get("results", ()):
                try:
                    result = wire.result_from_wire(item)
                except ProtocolError:
                    log.warning("ignoring a malformed result from the master")
                    continue
                with self._lock:
                    entry = self._pending.pop(result.id, None)
                for callback in entry[1] if entry is not None else ():
                    try:
                        callback(result)
                    except Exception:  # a user callback must not kill the connection
                        log.exception("result callback failed")
        elif self.on_message is not None:
            self.on_message(msg)

    def _fail_all(self, exc: BaseException) -> None:
        with self._lock:
            waiting = [fut for _, _, fut in self._requests.values()]
            self._requests.clear()
        for fut in waiting:
            if not fut.done():
                try:
                    fut.set_exception(exc)
                except _InvalidState:
                    pass

    # -- requests ----------------------------------------------------------------
    def push(self, op: str, fields: dict) -> None:
        """Send a message that expects no reply, if connected (it is not resent)."""
        self._send(op, 0, fields)

    def request_nowait(self, op: str, fields: dict) -> Any:
        """Send a request (now, or on reconnect) and return the future of its reply fields."""
        if self._closing:
            raise ConnectionLost("client is closed")
        fut = self._new_future()
        with self._lock:
            rid = next(self._rids)
            self._requests[rid] = (op, fields, fut)
            target = self._target()
        if target is not None:
            self._send_to(target, protocol.encode_frame(op, rid, fields))
        return fut

    def submit_nowait(self, tasks: list[NewTask], callbacks: list[ResultCallback]) -> Any:
        """Send tasks; each callback gets its task's result. The future resolves on commit."""
        items = [wire.task_to_wire(t) for t in tasks]
        with self._lock:
            for item, cb in zip(items, callbacks):
                self._add_pending(item[0], item, cb)
        fut = self.request_nowait(protocol.SUBMIT, {"tasks": items})

        def forget_on_error(f: Any) -> None:
            if f.cancelled() or f.exception() is not None:
                with self._lock:
                    for item in items:
                        self._pending.pop(item[0], None)  # the submit failed: its futures got the error

        fut.add_done_callback(forget_on_error)
        return fut

    def watch(self, task_id: str, callback: ResultCallback) -> Any:
        """Get ``task_id``'s result through ``callback`` when it is stored (now if it is)."""
        with self._lock:
            self._add_pending(task_id, None, callback)
        return self.request_nowait(protocol.SUBSCRIBE, {"ids": [task_id]})

    def _add_pending(self, task_id: str, item: list | None, callback: ResultCallback) -> None:
        """Remember who waits for a task's result (several may: one key, one task)."""
        entry = self._pending.get(task_id)
        if entry is None:
            self._pending[task_id] = (item, [callback])
            return
        entry[1].append(callback)
        if entry[0] is None and item is not None:
            self._pending[task_id] = (item, entry[1])

    def pending_count(self) -> int:
        """Tasks submitted through this client whose results have not arrived."""
        return len(self._pending)


class ClientCore(CoreState):
    """One logical connection to a master, surviving reconnects. Lives on one event loop."""

    def __init__(
        self,
        address: str | tuple[str, int] | Address,
        authkey: bytes | None,
        *,
        on_connect: Callable[[], Any] | None = None,
        **options: Any,
    ) -> None:
        super().__init__(address, authkey, **options)
        self.on_connect = on_connect
        self._writer: asyncio.StreamWriter | None = None
        self._connected = asyncio.Event()
        self._supervisor: asyncio.Task | None = None
        self._last_recv = time.monotonic()

    def _new_future(self) -> asyncio.Future:
        return asyncio.get_running_loop().create_future()

    def _target(self) -> asyncio.StreamWriter | None:
        return self._writer

    def _send_to(self, target: asyncio.StreamWriter | None, data: bytes) -> None:
        if target is not None:
            try:
                target.write(data)
            except (RuntimeError, OSError):
                pass

    # -- connection --------------------------------------------------------
    async def connect(self) -> None:
        """Connect and authenticate once (raising on failure), then keep the connection up."""
        reader, writer = await self._open()
        self._supervisor = asyncio.create_task(self._supervise(reader, writer))
        self._supervisor.add_done_callback(self._supervisor_done)

    def _supervisor_done(self, task: asyncio.Task) -> None:
        # A supervisor that ends by surprise leaves this connection down for good: say so.
        if not task.cancelled() and task.exception() is not None:
            log.error("connection to %s stopped reconnecting", self.address, exc_info=task.exception())

    async def _open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        addr = self.address
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(addr.host, addr.port, ssl=self.ssl_context, limit=1 << 20),
                self.connect_timeout,
            )
        except (OSError, TimeoutError) as exc:
            reason = "timed out" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc))
            raise ConnectionLost(f"cannot connect to master at {addr}: {reason}") from None
        conn = protocol.Connection("client", self.authkey, max_frame_size=self.max_frame_size)
        try:
            writer.write(conn.initiate())
            early = await asyncio.wait_for(self._handshake(conn, reader, writer), self.connect_timeout)
            rid, frame = self._hello()
            writer.write(frame)
            reply = None
            events = list(early)
            while reply is None:
                for ev in events:
                    if isinstance(ev, protocol.Message) and ev.rid == rid:
                        reply = ev
                        break
                else:
                    data = await asyncio.wait_for(reader.read(1 << 16), self.connect_timeout)
                    if not data:
                        raise ConnectionLost(f"master at {addr} closed the connection during hello")
                    events = conn.receive_data(data)
            self._accept_hello(reply)
        except TimeoutError:
            writer.close()
            raise ConnectionLost(f"master at {addr} did not answer the handshake in time") from None
        except AuthenticationError:
            writer.close()
            raise
        except (OSError, ssl.SSLError) as exc:
            writer.close()
            raise ConnectionLost(f"connection to master at {addr} failed: {exc}") from None
        except BaseException:
            writer.close()
            raise
        self._conn = conn
        self._writer = writer
        self._last_recv = time.monotonic()
        self._connected.set()
        return reader, writer

    async def _handshake(self, conn, reader, writer) -> list:
        while True:
            data = await reader.read(4096)
            if not data:
                raise ConnectionLost(f"master at {self.address} closed the connection during the handshake")
            try:
                events = conn.receive_data(data)
            except AuthenticationError:
                out = conn.data_to_send()
                if out:
                    writer.write(out)
                    try:
                        await asyncio.wait_for(writer.drain(), 1.0)
                    except Exception:
                        pass
                raise
            out = conn.data_to_send()
            if out:
                writer.write(out)
            for i, ev in enumerate(events):
                if isinstance(ev, protocol.HandshakeDone):
                    return events[i + 1:]

    async def _supervise(self, reader, writer) -> None:
        """Read until the connection drops; then reconnect and resend, until closed."""
        delay = 0.05
        while not self._closing:
            keepalive = asyncio.create_task(self._keepalive(writer))
            try:
                if self.on_connect is not None:
                    self.on_connect()
                self._resend()
                await self._read_loop(reader)
            except (ConnectionError, OSError, ssl.SSLError, ProtocolError) as exc:
                if not self._closing:
                    log.warning("connection to %s lost: %s", self.address, exc)
            except Exception:  # a bug handling a message: a fresh connection, not a dead one
                log.exception("connection to %s: unexpected error; reconnecting", self.address)
            finally:
                keepalive.cancel()
                self._connected.clear()
                self._writer = None
                with contextlib.suppress(Exception):  # a transport the peer reset may object
                    writer.close()
            while not self._closing:
                try:
                    reader, writer = await self._open()
                    log.info("reconnected to %s", self.address)
                    delay = 0.05
                    break
                except AuthenticationError:
                    log.error("reconnecting to %s: authentication failed", self.address)
                    self._fail_all(AuthenticationError("authentication failed"))
                    return
                except Exception as exc:
                    _log_unexpected_reconnect_failure(self.address, exc)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 2.0)

    async def _read_loop(self, reader: asyncio.StreamReader) -> None:
        conn = self._conn
        while True:
            data = await reader.read(1 << 18)
            if not data:
                raise ConnectionLost("master closed the connection")
            self._last_recv = time.monotonic()
            for ev in conn.receive_data(data):
                if isinstance(ev, protocol.Message):
                    self._on_message(ev)

    async def _keepalive(self, writer: asyncio.StreamWriter) -> None:
        """Ping while idle; a master silent for 4 heartbeats is presumed gone."""
        while True:
            await asyncio.sleep(self.heartbeat)
            if time.monotonic() - self._last_recv > 4 * self.heartbeat:
                log.warning("master at %s silent for %.0fs: reconnecting", self.address,
                            time.monotonic() - self._last_recv)
                writer.transport.abort()
                return
            self._send(protocol.PING, 0, {})

    # -- requests ----------------------------------------------------------
    @property
    def connected(self) -> bool:
        """True while an authenticated connection is up."""
        return self._connected.is_set()

    async def request(self, op: str, fields: dict, timeout: float | None = None) -> dict:
        """Send a request and wait for its reply; RemoteError if the master refused it."""
        fut = self.request_nowait(op, fields)
        if timeout is None:
            return await fut
        return await asyncio.wait_for(fut, timeout)

    async def close(self) -> None:
        """Stop reconnecting and close the connection; unanswered requests fail."""
        self._closing = True
        if self._writer is not None:
            self._writer.close()
        if self._supervisor is not None:
            self._supervisor.cancel()
            try:
                await self._supervisor
            except (asyncio.CancelledError, Exception):
                pass
        self._fail_all(ConnectionLost("client closed"))


def _log_unexpected_reconnect_failure(address: Address, exc: Exception) -> None:
    """A master that is away (refused, timed out) is retried quietly; anything else, such as
    a garbled handshake from something else on its port, is retried too, but said."""
    if not isinstance(exc, (ConnectionLost, OSError, RemoteError)):
        log.warning("reconnecting to %s failed: %s: %s", address, type(exc).__name__, exc)


def _remote_error(fields: dict) -> Exception:
    kind = str(fields.get("type", "Error"))
    message = str(fields.get("message", ""))
    if kind == "SerializationError":
        from ..errors import SerializationError

        return SerializationError(message)
    if kind == "ValueError":  # the master refused a value (an unknown dependency, a bad option)
        return ValueError(message)
    if kind == "NotFound":
        from ..errors import NotFound

        return NotFound(message)
    return RemoteError(kind, message)
