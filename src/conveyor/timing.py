"""The cadences of liveness: heartbeats, lease extension, sweeps and backoff.

Every rule here is a pure function of ``now`` (or of a previous delay); only
the loops that call them read a clock. The master's rules and the client's
rules that mirror them live side by side so that they cannot drift apart.
Heartbeat silence is judged on the monotonic clock; stored deadlines are
wall-clock times (they outlive a restart) and are not decided here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# --- Peers (clients and workers) -------------------------------------------

#: How often a client or worker pings its master (seconds). Each ping is one small
#: frame and its answer (the master answers every ping), so a little more than once a
#: second per peer costs the master little, and it lets a silent master be noticed quickly.
HEARTBEAT = 0.75
#: A peer that heard nothing from its master for this many heartbeats presumes it gone:
#: a silent (stopped, partitioned) master is noticed after 3 s, and the peer moves to
#: another master (link/policy.py ``Reconnect.lost``).
MISSED_HEARTBEATS = 4
#: Peers ping at least this many times within the master's heartbeat timeout.
PINGS_PER_MASTER_TIMEOUT = 3

# --- Master -----------------------------------------------------------------

#: Default seconds of silence after which the master drops a worker (and its leases).
HEARTBEAT_TIMEOUT = 15.0
#: Default seconds a lease lasts before it must be extended.
LEASE_FOR = 30.0
#: Live leases are extended this many times per lease period.
EXTENSIONS_PER_LEASE = 4
#: Seconds between sweeps that hand back leases whose deadline passed.
EXPIRE_EVERY = 5.0
#: Bounds of the period between purges of results past their TTL (seconds).
PURGE_EVERY_MIN = 1.0
PURGE_EVERY_MAX = 60.0
#: The reaper never sleeps longer than this (seconds).
REAPER_TICK_MAX = 1.0
#: The delay timer re-reads the clock at least this often (seconds).
TIMER_TICK_MAX = 1.0

# --- Reconnecting -----------------------------------------------------------

#: First and largest pause between reconnect attempts (seconds).
RECONNECT_FIRST = 0.05
RECONNECT_MAX = 2.0
#: First and largest pause between a worker's attempts to reach a master at start-up (seconds).
FIRST_CONNECT_FIRST = 0.1
FIRST_CONNECT_MAX = 5.0


def ping_interval(heartbeat: float, master_heartbeat_timeout: float | None) -> float:
    """How often a peer pings: its own heartbeat, or faster if the master's timeout asks."""
    if master_heartbeat_timeout and master_heartbeat_timeout > 0:
        return min(heartbeat, master_heartbeat_timeout / PINGS_PER_MASTER_TIMEOUT)
    return heartbeat


#: A worker's event-loop stall is judged in units of this many seconds (the peers' ping
#: cadence before pings became faster for failover): see ``worker_stall_after``.
WORKER_STALL_UNIT = 5.0


def worker_stall_after(master_heartbeat_timeout: float | None) -> float:
    """Seconds of event-loop silence after which a worker presumes the master may have
    reaped it (it then holds its prefetched tasks until the master confirms its leases):
    two units, or two thirds of the master's heartbeat timeout if that is shorter. Not
    two of today's one-second pings: a busy host stalls a loop that long without harm.
    """
    unit = WORKER_STALL_UNIT
    if master_heartbeat_timeout and master_heartbeat_timeout > 0:
        unit = min(unit, master_heartbeat_timeout / PINGS_PER_MASTER_TIMEOUT)
    return 2.0 * unit


def master_silent(now: float, last_recv: float, heartbeat: float) -> bool:
    """True when a peer has heard nothing from its master for too long (monotonic seconds)."""
    return now - last_recv > MISSED_HEARTBEATS * heartbeat


def session_silent(now: float, last_seen: float, heartbeat_timeout: float) -> bool:
    """True when the master has heard nothing from a session for too long (monotonic seconds)."""
    return now - last_seen > heartbeat_timeout


