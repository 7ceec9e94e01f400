"""Rate limits per task name (``rate_limit="100/m"``), enforced by the master.

A token bucket per task name, refilled continuously; time is an argument.
A task leased beyond its rate goes back to the queue, delayed until a token
is due, without counting as a failed attempt.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*/\s*(\d*)\s*([smhd])\w*\s*$")


def parse_rate(text: str) -> tuple[float, float]:
    """``"100/m"`` -> (100, 60.0): how many per how many seconds. ValueError naming rate_limit."""
    if not isinstance(text, str):
        raise ValueError(f"rate_limit must be a string like '100/m', not {text!r}")
    m = _RATE.match(text)
    if not m or float(m.group(1)) <= 0:
        raise ValueError(f"rate_limit {text!r} is not valid: use N/s, N/m, N/h or N/d (N > 0), e.g. '100/m'")
    count = float(m.group(1))
    per = float(m.group(2) or 1) * _UNITS[m.group(3)]
    return count, per


@dataclass
class TokenBucket:
    """``capacity`` tokens, refilled at ``capacity / per`` per second."""

    capacity: float
    per: float
    tokens: float = -1.0
    stamp: float = 0.0

    def take(self, now: float) -> float:
        """Take a token: 0.0 if one was there, else the seconds until one is due (none taken)."""
        rate = self.capacity / self.per
        if self.tokens < 0:
            self.tokens, self.stamp = self.capacity, now
        self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / rate
