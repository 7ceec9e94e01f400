"""Refused settlements: reports from a session that does not hold the lease they name.

Only a worker-role session settles a task (ack, nack/retry, return, progress),
and only for a lease it holds: one the master pushed to it, or one it adopted
on reconnecting (the ``adopt`` op). Everything else is refused, counted in the
master's ``refused`` counter, and logged at most once per :data:`LOG_EVERY`
seconds per kind, with the number suppressed meanwhile, so a flood of forged
reports cannot flood the log.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, MutableMapping

from .. import serde
from ..errors import SerializationError
from ..records import Outcome

log = logging.getLogger("conveyor.master")

#: Seconds between two log lines about refusals of one kind.
LOG_EVERY = 10.0
#: The error type a refused request is answered with.
NOT_ALLOWED = "NotAllowed"
CLIENT_CANNOT_SETTLE = "only a worker holding a task's lease can settle it; this session is a client"


class Refusals:
    """Counts refused reports and logs them rate-limited (``clock``: monotonic seconds)."""

    def __init__(self, counters: MutableMapping[str, int],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.counters = counters
        self.clock = clock
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def refuse(self, kind: str, n: int, peer: str, detail: str) -> None:
        """``n`` reports of ``kind`` from ``peer`` were refused (``detail`` says why)."""
        if n <= 0:
            return
        self.counters["refused"] += n
        now = self.clock()
        last = self._last.get(kind)
        if last is not None and now - last < LOG_EVERY:
            self._suppressed[kind] = self._suppressed.get(kind, 0) + n
            return
        self._last[kind] = now
        more = self._suppressed.pop(kind, 0)
        log.warning("refused %d %s from %s: %s%s", n, kind, peer, detail,
                    f" ({more} more refused since the last line)" if more else "")


def codec_refused(o: Outcome, allow_pickle: bool) -> Outcome | None:
    """A failure to store instead of ``o`` when its codec is one this master does not
    allow (pickle without ``--pickle``): the task fails with a clear error rather
    than carrying a payload no peer should decode. None when ``o`` is acceptable."""
    if o.codec != serde.PICKLE or allow_pickle:
        return None
    error = serde.encode_error(SerializationError(
        "the worker's result used the pickle codec, which this master does not allow "
        "(start it with --pickle on a trusted network); the result was refused"))
    return Outcome(o.id, o.token, False, error, serde.MSGPACK, o.output, o.worker, o.started_at)
