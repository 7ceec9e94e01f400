"""The asyncio edge of a link: used by the asyncio client and by the worker.

It runs the shared opening sequence (link/opening.py) over asyncio streams,
then reads until the connection drops, pings on the liveness rules
(link/policy.py), and reconnects with backoff, resending what is unanswered.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import time
from collections.abc import Callable
from typing import Any

from .. import protocol
from ..errors import AuthenticationError, ConnectionLost, ProtocolError
from .address import Address, AddressesLike, connect_order
from .opening import Opening
from .policy import Liveness
from .state import LinkState, broken, unreachable

log = logging.getLogger("conveyor.link")


class AsyncLink(LinkState):
    """One logical connection to a master, surviving reconnects. Lives on one event loop.

    ``on_connect`` runs after every (re)connect, before the unanswered
    requests are resent; if it raises, that connection is dropped and made
    again.
    """

    def __init__(
        self,
        address: AddressesLike,
        authkey: bytes | None,
        *,
        on_connect: Callable[[], Any] | None = None,
        clock: Callable[[], float] = time.monotonic,
        **options: Any,
    ) -> None:
        super().__init__(address, authkey, **options)
        self.on_connect = on_connect
        self._clock = clock
        self._writer: asyncio.StreamWriter | None = None
        self._connected = asyncio.Event()
        self._supervisor: asyncio.Task[None] | None = None
        self._conn: protocol.Connection | None = None
        self._liveness = Liveness(self.heartbeat, clock())

    def _new_future(self) -> asyncio.Future[Any]:
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
        """Connect and authenticate (raising on failure), then keep the connection up.

        Each master address is tried once, in turn; the last failure is raised.
        """
        last = len(self.addresses) - 1
        for attempt in range(last + 1):
            try:
                reader, writer, early = await self._open()
                break
            except AuthenticationError:
                raise
            except Exception:
                if attempt == last:
                    raise
                self.plan.failed()  # next address, no pause
        self.plan.succeeded()
        self._supervisor = asyncio.create_task(self._supervise(reader, writer, early))
        self._supervisor.add_done_callback(self._supervisor_done)

    def _supervisor_done(self, task: asyncio.Task[None]) -> None:
        # A supervisor that ends by surprise leaves this connection down for good: say so.
        if not task.cancelled() and task.exception() is not None:
            log.error("connection to %s stopped reconnecting", self.address, exc_info=task.exception())

    async def _open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, list[protocol.Message]]:
        """A new authenticated connection, the hello answered; and the messages that came with it."""
        addr = self.address
        try:
            reader, writer = await self._connect_any(addr)
        except (OSError, TimeoutError) as exc:
            raise unreachable(addr, exc) from None
        opening = self._opening()
        try:
            writer.write(opening.start())
            await asyncio.wait_for(self._run_opening(opening, reader, writer), self.connect_timeout)
        except (OSError, ssl.SSLError) as exc:
            writer.close()
            raise broken(addr, exc) from None
        except BaseException:
            writer.close()
            raise
        assert opening.welcome is not None
        self.session = opening.welcome.session
        self.heartbeat = opening.welcome.ping_every
        self.master_timeout = opening.welcome.master_timeout
        self.send_limit = opening.welcome.max_frame or self.max_frame_size  # requests over it fail unsent
        self._conn = opening.connection
        self._writer = writer
        self._liveness = Liveness(self.heartbeat, self._clock())
        self._connected.set()
        return reader, writer, opening.early

    async def _connect_any(self, addr: Address) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """Streams to ``addr``: each IP address its host resolves to in turn (the one just
        lost last), each within the connect timeout; the last failure is raised."""
        loop = asyncio.get_running_loop()
        infos = await asyncio.wait_for(loop.getaddrinfo(addr.host, addr.port, type=socket.SOCK_STREAM),
                                       self.connect_timeout)
        ips = list(dict.fromkeys(str(info[4][0]) for info in infos))
        context = self.ssl_context_for(addr)
        last: BaseException | None = None
        for ip in connect_order(ips, self.plan.avoid):
            try:
                return await asyncio.wait_for(
                    asyncio.open_connection(ip, addr.port, ssl=context, limit=1 << 20,
                                            server_hostname=addr.host if context is not None else None),
                    self.connect_timeout)
            except (OSError, TimeoutError) as exc:
                last = exc
        if isinstance(last, (OSError, TimeoutError)):
            raise last
        raise OSError(f"{addr.host} resolves to no address")

    @staticmethod
    async def _run_opening(opening: Opening, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while not opening.done:
            data = await reader.read(1 << 16)
            try:
                opening.receive_data(data)
            except AuthenticationError:
                # The refusal still goes out, so the master logs who failed.
                out = opening.data_to_send()
                if out:
                    writer.write(out)
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(writer.drain(), 1.0)
                raise
            out = opening.data_to_send()
            if out:
                writer.write(out)

    async def _supervise(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                         early: list[protocol.Message]) -> None:
        """Read until the connection drops; then reconnect and resend, until closed."""
        while not self._closing:
            keepalive = asyncio.create_task(self._keepalive(writer))
            try:
                if self.on_connect is not None:
                    self.on_connect()
                self._resend()
                for msg in early:
                    self._on_message(msg)
                await self._read_loop(reader)
            except (ConnectionError, OSError, ssl.SSLError, ProtocolError) as exc:
                if not self._closing:
                    self.limited.warning(f"lost {self.address}", "connection to %s lost: %s", self.address, exc)
            except Exception:  # a bug handling a message: a fresh connection, not a dead one
                log.exception("connection to %s: unexpected error; reconnecting", self.address)
            finally:
                keepalive.cancel()
                self._connected.clear()
                self._writer = None
                peer = writer.get_extra_info("peername")
                self.plan.lost(str(peer[0]) if peer else None)  # another master first, if there is one
                with contextlib.suppress(Exception):  # a transport the peer reset may object
                    writer.close()
            while not self._closing:
                try:
                    reader, writer, early = await self._open()
                except Exception as exc:
                    delay = self._attempt_failed(exc)
                    if delay is None:
                        return
                    await asyncio.sleep(delay)
                    continue
                self.limited.info(f"reconnected {self.address}", "reconnected to %s", self.address)
                self.plan.succeeded()
                break

    async def _read_loop(self, reader: asyncio.StreamReader) -> None:
        conn = self._conn
        assert conn is not None
        while True:
            data = await reader.read(1 << 18)
            if not data:
                raise ConnectionLost("master closed the connection")
            self._liveness.received(self._clock())
            for ev in conn.receive_data(data):
                if isinstance(ev, protocol.Message):
                    self._on_message(ev)

    async def _keepalive(self, writer: asyncio.StreamWriter) -> None:
        """Ping every heartbeat; a master silent for too long is presumed gone."""
        liveness = self._liveness
        while True:
            await asyncio.sleep(liveness.until_check(self._clock()))
            now = self._clock()
            if liveness.silent(now):
                log.warning("master at %s silent for %.0fs: reconnecting", self.address, liveness.silent_for(now))
                writer.transport.abort()
                return
            if liveness.ping_due(now):
                self._send(protocol.PING, 0, {})

    # -- requests ----------------------------------------------------------
    @property
    def connected(self) -> bool:
        """True while an authenticated connection is up."""
        return self._connected.is_set()

    async def request(self, op: str, fields: dict[str, Any], timeout: float | None = None) -> dict[str, Any]:
        """Send a request and wait for its reply; RemoteError if the master refused it."""
        fut = self.request_nowait(op, fields)
        if timeout is None:
            result: dict[str, Any] = await fut
            return result
        result = await asyncio.wait_for(fut, timeout)
        return result

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
