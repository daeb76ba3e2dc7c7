"""The running queue: requests in, decisions made by the state, events made durable.

`Core` joins the pure state to the journal and the pool. Every change goes through
`commit`: the journal encodes the events, the state applies them, and the caller waits
until the fsync policy says they are safe before it answers anyone. The dispatcher starts
jobs while there are free workers; each running job is one task in the dispatcher's task
group, so stopping the daemon stops (and requeues) every one of them.
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import time
from collections import Counter, deque
from typing import Any

import anyio
import anyio.abc

from phxqd import metrics, pool, protocol, scratch, statusfile
from phxqd.events import (
    AnyEvent,
    Cancelled,
    Cleared,
    Paused,
    QueueSet,
    Requeued,
    Resumed,
    Retried,
    Started,
)
from phxqd.feed import Feed
from phxqd.joblogs import JobLogs
from phxqd.journal import Journal, JournalError, list_segments
from phxqd.model import FINISHED, STATUSES, Job, QueueConfig, validate_spec
from phxqd.progress import ProgressReports
from phxqd.protocol import PROTOCOL_VERSION
from phxqd.recorder import Recorder
from phxqd.scratch import Scratches
from phxqd.settings import Settings
from phxqd.state import QueueDefaults, Refused, State
from phxqd.stats import Stats
from phxqd.streams import Streams
from phxqd.workers import Ended, Report, Start, WorkerPool

log = logging.getLogger("phxqd")

#: Stop reason of jobs stopped because the daemon is stopping: requeued, attempt not spent.
SHUTDOWN = "daemon shutting down"


class Core:
    def __init__(
        self, state: State, journal: Journal, settings: Settings, rng: random.Random | None = None
    ) -> None:
        self.state = state
        self.journal = journal
        self.settings = settings
        self.rng = rng or random.Random()
        self.started_at = time.time()
        #: jobs claimed by the dispatcher and not yet ended, with the handle that stops them
        self._active: dict[int, pool.Stop] = {}
        #: how many of `_active` each queue has, for its concurrency limit
        self._busy: Counter[str] = Counter()
        self._next_sweep = 0.0
        self.stats = Stats()
        journal.on_sync = self.stats.fsync.observe
        #: the scratch files command jobs write to until they have a log (see scratch.py)
        self.scratches = Scratches(settings.logs_dir)
        self.workers = WorkerPool(
            settings.python,
            settings.pythonpath,
            settings.worker_max_jobs,
            settings.worker_max_rss,
            report=self._reports,
            lane_ended=self._lane_ended,
            socket_path=settings.socket,
            grace=settings.kill_grace,
        )
        #: commands running; a command claimed but waiting for a slot; jobs a worker lane
        #: gave back unstarted (dispatched again before any other)
        self._commands = 0
        self._held: Job | None = None
        self._returned: deque[Job] = deque()
        #: noted job ends whose waiters are told once durable (see `_settler`)
        self._unsettled: deque[tuple[int | None, list[AnyEvent]]] = deque()
        self._settle_wake = anyio.Event()
        self._wake = anyio.Event()
        self._stopping = False
        #: job events for whoever listens (watch, streaming wait, hooks, the status file)
        self.feed = Feed()
        self.recorder = Recorder(state, journal, settings, self.stats, self.feed, self._active)
        self.recorder.on_change = self.wake
        self.logs = JobLogs(state, settings)
        self.progress = ProgressReports(state, journal, self.feed)
        self.streams = Streams(state, self.feed, self.recorder, self.logs)
        self.snapshot = self.recorder.snapshot
        self.snapshotter = self.recorder.snapshotter
        self.heal = self.recorder.heal

    def wake(self) -> None:
        """Look again at once: something changed (an event applied, a slot freed)."""
        self._wake.set()

    # ---------------------------------------------------------------- requests

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
                return metrics.render(self)
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

    def status(self) -> dict[str, Any]:
        """Counts, running jobs, and the rates of the last minute. O(queues + running)."""
        now = time.time()
        summary = self.state.summary()
        running = [self.state.jobs[i] for i in self._active if i in self.state.jobs]
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
                    "active": self._busy.get(name, 0),
                }
            )
        return out

    def journal_segments(self) -> int:
        return len(list_segments(self.settings.journal_dir))

    def _config_limits(self) -> dict[str, int]:
        return {
            q: c.concurrency for q, c in self.settings.queues.items() if c.concurrency is not None
        }

    def _queue_defaults(self) -> dict[str, QueueDefaults]:
        return {q: QueueDefaults(c.retries, c.backoff()) for q, c in self.settings.queues.items()}

    def _forget_old(self, now: float) -> None:
        while self.recorder.recent and self.recorder.recent[0][0] < now - 60:
            self.recorder.recent.popleft()

    async def _sweep_expired(self) -> None:
        """Forget finished jobs older than the retention (and their logs), once a minute."""
        now = time.time()
        if now < self._next_sweep:
            return
        # once a minute, or more often for a retention shorter than two minutes
        self._next_sweep = now + min(60.0, max(self.settings.retention / 2, 0.1))
        cutoff = now - self.settings.retention
        ids = [
            j.id
            for j in self.state.by_status(*FINISHED)
            if j.finished_at is not None and j.finished_at < cutoff
        ]
        if ids:
            with contextlib.suppress(Refused):
                await self.recorder.commit([Cleared(ids)])
                await anyio.to_thread.run_sync(self.logs.remove, ids)
                log.info(
                    "retention: forgot %d jobs finished before %s",
                    len(ids),
                    time.strftime("%Y-%m-%d %H:%M", time.localtime(cutoff)),
                )

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
        return ("stopping: " if self._stopping else "") + line

    async def cancel(self, ids: list[int], now: float) -> list[Job]:
        active = [i for i in ids if i in self._active]
        events, running = self.state.cancel([i for i in ids if i not in self._active], now)
        await self.recorder.commit(events)
        for job_id in (*running, *active):
            self._active[job_id].request("cancelled")
        await self.recorder.wait(running + active, None)
        return [self.state.jobs[i] for i in ids]

    # -------------------------------------------------------------- dispatcher

    async def dispatch(self) -> None:
        """Start jobs while workers are free; return once stopped and every job has ended.

        A slot (`workers` of them) is a running command or a Python worker lane; a lane
        takes a few callables at once while they are quick (see `workers`). The ends of
        jobs are made durable, and their waiters told, by one settler task per batch.
        """
        async with anyio.create_task_group() as settling:
            settling.start_soon(self._settler)
            async with anyio.create_task_group() as runners:
                while not self._stopping:
                    # Only jobs whose submission is durable may start: one that a crash
                    # could still take back must never have run.
                    durable_below = self.state.next_id
                    try:
                        await self.journal.durable(self.recorder.last_submit_lsn)
                    except JournalError:
                        durable_below = 0
                    self._fill(runners, durable_below)
                    self.workers.flush()
                    await self._sweep_expired()
                    wakeup = min(self.state.next_wakeup() or math.inf, self._next_sweep)
                    delay = max(wakeup - time.time(), 0.0)
                    with anyio.move_on_after(delay):
                        await self._wake.wait()
                    self._wake = anyio.Event()
                await self._let_running_jobs_finish()
            settling.cancel_scope.cancel()
        await self._settle_all()
        self.workers.close()
        self.scratches.close()

    def _fill(self, runners: anyio.abc.TaskGroup, durable_below: int) -> None:
        """Hand ready jobs to free slots and to lanes with room, in the state's order."""
        self._drop_stopped_waiting()
        now, mono = time.time(), time.monotonic()
        while not self._stopping:
            free = self.settings.workers - self._commands - len(self.workers.lanes)
            lane = None if free > 0 else self.workers.lane_with_room(mono)
            if free <= 0 and lane is None:
                return
            job = self._next_job(now, durable_below)
            if job is None:
                return
            stop = self._active[job.id]
            if job.call is None:
                if free <= 0:  # only a lane has room: the command waits for a free slot
                    self._held = job
                    stop.on_request = self._wake.set
                    return
                self._commands += 1
                runners.start_soon(self._run, job)
                continue
            ticket = self.workers.ticket(job, stop, self.logs.path(job.id))
            if lane is None:
                try:
                    lane = self.workers.new_lane(ticket.log_path)
                except OSError as e:
                    error = f"cannot start {self.settings.python}: {e.strerror}"
                    self._reports(
                        [Start(job, None, None), Ended(job, stop, pool.Outcome(None, error, False))]
                    )
                    continue
                lane.push(ticket)
                runners.start_soon(lane.run)
            else:
                lane.push(ticket)

    def _next_job(self, now: float, durable_below: int) -> Job | None:
        """The job held back for a slot, else one given back by a lane, else the state's
        next; it is in `_active` when returned."""
        paused = self.state.paused
        if self._held is not None:
            job, self._held = self._held, None
            if not (self.state.paused_all or job.queue in paused):
                return job
            self._active.pop(job.id)  # paused meanwhile: it waits with the given-back ones
            self._busy[job.queue] -= 1
            self._returned.appendleft(job)
        for job in list(self._returned):
            if self.state.jobs.get(job.id) is not job or job.status not in ("pending", "retrying"):
                self._returned.remove(job)  # cancelled or cleared meanwhile
            elif not (self.state.paused_all or job.queue in paused):
                self._returned.remove(job)
                self._active[job.id] = pool.Stop()
                self._busy[job.queue] += 1
                return job
        claimed = self.state.claim_next(now, durable_below, self._busy, self._config_limits())
        if claimed is not None:
            self._active[claimed.id] = pool.Stop()
            self._busy[claimed.queue] += 1
        return claimed

    def _drop_stopped_waiting(self) -> None:
        """A job held back for a slot and asked to stop ends here, without having run."""
        held = self._held
        if held is not None and self._active[held.id].reason is not None:
            self._held = None
            self._reports([Ended(held, self._active[held.id], pool.Outcome(None), False)])

    async def _let_running_jobs_finish(self) -> None:
        """Stopping: give running jobs `shutdown_grace` seconds, then stop (and requeue)
        the rest. The runner tasks end; the task group in `dispatch` waits for them."""
        with anyio.move_on_after(self.settings.shutdown_grace):
            while self._active:
                await self._wake.wait()
                self._wake = anyio.Event()
        if self._active:
            log.info("stopping %d running job(s); they will run again", len(self._active))
        for stop in list(self._active.values()):
            stop.request(SHUTDOWN)
        self._drop_stopped_waiting()

    def set_workers(self, workers: int) -> None:
        """Change the most jobs running at once (a config reload). More starts waiting
        jobs at once; fewer lets running jobs finish and starts none until below it."""
        self.settings.workers = workers
        self._wake.set()

    async def stop(self) -> None:
        """Stop dispatching; `dispatch` then lets running jobs finish for `shutdown_grace`
        seconds, stops the rest (requeued, their attempt not spent) and returns."""
        self._stopping = True
        self._wake.set()

    def _end_event(self, job: Job, stop: pool.Stop, outcome: pool.Outcome) -> AnyEvent:
        """The event that ends a started attempt."""
        if outcome.cancelled and stop.reason == SHUTDOWN:
            return Requeued(job.id)
        now = time.time()
        if outcome.cancelled:
            return Cancelled(job.id, now, outcome.error or "cancelled")
        return self.state.outcome(
            job.id,
            outcome.exit_code,
            outcome.error,
            now,
            self.rng,
            outcome.retryable,
            outcome.result,
        )

    def _reports(self, reports: list[Report]) -> None:
        """Starts and ends from the worker lanes: their events in one journal append; the
        ends' slots are free at once, their waiters told once the ends are durable."""
        events: list[AnyEvent] = []
        ended: list[Job] = []
        for r in reports:
            if isinstance(r, Start):
                events.append(Started(r.job.id, time.time(), r.pid, r.create_time))
            elif r.started:
                events += self.progress.unsaved(r.job.id)
                events.append(self._end_event(r.job, r.stop, r.outcome))
                ended.append(r.job)
            elif r.stop.reason is None:  # never ran: it goes to another worker
                self._returned.append(r.job)
                ended.append(r.job)
            else:  # asked to stop before it ran: no attempt spent
                if r.stop.reason != SHUTDOWN:
                    events.append(Cancelled(r.job.id, time.time(), r.stop.reason))
                ended.append(r.job)
        if events:
            self._settle_later(self.recorder.note(events), events)
        for job in ended:
            self._free(job)

    def _settle_later(self, lsn: int | None, events: list[AnyEvent]) -> None:
        self._unsettled.append((lsn, events))
        self._settle_wake.set()

    async def _settler(self) -> None:
        """Tell waiters of jobs ended by noted events once those are durable: one task for
        all of them, woken once per batch (not one task per job per fsync)."""
        while True:
            while not self._unsettled:
                await self._settle_wake.wait()
                self._settle_wake = anyio.Event()
            await self._settle_all()

    async def _settle_all(self) -> None:
        batch = list(self._unsettled)
        top = max((lsn for lsn, _ in batch if lsn is not None), default=None)
        if top is not None:
            with contextlib.suppress(JournalError):
                await self.journal.durable(top)
        for _ in batch:
            self._unsettled.popleft()
        self.recorder.finished_durably([e for _, events in batch for e in events])

    async def _run(self, job: Job) -> None:
        """One command job, start to end (callables go to worker lanes instead)."""
        stop = self._active[job.id]
        try:
            if stop.reason is not None:  # cancelled or stopped before it started
                self._reports([Ended(job, stop, pool.Outcome(None), False)])
                return

            async def started(pid: int | None, create_time: float | None) -> None:
                self.recorder.note([Started(job.id, time.time(), pid, create_time)])

            try:
                outcome = await pool.run_command(
                    job,
                    self.logs.path(job.id),
                    self.scratches,
                    self.settings.socket,
                    self.settings.kill_grace,
                    stop,
                    started,
                    self.settings.log_max_bytes,
                )
            except Exception as e:
                # a bug of ours must cost one attempt, never the daemon
                log.exception("job %d: internal error while running it", job.id)
                outcome = pool.Outcome(None, f"internal error in phxqd: {e!r}")
            self._reports([Ended(job, stop, outcome)])
        finally:
            self._commands -= 1
            self._free(job)

    def _lane_ended(self) -> None:
        self._wake.set()  # its slot is free

    def _free(self, job: Job) -> None:
        if self._active.pop(job.id, None) is not None:
            self._busy[job.queue] -= 1
            self._wake.set()

    async def reap(self) -> None:
        """Jobs that were running when the daemon last died: kill leftovers, then fail the
        attempt (retrying by the job's policy): their work may be half done. Scratch
        files of dead daemons go too."""
        scratch.remove_leftovers(self.settings.logs_dir)
        now = time.time()
        events: list[AnyEvent] = []
        for job in list(self.state.by_status("running")):
            if job.pid is not None and pool.kill_leftover(
                job.pid, job.pid_started, (job.id, self.settings.socket)
            ):
                log.warning("job %d: killed process %d left from the previous run", job.id, job.pid)
            events.append(
                self.state.outcome(job.id, None, "phxqd stopped while it ran", now, self.rng)
            )
        if events:
            log.warning("%d job(s) were running when phxqd last stopped", len(events))
            await self.recorder.record(events)
