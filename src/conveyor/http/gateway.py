"""The dashboard's one connection to the master, used from asyncio.

The synchronous :class:`~conveyor.client.client.Client` is thread-safe and
reconnects by itself, but a request made while the master is down waits for
the master to come back. The dashboard must answer at once instead ("master
down"), so every call here runs in a thread with a deadline; on a deadline or
a lost connection the client is closed (which fails whatever still waits on it)
and the next call connects afresh.

Given several masters of one cluster (``"a:7700,b:7700"``), the client's own
link fails over between them: its client is then kept through a deadline or a
lost connection (closing it would start the next one at the first master
again), and while its link is down each call answers "master down" at once
instead of waiting for the link to come back.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from ..client.client import Client
from ..errors import AuthenticationError, ConnectionLost
from ..link import AddressesLike, parse_addresses

T = TypeVar("T")
CALL_TIMEOUT = 5.0  # seconds a page waits for the master before saying it is down


class MasterDown(Exception):
    """The master could not be reached (or did not answer in time); the message says why."""


class Gateway:
    """Calls on the master from the dashboard's event loop, each bounded in time."""

    def __init__(self, address: AddressesLike, authkey: bytes | None, *, timeout: float = CALL_TIMEOUT,
                 ssl_context: Any = None) -> None:
        addresses = parse_addresses(address)  # a bad one raises ValueError here
        self.address = address if isinstance(address, str) else ",".join(str(a) for a in addresses)
        #: Several masters: the client's link moves between them (see the module docstring).
        self.fails_over = len(addresses) > 1
        self._authkey = authkey
        self._ssl = ssl_context
        self.timeout = timeout
        self._client: Client | None = None
        self._lock = threading.Lock()
        # A few threads: the poller and a handful of page requests at a time.
        self._pool = cf.ThreadPoolExecutor(max_workers=8, thread_name_prefix="conveyor-dash")
        self.down_reason: str | None = None
        self.down_since: float | None = None

    def connect_now(self) -> None:
        """Connect once, synchronously; AuthenticationError for a wrong key (the caller exits),
        ConnectionLost if the master is not there (the dashboard starts anyway and retries)."""
        self._get_client()

    def _get_client(self) -> Client:
        with self._lock:
            if self._client is None:
                self._client = Client(self.address, self._authkey, ssl_context=self._ssl,
                                      connect_timeout=self.timeout, name="dashboard")
            return self._client

    def _where(self, client: Client | None) -> str:
        """The master a message names: the one the client used, else the address given."""
        if client is not None and self.fails_over:
            return str(client.address)
        return self.address

    def _drop(self, client: Client | None, *, keep: bool = False) -> None:
        """Forget ``client`` (the next call connects afresh) unless ``keep`` and it is still
        open: a client given several masters reconnects, to another one, by itself."""
        if keep and client is not None and not client.closed:
            return
        with self._lock:
            if client is not None and self._client is client:
                self._client = None
        if client is not None:
            # Closing fails the requests still queued on it, which frees their threads.
            self._pool.submit(client.close)

    def _mark_down(self, reason: str) -> None:
        if self.down_since is None:
            self.down_since = time.time()
        self.down_reason = reason

    async def call(self, fn: Callable[[Client], T], timeout: float | None = None) -> T:
        """``fn(client)`` in a thread; MasterDown if the master is unreachable or slower than
        ``timeout`` (default: the gateway's)."""
        limit = self.timeout if timeout is None else timeout
        loop = asyncio.get_running_loop()
        client: Client | None = None

        def run() -> T:
            nonlocal client
            client = self._get_client()
            if self.fails_over and not client.connected:
                # Its link is moving to another master: "down" now, not a thread held until then.
                raise ConnectionLost(f"reconnecting to one of the masters at {self.address}")
            return fn(client)

        fut = loop.run_in_executor(self._pool, run)
        try:
            result = await asyncio.wait_for(fut, limit)
        except TimeoutError:
            self._drop(client, keep=self.fails_over)  # the link notices a silent master itself
            self._mark_down(f"the master at {self._where(client)} did not answer within {limit:g} s")
            raise MasterDown(self.down_reason) from None
        except AuthenticationError:
            self._drop(client)
            self._mark_down(f"the master at {self.address} refused the authkey")
            raise MasterDown(self.down_reason) from None
        except (ConnectionLost, OSError) as exc:
            self._drop(client, keep=self.fails_over)
            self._mark_down(str(exc) or f"lost the master at {self._where(client)}")
            raise MasterDown(self.down_reason) from None
        self.down_reason = None
        self.down_since = None
        return result

    def close(self) -> None:
        """Close the connection and the threads."""
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()
        self._pool.shutdown(wait=False, cancel_futures=True)
