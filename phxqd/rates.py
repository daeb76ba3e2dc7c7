"""Queue start rates: `N/s`, `N/m`, `N/h` and the token bucket that holds a queue to one.

Standard library only: phxqctl parses `--rate` with `parse_rate` too, and the config file's
`[queues.NAME] rate` is read with it.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

PERIODS = {"s": 1.0, "m": 60.0, "h": 3600.0}
#: the highest rate phxq takes (a rate above what a dispatcher can start means no limit)
MAX_PER_SECOND = 1_000_000.0
MAX_BURST = 1_000_000
_RATE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*/\s*([smh])\s*")


def parse_rate(text: str) -> float:
    """`10/s`, `30/m`, `2/h` -> starts per second; ValueError with a one-line reason."""
    m = _RATE.fullmatch(text)
    if m is None:
        raise ValueError(f"a rate is N/s, N/m or N/h (such as 10/s or 30/m), not {text!r}")
    per_second = float(m.group(1)) / PERIODS[m.group(2)]
    if not 0 < per_second <= MAX_PER_SECOND or not math.isfinite(per_second):
        raise ValueError(f"a rate is more than 0 and at most {MAX_PER_SECOND:g}/s: {text!r}")
    return per_second


def rate_text(per_second: float) -> str:
    """The shortest of N/s, N/m, N/h that says `per_second` with a whole or short N."""
    for unit, seconds in (("s", 1.0), ("m", 60.0), ("h", 3600.0)):
        n = per_second * seconds
        if n >= 1 and abs(n - round(n)) < 1e-9:
            return f"{round(n)}/{unit}"
    return f"{per_second * 3600:g}/h"


@dataclass
class Bucket:
    """A token bucket: at most `burst` starts at once, one more every 1/`per_second` s.

    Starts full (a restart forgets how much was spent: the rate is journaled, the tokens
    are not: at most one extra burst after a restart).
    """

    per_second: float
    burst: int
    tokens: float
    at: float

    @classmethod
    def full(cls, per_second: float, burst: int, now: float) -> Bucket:
        return cls(per_second, burst, float(burst), now)

    def _refill(self, now: float) -> None:
        if now > self.at:
            self.tokens = min(float(self.burst), self.tokens + (now - self.at) * self.per_second)
        self.at = max(self.at, now)

    def can_take(self, now: float) -> bool:
        self._refill(now)
        return self.tokens >= 1.0

    def take(self, now: float) -> None:
        self._refill(now)
        self.tokens -= 1.0

    def ready_at(self, now: float) -> float:
        """When the next start is allowed (now, if a token is there)."""
        self._refill(now)
        if self.tokens >= 1.0:
            return now
        return now + (1.0 - self.tokens) / self.per_second
