"""What the running queue looks like from outside: `status`, `queue list`, the line systemd
shows, and the status file's content. One place, read by the handlers, metrics, the
status file and systemd's STATUS=; each view asks the backend and the dispatcher through
their methods and builds its answer, so none of them needs the others.
"""

from __future__ import annotations

import time
from typing import Any

from phxqd import statusfile
from phxqd.backend import Backend
from phxqd.dispatcher import Dispatcher
from phxqd.model import STATUSES, QueueConfig
from phxqd.replies import JournalInfo, QueueInfo, RunningJob, ScheduleInfo, StatusReply
from phxqd.schedules_runner import Scheduler
from phxqd.settings import Settings


class Views:
    def __init__(
        self,
        backend: Backend,
        dispatcher: Dispatcher,
        settings: Settings,
        scheduler: Scheduler | None = None,
    ) -> None:
        self.backend = backend
        self.dispatcher = dispatcher
        self.settings = settings
        self.scheduler = scheduler
        self.started_at = time.time()

    async def status(self) -> StatusReply:
        """Counts, running jobs, and the rates of the last minute. O(queues + running)."""
        now = time.time()
        summary = await self.backend.summary()
        running = [await self.backend.find(i) for i in self.dispatcher.running()]
        live = [j for j in running if j is not None and j.status == "running"]
        ended, ran = self.backend.stats.last_minute(now)
        counts = summary.counts
        backlog = counts["pending"] + counts["retrying"] + counts["running"]
        per_second = ended / 60.0
        health = self.backend.health()
        return StatusReply(
            counts=counts,
            queues=summary.queues,
            total=summary.total,
            paused=summary.paused,
            paused_all=summary.paused_all,
            workers=self.settings.workers,
            running_jobs=[
                RunningJob(
                    id=j.id,
                    queue=j.queue,
                    argv=j.argv,
                    call=None if j.call is None else j.call.func,
                    started_at=j.started_at,
                    progress=j.progress,
                )
                for j in live
            ],
            throughput_per_minute=ended,
            average_seconds=ran / ended if ended else None,
            eta_seconds=backlog / per_second if per_second and backlog else None,
            fsync=health.durability,
            journal=JournalInfo(records=health.records, fsyncs=health.fsyncs),
            writable=health.writable,
            journal_error=health.error,
            uptime=now - self.started_at,
            schedules=len(await self.backend.schedules()),
            next_fires=self.scheduler.next_fires() if self.scheduler is not None else [],
            next_start=summary.next_start,
        )

    async def schedules(self) -> list[ScheduleInfo]:
        """Every schedule with its next fire times, by name (list, metrics)."""
        if self.scheduler is None:
            return []
        now = time.time()
        found = sorted(await self.backend.schedules(), key=lambda s: s.spec.name)
        return [await self.scheduler.info(s, now) for s in found]

    async def status_export(self) -> dict[str, Any]:
        """What the status file says (config `status_file`): see phxqd/statusfile.py."""
        status = await self.status()
        live = [j for r in status.running_jobs if (j := await self.backend.find(r.id))]
        retrying = status.counts["retrying"]
        if retrying and len(live) < statusfile.MAX_JOBS:
            # O(jobs), once a second at most, and only while some job waits to retry
            live += await self.backend.select("retrying", None, statusfile.MAX_JOBS - len(live))
        return statusfile.content(status, live)

    async def status_line(self) -> str:
        """One line for `systemctl status` (sd_notify STATUS=): counts and journal health."""
        counts = (await self.backend.summary()).counts
        parts = [f"{counts[s]} {s}" for s in ("pending", "running", "retrying", "failed")]
        line = ", ".join(parts) + f"; {self.settings.workers} workers"
        health = self.backend.health()
        if not health.writable:
            line += f"; journal FAILED, refusing changes: {health.error}"
        else:
            line += "; journal ok"
        return ("stopping: " if self.dispatcher.stopping else "") + line

    async def queues(self) -> list[QueueInfo]:
        """Every queue that has jobs or settings: counts, limit and where it comes from."""
        summary = await self.backend.summary()
        counts = summary.queues
        names = sorted(
            {*counts, *summary.limits, *self.settings.queues, *summary.paused, *summary.rates}
        )
        out = []
        for name in names:
            runtime = summary.limits.get(name)
            configured = self.settings.queues.get(name, QueueConfig()).concurrency
            rate = summary.rates.get(name)
            out.append(
                QueueInfo(
                    queue=name,
                    counts=counts.get(name, dict.fromkeys(STATUSES, 0)),
                    concurrency=runtime if runtime is not None else configured,
                    concurrency_from="runtime"
                    if runtime is not None
                    else "config"
                    if configured is not None
                    else None,
                    paused=summary.paused_all or name in summary.paused,
                    active=summary.busy.get(name, 0),
                    rate=rate[0] if rate else None,
                    burst=rate[1] if rate else None,
                    rate_from=None
                    if rate is None
                    else "runtime"
                    if name in summary.rates_set
                    else "config",
                    next_start=summary.next_start.get(name),
                )
            )
        return out
