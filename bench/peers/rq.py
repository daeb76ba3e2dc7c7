"""RQ on the bench's own Redis, with `appendfsync always` and with `everysec`.

An enqueue is one MULTI/EXEC pipeline (the job hash, the queue list); with `appendfsync
always` Redis fsyncs its AOF before replying, so a returned enqueue is on disk (Redis, like
phxq, shares one fsync among the clients served in the same event-loop turn). `everysec`
fsyncs once a second: a power cut loses up to about a second, like phxq's `batch` (50 ms).
Workers are RQ's default Worker class, which forks a work horse per job.
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Callable
from functools import partial
from importlib.metadata import version as dist_version
from pathlib import Path
from typing import Any

from bench import common
from bench.common import call_times, wait_until, wall_times
from bench.peers import Backlog, Ctx, Variant
from bench.redis_server import RedisServer, pipe, resp
from bench.report import FSYNC, INTERVAL

SYSTEM = "RQ"
NA: dict[str, str] = {}
BIN = Path(sys.executable).parent
SHELL = "rq enqueue tasks.noop"


def version() -> str:
    return dist_version("rq")


def missing() -> str | None:
    try:
        import redis  # noqa: F401
        import rq  # noqa: F401
    except ImportError:
        return "rq/redis not installed (pip install rq redis)"
    return None


def variants() -> list[Variant]:
    return [
        Variant("Redis AOF, appendfsync always", FSYNC, "always"),
        Variant("Redis AOF, appendfsync everysec", INTERVAL, "everysec"),
    ]


def _redis(ctx: Ctx, appendfsync: str = "always") -> RedisServer:
    assert ctx.redis is not None
    ctx.redis.reset()
    ctx.redis.set_appendfsync(appendfsync)
    return ctx.redis


def _queue(url: str) -> Any:
    from redis import Redis
    from rq import Queue

    import bench.peers.rq_tasks  # noqa: F401  imported before producers fork

    return Queue(connection=Redis.from_url(url))


def _submitter(url: str) -> Callable[[], object]:
    from bench.peers.rq_tasks import noop

    q = _queue(url)
    q.connection.ping()
    return lambda: q.enqueue(noop)


def enqueue(ctx: Ctx, v: Variant, n: int, producers: int) -> float:
    server = _redis(ctx, v.option)
    per = n // producers
    rate = common.producers(lambda: _submitter(server.url), producers, per)
    assert _queue(server.url).count == per * producers
    return rate


def throughput(ctx: Ctx, kind: str, n: int) -> float:
    """Enqueued first, then 2 `rq worker --burst` processes; clocked from the first job
    in the finished registry to the last (the workers' start-up is not counted)."""
    from bench.peers import rq_tasks

    server = _redis(ctx)
    q = _queue(server.url)
    fn = rq_tasks.run_true if kind == "true" else rq_tasks.noop
    with q.connection.pipeline() as p:
        for _ in range(n):
            q.enqueue(fn, pipeline=p)
        p.execute()
    workers = [
        subprocess.Popen(
            [str(BIN / "rq"), "worker", "--burst", "--quiet", "--url", server.url],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(2)
    ]
    done = q.finished_job_registry
    try:
        t0 = wait_until(lambda: done.count >= 1, 60, "RQ's first finished job")
        t1 = wait_until(lambda: done.count >= n, 900, "RQ's last finished job")
        return (n - 1) / (t1 - t0)
    finally:
        for w in workers:
            w.terminate()
        for w in workers:
            w.wait()


def shell_submit(ctx: Ctx, runs: int) -> list[float]:
    """`rq enqueue` (RQ's own command) of the no-op function."""
    server = _redis(ctx)
    argv = [str(BIN / "rq"), "enqueue", "--quiet", "--url", server.url, "bench.peers.rq_tasks.noop"]
    return wall_times(argv, runs, cwd=Path.cwd())


def fill(server: RedisServer, n: int) -> None:
    """Copies of one real enqueued job (its hash, under fresh ids) and the queue list."""
    from bench.peers.rq_tasks import noop

    q = _queue(server.url)
    have = q.count
    if have == 0:
        q.enqueue(noop)
        have = 1
    r = q.connection
    job_id = r.lindex(q.key, 0).decode()
    fields = r.hgetall(f"rq:job:{job_id}")
    flat = [x for kv in fields.items() for x in kv]
    qkey = q.key.encode()

    def commands() -> Any:
        for _ in range(n - have):
            jid = uuid.uuid4().hex.encode()
            yield resp(b"HSET", b"rq:job:" + jid, *flat)
            yield resp(b"RPUSH", qkey, jid)

    pipe(server, commands())


def backlog(ctx: Ctx, sizes: list[int], restarts: int, cli_runs: int) -> Backlog:
    server = _redis(ctx)
    b = Backlog(jobs=max(sizes))
    info = [str(BIN / "rq"), "info", "--url", server.url, "--only-queues"]
    for n in sorted(sizes):
        fill(server, n)
        q = _queue(server.url)
        assert q.count == n, (q.count, n)
        b.status_api[n] = call_times(partial(getattr, q, "count"), 50)
        b.status_cli[n] = wall_times(info, cli_runs)
    b.disk_apparent, b.disk_allocated = server.disk_bytes()
    for _ in range(restarts):
        server.kill()
        b.restart.append(server.start())
        b.peak_rss_kib.append(server.peak_rss_kib())
    server.stop_clean()
    b.restart_clean.append(server.start())
    assert _queue(server.url).count == max(sizes)
    return b
