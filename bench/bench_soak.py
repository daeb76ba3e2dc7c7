"""Soak: many jobs through one phxqd in rounds; its RSS, descriptors and threads after each.

    .venv/bin/python -m bench.bench_soak [--jobs 1000000] [--round 50000] [--commands 500]
                                         [--quick] [--quiet] [--tree OTHER_CHECKOUT]

A real phxqd (2 workers, the default config otherwise) runs rounds of `--round` jobs:
`--commands` `true` commands, the rest no-op callables (`os:getpid`), submitted in
batches of 10,000, all run to the end, then `clear`ed; after each round (the queue empty)
the daemon's RSS, open file descriptors and threads are read from /proc. Unless
`--quiet`, a `watch` client follows every job, a hook (`on_failure`) runs for a failing
job per round, the status file is kept and each round is waited for with a streaming
`wait` (what a busy installation has going). `--quick`: 5 rounds of 10,000 (under a
minute). `--tree`: the phxqd of another source tree (a git worktree), to compare
versions.

Then `--hold` callables (100,000) are submitted with everything paused, run and kept, and
cleared: RSS per queued job, per finished job kept (as `retention` keeps them), and what
is left after the clear.

Prints a Markdown table (every round, or about 20 rows for long runs) and a JSON line: RSS
after the second round and after the last, the growth per job that passed in between, and
the descriptors and threads, first and last.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench.bench_journal import Daemon
from phxqctl import Client
from phxqd.model import Call, JobSpec

BATCH = 10_000


def sample(pid: int) -> tuple[int, int, int]:
    """(RSS in KiB, open descriptors, threads) of a process, from /proc."""
    rss = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1])
    return rss, len(os.listdir(f"/proc/{pid}/fd")), len(os.listdir(f"/proc/{pid}/task"))


def watcher(socket: Path, stop: threading.Event) -> None:
    """A `watch` client that takes every event (the feed's listener stays busy)."""
    try:
        with Client(socket) as c:
            for _ in c.watch():
                if stop.is_set():
                    return
    except Exception:
        if not stop.is_set():
            raise


def one_round(c: Client, calls: int, commands: int, listeners: bool) -> None:
    specs = [JobSpec(call=Call("os:getpid")) for _ in range(calls)]
    specs += [JobSpec(argv=["true"]) for _ in range(commands)]
    if listeners:  # fails for good: the on_failure hook runs
        specs.append(JobSpec(call=Call("json:loads", ["{"]), max_retries=0))
    ids: list[int] = []
    for start in range(0, len(specs), BATCH):
        ids += [r.job.id for r in c.submit_batch(specs[start : start + BATCH])]
    if listeners:
        for _ in c.wait_events(ids[-2:-1]):  # a streaming wait, as `phxqctl wait` makes
            pass
    for start in range(0, len(ids), BATCH):
        done = c.wait(ids[start : start + BATCH])
        if not all(j.finished for j in done):
            raise SystemExit("a round's jobs did not all finish")
    c.clear()


def per_job(c: Client, pid: int, n: int) -> dict[str, float]:
    """Bytes of RSS per job held: `n` callables queued (everything paused), the same run
    and kept (finished, as retention keeps them), then cleared (MiB left)."""
    base = sample(pid)[0]
    c.pause()
    ids = [r.job.id for r in c.submit_batch([JobSpec(call=Call("os:getpid"))] * n)]
    queued = sample(pid)[0]
    c.resume()
    for start in range(0, n, BATCH):  # a reply of 100,000 jobs would pass MAX_FRAME
        c.wait(ids[start : start + BATCH])
    kept = sample(pid)[0]
    c.clear()
    return {
        "bytes_per_queued_job": round((queued - base) * 1024 / n),
        "bytes_per_finished_job_kept": round((kept - base) * 1024 / n),
        "rss_mib_before": round(base / 1024, 1),
        "rss_mib_after_clear": round(sample(pid)[0] / 1024, 1),
    }


def run(
    jobs: int, per_round: int, commands: int, listeners: bool, tree: Path | None, hold: int
) -> tuple[list[tuple[int, int, int, int, float]], dict[str, object]]:
    rows: list[tuple[int, int, int, int, float]] = []  # (jobs so far, rss, fds, threads, s)
    with tempfile.TemporaryDirectory(prefix="phxq-soak-") as tmp:
        root = Path(tmp)
        d = Daemon(root, "always")
        if listeners:
            (root / "c.toml").write_text(
                f'status_file = "{root / "status.json"}"\non_failure = ["true"]\n'
            )
        if tree is not None:
            d.env["PYTHONPATH"] = str(tree)
            d.cwd = tree
        stop = threading.Event()
        try:
            d.start()
            assert d.proc is not None
            pid = d.proc.pid
            if listeners:
                threading.Thread(target=watcher, args=(d.socket, stop), daemon=True).start()
            t0 = time.perf_counter()
            passed = 0
            with Client(d.socket) as c:
                while passed < jobs:
                    n = min(per_round, jobs - passed)
                    calls = max(n - commands - (1 if listeners else 0), 0)
                    one_round(c, calls, n - calls - (1 if listeners else 0), listeners)
                    passed += n
                    rows.append((passed, *sample(pid), time.perf_counter() - t0))
                    print("round", len(rows), rows[-1], file=sys.stderr, flush=True)
                held = per_job(c, pid, hold) if hold else {}
        finally:
            stop.set()
            d.close()
    second, last = rows[min(1, len(rows) - 1)], rows[-1]
    between = last[0] - second[0]
    summary: dict[str, object] = {
        "jobs": last[0],
        "rounds": len(rows),
        "seconds": round(last[4], 1),
        "rss_mib_second_round": round(second[1] / 1024, 1),
        "rss_mib_last_round": round(last[1] / 1024, 1),
        "rss_bytes_per_job_after_second_round": round((last[1] - second[1]) * 1024 / between, 1)
        if between
        else None,
        "fds_first_last": [rows[0][2], last[2]],
        "threads_first_last": [rows[0][3], last[3]],
        "listeners": listeners,
        **held,
    }
    return rows, summary


def table(rows: list[tuple[int, int, int, int, float]]) -> str:
    step = max(1, len(rows) // 20)
    shown = [r for i, r in enumerate(rows) if i % step == 0 or i == len(rows) - 1]
    out = [
        "| jobs passed | RSS (MiB) | open fds | threads | elapsed (s) |",
        "|---:|---:|---:|---:|---:|",
    ]
    out += [
        f"| {n:,} | {rss / 1024:.1f} | {fds} | {th} | {s:.0f} |" for n, rss, fds, th, s in shown
    ]
    return "\n".join(out)


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.bench_soak", description=__doc__)
    p.add_argument("--jobs", type=int, default=1_000_000, help="jobs in all")
    p.add_argument("--round", type=int, default=50_000, help="jobs per round")
    p.add_argument("--commands", type=int, default=500, help="of which commands")
    p.add_argument("--quick", action="store_true", help="5 rounds of 10,000 jobs")
    p.add_argument("--quiet", action="store_true", help="no watch, hook, status file")
    p.add_argument("--tree", type=Path, help="run the phxqd of this source tree")
    p.add_argument(
        "--hold", type=int, default=100_000, help="then: RSS per job of this many, queued, kept"
    )
    a = p.parse_args()
    jobs, per_round, commands = (50_000, 10_000, 100) if a.quick else (a.jobs, a.round, a.commands)
    hold = min(a.hold, 20_000) if a.quick else a.hold
    rows, summary = run(jobs, per_round, commands, not a.quiet, a.tree, hold)
    print(table(rows))
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
