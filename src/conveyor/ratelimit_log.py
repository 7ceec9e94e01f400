"""Log lines for errors that can repeat, at most one per key per interval.

A master whose disk is full, or a client whose master refuses it, meets the
same error hundreds of times a second; logging each one buries everything
else (and fills the disk further). :class:`RateLimitedLog` logs the first
line of a key, then at most one per ``interval`` seconds, and says how many
lines it held back: ``... (41 similar suppressed)``. Time is an argument
(``clock``), so tests drive it without sleeping.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

#: The default pause between two lines of one key.
INTERVAL = 10.0
#: Keys remembered at most (the oldest are forgotten beyond it): keys are message
#: kinds, a handful, but one built from a peer's address must not grow without end.
MAX_KEYS = 1024


class RateLimitedLog:
    """A logger's repeatable lines, at most one per key per ``interval`` seconds.

    The key names the kind of line (``"commit failed"``, ``"reconnect 10.0.0.2:7700"``);
    the message may differ from line to line (the first one of an interval is logged).
    Thread-safe: the sync client logs from its reader thread and its callers'.
    """

    def __init__(self, logger: logging.Logger, interval: float = INTERVAL, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.logger = logger
        self.interval = interval
        self.clock = clock
        self._lock = threading.Lock()
        self._last: dict[str, float] = {}  # key -> when its last line was logged
        self._held: dict[str, int] = {}  # key -> lines suppressed since then

    def allow(self, key: str) -> int | None:
        """None if a line of ``key`` is held back now (and counted); else how many lines of
        it were held back since the previous one said (0 for the first)."""
        now = self.clock()
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last < self.interval:
                self._held[key] = self._held.get(key, 0) + 1
                return None
            held = self._held.pop(key, 0)
            self._last.pop(key, None)
            self._last[key] = now  # re-inserted: the dict stays oldest first
            if len(self._last) > MAX_KEYS:
                oldest = next(iter(self._last))
                del self._last[oldest]
                self._held.pop(oldest, None)
        return held

    def log(self, level: int, key: str, msg: str, *args: object, exc_info: object = None) -> bool:
        """Log ``msg % args`` unless a line of ``key`` went out less than ``interval`` ago.

        Returns True if the line was logged. A logged line ends with the count of the
        lines of its key suppressed since the previous one.
        """
        if not self.logger.isEnabledFor(level):
            return False
        held = self.allow(key)
        if held is None:
            return False
        msg += suppressed(held)
        # stacklevel: the record names the caller's line, not this one.
        self.logger.log(level, msg, *args, exc_info=exc_info, stacklevel=3)  # type: ignore[arg-type]
        return True

    def error(self, key: str, msg: str, *args: object, exc_info: object = None) -> bool:
        """:meth:`log` at ERROR."""
        return self.log(logging.ERROR, key, msg, *args, exc_info=exc_info)

    def warning(self, key: str, msg: str, *args: object, exc_info: object = None) -> bool:
        """:meth:`log` at WARNING."""
        return self.log(logging.WARNING, key, msg, *args, exc_info=exc_info)

    def info(self, key: str, msg: str, *args: object) -> bool:
        """:meth:`log` at INFO."""
        return self.log(logging.INFO, key, msg, *args)

    def suppressed(self, key: str) -> int:
        """Lines of ``key`` held back since its last logged line."""
        with self._lock:
            return self._held.get(key, 0)


def suppressed(n: int) -> str:
    """The tail of a line that follows ``n`` held back: `` (n similar suppressed)``, or nothing."""
    return f" ({n} similar suppressed)" if n else ""
