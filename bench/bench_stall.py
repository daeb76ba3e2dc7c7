"""How long phxqd stops answering while it takes background snapshots of a big state.

    .venv/bin/python -m bench.bench_stall [--jobs 1000000] [--tree OTHER_CHECKOUT]

A real phxqd (paused, fsync = "always", default snapshot_bytes) takes `--jobs` jobs in
batches of 1,000 while another client asks for `status` over and over. The journal grows
past the snapshot thresholds on the way (16 MiB, then twice each snapshot), so the daemon
takes a few snapshots of a growing state meanwhile. Reported: the longest and the 99.9th
percentile status round trip during the fill, and how many snapshots were taken (the
daemon's own `phxq_snapshot_seconds` count), the most memory a snapshot child held of its
own (USS: the pages the fork had to copy for it) and the daemon's RSS at the end.
`--tree`: run the phxqd of another source tree (a git worktree), to compare versions.
Prints a JSON line.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import tempfile
import threading
import time
from pathlib import Path

import psutil

from bench.bench_journal import Daemon
from phxqctl import Client
from phxqd.model import JobSpec


def snapshots_taken(c: Client) -> int:
    for line in c.metrics().splitlines():
        if line.startswith("phxq_snapshot_seconds_count"):
            return int(float(line.split()[-1]))
    raise SystemExit("phxqd's metrics have no phxq_snapshot_seconds_count")


def run(jobs: int, tree: Path | None = None) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="phxq-stall-") as tmp:
        d = Daemon(Path(tmp), "always")
        if tree is not None:
            d.env["PYTHONPATH"] = str(tree)
            d.cwd = tree
        try:
            d.start()
            with Client(d.socket) as c:
                c.pause()
                before = snapshots_taken(c)
            done = threading.Event()
            latencies: list[float] = []

            def probe() -> None:
                with Client(d.socket) as c:
                    while not done.is_set():
                        t0 = time.perf_counter()
                        c.status()
                        latencies.append(time.perf_counter() - t0)
                        time.sleep(0.001)

            child_uss: list[int] = [0]

            def sample_children() -> None:  # smaps is slow to read: not in the prober
                daemon = psutil.Process(d.proc.pid if d.proc else 0)
                while not done.is_set():
                    for child in daemon.children():
                        with contextlib.suppress(psutil.Error):
                            uss = child.memory_full_info().uss
                            child_uss[0] = max(child_uss[0], uss)
                    time.sleep(0.05)

            prober = threading.Thread(target=probe)
            sampler = threading.Thread(target=sample_children)
            prober.start()
            sampler.start()
            batch = [JobSpec(argv=["true"]) for _ in range(1_000)]
            t0 = time.perf_counter()
            with Client(d.socket) as c:
                for _ in range(jobs // len(batch)):
                    c.submit_batch(batch)
                fill = time.perf_counter() - t0
                done.set()
                prober.join()
                sampler.join()
                taken = snapshots_taken(c) - before
                daemon_rss = psutil.Process(d.proc.pid if d.proc else 0).memory_info().rss
        finally:
            d.close()
    latencies.sort()
    return {
        "jobs": jobs,
        "fill_s": round(fill, 2),
        "snapshots": taken,
        "status_calls": len(latencies),
        "status_max_ms": round(latencies[-1] * 1e3, 1),
        "status_p999_ms": round(latencies[int(len(latencies) * 0.999)] * 1e3, 1),
        "status_median_ms": round(statistics.median(latencies) * 1e3, 2),
        "child_uss_max_mib": round(child_uss[0] / 2**20),
        "daemon_rss_mib": round(daemon_rss / 2**20),
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.bench_stall", description=__doc__)
    p.add_argument("--jobs", type=int, default=1_000_000)
    p.add_argument("--tree", type=Path, help="the source tree whose phxqd to run")
    args = p.parse_args(argv)
    print(json.dumps(run(args.jobs, args.tree)))


if __name__ == "__main__":
    main()
