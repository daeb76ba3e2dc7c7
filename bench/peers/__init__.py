"""The systems measured side by side. Each is a small module exposing the same few names:

    SYSTEM: str                          the name in the tables
    NA: dict[str, str]                   workload -> why this system cannot do it
    version() -> str
    missing() -> str | None              why it cannot run on this machine, or None
    variants() -> list[Variant]          the durability settings it is measured with
    enqueue(ctx, variant, n, producers) -> float        durable enqueues per second
    throughput(ctx, kind, n) -> float                   jobs/s submit to done, 2 workers
    shell_submit(ctx, runs) -> list[float]              seconds of one submit command each
    backlog(ctx, sizes, restarts) -> Backlog            workloads 4 to 6

A function raises NotApplicable(reason) when a workload makes no sense for the system;
`NA` says so up front, so nothing is started for nothing. run.py and report.py are shared.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import msgspec

if TYPE_CHECKING:
    from bench.redis_server import RedisServer

WORKLOADS = ("enqueue", "throughput", "submit", "status", "restart", "disk")


class NotApplicable(Exception):
    """This system cannot do this workload; the message says why (shown as n/a)."""


class Variant(msgspec.Struct):
    setting: str  # as the table shows it, e.g. "Redis appendfsync always"
    durability: str  # report.FSYNC / INTERVAL / NONE
    option: str = ""  # what the peer module uses to set it up


class Ctx:
    """What every peer function gets: a private temp dir, the shared Redis, the mode."""

    def __init__(self, root: Path, redis: RedisServer | None, quick: bool) -> None:
        self.root = root
        self.redis = redis
        self.quick = quick
        self._n = 0

    def tmpdir(self, name: str) -> Path:
        """A fresh directory under the run's temp dir."""
        self._n += 1
        d = self.root / f"{name}-{self._n}"
        d.mkdir(parents=True)
        return d


class Backlog(msgspec.Struct):
    """Workloads 4-6 with a queue holding many jobs: status query times per backlog size
    (from an open client, and as a shell command), recovery and memory, disk."""

    status_api: dict[int, list[float]] = msgspec.field(default_factory=dict)
    status_cli: dict[int, list[float]] = msgspec.field(default_factory=dict)
    restart: list[float] = msgspec.field(default_factory=list)  # seconds, after kill -9
    restart_clean: list[float] = msgspec.field(default_factory=list)  # after a clean stop
    peak_rss_kib: list[float] = msgspec.field(default_factory=list)
    jobs: int = 0
    disk_apparent: int = 0
    disk_allocated: int = 0
    na: dict[str, str] = msgspec.field(default_factory=dict)  # measure -> why not
