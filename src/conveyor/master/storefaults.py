"""How the master lives with a store that cannot write: rate-limited fault lines, and which
store errors are fatal.

A full disk or an I/O error makes every commit fail, and every request, lease and sweep
meets the same error: logged each time, that is thousands of identical lines a second.
:class:`~conveyor.ratelimit_log.RateLimitedLog` says each distinct cause once per interval
and counts what it held back; :class:`StoreErrorFilter` does the same for the records other
parts of the master
log with a store error attached (dispatch, schedules, failed requests), without their
tracebacks. A corrupt store is different: nothing it says can be trusted, so the master
stops (see ``Master.fatal``) instead of spinning on it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from ..errors import StoreCorrupt, StoreError
from ..ratelimit_log import RateLimitedLog, suppressed


def is_fatal(exc: BaseException) -> bool:
    """True for a store error the master must stop on (a corrupt file)."""
    return isinstance(exc, StoreCorrupt)


def is_store_fault(exc: BaseException | None) -> bool:
    """True for a store error that may pass (disk full, I/O error, any other write failure)."""
    return isinstance(exc, StoreError) and not isinstance(exc, StoreCorrupt)


def fault_key(exc: BaseException) -> str:
    """The key a fault is rate-limited by: its type and text (one per distinct error)."""
    return f"{type(exc).__name__}: {exc}"


class StoreErrorFilter(logging.Filter):
    """Rate-limits records that carry a store error, and drops their tracebacks.

    Installed on the master's loggers while it runs: the parts that log "dispatch failed"
    or "request failed" with the exception attached keep doing so, and a failing disk
    turns into one line per distinct cause per interval. Records of a corrupt store are
    dropped: the master says that once itself, as it stops.
    """

    def __init__(self, faults: RateLimitedLog) -> None:
        super().__init__()
        self.faults = faults

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if not isinstance(exc, StoreError):
            return True
        if is_fatal(exc):
            return False
        held = self.faults.allow(f"{record.name}:{record.msg}:{fault_key(exc)}")
        if held is None:
            return False
        # One line: the message, the cause, how many like it were held back; no traceback.
        record.msg = f"{record.getMessage()}: {exc}{suppressed(held)}"
        record.args = None
        record.exc_info = None
        record.exc_text = None
        return True


#: The loggers the master's parts log store failures to.
MASTER_LOGGERS = ("conveyor.master", "conveyor.scheduler")


def install_filter(faults: RateLimitedLog) -> Callable[[], None]:
    """Put a :class:`StoreErrorFilter` on the master's loggers; returns what removes it."""
    filt = StoreErrorFilter(faults)
    loggers = [logging.getLogger(name) for name in MASTER_LOGGERS]
    for lg in loggers:
        lg.addFilter(filt)

    def remove() -> None:
        for lg in loggers:
            lg.removeFilter(filt)

    return remove
