"""task-spooler (Debian's `tsp`, upstream `ts`): a server holding the queue in memory.

Each queued job is a waiting client process connected to the server; nothing is written
per job until it runs (then an output file, unless -n). TS_SAVELIST writes the list out
only when the server dies: no durability. Run with a private TS_SOCKET and TMPDIR.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

from bench.common import wall_times
from bench.peers import Backlog, Ctx, NotApplicable, Variant
from bench.report import NONE

SYSTEM = "tsp"
NO_STORE = "no durable store: the queue lives in the server's memory"
NA = {
    "enqueue": NO_STORE,
    "status": "each queued job is a waiting client process holding a connection: the server "
    "takes about 1,000 (TS_MAXCONN), then submits wait",
    "restart": NO_STORE + " and is gone with it",
    "disk": "nothing is written per queued job: " + NO_STORE,
}
SHELL = "tsp true"
#: a queued job holds one of the server's connections (TS_MAXCONN, ~1000 here): a submit
#: beyond that waits for a free one, so the throughput run queues fewer
MAX_QUEUED = 900


def exe() -> str | None:
    return shutil.which("tsp") or shutil.which("ts")


def version() -> str:
    out = subprocess.run([exe() or "tsp", "-V"], capture_output=True, text=True)
    return (out.stdout or out.stderr).split(" - ")[0].replace("Task Spooler ", "").strip()


def missing() -> str | None:
    return None if exe() else "task-spooler is not installed (apt-get install task-spooler)"


def variants() -> list[Variant]:
    return [Variant("in memory, no fsync", NONE)]


class Server:
    """A private tsp server (started by the first command, stopped with -K)."""

    def __init__(self, root: Path, slots: int = 2) -> None:
        self.root = root
        self.env = {**os.environ, "TS_SOCKET": str(root / "ts.sock"), "TMPDIR": str(root),
                    "TS_SLOTS": str(slots)}  # fmt: skip

    def run(self, *args: str) -> str:
        """One tsp command; a timeout, not a hang, if the server's queue is full."""
        out = subprocess.run([exe() or "tsp", *args], env=self.env, cwd=self.root, timeout=120,
                             check=True, capture_output=True, text=True)  # fmt: skip
        return out.stdout.strip()

    def close(self) -> None:
        subprocess.run([exe() or "tsp", "-K"], env=self.env, capture_output=True)


def enqueue(ctx: Ctx, v: Variant, n: int, producers: int) -> float:
    raise NotApplicable(NA["enqueue"])


def throughput(ctx: Ctx, kind: str, n: int) -> float:
    """Two slots; two blocker jobs hold them while n `tsp -n true` are queued, then are
    released: clocked from the release to the last job finished."""
    if kind != "true":
        raise NotApplicable("runs commands only")
    n = min(n, MAX_QUEUED)
    s = Server(ctx.tmpdir("tsp"))
    go = s.root / "GO"
    try:
        for _ in range(2):
            s.run("-n", "sh", "-c", f"while [ ! -e {go} ]; do sleep 0.005; done")
        for _ in range(n):
            s.run("-n", "true")  # -n prints no id: ids are 0, 1 (blockers), 2...
        t0 = time.perf_counter()
        go.touch()
        for job in (n, n + 1):
            s.run("-w", str(job))
        return n / (time.perf_counter() - t0)
    finally:
        go.touch()
        s.close()


def shell_submit(ctx: Ctx, runs: int) -> list[float]:
    s = Server(ctx.tmpdir("tsp"))
    try:
        s.run("true")  # starts the server
        times = wall_times([exe() or "tsp", "true"], runs, env=s.env, cwd=s.root)
        s.run("-w")
        return times
    finally:
        s.close()


def backlog(ctx: Ctx, sizes: list[int], restarts: int, cli_runs: int) -> Backlog:
    raise NotApplicable(NA["status"])
