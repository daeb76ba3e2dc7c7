"""End-to-end throughput of no-op jobs, submit to completion, with 2 workers.

    .venv/bin/python -m bench.bench_pool [--jobs N]

A real phxqd (fsync=always, 2 workers) starts paused; N jobs are submitted in batches,
then the queue is resumed and the clock runs until the last one has completed. Two kinds:
`true` commands (a process per job) and Python callables (`os:getpid` in the persistent
workers). Also prints the raw spawn rate of `true` with 2 at a time, the floor for
commands. Prints a JSON summary on the last line.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench.bench_journal import Daemon
from phxqctl import Client
from phxqd.model import Call, JobSpec


def run(root: Path, specs: list[JobSpec]) -> float:
    root.mkdir()
    d = Daemon(root, "always")
    d.start()
    try:
        with Client(d.socket) as c:
            c.pause()
            ids = [r.job.id for r in c.submit_batch(specs)]
            t0 = time.perf_counter()
            c.resume()
            c.wait([ids[-1]])
            jobs = c.wait(ids)
            elapsed = time.perf_counter() - t0
            assert all(j.status == "completed" for j in jobs), "every job must complete"
        return len(specs) / elapsed
    finally:
        d.kill()


def raw_spawn_rate(n: int) -> float:
    """`true` run n times, two at a time, from Python: what any job runner pays."""
    per_thread = n // 2

    def spawn() -> None:
        for _ in range(per_thread):
            subprocess.run(["true"], check=True)

    threads = [threading.Thread(target=spawn) for _ in range(2)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return 2 * per_thread / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--jobs", type=int, default=5000)
    args = p.parse_args()
    n = args.jobs
    results: dict[str, Any] = {"jobs": n, "workers": 2, "cores": os.cpu_count()}
    with tempfile.TemporaryDirectory(prefix="phxq-bench-") as tmp:
        results["raw_spawn_true_per_s"] = round(raw_spawn_rate(2000))
        results["commands_true_per_s"] = round(run(Path(tmp) / "cmd", [JobSpec(argv=["true"])] * n))
        results["callables_per_s"] = round(
            run(Path(tmp) / "call", [JobSpec(call=Call("os:getpid"))] * n)
        )
    for k, v in results.items():
        print(f"{k:28} {v}")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
