"""Events per second over a sliding window, in one-second buckets."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable


class RateMeter:
    """Counts events per second for the last ``horizon`` seconds."""

    def __init__(self, horizon: int = 60, clock: Callable[[], float] = time.monotonic) -> None:
        self._buckets: deque[list[int]] = deque()
        self._horizon = horizon
        self._clock = clock

    def add(self, n: int = 1) -> None:
        """Record ``n`` events now."""
        if n <= 0:
            return
        second = int(self._clock())
        if self._buckets and self._buckets[-1][0] == second:
            self._buckets[-1][1] += n
        else:
            self._buckets.append([second, n])
            while self._buckets and self._buckets[0][0] <= second - self._horizon:
                self._buckets.popleft()

    def rate(self, window: int) -> float:
        """Mean events per second over the last ``window`` whole seconds."""
        now = int(self._clock())
        total = sum(n for sec, n in self._buckets if now - window < sec <= now)
        return round(total / window, 1)
