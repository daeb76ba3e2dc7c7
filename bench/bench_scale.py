"""Does a request cost the same with 0 or a million jobs queued? Enqueue rate, status
latency and dispatch latency at several backlog sizes, one daemon.

    .venv/bin/python -m bench.bench_scale [--sizes 0 10000 100000 1000000] [--tree DIR]

A real phxqd (fsync = "always", 2 workers). The backlog is `true` jobs in the queue
`backlog`, paused, so they stay queued; it is filled up to each size in turn (batches of
10,000), and at each size:

- enqueue, one job per request: one client submitting `--singles` jobs one at a time
  into the paused queue `probe` (each acknowledged after its fdatasync), jobs/s;
- enqueue, batches: `--batches` batches of 1,000 into `probe`, jobs/s;
- status: `--status` `status` requests on an open connection, median and 99th percentile;
- dispatch: `--dispatch` times, one `true` job submitted to the running queue `default`
  while the backlog waits, and waited for: the daemon's own `started_at - created_at`
  (submit received to process started) and the client's submit-to-finished round trip.

The probe jobs are cancelled and cleared after each size, so the backlog is the size named.
One round of small counts goes first and is not reported (the first fsyncs and spawns).
Prints a JSON line per size, and a Markdown table at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.bench_journal import Daemon
from phxqctl import Client
from phxqd.model import JobSpec

BACKLOG = "backlog"
PROBE = "probe"


def ms(seconds: float) -> float:
    return round(seconds * 1e3, 3)


def grow(c: Client, queued: int, target: int) -> int:
    batch = [JobSpec(argv=["true"], queue=BACKLOG) for _ in range(10_000)]
    while queued < target:
        c.submit_batch(batch[: min(len(batch), target - queued)])
        queued += min(len(batch), target - queued)
    return queued


def measure(
    c: Client, size: int, singles: int, batches: int, status: int, dispatch: int
) -> dict[str, Any]:
    t0 = time.perf_counter()
    for _ in range(singles):
        c.submit(["true"], queue=PROBE)
    single_rate = singles / (time.perf_counter() - t0)
    batch = [JobSpec(argv=["true"], queue=PROBE) for _ in range(1_000)]
    t0 = time.perf_counter()
    for _ in range(batches):
        c.submit_batch(batch)
    batch_rate = batches * len(batch) / (time.perf_counter() - t0)
    status_times = []
    for _ in range(status):
        t0 = time.perf_counter()
        c.status()
        status_times.append(time.perf_counter() - t0)
    starts, rounds = [], []
    for _ in range(dispatch):
        t0 = time.perf_counter()
        job = c.submit(["true"])
        (done,) = c.wait([job.id], timeout=60)
        rounds.append(time.perf_counter() - t0)
        assert done.started_at is not None and done.status == "completed", done
        starts.append(done.started_at - done.created_at)
    probes = [j.id for j in c.list(status="pending", queue=PROBE, limit=singles + batches * 1000)]
    c.cancel(probes)
    c.clear(queue=PROBE)
    c.clear(queue="default")
    status_times.sort()
    return {
        "queued": size,
        "enqueue_single_per_s": round(single_rate),
        "enqueue_batch_per_s": round(batch_rate),
        "status_median_ms": ms(statistics.median(status_times)),
        "status_p99_ms": ms(status_times[int(len(status_times) * 0.99)]),
        "dispatch_start_median_ms": ms(statistics.median(starts)),
        "dispatch_start_max_ms": ms(max(starts)),
        "dispatch_round_trip_median_ms": ms(statistics.median(rounds)),
        "load_1min": round(os.getloadavg()[0], 2),
    }


TABLE = (
    ("queued", "queued jobs", "{:,}"),
    ("enqueue_single_per_s", "enqueue, 1 job/request (jobs/s)", "{:,}"),
    ("enqueue_batch_per_s", "enqueue, batches of 1,000 (jobs/s)", "{:,}"),
    ("status_median_ms", "status median (ms)", "{:.2f}"),
    ("status_p99_ms", "status p99 (ms)", "{:.2f}"),
    ("dispatch_start_median_ms", "dispatch: submit to start, median (ms)", "{:.2f}"),
    ("dispatch_round_trip_median_ms", "submit to finished, client (ms)", "{:.2f}"),
    ("load_1min", "load (1 min)", "{:.2f}"),
)


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| " + " | ".join(title for _, title, _ in TABLE) + " |"]
    lines.append("|" + "---|" + "---:|" * (len(TABLE) - 1))
    for r in rows:
        lines.append("| " + " | ".join(fmt.format(r[k]) for k, _, fmt in TABLE) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.bench_scale", description=__doc__)
    p.add_argument("--sizes", type=int, nargs="+", default=[0, 10_000, 100_000, 1_000_000])
    p.add_argument("--singles", type=int, default=300)
    p.add_argument("--batches", type=int, default=10)
    p.add_argument("--status", type=int, default=300)
    p.add_argument("--dispatch", type=int, default=30)
    p.add_argument("--tree", type=Path, help="the source tree whose phxqd to run")
    args = p.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory(prefix="phxq-scale-") as tmp:
        d = Daemon(Path(tmp), "always")
        if args.tree is not None:
            d.env["PYTHONPATH"] = str(args.tree)
            d.cwd = args.tree
        try:
            d.start()
            with Client(d.socket) as c:
                c.pause(BACKLOG)
                c.pause(PROBE)
                measure(c, 0, 50, 2, 50, 5)  # warm-up (first fsyncs, first spawn), dropped
                queued = 0
                for size in sorted(args.sizes):
                    queued = grow(c, queued, size)
                    row = measure(c, size, args.singles, args.batches, args.status, args.dispatch)
                    print(json.dumps(row), flush=True)
                    rows.append(row)
        finally:
            d.close()
    print(table(rows))


if __name__ == "__main__":
    main()
