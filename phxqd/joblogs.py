"""Job logs on disk: where a job's log is, reading a part of it, removing it.

Jobs write their logs themselves (see run/command.py and run/lanes.py); phxqd only reads
them for `logs`, and the backends remove them with the jobs they forget (`forget`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

import anyio

from phxqd import protocol
from phxqd.model import Job
from phxqd.settings import Settings


def log_path(logs_dir: Path, job_id: int) -> Path:
    return logs_dir / f"{job_id}.log"


async def forget(logs_dir: Path, ids: list[int]) -> None:
    """Remove the logs of jobs just forgotten (cleared, past retention), in a thread (a
    clear may forget many) and shielded: once the jobs are forgotten nothing else would
    ever remove their logs, so a cancel (a stop, a client gone) must not land between."""

    def remove() -> None:
        for job_id in ids:
            log_path(logs_dir, job_id).unlink(missing_ok=True)

    if ids:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(remove)


class JobLogs:
    def __init__(
        self,
        find: Callable[[int], Awaitable[Job | None]],
        settings: Settings,
        elsewhere: Callable[[int], Awaitable[tuple[str, bytes] | None]] | None = None,
    ) -> None:
        #: the job of an id, if it is known (to tell whether it has finished)
        self._find = find
        self.settings = settings
        #: the host that has a log not kept here, and its tail (a shared store)
        self._elsewhere = elsewhere

    def path(self, job_id: int) -> Path:
        return log_path(self.settings.logs_dir, job_id)

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
        if not data and end == offset and self._elsewhere is not None and not path.exists():
            # Run on another host (a shared store): the tail kept with its outcome, with
            # the name of the host that has the whole log.
            remote = await self._elsewhere(job_id)
            if remote is not None:
                host, tail = remote
                whole = (
                    f"[phxq: job {job_id} ran on {host}, which has its whole log; "
                    f"its last {len(tail)} bytes follow]\n"
                ).encode() + tail
                data = whole[max(offset, 0) : max(offset, 0) + max(0, limit)]
                end = max(offset, 0) + len(data)
        return protocol.LogPart(data, end, finished)
