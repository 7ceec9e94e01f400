"""Task ids: 32 hex characters that sort by creation time.

A millisecond timestamp (48 bits) then 80 random bits, like a UUIDv7: as
unique as a random UUID across every client, but inserted near the end of
the store's id index instead of at random places in it, which makes
submitting about three times cheaper for the embedded store.
"""

from __future__ import annotations

import os
import random
import time

# Our own generator, seeded from the OS (a getrandom() call per id is slow), and
# reseeded in forked children so parent and child never share a sequence. Not
# the random module's global one: user code may seed that to a fixed value.
_rng = random.Random(os.urandom(32))
os.register_at_fork(after_in_child=lambda: _rng.seed(os.urandom(32)))


def new_id() -> str:
    """A new task id, ordered by creation time (to the millisecond)."""
    return f"{time.time_ns() // 1_000_000:012x}{_rng.getrandbits(80):020x}"
