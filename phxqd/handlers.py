"""Answers to requests: `Handlers.handle` turns each decoded request into a decision of
the state, a commit, a read, or a stream (see streams.py); also the status, queue and
status-line views of the running queue."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import anyio

from phxqd import metrics, protocol, statusfile
from phxqd.dispatcher import Dispatcher
from phxqd.events import Cleared, Paused, QueueSet, Resumed, Retried
from phxqd.joblogs import JobLogs
from phxqd.local.journal import Journal, list_segments
from phxqd.local.progress import ProgressReports
from phxqd.local.recorder import Recorder
from phxqd.local.state import QueueDefaults, Refused, State
from phxqd.model import STATUSES, Job, QueueConfig, validate_spec
from phxqd.protocol import PROTOCOL_VERSION
from phxqd.settings import Settings
from phxqd.streams import Streams


class Handlers:
    def __init__(
        self,
        state: State,
        journal: Journal,
        settings: Settings,
        recorder: Recorder,
        dispatcher: Dispatcher,
        streams: Streams,
        logs: JobLogs,
        progress: ProgressReports,
        render_metrics: Callable[[], bytes],
    ) -> None:
        self.state = state
        self.journal = journal
        self.settings = settings
        self.recorder = recorder
        #: read for its bookkeeping: jobs claimed (`active`, `busy`), and `stopping`
        self.dispatcher = dispatcher
        self.streams = streams
        self.logs = logs
        self.progress = progress
        #: the Prometheus text of the whole daemon (`metrics.render` of the owning Core)
        self._render_metrics = render_metrics
        self.started_at = time.time()

    async def handle(self, req: protocol.Request) -> Any:
        """Answer one request; Refused becomes a typed error reply."""
        now = time.time()
        state = self.state
        match req:
            case protocol.Submit(specs):
                if len(specs) > protocol.MAX_BATCH:
                    raise Refused(
                        "usage",
                        f"at most {protocol.MAX_BATCH} jobs per request "
                        f"(got {len(specs)}); the client sends larger batches in parts",
                    )
                for i, spec in enumerate(specs):
                    if why := validate_spec(spec):
                        where = f"job {i + 1}: " if len(specs) > 1 else ""
                        raise Refused("usage", where + why)
                events, results = state.submit(specs, now, self._queue_defaults())
                await self.recorder.commit(events)
                return results
            case protocol.Status():
                return self.status()
            case protocol.List(status, queue, limit):
                if status is not None and status not in STATUSES:
                    raise Refused(
                        "usage", f"unknown status {status!r}: one of " + ", ".join(STATUSES)
                    )
                return state.select(status, queue, max(limit, 0))
            case protocol.Show(job_id):
                return state.get(job_id)
            case protocol.Wait(ids, timeout, stream):
                if stream:
                    return self.streams.wait_stream(ids, timeout)
                return await self.recorder.wait(ids, timeout)
            case protocol.Logs(job_id, offset, limit, follow):
                state.get(job_id)
                if follow:
                    return self.streams.follow_log(job_id, offset, limit)
                return await self.logs.read(job_id, offset, limit)
            case protocol.Watch(ids):
                for job_id in ids or ():
                    state.get(job_id)
                return self.streams.watch(ids)
            case protocol.Cancel(ids):
                return await self.cancel(ids, now)
            case protocol.Retry(ids):
                events = state.retry(ids, now)
                await self.recorder.commit(events)
                return [state.jobs[i] for i in ids]
            case protocol.RetryFailed(queue):
                events = state.retry_failed(queue, now)
                await self.recorder.commit(events)
                return {"retried": sum(len(e.ids) for e in events if isinstance(e, Retried))}
            case protocol.Clear(status, queue):
                events = state.clear(status, queue)
                await self.recorder.commit(events)
                ids = [i for e in events if isinstance(e, Cleared) for i in e.ids]
                await anyio.to_thread.run_sync(self.logs.remove, ids)
                return {"cleared": len(ids)}
            case protocol.SetQueue(queue, concurrency):
                if concurrency is not None and concurrency < 1:
                    raise Refused("usage", "--concurrency must be 1 or more")
                await self.recorder.commit([QueueSet(queue, concurrency)])
                return self.queues()
            case protocol.Queues():
                return self.queues()
            case protocol.Metrics():
                await metrics.load_library()
                return self._render_metrics()
            case protocol.ReportProgress():
                return self.progress.report(req, now)
            case protocol.Pause(queue):
                await self.recorder.commit([Paused(queue)])
                return self.status()
            case protocol.Resume(queue):
                await self.recorder.commit([Resumed(queue)])
                return self.status()
            case protocol.Hello(proto):
                if proto != PROTOCOL_VERSION:
                    raise Refused(
                        "upgrade",
                        f"phxqd speaks protocol {PROTOCOL_VERSION}, the "
                        f"client {proto}: use the phxqctl installed with this phxqd",
                    )
                return {"proto": PROTOCOL_VERSION}
        raise Refused("usage", f"unsupported request {type(req).__name__}")

    async def cancel(self, ids: list[int], now: float) -> list[Job]:
        active = [i for i in ids if i in self.dispatcher.active]
        events, running = self.state.cancel(
            [i for i in ids if i not in self.dispatcher.active], now
        )
        await self.recorder.commit(events)
        for job_id in (*running, *active):
            self.dispatcher.active[job_id].request("cancelled")
        await self.recorder.wait(running + active, None)
        return [self.state.jobs[i] for i in ids]

    def status(self) -> dict[str, Any]:
        """Counts, running jobs, and the rates of the last minute. O(queues + running)."""
        now = time.time()
        summary = self.state.summary()
        running = [self.state.jobs[i] for i in self.dispatcher.active if i in self.state.jobs]
        running = [j for j in running if j.status == "running"]
        self._forget_old(now)
        ended = len(self.recorder.recent)
        counts = summary["counts"]
        assert isinstance(counts, dict)
        backlog = counts["pending"] + counts["retrying"] + counts["running"]
        per_second = ended / 60.0
        summary.update(
            workers=self.settings.workers,
            running_jobs=[
                {
                    "id": j.id,
                    "queue": j.queue,
                    "argv": j.argv,
                    "call": None if j.call is None else j.call.func,
                    "started_at": j.started_at,
                    "progress": j.progress,
                }
                for j in running
            ],
            throughput_per_minute=ended,
            average_seconds=sum(d for _, d in self.recorder.recent) / ended if ended else None,
            eta_seconds=backlog / per_second if per_second and backlog else None,
            fsync=self.journal.policy,
            journal={"records": self.journal.last_lsn, "fsyncs": self.journal.fsyncs},
            writable=self.journal.failed is None,
            journal_error=None if self.journal.failed is None else str(self.journal.failed),
            uptime=now - self.started_at,
        )
        return summary

    def status_export(self) -> dict[str, Any]:
        """What the status file says (config `status_file`): see phxqd/statusfile.py."""
        status = self.status()
        live = [self.state.jobs[r["id"]] for r in status["running_jobs"]]
        retrying = status["counts"]["retrying"]
        if retrying and len(live) < statusfile.MAX_JOBS:
            # O(jobs), once a second at most, and only while some job waits to retry
            live += self.state.select("retrying", None, statusfile.MAX_JOBS - len(live))
        return statusfile.content(status, live)

    def status_line(self) -> str:
        """One line for `systemctl status` (sd_notify STATUS=): counts and journal health."""
        counts = self.state.summary()["counts"]
        assert isinstance(counts, dict)
        parts = [f"{counts[s]} {s}" for s in ("pending", "running", "retrying", "failed")]
        line = ", ".join(parts) + f"; {self.settings.workers} workers"
        if self.journal.failed is not None:
            line += f"; journal FAILED, refusing changes: {self.journal.failed}"
        else:
            line += "; journal ok"
        return ("stopping: " if self.dispatcher.stopping else "") + line

    def queues(self) -> list[dict[str, Any]]:
        """Every queue that has jobs or settings: counts, limit and where it comes from."""
        summary = self.state.summary()
        counts = summary["queues"]
        assert isinstance(counts, dict)
        names = sorted({*counts, *self.state.limits, *self.settings.queues, *self.state.paused})
        out = []
        for name in names:
            runtime = self.state.limits.get(name)
            configured = self.settings.queues.get(name, QueueConfig()).concurrency
            out.append(
                {
                    "queue": name,
                    "counts": counts.get(name, dict.fromkeys(STATUSES, 0)),
                    "concurrency": runtime if runtime is not None else configured,
                    "concurrency_from": "runtime"
                    if runtime is not None
                    else "config"
                    if configured is not None
                    else None,
                    "paused": self.state.paused_all or name in self.state.paused,
                    "active": self.dispatcher.busy.get(name, 0),
                }
            )
        return out

    def journal_segments(self) -> int:
        return len(list_segments(self.settings.journal_dir))

    def _queue_defaults(self) -> dict[str, QueueDefaults]:
        return {q: QueueDefaults(c.retries, c.backoff()) for q, c in self.settings.queues.items()}

    def _forget_old(self, now: float) -> None:
        while self.recorder.recent and self.recorder.recent[0][0] < now - 60:
            self.recorder.recent.popleft()
