"""Job logs on disk: where a job's log is, reading a part of it, removing it.

Jobs write their logs themselves (see run/command.py and run/lanes.py); phxqd only reads
them for `logs`, and removes them with the jobs they belong to.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

import anyio

from phxqd import protocol
from phxqd.model import Job
from phxqd.settings import Settings


class JobLogs:
    def __init__(self, find: Callable[[int], Awaitable[Job | None]], settings: Settings) -> None:
        #: the job of an id, if it is known (to tell whether it has finished)
        self._find = find
        self.settings = settings

    def path(self, job_id: int) -> Path:
        return self.settings.logs_dir / f"{job_id}.log"

    async def read(self, job_id: int, offset: int, limit: int) -> protocol.LogPart:
        """Up to `limit` bytes of the log from `offset` (a frame's worth at most), where
        the next read starts, and whether the job had finished before this one."""
        path = self.path(job_id)
        # Looked at before reading: a job that ends during the read still gets one more call.
        job = await self._find(job_id)
        finished = job is None or job.finished  # (None: cleared while someone followed)

        def read() -> tuple[bytes, int]:
            try:
                with open(path, "rb") as f:
                    f.seek(max(offset, 0))
                    return f.read(max(0, min(limit, protocol.MAX_FRAME // 2))), f.tell()
            except FileNotFoundError:
                return b"", offset

        data, end = await anyio.to_thread.run_sync(read)
        return protocol.LogPart(data, end, finished)

    def remove(self, ids: list[int]) -> None:
        for job_id in ids:
            self.path(job_id).unlink(missing_ok=True)
