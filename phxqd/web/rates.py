"""Throughput per queue over the last minute, for the API's and the dashboard's queue
table: phxqd's `Stats` counts ended jobs per queue since start; sampling those counters
every few seconds and keeping a minute of samples gives each queue's rate, and so its ETA
(its backlog at that rate). Pure: the caller samples and passes the clock."""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Mapping

#: seconds between samples, and how far back the rate looks
PERIOD = 5.0
WINDOW = 60.0
ENDED = ("completed", "failed")


class Rates:
    def __init__(self) -> None:
        self._samples: deque[tuple[float, Counter[str]]] = deque()

    def sample(self, now: float, jobs: Mapping[tuple[str, str], int]) -> None:
        """Take the current counters (`Stats.jobs`: (event, queue) -> count)."""
        ended: Counter[str] = Counter()
        for (kind, queue), n in jobs.items():
            if kind in ENDED:
                ended[queue] += n
        self._samples.append((now, ended))
        while len(self._samples) > 1 and now - self._samples[1][0] >= WINDOW:
            self._samples.popleft()

    def per_minute(self, queue: str) -> float | None:
        """Jobs of `queue` ended per minute over the window (None: too few samples yet)."""
        if len(self._samples) < 2:
            return None
        (t0, first), (t1, last) = self._samples[0], self._samples[-1]
        if t1 <= t0:
            return None
        return (last[queue] - first[queue]) * 60.0 / (t1 - t0)

    def eta(self, queue: str, backlog: int) -> float | None:
        """Seconds until `backlog` jobs have ended at the current rate (None: no rate)."""
        rate = self.per_minute(queue)
        if not backlog or not rate:
            return None
        return backlog * 60.0 / rate
