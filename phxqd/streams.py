"""The requests answered by a stream of frames: `watch`, a streaming `wait`, and
`logs --follow`. Each returns an async generator of frames; the server sends them as they
come."""

from __future__ import annotations

import math
import time
from collections.abc import AsyncGenerator

import anyio

from phxqd import protocol
from phxqd.backend import Backend
from phxqd.feed import job_event
from phxqd.joblogs import JobLogs
from phxqd.model import Job

#: seconds between looks at a followed log (`logs --follow`) while its job runs
LOG_POLL = 0.1


class Streams:
    def __init__(self, backend: Backend, logs: JobLogs) -> None:
        self.backend = backend
        self.feed = backend.feed
        self.logs = logs

    async def watch(self, ids: list[int] | None) -> AsyncGenerator[protocol.JobEvent]:
        """Job events as they happen (of `ids`, or of every job) until the client leaves."""
        with self.feed.listen(frozenset(ids) if ids is not None else None) as listener:
            while True:
                for event in await listener.take():
                    yield event

    async def wait_stream(
        self, ids: list[int], timeout: float | None
    ) -> AsyncGenerator[protocol.JobEvent | protocol.Ok[list[Job]]]:
        """`wait` that tells as it goes: a `state` frame per job, then their events."""
        jobs = [await self.backend.get(i) for i in ids]
        deadline = anyio.current_time() + (timeout if timeout is not None else math.inf)
        with self.feed.listen(frozenset(ids)) as listener:
            for job in jobs:
                yield job_event("state", job, time.time())
            while not await self._all_finished(ids):
                taken: list[protocol.JobEvent] = []
                with anyio.move_on_after(deadline - anyio.current_time()):
                    taken = await listener.take()
                if not taken:
                    break  # the timeout
                for event in taken:
                    yield event
        # Finished in memory; the reply waits, like `wait`, until that is durable.
        remaining = max(deadline - anyio.current_time(), 0.0)
        yield protocol.Ok(
            await self.backend.wait(ids, None if math.isinf(remaining) else remaining)
        )

    async def _all_finished(self, ids: list[int]) -> bool:
        """Whether every job of `ids` that is still known has finished."""
        for job_id in ids:
            job = await self.backend.find(job_id)
            if job is not None and not job.finished:
                return False
        return True

    async def follow_log(
        self, job_id: int, offset: int, limit: int
    ) -> AsyncGenerator[protocol.Chunk | protocol.Ok[protocol.LogPart]]:
        """The log as it grows, until the job has finished and the log is read to its end.

        Jobs write their logs themselves (no pipe through phxqd), so growth is not an event:
        the file is looked at every LOG_POLL seconds while someone follows it, and at once
        when the job ends.
        """
        while True:
            part = await self.logs.read(job_id, offset, limit)
            if part.data:
                offset = part.offset
                yield protocol.Chunk(part.data, offset)
                continue
            if part.finished:
                yield protocol.Ok(protocol.LogPart(b"", offset, True))
                return
            ended = self.backend.ended(job_id)
            with anyio.move_on_after(LOG_POLL):
                await ended.wait()
