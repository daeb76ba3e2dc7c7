"""The status file: the queue's counts and live jobs' progress as JSON, for other programs.

Dashboards, shell prompts and cron scripts read it whenever they like, so it is replaced
whole (written beside, then renamed over: a reader sees the old file or the new one, never
half of one), at most once a second, and only when its content changed. It is not fsync'd:
it is a view, rebuilt from the journal at the next start, and an fsync a second on the
journal's disk would cost the queue more than a stale view after a power cut costs anyone.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import msgspec

from phxqd.feed import Feed
from phxqd.model import Job
from phxqd.replies import StatusReply

log = logging.getLogger("phxqd.status_file")

#: at most one rewrite per this many seconds
INTERVAL = 1.0
#: look again this often even without job events (pauses, clears, the rates of the minute)
IDLE_LOOK = 5.0
#: the file lists at most this many live jobs (running first, then retrying)
MAX_JOBS = 1000
#: the version of the file's keys: raised when one changes meaning or goes away (a reader
#: that knows version N reads N's keys; keys are only ever added within a version)
SCHEMA = 1


def live_job(job: Job) -> dict[str, Any]:
    """A live job's line: who it is and how far it got."""
    p = job.progress
    fraction = p.fraction() if p is not None else None
    return {
        "id": job.id,
        "key": job.key,
        "label": job.label,
        "queue": job.queue,
        "status": job.status,
        "attempt": job.attempts,
        "percent": None if fraction is None else round(fraction * 100, 2),
        "step": p.step if p else None,
        "done": p.done if p else None,
        "total": p.total if p else None,
        "started_at": job.started_at,
        "updated_at": p.updated_at if p else job.started_at,
        "run_at": job.run_at if job.status == "retrying" else None,
    }


def content(status: StatusReply, live: list[Job]) -> dict[str, Any]:
    """What the file says, from the `status` view and the live jobs (no time stamp: two
    contents compare equal when nothing changed)."""
    return {
        "counts": status.counts,
        "queues": status.queues,
        "total": status.total,
        "paused": status.paused,
        "paused_all": status.paused_all,
        "throughput_per_minute": status.throughput_per_minute,
        "average_seconds": status.average_seconds,
        "eta_seconds": status.eta_seconds,
        "writable": status.writable,
        "jobs": [live_job(j) for j in live[:MAX_JOBS]],
    }


def write_atomically(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)  # a view for other programs (umask permitting at creation)
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise


def encode(now: dict[str, Any]) -> bytes:
    return msgspec.json.encode(
        {"schema": SCHEMA, "updated_at": time.time(), "pid": os.getpid(), **now}
    )


async def write_now(path: Path, look: Callable[[], Awaitable[dict[str, Any]]]) -> None:
    try:
        await anyio.to_thread.run_sync(write_atomically, path, encode(await look()))
    except OSError as e:
        log.warning("cannot write the status file %s: %s", path, e)


async def keep(
    path: Path,
    feed: Feed,
    look: Callable[[], Awaitable[dict[str, Any]]],
) -> None:
    """Rewrite `path` with `look()` whenever it changed, at most once per INTERVAL."""
    last: dict[str, Any] | None = None
    last_write = 0.0
    warned = False
    with feed.listen() as listener:
        while True:
            now = await look()
            if now != last:
                try:
                    await anyio.to_thread.run_sync(write_atomically, path, encode(now))
                    last, warned = now, False
                except OSError as e:
                    if not warned:  # once per failure spell, not once a second
                        log.warning("cannot write the status file %s: %s", path, e)
                        warned = True
                last_write = time.monotonic()
            with anyio.move_on_after(IDLE_LOOK):
                await listener.take()
            await anyio.sleep(max(0.0, last_write + INTERVAL - time.monotonic()))
            listener.discard()  # what came meanwhile is in the next look already
