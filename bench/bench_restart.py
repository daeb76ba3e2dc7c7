"""Restart after kill -9 with a big queue, its memory, and a snapshot's extra memory,
for this tree and (optionally) another, on one state directory, in one run.

    .venv/bin/python -m bench.bench_restart [--jobs 1000000] [--rounds 3]
                                            [--tree OTHER_CHECKOUT]

A real phxqd of this tree (paused, fsync = "always") takes `--jobs` jobs of `true` in
batches of 10,000 (bench_journal.fill, as `make bench` does), then is killed with SIGKILL.
Each round then starts each tree's phxqd on that same state directory, in turn: seconds
from exec to the first answered `status`, VmHWM (peak RSS) and VmRSS once it answers, and
kills it with SIGKILL again. The trees must read one state format. Then the same start
on an empty state dir (`empty_start_s`): what a restart costs before any job (the
interpreter, imports, the socket), which the machine's load moves most.

Last, a snapshot of each tree: its phxqd is started on a copy of the state dir, takes
batches of 1,000 more jobs until it has taken a snapshot (the journal passes
`snapshot_bytes`), and a sampler reads
the snapshot child's USS (its private pages: what the fork had to copy) and the daemon's
RSS every 20 ms; reported: the largest USS and its ratio to the daemon's RSS.
Prints a JSON line per tree.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil

from bench.bench_journal import Daemon, fill
from bench.bench_stall import snapshots_taken
from phxqctl import Client
from phxqd.model import JobSpec


def _daemon(root: Path, tree: Path | None) -> Daemon:
    d = Daemon(root, "always")
    if tree is not None:
        d.env["PYTHONPATH"] = str(tree)
        d.cwd = tree
    return d


def snapshot_memory(d: Daemon) -> dict[str, float]:
    """Submit until one snapshot is taken; the child's largest USS and the daemon's RSS."""
    d.start()
    assert d.proc is not None
    daemon = psutil.Process(d.proc.pid)
    done = threading.Event()
    peak = {"uss": 0, "rss": 0}

    def sample() -> None:
        while not done.is_set():
            for child in daemon.children():
                with contextlib.suppress(psutil.Error):
                    if child.cmdline() != daemon.cmdline():  # not a fork of phxqd
                        continue
                    uss = child.memory_full_info().uss
                    if uss > peak["uss"]:
                        peak["uss"], peak["rss"] = uss, daemon.memory_info().rss
            time.sleep(0.02)

    sampler = threading.Thread(target=sample)
    sampler.start()
    batch = [JobSpec(argv=["true"]) for _ in range(1_000)]
    try:
        with Client(d.socket) as c:
            before = snapshots_taken(c)
            while snapshots_taken(c) == before:
                c.submit_batch(batch)
    finally:
        done.set()
        sampler.join()
        d.kill(signal.SIGKILL)
    return {
        "snapshot_child_uss_mib": round(peak["uss"] / 2**20, 1),
        "daemon_rss_mib": round(peak["rss"] / 2**20, 1),
        "snapshot_extra_ratio": round(peak["uss"] / peak["rss"], 3) if peak["rss"] else 0.0,
    }


def run(jobs: int, rounds: int, trees: dict[str, Path | None]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {name: {"restart_s": [], "hwm_mib": []} for name in trees}
    with tempfile.TemporaryDirectory(prefix="phxq-restart-") as tmp:
        root = Path(tmp)
        d = _daemon(root, None)
        try:
            d.start()
            fill(d, jobs)
        finally:
            d.close()
        for _ in range(rounds):
            for name, tree in trees.items():
                d = _daemon(root, tree)
                try:
                    out[name]["restart_s"].append(round(d.start(), 3))
                    out[name]["hwm_mib"].append(round(d.peak_rss_kib() / 1024, 1))
                    out[name]["rss_mib"] = round(d.rss_kib() / 1024, 1)
                finally:
                    d.close()
        # the same start on an empty state dir: what a restart costs before any job
        for i, (name, tree) in enumerate(trees.items()):
            (root / f"empty{i}").mkdir()
            out[name]["empty_start_s"] = []
            for _ in range(rounds):
                d = _daemon(root / f"empty{i}", tree)
                try:
                    out[name]["empty_start_s"].append(round(d.start(), 3))
                finally:
                    d.close()
        # snapshots last, each tree's on its own copy of the state dir (they add jobs)
        for i, (name, tree) in enumerate(trees.items()):
            shutil.copytree(root / "state", root / f"copy{i}" / "state", symlinks=True)
            d = _daemon(root / f"copy{i}", tree)
            try:
                out[name].update(snapshot_memory(d))
            finally:
                d.close()
    for name, r in out.items():
        r["jobs"] = jobs
        r["restart_median_s"] = statistics.median(r["restart_s"])
        r["empty_start_median_s"] = statistics.median(r["empty_start_s"])
        r["hwm_bytes_per_job"] = round(statistics.median(r["hwm_mib"]) * 2**20 / jobs)
        r["rss_bytes_per_job"] = round(r["rss_mib"] * 2**20 / jobs)
        r["tree"] = name
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.bench_restart", description=__doc__)
    p.add_argument("--jobs", type=int, default=1_000_000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--tree", type=Path, help="another source tree to compare (git worktree)")
    args = p.parse_args(argv)
    trees: dict[str, Path | None] = {}
    if args.tree is not None:
        trees[str(args.tree)] = args.tree
    trees["this tree"] = None
    print(f"load before: {os.getloadavg()}", flush=True)
    for result in run(args.jobs, args.rounds, trees).values():
        print(json.dumps(result), flush=True)
    print(f"load after: {os.getloadavg()}", flush=True)


if __name__ == "__main__":
    main()
