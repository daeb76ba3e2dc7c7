"""Celery on the bench's own Redis (`appendfsync always`), prefork pool of 2, acks_late.

An enqueue (`task.delay()`) is one LPUSH of the message; with `appendfsync always` Redis
fsyncs it before replying.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable
from importlib.metadata import version as dist_version
from pathlib import Path
from typing import Any

from bench import common
from bench.common import call_times, wait_until, wall_times
from bench.peers import Backlog, Ctx, Variant
from bench.redis_server import RedisServer, pipe, resp
from bench.report import FSYNC

SYSTEM = "Celery"
NA = {
    "status command": "Celery has no command that counts a queue (`celery inspect` asks "
    "running workers)",
}
BIN = Path(sys.executable).parent
SHELL = "celery -A tasks call noop"
QUEUE = "celery"


def version() -> str:
    return dist_version("celery")


def missing() -> str | None:
    try:
        import celery  # noqa: F401
        import redis  # noqa: F401
    except ImportError:
        return "celery/redis not installed (pip install 'celery[redis]')"
    return None


def variants() -> list[Variant]:
    return [Variant("Redis AOF, appendfsync always", FSYNC, "always")]


def _server(ctx: Ctx, appendfsync: str = "always") -> RedisServer:
    assert ctx.redis is not None
    ctx.redis.reset()
    ctx.redis.set_appendfsync(appendfsync)
    return ctx.redis


def _tasks(url: str) -> Any:
    """bench.peers.celery_tasks bound to `url` (set before its first import)."""
    os.environ["BENCH_REDIS_URL"] = url
    from bench.peers import celery_tasks

    if url != celery_tasks.URL:
        raise RuntimeError("celery_tasks was imported with another Redis")
    return celery_tasks


def _env(server: RedisServer) -> dict[str, str]:
    return {**os.environ, "BENCH_REDIS_URL": server.url}


def enqueue(ctx: Ctx, v: Variant, n: int, producers: int) -> float:
    server = _server(ctx, v.option)
    tasks = _tasks(server.url)

    def submitter() -> Callable[[], object]:
        tasks.noop.delay()  # connects (one extra job, not timed)
        return tasks.noop.delay

    return common.producers(submitter, producers, n // producers)


def throughput(ctx: Ctx, kind: str, n: int) -> float:
    """Enqueued first, then `celery worker --pool prefork --concurrency 2`; clocked from
    the first task done to the last (the worker's start-up is not counted)."""
    server = _server(ctx)
    tasks = _tasks(server.url)
    task = tasks.run_true if kind == "true" else tasks.noop
    for _ in range(n):
        task.delay()
    r = server.client()
    worker = subprocess.Popen(
        [str(BIN / "celery"), "-A", "bench.peers.celery_tasks", "worker", "--pool", "prefork",
         "--concurrency", "2", "--without-gossip", "--without-mingle", "--without-heartbeat",
         "--loglevel", "WARNING"],
        env=_env(server),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip

    def done() -> int:
        return int(r.get("bench:done") or 0)

    try:
        t0 = wait_until(lambda: done() >= 1, 60, "Celery's first task")
        t1 = wait_until(lambda: done() >= n, 900, "Celery's last task")
        return (n - 1) / (t1 - t0)
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(30)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()


def shell_submit(ctx: Ctx, runs: int) -> list[float]:
    """`celery call` (Celery's own command) of the no-op task."""
    server = _server(ctx)
    argv = [str(BIN / "celery"), "-A", "bench.peers.celery_tasks", "call", "noop"]
    return wall_times(argv, runs, env=_env(server))


def fill(server: RedisServer, n: int) -> None:
    """Copies of one real message pushed onto the queue's list."""
    tasks = _tasks(server.url)
    r = server.client()
    have = r.llen(QUEUE)
    if have == 0:
        tasks.noop.delay()
        have = 1
    message = r.lindex(QUEUE, 0)
    key = QUEUE.encode()
    pipe(server, (resp(b"LPUSH", key, message) for _ in range(n - have)))


def backlog(ctx: Ctx, sizes: list[int], restarts: int, cli_runs: int) -> Backlog:
    server = _server(ctx)
    b = Backlog(jobs=max(sizes), na=dict(NA))
    r = server.client()
    for n in sorted(sizes):
        fill(server, n)
        assert r.llen(QUEUE) == n
        b.status_api[n] = call_times(lambda: r.llen(QUEUE), 50)
    b.disk_apparent, b.disk_allocated = server.disk_bytes()
    for _ in range(restarts):
        server.kill()
        b.restart.append(server.start())
        b.peak_rss_kib.append(server.peak_rss_kib())
    server.stop_clean()
    b.restart_clean.append(server.start())
    return b
