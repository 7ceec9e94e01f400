"""The sync client's connection: a blocking-socket link that tracks results.

The calling thread writes its own request and one reader thread resolves
futures and runs result callbacks (conveyor.link.blocking); reconnection,
resending and keepalive are the link's, resubmitting pending tasks is
``ResultTracking``'s (client/core.py).
"""

from __future__ import annotations

from ..link.blocking import BlockingLink
from .core import ResultTracking


class ThreadedCore(ResultTracking, BlockingLink):
    """One logical connection to a master for threaded code, surviving reconnects.

    Futures are ``concurrent.futures.Future``; every method may be called
    from any thread. Result callbacks and ``on_message`` run on the reader
    thread: they must not block on this connection.
    """
