"""huey 2.x/3.x with SqliteHuey(fsync=True): SQLite in WAL mode, synchronous=FULL.

Every enqueue is a committed SQLite transaction, fsync'd before it returns: the promise of
phxq's fsync = "always". There is no server: producers and the consumer open the file.
"""

from __future__ import annotations

import importlib
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from importlib.metadata import version as dist_version
from pathlib import Path
from typing import Any

from bench import common
from bench.common import call_times, dir_bytes, wait_until, wall_times
from bench.peers import Backlog, Ctx, Variant
from bench.report import FSYNC

SYSTEM = "huey"
NA = {
    "restart": "no server holds the queue: each client opens the SQLite file (that cost is "
    "in the status times)",
}


def version() -> str:
    return dist_version("huey")


def missing() -> str | None:
    try:
        import huey  # noqa: F401
    except ImportError:
        return "huey is not installed (pip install huey)"
    return None


def variants() -> list[Variant]:
    return [Variant("SqliteHuey, WAL, synchronous=FULL", FSYNC)]


def _tasks(db: Path) -> Any:
    """bench.peers.huey_tasks bound to `db` (set before its first import in a process)."""
    os.environ["BENCH_HUEY_DB"] = str(db)
    sys.modules.pop("bench.peers.huey_tasks", None)  # a fresh HUEY on the new file
    return importlib.import_module("bench.peers.huey_tasks")


def enqueue(ctx: Ctx, v: Variant, n: int, producers: int) -> float:
    db = ctx.tmpdir("huey") / "huey.db"
    tasks = _tasks(db)
    tasks.HUEY.storage.flush_queue()  # creates the schema before the clock starts
    tasks.HUEY.storage.close()  # no SQLite connection may cross a fork

    def submitter() -> Callable[[], object]:
        tasks.HUEY.pending_count()  # opens this process's own connection
        return tasks.noop

    return common.producers(submitter, producers, n // producers, warmup=common.WARMUP)


def throughput(ctx: Ctx, kind: str, n: int) -> float:
    """Enqueued first, then `huey_consumer -w 2 -k process`; clocked from the first
    result to the last (so the consumer's start-up is not counted)."""
    db = ctx.tmpdir("huey") / "huey.db"
    t = _tasks(db)
    task = t.run_true if kind == "true" else t.noop
    for _ in range(n):
        task()
    consumer = str(Path(sys.executable).parent / "huey_consumer")
    proc = subprocess.Popen(
        [consumer, "bench.peers.huey_tasks.HUEY", "-w", "2", "-k", "process", "-q"],
        env={**os.environ, "BENCH_HUEY_DB": str(db)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        t0 = wait_until(lambda: t.HUEY.result_count() >= 1, 60, "huey's first result")
        t1 = wait_until(lambda: t.HUEY.result_count() >= n, 600, "huey's last result")
        return (n - 1) / (t1 - t0)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def shell_submit(ctx: Ctx, runs: int) -> list[float]:
    """huey has no enqueue command: `python -c` importing the task module and calling it."""
    db = ctx.tmpdir("huey") / "huey.db"
    _tasks(db).HUEY.storage.flush_queue()
    code = "from bench.peers.huey_tasks import noop; noop()"
    env = {**os.environ, "BENCH_HUEY_DB": str(db)}
    return wall_times([sys.executable, "-c", code], runs, env=env)


SHELL = 'python -c "from tasks import noop; noop()"'


def fill(tasks: Any, n: int) -> None:
    """Copies of one real enqueued message, inserted in one transaction (the fill is not
    measured; the rows are what huey itself writes)."""
    huey = tasks.HUEY
    storage = huey.storage
    have = storage.queue_size()
    if have == 0:
        tasks.noop()
        have = 1
    data = storage.conn.execute("select data from task limit 1").fetchone()[0]
    with storage.db(commit=True) as cur:
        cur.executemany(
            "insert into task (queue, data, priority) values (?, ?, 0)",
            ((huey.name, data) for _ in range(n - have)),
        )


def backlog(ctx: Ctx, sizes: list[int], restarts: int, cli_runs: int) -> Backlog:
    db = ctx.tmpdir("huey") / "huey.db"
    t = _tasks(db)
    b = Backlog(jobs=max(sizes), na=dict(NA))
    env = {**os.environ, "BENCH_HUEY_DB": str(db)}
    code = "from bench.peers.huey_tasks import HUEY; print(HUEY.pending_count())"
    for n in sorted(sizes):
        fill(t, n)
        assert t.HUEY.pending_count() == n
        b.status_api[n] = call_times(t.HUEY.pending_count, 20)
        b.status_cli[n] = wall_times([sys.executable, "-c", code], cli_runs, env=env)
    t.HUEY.storage.close()
    b.disk_apparent, b.disk_allocated = dir_bytes(db.parent)
    return b
