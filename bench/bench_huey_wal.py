"""Why bench_one (800 jobs) and bench.run (20,000) disagreed on huey: its WAL warms up.

    .venv/bin/python -m bench.bench_huey_wal [--rounds 3]

SQLite appends to huey's WAL until its first checkpoint (1,000 pages, ~500 enqueues of a
no-op task) and overwrites it in place from then on. On ext4 an fdatasync after an append
also commits the file's new size to the file system's journal; one after an overwrite
within the file does not. Each round measures, in turn: huey with 800 jobs from a fresh
database (what bench_one did), 800 jobs after `bench.common.WARMUP` untimed ones (what it
does now), and 20,000 from fresh (bench.run's count); then one write + fdatasync of 200
bytes, interleaved, appended to a file and overwriting a file written and synced before
(phxqd's journal only ever appends). Prints one line per round and the medians.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench import common
from bench.peers import huey as huey_peer


def huey(n: int, warmup: int) -> float:
    with tempfile.TemporaryDirectory(prefix="phxq-wal-") as tmp:
        tasks = huey_peer._tasks(Path(tmp) / "huey.db")
        tasks.HUEY.storage.flush_queue()
        tasks.HUEY.storage.close()

        def submitter() -> Callable[[], object]:
            tasks.HUEY.pending_count()
            return tasks.noop  # type: ignore[no-any-return]

        return common.producers(submitter, 1, n, warmup=warmup)


def fdatasync_us(calls: int = 1000, size: int = 200) -> tuple[float, float]:
    """Median µs of write + fdatasync: (appending, overwriting), interleaved."""
    with tempfile.TemporaryDirectory(prefix="phxq-wal-") as tmp:
        fds = []
        for name in ("append", "overwrite"):
            fd = os.open(Path(tmp) / name, os.O_RDWR | os.O_CREAT, 0o600)
            if name == "overwrite":
                os.write(fd, bytes(calls * size + 4096))
                os.fsync(fd)
                os.lseek(fd, 0, os.SEEK_SET)
            fds.append(fd)
        times: list[list[float]] = [[], []]
        data = b"x" * size
        try:
            for _ in range(calls):
                for i, fd in enumerate(fds):
                    t0 = time.perf_counter()
                    os.write(fd, data)
                    os.fdatasync(fd)
                    times[i].append(time.perf_counter() - t0)
        finally:
            for fd in fds:
                os.close(fd)
    append, overwrite = (statistics.median(t) * 1e6 for t in times)
    return append, overwrite


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.bench_huey_wal", description=__doc__)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args(argv)
    if (why := huey_peer.missing()) is not None:
        raise SystemExit(f"bench_huey_wal: {why} (pip install -e '.[bench]')")
    print(f"load average at the start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    rows: list[tuple[float, ...]] = []
    for r in range(args.rounds):
        row = (huey(800, 0), huey(800, common.WARMUP), huey(20_000, 0), *fdatasync_us())
        rows.append(row)
        print(
            f"round {r + 1}: huey 800 cold {row[0]:,.0f}/s, 800 warm {row[1]:,.0f}/s, "
            f"20,000 cold {row[2]:,.0f}/s; write+fdatasync append {row[3]:.0f} µs, "
            f"overwrite {row[4]:.0f} µs",
            flush=True,
        )
    print(f"load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    med = [statistics.median(col) for col in zip(*rows, strict=True)]
    print(
        f"medians: huey 800 cold {med[0]:,.0f}/s, 800 after {common.WARMUP:,} untimed "
        f"{med[1]:,.0f}/s, 20,000 cold {med[2]:,.0f}/s; write+fdatasync of 200 bytes "
        f"appending {med[3]:.0f} µs, overwriting {med[4]:.0f} µs"
    )


if __name__ == "__main__":
    main()
