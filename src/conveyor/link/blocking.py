"""The blocking-socket edge of a link: the sync client's connection, no event loop.

The calling thread writes its own request (one ``sendall``, no hand-off to
an I/O thread). Replies are read by whoever holds the reading role: a
thread waiting for a reply takes it when it is free and reads the socket
itself (:meth:`BlockingLink.wait_reading`), so the one-at-a-time path has no
thread hand-off at all; otherwise the connection's reader thread reads,
resolves futures and runs callbacks (it also pings and reconnects, whoever
reads). Compared with running the asyncio edge on a loop thread this saves
two thread hand-offs and several loop turns per request, which is most of a
small request's round trip.

Opening, reconnecting, resending and liveness are the shared ones
(link/opening.py, link/policy.py, link/state.py).
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import os
import select
import socket
import ssl
import threading
import time
from collections.abc import Callable
from typing import Any

from .. import protocol
from ..errors import AuthenticationError, ConnectionLost, ProtocolError
from .address import AddressesLike, connect_order
from .policy import Liveness
from .state import LinkState, broken, unreachable

log = logging.getLogger("conveyor.link")

_READ_SIZE = 1 << 18


def _drain(fd: int) -> None:
    """Read a non-blocking pipe empty."""
    try:
        while os.read(fd, 4096):
            pass
    except BlockingIOError:
        pass


class _Plain:
    """A connected TCP socket."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._poller: select.poll | None = None

    def readable(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for bytes (or the end) to read; holding the read role."""
        try:
            if self._poller is None:
                poller = select.poll()
                poller.register(self.sock, select.POLLIN)
                self._poller = poller
            return bool(self._poller.poll(timeout * 1000))
        except (OSError, ValueError):  # closed meanwhile: the read says so
            return True

    def waiting_bytes(self) -> bool:
        """True if bytes (or the end) wait to be read; any thread may ask (its own poll object)."""
        poller = select.poll()
        try:
            poller.register(self.sock, select.POLLIN)
        except (OSError, ValueError):  # closed meanwhile
            return False
        return bool(poller.poll(0))

    def shutdown(self) -> None:
        """End the connection without closing the socket: its reader sees the end."""
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def recv(self) -> bytes:
        return self.sock.recv(_READ_SIZE)

    def close(self) -> None:
        _close(self.sock)


class _TLS(_Plain):
    """TLS over a connected socket through memory BIOs.

    An ``SSLSocket`` must not be read by one thread while another writes it
    (OpenSSL objects are not thread-safe), so the SSL object is only touched
    under a lock, and the blocking socket calls happen outside it.
    """

    def __init__(self, sock: socket.socket, context: ssl.SSLContext, hostname: str) -> None:
        super().__init__(sock)
        self._in = ssl.MemoryBIO()
        self._out = ssl.MemoryBIO()
        self._ssl = context.wrap_bio(self._in, self._out, server_hostname=hostname)
        self._lock = threading.RLock()
        while True:
            try:
                self._ssl.do_handshake()
                break
            except ssl.SSLWantReadError:
                self._flush()
                data = sock.recv(65536)
                if not data:
                    raise ConnectionLost("the master closed the connection during the TLS handshake") from None
                self._in.write(data)
        self._flush()

    def _flush(self) -> None:
        out = self._out.read()
        if out:
            self.sock.sendall(out)

    def send(self, data: bytes) -> None:
        # Encrypt and send under one lock: TLS records must leave in the order they were made.
        with self._lock:
            self._ssl.write(data)
            self._flush()

    def recv(self) -> bytes:
        while True:
            data = self.sock.recv(_READ_SIZE)
            with self._lock:
                if not data:
                    return b""
                self._in.write(data)
                chunks = []
                try:
                    while True:
                        chunks.append(self._ssl.read(_READ_SIZE))
                except ssl.SSLWantReadError:
                    pass
                except ssl.SSLZeroReturnError:  # the master said close_notify
                    if not chunks:
                        return b""
                self._flush()  # post-handshake messages (session tickets, key updates)
            if chunks:
                return b"".join(chunks)


def _connect_any(host: str, port: int, avoid: str | None, timeout: float) -> socket.socket:
    """A TCP connection to ``host``: each address it resolves to in turn (``avoid``, the
    one just lost, last); the last failure is raised."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    by_ip = {str(info[4][0]): info for info in infos}
    last: OSError | None = None
    for ip in connect_order(list(by_ip), avoid):
        family, kind, proto, _, sockaddr = by_ip[ip]
        sock = socket.socket(family, kind, proto)
        try:
            sock.settimeout(timeout)
            sock.connect(sockaddr)
            return sock
        except OSError as exc:
            sock.close()
            last = exc
    raise last if last is not None else OSError(f"{host} resolves to no address")


def _peer_ip(sock: socket.socket) -> str | None:
    """The IP address ``sock`` is connected to (None once it is not)."""
    try:
        return str(sock.getpeername()[0])
    except OSError:
        return None


def _close(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)  # wakes a thread blocked in recv
    except OSError:
        pass
    sock.close()


class BlockingLink(LinkState):
    """One logical connection to a master for threaded code, surviving reconnects.

    Futures are ``concurrent.futures.Future``; every method may be called
    from any thread. Callbacks and ``on_message`` run on the reader thread:
    they must not block on this connection.
    """

    def __init__(self, address: AddressesLike, authkey: bytes | None, *,
                 clock: Callable[[], float] = time.monotonic, **options: Any) -> None:
        super().__init__(address, authkey, **options)
        self._lock = threading.RLock()  # requests (and whatever a subclass keeps with them)
        self._wlock = threading.RLock()  # one frame at a time on the socket; resends first
        # The reading role: one thread at a time reads the socket and handles what came
        # (a waiting caller, or the reader thread). Taken before _wlock and _lock, never after.
        self._rlock = threading.Lock()
        # Told (under its lock) when a caller lets the read role go: the reader thread waits
        # on it instead of on _rlock, so it never takes the role from under a caller that
        # comes back for its next reply (a submit's commit, then the task's result).
        self._released = threading.Condition(threading.Lock())
        self._clock = clock
        self._transport: _Plain | None = None
        self._conn: protocol.Connection | None = None
        self._reader: threading.Thread | None = None
        #: Monotonic time the connection was lost at (None while it is up, or before the first).
        self.down_since: float | None = None
        self._closed = threading.Event()  # set by close(): the reconnect loop stops pausing
        self._wake: int | None = None  # the write end of the reader thread's wake-up pipe (epoll)
        self._caller_saw_end = False  # a caller holding the read role read the end of the connection
        self._liveness = Liveness(self.heartbeat, clock())

    def _new_future(self) -> cf.Future[Any]:
        return cf.Future()

    def _target(self) -> _Plain | None:
        return self._transport

    def _send_to(self, target: _Plain | None, data: bytes) -> None:
        if target is None:
            return
        with self._wlock:
            try:
                target.send(data)
            except (OSError, ssl.SSLError):
                pass  # the reader sees the loss, reconnects and resends

    # -- connection --------------------------------------------------------
    def connect(self) -> None:
        """Connect and authenticate (raising on failure), then keep the connection up.

        Each master address is tried once, in turn; the last failure is raised.
        """
        last = len(self.addresses) - 1
        for attempt in range(last + 1):
            try:
                transport, conn, early = self._open()
                break
            except AuthenticationError:
                raise
            except Exception:
                if attempt == last:
                    raise
                self.plan.failed()  # next address, no pause
        self.plan.succeeded()
        with self._rlock:  # what came with the welcome is handled before anything after it
            with self._wlock, self._lock:
                self._transport, self._conn = transport, conn
            for msg in early:
                self._on_message(msg)
        self._reader = threading.Thread(target=self._run, name="conveyor-client-reader", daemon=True)
        self._reader.start()

    def _open(self) -> tuple[_Plain, protocol.Connection, list[protocol.Message]]:
        """A new authenticated connection, the hello answered; and the messages that came with it."""
        addr = self.address
        try:
            sock = _connect_any(addr.host, addr.port, self.plan.avoid, self.connect_timeout)
        except OSError as exc:
            raise unreachable(addr, exc) from None
        opening = self._opening()
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            context = self.ssl_context_for(addr)
            transport = _TLS(sock, context, addr.host) if context is not None else _Plain(sock)
            transport.send(opening.start())
            while not opening.done:
                data = transport.recv()
                try:
                    opening.receive_data(data)
                finally:
                    out = opening.data_to_send()  # a refusal is still sent, so the master logs it
                    if out:
                        transport.send(out)
            sock.settimeout(None)  # blocking from now on: a timed-out sendall would cut a frame
        except (OSError, ssl.SSLError) as exc:
            _close(sock)
            raise broken(addr, exc) from None
        except BaseException:
            _close(sock)
            raise
        assert opening.welcome is not None
        self.session = opening.welcome.session
        self.heartbeat = opening.welcome.ping_every
        self.master_timeout = opening.welcome.master_timeout
        self.send_limit = opening.welcome.max_frame or self.max_frame_size  # requests over it fail unsent
        self._liveness = Liveness(self.heartbeat, self._clock())
        return transport, opening.connection, opening.early

    def _run(self) -> None:
        """The reader thread: read until the connection drops, reconnect, resend; until closed."""
        while not self._closing:
            transport, conn = self._transport, self._conn
            if transport is None or conn is None:  # closed meanwhile
                return
            try:
                self._read_loop(transport, conn)
            except (ConnectionError, OSError, ssl.SSLError, ProtocolError) as exc:
                if not self._closing:
                    self.limited.warning(f"lost {self.address}", "connection to %s lost: %s", self.address, exc)
            except Exception:  # a bug handling a message: a fresh connection, not a dead one
                if not self._closing:
                    log.exception("connection to %s: unexpected error; reconnecting", self.address)
            with self._wlock, self._lock:
                self._transport = None
                self.down_since = time.monotonic()
            self.plan.lost(_peer_ip(transport.sock))  # another master first, if there is one
            transport.close()
            while not self._closing:
                try:
                    new, conn, early = self._open()
                except Exception as exc:
                    delay = self._attempt_failed(exc)
                    if delay is None:
                        return
                    self._closed.wait(delay)  # close() cuts the pause short
                    continue
                # Resend before anyone else writes on the new connection (the write lock), and
                # handle what came with the welcome before anyone reads after it (the read role).
                with self._rlock:
                    with self._wlock:
                        with self._lock:
                            if self._closing:
                                new.close()
                                return
                            self._transport, self._conn = new, conn
                            self.down_since = None
                        self.limited.info(f"reconnected {self.address}", "reconnected to %s", self.address)
                        self.plan.succeeded()
                        self._resend()
                    for msg in early:
                        self._on_message(msg)
                break

    def _read_loop(self, transport: _Plain, conn: protocol.Connection) -> None:
        # Woken by new bytes only (edge-triggered, where there is epoll): bytes a waiting
        # caller reads itself wake this thread once, not until they are read, and it need
        # not be told when the caller lets go (the caller looks for leftovers itself).
        edge = select.epoll() if hasattr(select, "epoll") else None
        poller = select.poll()
        wake_r = -1
        try:
            poller.register(transport.sock, select.POLLIN)
            if edge is not None:
                edge.register(transport.sock.fileno(), select.EPOLLIN | select.EPOLLET)
                # A caller that read the end of the connection wakes this thread through
                # it once it lets the read role go: the edges the end made may all have come
                # while callers held the role, and then nothing else would ever wake it.
                wake_r, wake_w = os.pipe()
                os.set_blocking(wake_r, False)
                os.set_blocking(wake_w, False)
                with self._lock:
                    self._wake = wake_w
                edge.register(wake_r, select.EPOLLIN)
        except (OSError, ValueError):  # closed already (a client closed at once)
            if edge is not None:
                self._close_wake(wake_r)
                edge.close()
            raise ConnectionLost("connection closed") from None
        liveness = self._liveness
        try:
            while not self._closing:
                now = self._clock()
                if liveness.ping_due(now):
                    # Ping every heartbeat, busy or not: the master judges us by what we send.
                    self._send_to(transport, protocol.encode_frame(protocol.PING, 0, {}))
                wait = liveness.until_check(now)
                events = edge.poll(wait) if edge is not None else poller.poll(wait * 1000)
                if not events:
                    now = self._clock()
                    if liveness.silent(now):
                        raise ConnectionLost(
                            f"master at {self.address} silent for {liveness.silent_for(now):.0f}s")
                    continue
                if edge is not None and any(fd == wake_r for fd, _ in events):
                    _drain(wake_r)  # a caller that read the end let go: this thread reads it again
                if self._rlock.acquire(blocking=False):
                    try:
                        while poller.poll(0):  # all of it: the next edge comes with new bytes only
                            self._read_once(transport, conn)
                    finally:
                        self._rlock.release()
                    continue
                if edge is not None:
                    continue  # the caller holding the read role reads these (see wait_reading)
                # Level-triggered: wait until that caller lets go, no longer than the next ping.
                with self._released:
                    if self._rlock.locked():
                        self._released.wait(max(0.001, liveness.until_ping(self._clock())))
        finally:
            if edge is not None:
                self._close_wake(wake_r)
                edge.close()

    def _close_wake(self, wake_r: int) -> None:
        """Close the reader thread's wake-up pipe (both ends)."""
        with self._lock:  # never a write (_wake_reader) to a descriptor closed and reused meanwhile
            wake, self._wake = self._wake, None
            if wake is not None:
                os.close(wake)
        if wake_r >= 0:
            os.close(wake_r)

    def _wake_reader(self) -> None:
        """Make the reader thread poll its socket again (a caller read the end of it)."""
        with self._lock:
            if self._wake is not None:
                try:
                    os.write(self._wake, b"x")
                except OSError:  # the pipe is full: it is awake already
                    pass

    def _read_once(self, transport: _Plain, conn: protocol.Connection) -> None:
        """Read what is there and handle its messages; holding the read role."""
        data = transport.recv()
        if not data:
            raise ConnectionLost("master closed the connection")
        self._liveness.received(self._clock())
        for ev in conn.receive_data(data):
            if isinstance(ev, protocol.Message):
                self._on_message(ev)

    def _let_go(self) -> None:
        """Give the read role up (a reader thread waiting for it, without epoll, is told; with
        epoll, woken if this caller read the end of the connection)."""
        with self._released:
            self._rlock.release()
            self._released.notify_all()
        if self._caller_saw_end:
            self._caller_saw_end = False
            self._wake_reader()

    def wait_reading(self, done: Callable[[], bool], timeout: float | None = None) -> None:
        """Wait until ``done()`` (or ``timeout``), reading the socket on this thread if no
        other thread is: the reply then needs no hand-off from the reader thread.

        Returns early, without ``done()``, when another thread reads (it resolves
        the futures: wait on them), or the connection is down (the reader thread
        reconnects); so callers wait on their future after this. Messages read
        here are handled here: result callbacks may then run on this thread.
        """
        if done() or self._closing or threading.current_thread() is self._reader:
            return
        if not self._rlock.acquire(blocking=False):
            return
        with self._lock:
            transport, conn = self._transport, self._conn
        try:
            deadline = None if timeout is None else time.monotonic() + timeout
            while not done():
                if transport is not self._transport or transport is None or conn is None or self._closing:
                    return
                wait = 1.0 if deadline is None else min(1.0, deadline - time.monotonic())
                if wait <= 0:
                    return
                if transport.readable(wait) and not self._read_safely(transport, conn):
                    return
        finally:
            self._let_go()
        # Bytes that came while this thread held the role woke the reader thread in vain
        # (it never takes the role from a caller): read what is left, unless another
        # thread holds the role now (then it does).
        while (transport is not None and conn is not None and transport.waiting_bytes()
               and self._rlock.acquire(blocking=False)):
            try:
                while transport.readable(0):
                    if not self._read_safely(transport, conn):
                        return
            finally:
                self._let_go()

    def _read_safely(self, transport: _Plain, conn: protocol.Connection) -> bool:
        """``_read_once`` for a waiting caller: False (the connection ended here, so the
        reader thread sees the end, reconnects and resends) instead of an exception."""
        try:
            self._read_once(transport, conn)
            return True
        except Exception as exc:
            if not isinstance(exc, (ConnectionError, OSError, ssl.SSLError, ProtocolError)):
                log.exception("connection to %s: unexpected error; reconnecting", self.address)
            transport.shutdown()
            self._caller_saw_end = True  # _let_go wakes the reader thread to see it too
            return False

    # -- requests ----------------------------------------------------------
    @property
    def connected(self) -> bool:
        """True while an authenticated connection is up."""
        return self._transport is not None

    def request(self, op: str, fields: dict[str, Any], timeout: float | None = None) -> dict[str, Any]:
        """Send a request and wait for its reply; RemoteError if the master refused it."""
        result: dict[str, Any] = self.wait(self.request_nowait(op, fields), timeout)
        return result

    def wait(self, fut: cf.Future[Any], timeout: float | None = None) -> Any:
        """``fut.result(timeout)``, reading the reply on this thread when it can (see
        :meth:`wait_reading`)."""
        if fut.done():
            return fut.result()
        deadline = None if timeout is None else time.monotonic() + timeout
        self.wait_reading(fut.done, timeout)
        return fut.result(None if deadline is None else max(0.0, deadline - time.monotonic()))

    def close(self) -> None:
        """Stop reconnecting and close the connection; unanswered requests fail."""
        with self._wlock, self._lock:
            self._closing = True
            transport, self._transport = self._transport, None
        self._closed.set()
        if transport is not None:
            # Shut down, and close only once the reader thread is gone: epoll forgets a
            # closed socket, so closing at once could leave it waiting for its next ping.
            transport.shutdown()
        if self._reader is not None and self._reader is not threading.current_thread():
            self._reader.join(timeout=5)
        if transport is not None:
            transport.close()
        self._fail_all(ConnectionLost("client closed"))
