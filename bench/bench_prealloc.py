"""What one small write + fdatasync costs appending to a file, against writing it into space
the file already has: the reason phxqd's journal segments are preallocated (format 3).

    .venv/bin/python -m bench.bench_prealloc [--rounds 3] [--calls 3000] [--size 120]

Each round writes `size` bytes (a one-job submit record is ~120) and fdatasyncs, `calls`
times into each of three files, interleaved call by call so that all three see the same
moments of a shared machine:

  append     a file opened O_APPEND, growing with every record (phxqd before format 3: on
             ext4 each fdatasync also commits the new file size to the filesystem's journal)
  zeros      a file first filled with zeros and fsync'd, written over in place with pwrite
  fallocate  a file preallocated with posix_fallocate and fsync'd, written with pwrite (what
             phxqd's journal does now)

The files live in a temp dir under `--dir` (default: the system's temp dir; /tmp is ext4
here). Prints each round's medians (µs), then the medians of the rounds.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

MODES = ("append", "zeros", "fallocate")


def round_us(directory: Path, calls: int, size: int) -> dict[str, float]:
    """Median µs of write + fdatasync per mode, one round."""
    span = calls * size + 4096
    fds: dict[str, int] = {}
    for mode in MODES:
        path = directory / mode
        if mode == "append":
            fds[mode] = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            continue
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
        if mode == "zeros":
            os.write(fd, bytes(span))
        else:
            os.posix_fallocate(fd, 0, span)
        os.fsync(fd)
        fds[mode] = fd
    times: dict[str, list[float]] = {m: [] for m in MODES}
    data = b"x" * size
    try:
        for i in range(calls):
            for mode, fd in fds.items():
                t0 = time.perf_counter()
                if mode == "append":
                    os.write(fd, data)
                else:
                    os.pwrite(fd, data, i * size)
                os.fdatasync(fd)
                times[mode].append(time.perf_counter() - t0)
    finally:
        for fd in fds.values():
            os.close(fd)
        for mode in MODES:
            (directory / mode).unlink()
    return {m: statistics.median(t) * 1e6 for m, t in times.items()}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.bench_prealloc", description=__doc__)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--calls", type=int, default=3000)
    p.add_argument("--size", type=int, default=120, help="bytes per write")
    p.add_argument("--dir", type=Path, default=None, help="where the temp dir goes")
    args = p.parse_args(argv)
    print(f"load average at the start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    rows: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory(prefix="phxq-prealloc-", dir=args.dir) as tmp:
        for r in range(args.rounds):
            row = round_us(Path(tmp), args.calls, args.size)
            rows.append(row)
            cells = ", ".join(f"{m} {row[m]:.0f}" for m in MODES)
            print(f"round {r + 1}: µs per write+fdatasync (median): {cells}", flush=True)
    print(f"load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    med = {m: statistics.median(row[m] for row in rows) for m in MODES}
    print(
        f"{args.rounds} rounds x {args.calls} writes of {args.size} bytes + fdatasync, median "
        "µs: " + ", ".join(f"{m} {med[m]:.0f}" for m in MODES)
    )


if __name__ == "__main__":
    main()
