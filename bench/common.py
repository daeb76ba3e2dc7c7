"""Small helpers shared by the peers: timing, medians, /proc, disk use."""

from __future__ import annotations

import contextlib
import os
import statistics
import subprocess
import time
from collections.abc import Callable, Container, Mapping, Sequence
from pathlib import Path


def dir_bytes(path: Path, skip: Container[str] = ()) -> tuple[int, int]:
    """(apparent size, allocated blocks * 512) of every file under `path`."""
    apparent = allocated = 0
    for dirpath, _, files in os.walk(path):
        for name in files:
            if name in skip:
                continue
            with contextlib.suppress(FileNotFoundError):
                st = os.stat(os.path.join(dirpath, name))
                apparent += st.st_size
                allocated += st.st_blocks * 512
    return apparent, allocated


def proc_status_kib(pid: int, field: str) -> int:
    """A memory figure (VmHWM:, VmRSS:) of a process from /proc/PID/status, in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1])
    return 0


def wall_times(
    argv: Sequence[str], runs: int, env: Mapping[str, str] | None = None, cwd: Path | None = None
) -> list[float]:
    """Seconds of each of `runs` runs of a shell command (output discarded, must exit 0)."""
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(
            list(argv),
            env=env,
            cwd=cwd,
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        times.append(time.perf_counter() - t0)
    return times


def call_times(fn: Callable[[], object], runs: int) -> list[float]:
    """Seconds of each of `runs` calls of `fn`."""
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def median_ms(times: Sequence[float]) -> float:
    return statistics.median(times) * 1e3


def wait_until(pred: Callable[[], bool], timeout: float, what: str, poll: float = 0.005) -> float:
    """Poll `pred` until true; return the perf_counter time it first held."""
    deadline = time.monotonic() + timeout
    while True:
        if pred():
            return time.perf_counter()
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(poll)
