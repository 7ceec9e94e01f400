"""Which queues may have ready work, without asking the store every time.

The dispatcher asks the store for work only for queues that may have some.
A lease that comes back short marks a queue empty, unless something may
have added work since the lease was planned: each change bumps a
generation, so an enqueue that races a lease is never missed.
"""

from __future__ import annotations

import random


class QueueTracker:
    """Remembers which queues are known to be empty."""

    def __init__(self) -> None:
        self._gen: dict[str, int] = {}
        self._epoch = 0
        self._empty: set[str] = set()

    def changed(self, queue: str) -> None:
        """Work may have been added to ``queue``."""
        self._gen[queue] = self._gen.get(queue, 0) + 1
        self._empty.discard(queue)

    def changed_unknown(self) -> None:
        """Work may have been added to any queue (leases handed back, delayed work due)."""
        self._epoch += 1
        self._empty.clear()

    def mark(self, queue: str) -> tuple[int, int]:
        """A stamp to take before leasing from ``queue``."""
        return self._epoch, self._gen.get(queue, 0)

    def empty(self, queue: str, mark: tuple[int, int]) -> None:
        """A lease planned at ``mark`` came back short: empty unless it changed since."""
        if mark == (self._epoch, self._gen.get(queue, 0)):
            self._empty.add(queue)

    def first_nonempty(self, queues: list[str]) -> str | None:
        """The first of ``queues`` (in the worker's stated order) that may have work."""
        for q in queues:
            if q not in self._empty:
                return q
        return None

    def pick_weighted(self, queues: list[str], weights: list[int],
                      rand: random.Random | None = None) -> str | None:
        """A queue that may have work, chosen with probability proportional to its weight."""
        live = [(q, w) for q, w in zip(queues, weights) if q not in self._empty]
        if not live:
            return None
        r = (rand or random).random() * sum(w for _, w in live)
        for q, w in live:
            r -= w
            if r < 0:
                return q
        return live[-1][0]

    def is_empty(self, queue: str) -> bool:
        """True if ``queue`` is known to have no ready work."""
        return queue in self._empty
