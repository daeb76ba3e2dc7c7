"""Status and dispatch cost with a large backlog, on this machine.

    .venv/bin/python -m bench.bench_scheduling [--jobs N]

1. In process: a State with N pending jobs (4 queues, mixed priorities); the median time of
   `claim_next` (the dispatcher's pick) and of `summary` (what `status` counts).
2. A real phxqd holding N pending jobs (paused): the median round trip of a `status`
   request from an open Client, and the wall time of `phxqctl status`.
Prints a JSON summary on the last line.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.bench_journal import Daemon, fill
from phxqctl import Client
from phxqd.local.state import State
from phxqd.model import JobSpec


def in_process(n: int) -> dict[str, float]:
    state = State()
    specs = [JobSpec(argv=["true"], queue=f"q{i % 4}", priority=i % 3) for i in range(10_000)]
    for start in range(0, n, len(specs)):
        events, _ = state.submit(specs[: min(len(specs), n - start)], 1000.0)
        for e in events:
            state.apply(e)
    state.claim_next(2000.0)  # the first call promotes every due job onto the ready heaps
    picks = []
    for _ in range(2000):
        t0 = time.perf_counter()
        state.claim_next(2000.0)
        picks.append(time.perf_counter() - t0)
    summaries = []
    for _ in range(200):
        t0 = time.perf_counter()
        state.summary()
        summaries.append(time.perf_counter() - t0)
    return {
        "claim_next_us": round(statistics.median(picks) * 1e6, 2),
        "summary_us": round(statistics.median(summaries) * 1e6, 2),
    }


def daemon_status(n: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="phxq-bench-") as tmp:
        d = Daemon(Path(tmp), "always")
        d.start()
        fill(d, n)
        times = []
        with Client(d.socket) as c:
            for _ in range(200):
                t0 = time.perf_counter()
                c.status()
                times.append(time.perf_counter() - t0)
        walls = []
        for _ in range(15):
            t0 = time.perf_counter()
            subprocess.run(
                [sys.executable, "-m", "phxqctl", "status"],
                env=d.env,
                check=True,
                stdout=subprocess.DEVNULL,
            )
            walls.append(time.perf_counter() - t0)
        d.kill()
        return {
            "status_request_ms": round(statistics.median(times) * 1e3, 3),
            "phxqctl_status_wall_ms": round(statistics.median(walls) * 1e3, 1),
        }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--jobs", type=int, default=1_000_000)
    args = p.parse_args()
    results: dict[str, Any] = {"jobs": args.jobs, "cores": os.cpu_count()}
    results.update(in_process(args.jobs))
    results.update(daemon_status(args.jobs))
    for k, v in results.items():
        print(f"{k:28} {v}")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
