"""Small helpers shared by the peers: timing, medians, /proc, disk use."""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import statistics
import subprocess
import threading
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


#: untimed calls before the clock starts, shared among the producers (see `producers`)
WARMUP = 1000


def producers(
    make: Callable[[], Callable[[], object]],
    count: int,
    per: int,
    warmup: int = 0,
    on_start: Callable[[], None] | None = None,
    cpu: list[float] | None = None,
) -> float:
    """Jobs per second enqueued by `count` forked processes, `per` jobs each.

    Each process first calls `make()` (connect, import: not timed) and gets back the
    function that enqueues one job; it calls that `warmup // count` times more untimed
    (a store that starts out cold, like SQLite's WAL before its first checkpoint, is
    measured in its steady state, see bench_one); the clock starts once every process is
    ready (`on_start` is called then) and stops when the last one has finished. `cpu`, if
    given, gets each process's CPU seconds of its timed calls. Libraries should be imported
    before, so that forking shares them instead of every child importing them again.
    """
    ctx = mp.get_context("fork")
    ready = ctx.Barrier(count + 1)
    errors = ctx.SimpleQueue()
    spent = ctx.SimpleQueue()
    untimed = warmup // count

    def child() -> None:
        try:
            submit = make()
            for _ in range(untimed):
                submit()
            ready.wait()
            cpu0 = time.process_time()
            for _ in range(per):
                submit()
            spent.put(time.process_time() - cpu0)
        except BaseException as e:
            errors.put(f"{type(e).__name__}: {e}")
            ready.abort()  # a failure before the start must not leave the parent waiting
            raise

    procs = [ctx.Process(target=child) for _ in range(count)]
    for p in procs:
        p.start()
    with contextlib.suppress(threading.BrokenBarrierError):
        ready.wait(timeout=300)
    t0 = time.perf_counter()
    if on_start is not None:
        on_start()
    for p in procs:
        p.join()
    elapsed = time.perf_counter() - t0
    if any(p.exitcode != 0 for p in procs):
        why = errors.get() if not errors.empty() else f"exit status {procs[0].exitcode}"
        raise RuntimeError(f"a producer failed: {why}")
    if cpu is not None:
        cpu += [spent.get() for _ in procs]
    return count * per / elapsed