def reaper_tick(heartbeat_timeout: float, lease_for: float) -> float:
    """How long the master's reaper sleeps between looks at its sessions."""
    return min(REAPER_TICK_MAX, heartbeat_timeout / 4, lease_for / EXTENSIONS_PER_LEASE)


def extend_every(lease_for: float) -> float:
    """Seconds between extensions of the leases held by live sessions."""
    return lease_for / EXTENSIONS_PER_LEASE


def purge_every(result_ttl: float) -> float:
    """Seconds between purges of finished tasks older than the result TTL."""
    return min(PURGE_EVERY_MAX, max(PURGE_EVERY_MIN, result_ttl / 4))


def next_backoff(delay: float, *, maximum: float = RECONNECT_MAX) -> float:
    """The pause after a failed reconnect attempt that followed a pause of ``delay``."""
    return min(delay * 2, maximum)


@dataclass
class Cadence:
    """Says when something done every ``every`` seconds is due again.

    ``due(now)`` is true at most once per period and then starts the next
    one; ``last`` is when it last fired (the clock is the caller's).
    """

    every: float
    last: float

    def due(self, now: float) -> bool:
        if now - self.last >= self.every:
            self.last = now
            return True
        return False


# --- Credit (the worker's prefetch window) -----------------------------------

#: Seconds of queued work a worker aims to hold beyond its running slots.
PREFETCH_TARGET_SECONDS = 0.1
#: Most tasks a worker holds at once, running and prefetched together.
MAX_WINDOW = 2000


def credit_window(concurrency: int, avg_duration: float, fixed: int | None = None) -> int:
    """How many tasks a worker is willing to hold: its slots plus a prefetch that only
    short tasks earn.

    ``avg_duration`` is the mean run time seen so far (0 when none finished yet). An
    unknown duration counts as long: the window is then just the slots, so a burst of
    long tasks is shared among workers instead of hoarded by the first to ask. With
    known short tasks the prefetch holds about :data:`PREFETCH_TARGET_SECONDS` of work
    across the slots, so no-op tasks still flow in large batches. ``fixed`` (the
    worker's ``--prefetch``) overrides the rule.
    """
    if fixed is not None:
        return max(fixed, 1)
    if avg_duration <= 0:
        return concurrency
    prefetch = int(concurrency * PREFETCH_TARGET_SECONDS / avg_duration)
    return max(concurrency, min(MAX_WINDOW, concurrency + prefetch))


#: How long a worker gathers ``started`` reports before it sends them: a task that finished
#: meanwhile needs none (its result says it ran), so tiny tasks add no message of their own.
STARTED_REPORT_DELAY = 0.01
#: How often a worker whose pool holds prefetched tasks looks whether it holds too many.
REBALANCE_EVERY = PREFETCH_TARGET_SECONDS / 2


def effective_duration(avg_duration: float, running_ages: list[float], slots: int) -> float:
    """The run time to size a worker's window by: the measured mean, or infinity (long tasks:
    no prefetch) once every slot has been busy with one attempt for longer than both
    :data:`PREFETCH_TARGET_SECONDS` and twice the mean.

    The mean only learns a duration when a task ends; a burst of long tasks after short
    ones would otherwise keep the short tasks' large prefetch for as long as the long ones
    run. Below that age the mean stands: a batch of tiny tasks is always "older" than one
    tiny task, and a window cut by that would starve a fast worker; twice the mean, so that
    tasks that usually run this long do not count as a burst.
    """
    if running_ages and len(running_ages) >= slots and \
            min(running_ages) >= max(PREFETCH_TARGET_SECONDS, 2 * avg_duration):
        return math.inf
    return avg_duration


def prefetch_surplus(window: int, running: int, pending: int) -> int:
    """How many prefetched (pending) tasks a worker hands back: those beyond its window."""
    return max(0, min(pending, running + pending - window))


# -- conveyor.managers proxies ------------------------------------------------------
#: Seconds a managers proxy waits for its lost master to come back before its call
#: fails as the stdlib's would (EOFError/BrokenPipeError); a restart is shorter.
PROXY_MASTER_GRACE = 3.0
#: Seconds between a waiting proxy's looks at its connection.
PROXY_POLL = 0.25
