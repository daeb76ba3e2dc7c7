"""The dispatcher: starts jobs while there are free workers, records their starts and
ends, forgets finished jobs past their retention, and reaps jobs left running by a
previous daemon.

Each running command is one task in the dispatcher's task group, and each Python worker
lane another, so stopping the daemon stops (and requeues) every one of them.
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import time
from collections import Counter, deque

import anyio
import anyio.abc

from phxqd import pool, scratch
from phxqd.events import AnyEvent, Cancelled, Cleared, Requeued, Started
from phxqd.joblogs import JobLogs
from phxqd.journal import Journal, JournalError
from phxqd.model import FINISHED, Job
from phxqd.progress import ProgressReports
from phxqd.recorder import Recorder
from phxqd.scratch import Scratches
from phxqd.settings import Settings
from phxqd.state import Refused, State
from phxqd.workers import Ended, Report, Start, WorkerPool

log = logging.getLogger("phxqd")

#: Stop reason of jobs stopped because the daemon is stopping: requeued, attempt not spent.
SHUTDOWN = "daemon shutting down"


class Dispatcher:
    def __init__(
        self,
        state: State,
        journal: Journal,
        settings: Settings,
        rng: random.Random,
        recorder: Recorder,
        progress: ProgressReports,
        logs: JobLogs,
        active: dict[int, pool.Stop],
    ) -> None:
        self.state = state
        self.journal = journal
        self.settings = settings
        self.rng = rng
        self.recorder = recorder
        self.progress = progress
        self.logs = logs
        #: jobs claimed by the dispatcher and not yet ended, with the handle that stops them
        self.active = active
        #: how many of `active` each queue has, for its concurrency limit
        self.busy: Counter[str] = Counter()
        #: when finished jobs past their retention were last looked for
        self._last_sweep = -math.inf
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
        self.stopping = False

    def wake(self) -> None:
        """Look again at once: something changed (an event applied, a slot freed).

        While everything is paused no job can start, so a change (a submit, say) is no
        reason to look: a paused daemon taking submits from many clients otherwise ran a
        whole dispatch round per request. The resume is itself a change and wakes it, a
        freed slot still does (a stop waits for the running jobs), and so does a stop.
        """
        if self.state.paused_all and not self.stopping:
            return
        self._wake.set()

    async def dispatch(self) -> None:
        """Start jobs while workers are free; return once stopped and every job has ended.

        A slot (`workers` of them) is a running command or a Python worker lane; a lane
        takes a few callables at once while they are quick (see `workers`). The ends of
        jobs are made durable, and their waiters told, by one settler task per batch.
        """
        async with anyio.create_task_group() as settling:
            settling.start_soon(self._settler)
            async with anyio.create_task_group() as runners:
                while not self.stopping:
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
                    wakeup = min(self.state.next_wakeup() or math.inf, self._next_sweep())
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
        while not self.stopping:
            free = self.settings.workers - self._commands - len(self.workers.lanes)
            lane = None if free > 0 else self.workers.lane_with_room(mono)
            if free <= 0 and lane is None:
                return
            job = self._next_job(now, durable_below)
            if job is None:
                return
            stop = self.active[job.id]
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
        next; it is in `active` when returned."""
        paused = self.state.paused
        if self._held is not None:
            job, self._held = self._held, None
            if not (self.state.paused_all or job.queue in paused):
                return job
            self.active.pop(job.id)  # paused meanwhile: it waits with the given-back ones
            self.busy[job.queue] -= 1
            self._returned.appendleft(job)
        for job in list(self._returned):
            if self.state.jobs.get(job.id) is not job or job.status not in ("pending", "retrying"):
                self._returned.remove(job)  # cancelled or cleared meanwhile
            elif not (self.state.paused_all or job.queue in paused):
                self._returned.remove(job)
                self.active[job.id] = pool.Stop()
                self.busy[job.queue] += 1
                return job
        claimed = self.state.claim_next(now, durable_below, self.busy, self._config_limits())
        if claimed is not None:
            self.active[claimed.id] = pool.Stop()
            self.busy[claimed.queue] += 1
        return claimed

    def _drop_stopped_waiting(self) -> None:
        """A job held back for a slot and asked to stop ends here, without having run."""
        held = self._held
        if held is not None and self.active[held.id].reason is not None:
            self._held = None
            self._reports([Ended(held, self.active[held.id], pool.Outcome(None), False)])

    async def _let_running_jobs_finish(self) -> None:
        """Stopping: give running jobs `shutdown_grace` seconds, then stop (and requeue)
        the rest. The runner tasks end; the task group in `dispatch` waits for them."""
        with anyio.move_on_after(self.settings.shutdown_grace):
            while self.active:
                await self._wake.wait()
                self._wake = anyio.Event()
        if self.active:
            log.info("stopping %d running job(s); they will run again", len(self.active))
        for stop in list(self.active.values()):
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
        self.stopping = True
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
        stop = self.active[job.id]
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
        if self.active.pop(job.id, None) is not None:
            self.busy[job.queue] -= 1
            self._wake.set()

    def _config_limits(self) -> dict[str, int]:
        return {
            q: c.concurrency for q, c in self.settings.queues.items() if c.concurrency is not None
        }

    def _next_sweep(self) -> float:
        """When to look for expired jobs next: a minute after the last look, or sooner for
        a retention shorter than two minutes. Worked out from the retention of the moment,
        so a reload that shortens it is heeded at once (the reload wakes the dispatcher)."""
        return self._last_sweep + min(60.0, max(self.settings.retention / 2, 0.1))

    async def _sweep_expired(self) -> None:
        """Forget finished jobs older than the retention (and their logs), once a minute."""
        now = time.time()
        if now < self._next_sweep():
            return
        self._last_sweep = now
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
