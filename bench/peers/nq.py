"""nq: no server; each job is a process that waits (flock) for every earlier job in
$NQDIR, and writes one file there (its header, then its output). The file is not fsync'd,
and a queued job is a waiting process, so a reboot or a kill loses the queue.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from bench.common import dir_bytes, wall_times
from bench.peers import Backlog, Ctx, NotApplicable, Variant
from bench.report import NONE

SYSTEM = "nq"
PROCS = "each queued job is a waiting process"
NA = {
    "enqueue": "no durable store (a file per job, never fsync'd) and " + PROCS + ": "
    "20,000 queued jobs would be 20,000 processes",
    "throughput": "no pool: nq runs one job at a time, in order",
    "status": PROCS + ": 100,000 queued jobs would be 100,000 processes",
    "restart": PROCS + ": the queue does not survive a reboot or a kill",
}
SHELL = "nq true"
DISK_JOBS = 200


def version() -> str:
    out = subprocess.run(["dpkg-query", "-W", "-f=${Version}", "nq"], capture_output=True)
    return out.stdout.decode().strip() or "?"


def missing() -> str | None:
    return None if shutil.which("nq") else "nq is not installed (apt-get install nq)"


def variants() -> list[Variant]:
    return [Variant("a file per job, no fsync", NONE)]


def _env(d: Path) -> dict[str, str]:
    return {**os.environ, "NQDIR": str(d)}


def _wait_all(d: Path) -> None:
    subprocess.run(["nq", "-w"], env=_env(d), cwd=d, check=True, capture_output=True)


def enqueue(ctx: Ctx, v: Variant, n: int, producers: int) -> float:
    raise NotApplicable(NA["enqueue"])


def throughput(ctx: Ctx, kind: str, n: int) -> float:
    raise NotApplicable(NA["throughput"])


def shell_submit(ctx: Ctx, runs: int) -> list[float]:
    d = ctx.tmpdir("nq")
    try:
        return wall_times(["nq", "true"], runs, env=_env(d), cwd=d)
    finally:
        _wait_all(d)


def backlog(ctx: Ctx, sizes: list[int], restarts: int, cli_runs: int) -> Backlog:
    """Disk only: DISK_JOBS `nq true` queued behind a blocker, then released."""
    d = ctx.tmpdir("nq")
    env = _env(d)
    go = d.parent / f"{d.name}.go"
    wait = f"while [ ! -e {go} ]; do sleep 0.01; done"
    try:
        subprocess.run(["nq", "sh", "-c", wait], env=env, cwd=d, check=True, capture_output=True)
        before = dir_bytes(d)
        for _ in range(DISK_JOBS):
            subprocess.run(["nq", "true"], env=env, cwd=d, check=True, capture_output=True)
        after = dir_bytes(d)
    finally:
        go.touch()
        _wait_all(d)
    b = Backlog(jobs=DISK_JOBS, na=dict(NA))
    b.disk_apparent, b.disk_allocated = after[0] - before[0], after[1] - before[1]
    return b
