"""What the figures were measured on: cores, memory, the disk's fsync latency, load, versions.

The fsync latency is measured in the directory the benchmarks write to (a small append and
an fdatasync, repeated), because that, not the CPU, bounds every durable enqueue.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from pathlib import Path


def fdatasync_latency(directory: Path, n: int = 300) -> tuple[float, float]:
    """Median and p90 seconds of append 100 bytes + fdatasync in `directory`."""
    path = directory / "fsync-probe"
    times = []
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        for _ in range(n):
            t0 = time.perf_counter()
            os.write(fd, b"x" * 100)
            os.fdatasync(fd)
            times.append(time.perf_counter() - t0)
    finally:
        os.close(fd)
        path.unlink()
    times.sort()
    return statistics.median(times), times[int(len(times) * 0.9)]


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def mem_gib() -> float:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30


def describe(directory: Path) -> dict[str, str]:
    med, p90 = fdatasync_latency(directory)
    load1, load5, _ = os.getloadavg()
    return {
        "cores": str(os.cpu_count()),
        "cpu": cpu_model(),
        "memory": f"{mem_gib():.0f} GiB",
        "kernel": platform.release(),
        "python": platform.python_version(),
        "fdatasync": f"median {med * 1e6:.0f} µs, p90 {p90 * 1e6:.0f} µs",
        "load at start": f"{load1:.2f} (1 min), {load5:.2f} (5 min)",
    }
