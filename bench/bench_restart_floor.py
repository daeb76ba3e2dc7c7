"""What a restart with a million queued jobs cannot go below while jobs are objects.

    .venv/bin/python -m bench.bench_restart_floor [--jobs 1000000] [--rounds 3]

Issue 19 asks for a restart within 1.0 s and 400 bytes of RSS per queued job. This
measures, in one process and with nothing of phxqd's recovery around it, the two ways a
snapshot of `--jobs` queued `true` jobs (phxqd's Job, as bench_journal.fill submits them:
argv, queue, cwd, times) can be read back:

- objects: msgspec decodes the snapshot's array into Job structs, and a dict by id is
  built (what phxqd's State holds today): seconds and RSS bytes per job.
- encoded: msgspec decodes the array into `msgspec.Raw` views of each job's bytes (no
  field is parsed; the snapshot's buffer stays and is shared by the views), and the same
  dict by id: the floor of the "keep each job's stored fields encoded, decode on access"
  design the issue names.

If the objects row alone is near 1.0 s or above 400 B/job, no tuning of recovery meets the
target while every queued job is an object. Prints a Markdown table and a JSON line.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

import msgspec

from phxqd.model import Job


def rss() -> int:
    return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def snapshot_of(n: int) -> bytes:
    """n queued jobs as a snapshot holds them (one msgpack array of Job maps)."""
    t0 = 1.7e9
    jobs = [
        Job(i, ("true",), "default", 0, "pending", t0 + i * 1e-3, t0 + i * 1e-3, cwd="/srv/x")
        for i in range(1, n + 1)
    ]
    return msgspec.msgpack.encode(jobs)


def by_id_objects(blob: bytes) -> dict[int, Any]:
    return {j.id: j for j in msgspec.msgpack.Decoder(list[Job]).decode(blob)}


def by_id_encoded(blob: bytes) -> dict[int, Any]:
    """Raw views, keyed by id: the id is the job's key here as in the snapshot's order
    (a real design would store the id beside the bytes; reading it costs no more)."""
    return dict(enumerate(msgspec.msgpack.Decoder(list[msgspec.Raw]).decode(blob), 1))


def measure(read: Callable[[bytes], dict[int, Any]], blob: bytes, n: int) -> tuple[float, float]:
    gc.collect()
    before = rss()
    t = time.perf_counter()
    held = read(blob)
    seconds = time.perf_counter() - t
    grown = rss() - before
    assert len(held) == n
    del held
    gc.collect()
    return seconds, grown / n


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--jobs", type=int, default=1_000_000)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    blob = snapshot_of(args.jobs)
    snapshot_b = len(blob) / args.jobs
    rows: dict[str, dict[str, float]] = {}
    for name, read in (("objects", by_id_objects), ("encoded", by_id_encoded)):
        runs = [measure(read, blob, args.jobs) for _ in range(args.rounds)]
        seconds = statistics.median(s for s, _ in runs)
        grown = statistics.median(b for _, b in runs)
        # the encoded views keep the snapshot's buffer: count it as theirs
        held = grown + (snapshot_b if name == "encoded" else 0)
        rows[name] = {"seconds": round(seconds, 3), "bytes_per_job": round(held)}
    print(
        f"{args.jobs:,} queued jobs, snapshot {snapshot_b:.0f} B/job, load {os.getloadavg()[0]:.1f}"
    )
    print("| read as | seconds (median) | RSS bytes per job |")
    print("|---|---:|---:|")
    for name, row in rows.items():
        print(f"| {name} | {row['seconds']:.3f} | {row['bytes_per_job']:.0f} |")
    print(json.dumps({"jobs": args.jobs, "snapshot_bytes_per_job": round(snapshot_b), **rows}))


if __name__ == "__main__":
    main()
