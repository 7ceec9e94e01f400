"""What a link decides without doing I/O: when to reconnect, where, what to say, when to ping.

``Reconnect`` walks the master addresses and the backoff between rounds;
``failure_kind`` sorts a failed attempt into fatal, quiet (a master that is
away) and loud (something else answered on its port); ``Liveness`` says when
to ping and when a silent master is presumed gone. All take ``now`` or a
previous delay as arguments: only the I/O edges read a clock or sleep.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Sequence

from .. import timing
from ..errors import AuthenticationError, ConnectionLost, RemoteError
from ..ratelimit_log import RateLimitedLog
from .address import Address

log = logging.getLogger("conveyor.link")


def reconnect_log() -> RateLimitedLog:
    """The log of a link's lines that repeat while a master is away or refuses it (lost,
    reconnected, failed attempts): one per kind and address per interval, with a count."""
    return RateLimitedLog(log)


class Failure(enum.Enum):
    """How a failed connection attempt is treated."""

    #: The key is wrong: retrying cannot help, stop and fail what waits.
    FATAL = "fatal"
    #: The master is away (refused, timed out, closed, restarting): retry without a word.
    QUIET = "quiet"
    #: Something unexpected, such as another program on the master's port: retry, but say so.
    LOUD = "loud"


def failure_kind(exc: BaseException) -> Failure:
    """Sort the exception a connection attempt ended with."""
    if isinstance(exc, AuthenticationError):
        return Failure.FATAL
    if isinstance(exc, (ConnectionLost, OSError, RemoteError)):
        return Failure.QUIET
    return Failure.LOUD


class Reconnect:
    """Which address to try next and how long to wait first.

    Addresses are tried in turn; a failed attempt moves to the next one at
    once, and only a failed round of all of them waits, doubling the pause
    from ``first`` up to ``maximum`` (``timing.next_backoff``). A success
    resets the pause and keeps the address that answered.
    """

    def __init__(self, addresses: Sequence[Address], *, first: float = timing.RECONNECT_FIRST,
                 maximum: float = timing.RECONNECT_MAX) -> None:
        if not addresses:
            raise ValueError("no master address given")
        self.addresses = tuple(addresses)
        self.first = first
        self.maximum = maximum
        self._index = 0
        self._tried = 0  # failed attempts in this round
        self._delay = first
        #: The IP address of the connection last lost, tried last among a name's addresses.
        self.avoid: str | None = None

    @property
    def address(self) -> Address:
        """The address to try now (or the one connected to)."""
        return self.addresses[self._index]

    def failed(self) -> float:
        """The attempt at ``address`` failed: move on; return the seconds to wait first."""
        self._index = (self._index + 1) % len(self.addresses)
        self._tried += 1
        if self._tried < len(self.addresses):
            return 0.0
        self._tried = 0
        delay = self._delay
        self._delay = timing.next_backoff(delay, maximum=self.maximum)
        return delay

    def lost(self, peer: str | None = None) -> None:
        """The connection at ``address`` was lost (closed, reset or silent): start the
        next round at the next address, without a pause, so that a client or worker of
        several masters moves on at once instead of waiting on one that may hang.
        ``peer`` is the IP address it was connected to: a name that resolves to
        several tries that one last (``avoid``)."""
        self.avoid = peer
        self._index = (self._index + 1) % len(self.addresses)
        self._tried = 0

    def succeeded(self) -> None:
        """Connected: the next trouble starts again from the first pause, here."""
        self._tried = 0
        self._delay = self.first


class Liveness:
    """When to ping the master, and when its silence means it is gone (monotonic ``now``).

    Peers ping every ``ping_every`` seconds, busy or not (the master judges
    them by what they send), and presume a master gone when it said nothing
    for ``timing.MISSED_HEARTBEATS`` pings' worth of time (3 s by default).
    """

    def __init__(self, ping_every: float, now: float) -> None:
        self.ping_every = ping_every
        self.last_recv = now
        self.last_ping = now

    def received(self, now: float) -> None:
        """Something arrived from the master."""
        self.last_recv = now

    def ping_due(self, now: float) -> bool:
        """True when a ping should go now (and it is then counted as sent)."""
        if now - self.last_ping >= self.ping_every:
            self.last_ping = now
            return True
        return False

    def until_ping(self, now: float) -> float:
        """Seconds until the next ping is due (0 when it is)."""
        return max(0.0, self.last_ping + self.ping_every - now)

    def until_check(self, now: float) -> float:
        """Seconds until something is due: a ping, or the moment the master's silence
        would become too long (a hair after it, so that ``silent`` is then true): a silent
        master is noticed then, not at the next ping after it."""
        silent_in = self.last_recv + timing.MISSED_HEARTBEATS * self.ping_every - now + 0.01
        return max(0.0, min(self.until_ping(now), silent_in))

    def silent(self, now: float) -> bool:
        """True when the master has been silent too long and is presumed gone."""
        return timing.master_silent(now, self.last_recv, self.ping_every)

    def silent_for(self, now: float) -> float:
        """Seconds since the master last said anything."""
        return now - self.last_recv
