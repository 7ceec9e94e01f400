"""Task ids: 32 hex characters that sort by creation time.

A millisecond timestamp (48 bits) then 80 random bits, like a UUIDv7: as
unique as a random UUID across every client, but inserted near the end of
the store's id index instead of at random places in it, which makes
submitting about three times cheaper for the embedded store.
"""

from __future__ import annotations

import os
import time


def new_id() -> str:
    """A new task id, ordered by creation time (to the millisecond)."""
    return f"{time.time_ns() // 1_000_000:012x}{os.urandom(10).hex()}"
