"""The event loop the master, workers and pools run on: uvloop where it is installed.

uvloop halves the master's cost per message (an echo round trip on loopback:
asyncio's selector loop 43 us, uvloop 20 us, a blocking thread 16 us), and
that cost is most of a small request's latency. It is a dependency on Linux
and macOS; elsewhere, or with ``CONVEYOR_LOOP=asyncio``, the stdlib loop runs.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def _uvloop() -> Any:
    if os.environ.get("CONVEYOR_LOOP", "").lower() == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop


def name() -> str:
    """Which loop :func:`new_event_loop` makes: ``"uvloop"`` or ``"asyncio"``."""
    return "uvloop" if _uvloop() is not None else "asyncio"


def new_event_loop() -> asyncio.AbstractEventLoop:
    """A new event loop of the fastest kind available."""
    uv = _uvloop()
    return uv.new_event_loop() if uv is not None else asyncio.new_event_loop()


def run(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run`` on the fastest loop available."""
    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        return runner.run(main)
