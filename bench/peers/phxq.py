"""phxq itself, through the measurement code of bench_journal.py and bench_pool.py.

A real phxqd in a temp dir (2 workers), its queue paused whenever only submitting is
measured. `fsync = "always"` (the default: acknowledged after fdatasync, group commit) and
`fsync = "batch"` (acknowledged after write(), fdatasync every 50 ms).
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path

from bench import bench_journal, bench_pool
from bench.common import call_times, dir_bytes, wall_times
from bench.peers import Backlog, Ctx, Variant
from bench.report import FSYNC, INTERVAL
from phxqctl import Client
from phxqd.model import Call, JobSpec

SYSTEM = "phxq"
NA: dict[str, str] = {}
PHXQCTL = str(Path(sys.executable).parent / "phxqctl")


def version() -> str:
    from importlib.metadata import version as dist_version

    return dist_version("phxq")


def missing() -> str | None:
    return None


def variants() -> list[Variant]:
    return [
        Variant('fsync = "always"', FSYNC, "always"),
        Variant('fsync = "batch" (50 ms)', INTERVAL, "batch"),
    ]


def _daemon(ctx: Ctx, fsync: str) -> bench_journal.Daemon:
    d = bench_journal.Daemon(ctx.tmpdir("phxq"), fsync)
    d.start()
    with Client(d.socket) as c:
        c.pause()
    return d


def enqueue(ctx: Ctx, v: Variant, n: int, producers: int) -> float:
    """One job per request (Client.submit), each producer a process."""
    d = _daemon(ctx, v.option)
    try:
        if producers == 1:
            return bench_journal.bench_single(d, n)
        return bench_journal.bench_concurrent(d, producers, n // producers)
    finally:
        d.close()


def throughput(ctx: Ctx, kind: str, n: int) -> float:
    """Submitted paused in batches, then resumed: resume to the last job completed."""
    spec = JobSpec(argv=["true"]) if kind == "true" else JobSpec(call=Call("os:getpid"))
    return bench_pool.run(ctx.tmpdir("phxq-pool") / "d", [spec] * n).per_s


def shell_submit(ctx: Ctx, runs: int) -> list[float]:
    d = _daemon(ctx, "always")
    try:
        return wall_times([PHXQCTL, "submit", "--", "true"], runs, env=d.env)
    finally:
        d.close()


def backlog(ctx: Ctx, sizes: list[int], restarts: int, cli_runs: int) -> Backlog:
    d = _daemon(ctx, "always")
    b = Backlog(jobs=max(sizes))
    try:
        for n in sorted(sizes):
            bench_journal.fill(d, n)
            with Client(d.socket) as c:
                b.status_api[n] = call_times(c.status, 50)
            b.status_cli[n] = wall_times([PHXQCTL, "status"], cli_runs, env=d.env)
        b.disk_apparent, b.disk_allocated = dir_bytes(d.root / "state")
        for _ in range(restarts):
            d.kill(signal.SIGKILL)
            b.restart.append(d.start())
            b.peak_rss_kib.append(d.peak_rss_kib())
        d.kill(signal.SIGTERM)  # a clean stop writes a snapshot of the whole state
        b.restart_clean.append(d.start())
        return b
    finally:
        d.close()
