"""Answers to requests: `Handlers.handle` turns each decoded request into a call of the
backend, a view (views.py), or a stream (streams.py). Checks of the request itself (sizes,
ranges, names) are made here, before the backend sees it."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

from phxqd import metrics, protocol
from phxqd.backend import Backend, SubmitsThen
from phxqd.dispatcher import Dispatcher
from phxqd.joblogs import JobLogs
from phxqd.model import STATUSES, Job, JobSpec, Progress, SubmitResult, validate_spec
from phxqd.protocol import PROTOCOL_VERSION, Refused
from phxqd.rates import MAX_BURST, MAX_PER_SECOND
from phxqd.schedules_runner import Scheduler
from phxqd.streams import Streams
from phxqd.views import Views


def check_specs(specs: list[JobSpec]) -> None:
    """Refused unless a submit's specs may be queued (its size, each spec's fields)."""
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


class Handlers:
    def __init__(
        self,
        backend: Backend,
        dispatcher: Dispatcher,
        streams: Streams,
        logs: JobLogs,
        views: Views,
        render_metrics: Callable[[], Awaitable[bytes]],
        scheduler: Scheduler | None = None,
    ) -> None:
        self.backend = backend
        #: asked to stop the jobs it runs (cancel)
        self.dispatcher = dispatcher
        self.streams = streams
        self.logs = logs
        self.views = views
        #: the Prometheus text of the whole daemon
        self._render_metrics = render_metrics
        #: the schedules' runner (schedule requests go through it: it must hear of changes)
        self.scheduler = scheduler or Scheduler(backend)
        #: the backend's submit without an awaiting task, if it has one (`handle_then`)
        self._submit_then = backend.submit_then if isinstance(backend, SubmitsThen) else None

    async def handle(self, req: protocol.Request) -> Any:
        """Answer one request; Refused becomes a typed error reply."""
        now = time.time()
        backend = self.backend
        match req:
            case protocol.Submit(specs):
                check_specs(specs)
                return await backend.submit(specs, now)
            case protocol.Status():
                return await self.views.status()
            case protocol.List(status, queue, limit):
                if status is not None and status not in STATUSES:
                    raise Refused(
                        "usage", f"unknown status {status!r}: one of " + ", ".join(STATUSES)
                    )
                return await backend.select(status, queue, max(limit, 0))
            case protocol.Show(job_id):
                return await backend.get(job_id)
            case protocol.Wait(ids, timeout, stream):
                if stream:
                    return self.streams.wait_stream(ids, timeout)
                return await backend.wait(ids, timeout)
            case protocol.Logs(job_id, offset, limit, follow):
                await backend.get(job_id)
                if follow:
                    return self.streams.follow_log(job_id, offset, limit)
                return await self.logs.read(job_id, offset, limit)
            case protocol.Watch(ids):
                for job_id in ids or ():
                    await backend.get(job_id)
                return self.streams.watch(ids)
            case protocol.Cancel(ids):
                return await self.cancel(ids, now)
            case protocol.Retry(ids):
                return await backend.retry(ids, now)
            case protocol.RetryFailed(queue):
                return protocol.RetriedCount(await backend.retry_failed(queue, now))
            case protocol.Clear(status, queue):
                return protocol.ClearedCount(len(await backend.clear(status, queue)))
            case protocol.SetQueue(queue, concurrency):
                if concurrency is not None and concurrency < 1:
                    raise Refused("usage", "--concurrency must be 1 or more")
                await backend.set_limit(queue, concurrency)
                return await self.views.queues()
            case protocol.SetRate(queue, per_second, burst):
                if per_second is not None and not 0 < per_second <= MAX_PER_SECOND:
                    raise Refused(
                        "usage", f"--rate must be above 0 and at most {MAX_PER_SECOND:g}/s"
                    )
                if not 1 <= burst <= MAX_BURST:
                    raise Refused("usage", f"--burst must be 1 to {MAX_BURST}")
                if not queue or len(queue) > 200:
                    raise Refused("usage", "queue names are 1 to 200 characters")
                await backend.set_rate(queue, per_second, burst)
                return await self.views.queues()
            case protocol.Queues():
                return await self.views.queues()
            case protocol.ScheduleAdd(spec):
                s = await self.scheduler.add(spec, now)
                return await self.scheduler.info(s, now)
            case protocol.Schedules():
                return await self.views.schedules()
            case protocol.ScheduleShow(name):
                return await self.scheduler.info(await self.scheduler.get(name), now)
            case protocol.ScheduleRemove(name):
                return await self.scheduler.info(await self.scheduler.remove(name), now)
            case protocol.SchedulePause(name):
                return await self.scheduler.info(await self.scheduler.pause(name, True, now), now)
            case protocol.ScheduleResume(name):
                return await self.scheduler.info(await self.scheduler.pause(name, False, now), now)
            case protocol.ScheduleRun(name):
                fired = await self.scheduler.run_now(name, now)
                assert fired.job is not None
                return SubmitResult(fired.job, fired.deduplicated)
            case protocol.Metrics():
                await metrics.load_library()
                return await self._render_metrics()
            case protocol.ReportProgress():
                return protocol.Accepted(self.progress(req, now))
            case protocol.Pause(queue):
                await backend.pause(queue)
                await self.dispatcher.starts_settled()  # none starts after the answer
                return await self.views.status()
            case protocol.Resume(queue):
                await backend.resume(queue)
                return await self.views.status()
            case protocol.Hello(proto):
                if proto != PROTOCOL_VERSION:
                    raise Refused(
                        "upgrade",
                        f"phxqd speaks protocol {PROTOCOL_VERSION}, the "
                        f"client {proto}: use the phxqctl installed with this phxqd",
                    )
                return protocol.HelloReply(PROTOCOL_VERSION)
        raise Refused("usage", f"unsupported request {type(req).__name__}")

    def handle_then(self, req: protocol.Request, then: Callable[[Any], None]) -> bool:
        """Answer `req` without a task when it can be (a submit, to a backend that takes
        one so: backend.SubmitsThen): True, and `then` is called once with the result or
        the Refused error; False, and `handle` must answer it. Refused is raised at once
        for a request refused before anything changed."""
        submit_then = self._submit_then
        if submit_then is None or type(req) is not protocol.Submit:
            return False
        check_specs(req.jobs)
        submit_then(req.jobs, time.time(), then)
        return True

    async def cancel(self, ids: list[int], now: float) -> list[Job]:
        """Cancel waiting jobs at once and stop running ones; answer once all are over."""
        to_stop = await self.backend.cancel(ids, now)
        self.dispatcher.stop(to_stop, "cancelled")
        await self.backend.wait(to_stop, None)
        return [j for i in ids if (j := await self.backend.find(i)) is not None]

    def progress(self, req: protocol.ReportProgress, now: float) -> bool:
        """A running job's progress report: the fields given replace those of the last one."""
        if req.percent is not None and not 0 <= req.percent <= 100:
            raise Refused("usage", "--percent must be between 0 and 100")
        if any(n is not None and n < 0 for n in (req.done, req.total)):
            raise Refused("usage", "--done and --total must be 0 or more")
        if req.step is not None and len(req.step) > 500:
            raise Refused("usage", "--step is at most 500 characters")

        def merged(old: Progress | None) -> Progress:
            old = old or Progress(now)
            return Progress(
                now,
                req.percent if req.percent is not None else old.percent,
                req.step if req.step is not None else old.step,
                req.done if req.done is not None else old.done,
                req.total if req.total is not None else old.total,
            )

        return self.backend.progress(req.id, req.attempt, merged)
