"""One producer, one durable submit per call: phxqd against huey's in-process SQLite
enqueue and against the least any daemon can do, in the same rounds.

    .venv/bin/python -m bench.bench_one [--rounds 5] [--per 1000] [--base OTHER_TREE]

Issue 19 asks phxqd, with `fsync = "always"` and one producer waiting for each
acknowledgement, for at least 0.6x of huey's `SqliteHuey(fsync=True)` enqueue (no server:
one SQLite commit with an fsync per call, in the producer's own process). Each round runs,
in turn and fresh:

  phxqd   this tree's daemon, paused, `fsync = "always"` (bench_ab's run, 1 client)
  base    the daemon of `--base` (a source tree of another version), the same way
  huey    SqliteHuey, WAL, synchronous=FULL, the producer calling the task (bench/peers)
  inline  bench_ceiling's stand-in with the write + fdatasync in its event loop: one socket
          round trip plus one fdatasync per submit, the floor for any daemon that appends
  prealloc  the same stand-in writing into a preallocated file (posix_fallocate): the floor
          for one that does not (phxqd's journal since state format 3)

Every run first makes `bench.common.WARMUP` (1,000) untimed submits, then starts the
clock: SQLite appends to huey's WAL (each fdatasync then commits the file's new size to
the ext4 journal too, as every fdatasync of phxqd's append-only journal does) only until
its first checkpoint, ~500 enqueues in; from then on it overwrites the WAL in place, which
needs no metadata commit. Without the warm-up, 800 jobs measured mostly huey's first WAL
cycle and `bench.run`'s 20,000 its steady state: 2,371 against 3,642 jobs/s on the same
quiet machine (docs/benchmarks.md, "The request path, again").

Medians over the rounds, and the median of each round's phxqd/huey ratio (the machine is
shared: its speed moves between rounds, and both sides of a ratio see the same minute).
Needs the `bench` extra (huey). Prints a Markdown table, then a JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
from pathlib import Path

from bench import bench_ab, bench_ceiling
from bench.peers import Ctx
from bench.peers import huey as huey_peer

HERE = Path(__file__).resolve().parent.parent


def huey_rate(per: int) -> float:
    with tempfile.TemporaryDirectory(prefix="phxq-one-") as tmp:
        (variant,) = huey_peer.variants()
        return huey_peer.enqueue(Ctx(Path(tmp), None, quick=True), variant, per, 1)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.bench_one", description=__doc__)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--per", type=int, default=1000, help="jobs per run")
    p.add_argument("--base", type=Path, help="another version's source tree, also measured")
    args = p.parse_args(argv)
    if (why := huey_peer.missing()) is not None:
        raise SystemExit(f"bench_one: {why} (pip install -e '.[bench]')")
    kinds = ["phxqd", *(["base"] if args.base else []), "huey", "inline", "prealloc"]
    rates: dict[str, list[float]] = {k: [] for k in kinds}
    cpu: dict[str, list[float]] = {k: [] for k in kinds}
    print(f"load average at the start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    for r in range(args.rounds):
        for kind in kinds:
            if kind in ("phxqd", "base"):
                run = bench_ab.measure(HERE if kind == "phxqd" else args.base, 1, args.per)
                rate, server = run.jobs_per_s, run.server_us
            elif kind == "huey":
                rate, server = huey_rate(args.per), float("nan")
            else:
                run = bench_ceiling.measure(kind, 1, args.per)
                rate, server = run.jobs_per_s, run.server_us
            rates[kind].append(rate)
            cpu[kind].append(server)
            print(f"round {r + 1} {kind:6} {rate:8.0f} jobs/s  server {server:6.1f} µs/job")
    ratios = {
        k: statistics.median(a / b for a, b in zip(rates[k], rates["huey"], strict=True))
        for k in kinds
    }
    print(f"load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print()
    print(f"1 producer x {args.per} one-job durable submits, {args.rounds} rounds, medians:")
    print()
    print("| system | jobs/s | range | µs per submit | x huey (median of rounds) |")
    print("|---|---:|---:|---:|---:|")
    summary = {}
    for k in kinds:
        med = statistics.median(rates[k])
        lo, hi = min(rates[k]), max(rates[k])
        print(f"| {k} | {med:,.0f} | {lo:,.0f}-{hi:,.0f} | {1e6 / med:.0f} | {ratios[k]:.2f} |")
        summary[k] = {"jobs_per_s": round(med), "x_huey": round(ratios[k], 2)}
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
