"""The dispatcher: starts the jobs the backend hands out while there are free workers,
tells the backend of their starts and ends, forgets finished jobs past their retention,
and reaps jobs left running by a previous daemon.

Each command slot is one task in the dispatcher's task group (it runs one command, then
the next while the backend's next job is a command: no task and no dispatcher round per
job), and each Python worker lane another, so stopping the daemon stops (and requeues)
every one of them. The jobs in flight are the dispatcher's alone (`_active`): others ask
it to stop some (`stop`) or how many run (`running`).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable

import anyio
import anyio.abc

from phxqd.backend import SHUTDOWN, Backend, Begun, Ending
from phxqd.contract import storable_text
from phxqd.joblogs import JobLogs
from phxqd.model import Job
from phxqd.notice import Notice
from phxqd.protocol import Refused
from phxqd.run import command, output, proctree
from phxqd.run.attempt import Outcome, Stop
from phxqd.run.lanes import Ended, Report, Start, WorkerPool
from phxqd.run.output import Scratches
from phxqd.run.spawn import Spawners
from phxqd.settings import Settings

log = logging.getLogger("phxqd")


class Dispatcher:
    def __init__(self, backend: Backend, settings: Settings, logs: JobLogs, wake: Notice) -> None:
        self.backend = backend
        self.settings = settings
        self.logs = logs
        #: given by the backend when jobs may be startable, and here when a slot frees
        self._wake = wake
        #: jobs claimed and not yet ended, with the handle that stops them
        self._active: dict[int, Stop] = {}
        #: when finished jobs past their retention were last looked for
        self._last_sweep = -math.inf
        #: the scratch files command jobs write to until they have a log (see run/output.py)
        self.scratches = Scratches(settings.logs_dir)
        #: the threads that make command processes (see run/spawn.py)
        self.spawners = Spawners()
        self.workers = WorkerPool(settings, report=self._reports, lane_ended=self._wake.set)
        #: commands running; a command claimed but waiting for a slot
        self._commands = 0
        self._held: Job | None = None
        #: commands handed to a slot whose start is not recorded yet (see `starts_settled`)
        self._starting: set[int] = set()
        #: set (and dropped) each time a command's start is recorded
        self._start_seen: anyio.Event | None = None
        self.stopping = False

    # ------------------------------------------------------ what others may ask
    def running(self) -> list[int]:
        """The jobs in flight: claimed and not yet ended."""
        return list(self._active)

    def stop(self, ids: Iterable[int], reason: str) -> list[int]:
        """Ask the jobs among `ids` that are in flight to stop; the ids asked."""
        asked = [i for i in ids if i in self._active]
        for job_id in asked:
            self._active[job_id].request(reason)
        return asked

    async def starts_settled(self) -> None:
        """Until every command handed to a slot so far has its start recorded (or has
        ended unstarted). A pause waits for this before it is acknowledged: a command
        claimed before the pause may still be in its spawn (a thread, see run/spawn.py),
        and must show as running once the pause is answered, never start after it.

        Only the commands handed out before the call are waited for: commands of other
        queues started meanwhile could keep the set from ever being empty, and several
        pauses at once share one event (each waited on its own, the last one replaced the
        others', which then waited for ever)."""
        asked = set(self._starting)
        while not asked.isdisjoint(self._starting):
            if self._start_seen is None:
                self._start_seen = anyio.Event()
            await self._start_seen.wait()

    def _started(self, job_id: int) -> None:
        if job_id in self._starting:
            self._starting.discard(job_id)
            if self._start_seen is not None:
                self._start_seen.set()
                self._start_seen = None

    def reconfigured(self) -> None:
        """The live settings changed (a reload): look again at once. More workers or a
        higher queue limit start waiting jobs now; fewer let running jobs finish and start
        none until below them."""
        self._wake.set()

    async def shutdown(self) -> None:
        """Stop dispatching; `dispatch` then lets running jobs finish for `shutdown_grace`
        seconds, stops the rest (requeued, their attempt not spent) and returns."""
        self.stopping = True
        self._wake.set()

    # ------------------------------------------------------------- the loop
    async def dispatch(self) -> None:
        """Start jobs while workers are free; return once stopped and every job has ended.

        A slot (`workers` of them) is a running command or a Python worker lane; a lane
        takes a few callables at once while they are quick (see `workers`).
        """
        async with anyio.create_task_group() as runners:
            while not self.stopping:
                await self.backend.claimable()
                self._fill(runners)
                self.workers.flush()
                await self._sweep_expired()
                wakeup = min(self.backend.next_wakeup() or math.inf, self._next_sweep())
                await self._wake.wait(max(wakeup - time.time(), 0.0))
            await self._let_running_jobs_finish()
        self.workers.close()
        self.scratches.close()
        self.spawners.close()

    def _fill(self, runners: anyio.abc.TaskGroup) -> None:
        """Hand startable jobs to free slots and to lanes with room, in the backend's order."""
        self._drop_stopped_waiting()
        now, mono = time.time(), time.monotonic()
        while not self.stopping:
            free = self.settings.workers - self._commands - len(self.workers.lanes)
            lane = None if free > 0 else self.workers.lane_with_room(mono)
            if free <= 0 and lane is None:
                return
            job = self._next_job(now)
            if job is None:
                return
            stop = self._active[job.id]
            if job.call is None:
                if free <= 0:  # only a lane has room: the command waits for a free slot
                    self._held = job
                    stop.on_request = self._wake.set
                    return
                self._commands += 1
                self._starting.add(job.id)
                runners.start_soon(self._command_slot, job)
                continue
            ticket = self.workers.ticket(job, stop, self.logs.path(job.id))
            if lane is None:
                try:
                    lane = self.workers.new_lane(ticket.log_path)
                except OSError as e:
                    error = f"cannot start {self.settings.python}: {e.strerror}"
                    self._reports(
                        [Start(job, None, None), Ended(job, stop, Outcome(None, error, False))]
                    )
                    continue
                lane.push(ticket)
                runners.start_soon(lane.run)
            else:
                lane.push(ticket)

    def _next_job(self, now: float) -> Job | None:
        """The command held back for a slot, else the backend's next; in `_active` when
        returned."""
        job, self._held = self._held, None
        if job is not None:
            if not self.backend.paused(job.queue):
                return job
            # paused meanwhile: given back, it waits with the others
            self._end([], [Ending(job, started=False)])
        job = self.backend.claim(now)
        if job is not None:
            self._active[job.id] = Stop()
        return job

    def _drop_stopped_waiting(self) -> None:
        """A job held back for a slot and asked to stop ends here, without having run."""
        held = self._held
        if held is not None and self._active[held.id].reason is not None:
            self._held = None
            self._reports([Ended(held, self._active[held.id], Outcome(None), False)])

    async def _let_running_jobs_finish(self) -> None:
        """Stopping: give running jobs `shutdown_grace` seconds, then stop (and requeue)
        the rest. The runner tasks end; the task group in `dispatch` waits for them."""
        with anyio.move_on_after(self.settings.shutdown_grace):
            while self._active:
                await self._wake.wait()
        if self._active:
            log.info("stopping %d running job(s); they will run again", len(self._active))
        for stop in list(self._active.values()):
            stop.request(SHUTDOWN)
        self._drop_stopped_waiting()

    # ---------------------------------------------------------- starts, ends
    def _reports(self, reports: list[Report]) -> None:
        """Starts and ends from the runners and the worker lanes, told to the backend in
        one call; the ends' slots are free at once."""
        begun: list[Begun] = []
        endings: list[Ending] = []
        for r in reports:
            if isinstance(r, Start):
                begun.append(Begun(r.job, time.time(), r.pid, r.create_time))
            elif r.started:
                o = r.outcome
                endings.append(
                    Ending(
                        r.job,
                        True,
                        o.cancelled,
                        r.stop.reason,
                        o.exit_code,
                        None if o.error is None else storable_text(o.error),
                        o.retryable,
                        o.result,
                    )
                )
            else:  # never ran: given back, or stopped before it started
                endings.append(Ending(r.job, False, stop_reason=r.stop.reason))
        self._end(begun, endings)

    def _end(self, begun: list[Begun], endings: list[Ending]) -> None:
        if begun or endings:
            self.backend.report(begun, endings)
        for e in endings:
            if self._active.pop(e.job.id, None) is not None:
                self._wake.set()

    async def _command_slot(self, job: Job | None) -> None:
        """A command slot: `job`, then the jobs the backend hands out next while they are
        commands, in this one task. The slot ends (and the dispatcher fills it) when
        there is none, when the next is a callable (held for the dispatcher, which gives
        it a lane in this slot's place), when stopping, or when a reload lowered
        `workers` below the slots in use."""
        try:
            while job is not None:
                await self._run(job)
                job = self._next_command()
        finally:
            self._commands -= 1
            self._wake.set()

    def _next_command(self) -> Job | None:
        if self.stopping or self._commands + len(self.workers.lanes) > self.settings.workers:
            return None
        job = self._next_job(time.time())
        if job is not None and job.call is not None:
            self._held = job
            self._active[job.id].on_request = self._wake.set
            return None
        if job is not None:
            self._starting.add(job.id)
        return job

    async def _run(self, job: Job) -> None:
        """One command job, start to end (callables go to worker lanes instead)."""
        stop = self._active[job.id]
        try:
            if stop.reason is not None:  # cancelled or stopped before it started
                self._reports([Ended(job, stop, Outcome(None), False)])
                return

            # Its start time is when phxqd starts it, taken before the spawn: spawns run
            # side by side in threads and may finish out of order, and the start times
            # must keep the dispatch order (priority, then the order submitted).
            at = time.time()

            def started(pid: int | None, create_time: float | None) -> None:
                self.backend.report([Begun(job, at, pid, create_time)], [])
                self._started(job.id)

            try:
                outcome = await command.run_command(
                    job,
                    self.logs.path(job.id),
                    self.scratches,
                    self.spawners,
                    self.settings,
                    stop,
                    started,
                )
            except Exception as e:
                # a bug of ours must cost one attempt, never the daemon
                log.exception("job %d: internal error while running it", job.id)
                outcome = Outcome(None, f"internal error in phxqd: {e!r}")
            self._reports([Ended(job, stop, outcome)])
        finally:
            self._started(job.id)
            if self._active.pop(job.id, None) is not None:  # ended without a report
                self.backend.report([], [Ending(job, False, stop_reason=stop.reason or SHUTDOWN)])
                self._wake.set()

    # ------------------------------------------------------------ upkeep
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
        try:
            ids = await self.backend.forget_finished_before(cutoff)
        except Refused:
            return
        if ids:  # (their logs removed by the backend)
            log.info(
                "retention: forgot %d jobs finished before %s",
                len(ids),
                time.strftime("%Y-%m-%d %H:%M", time.localtime(cutoff)),
            )

    async def reap(self) -> None:
        """Jobs that were running when the daemon last died: kill leftovers, then fail the
        attempt (retrying by the job's policy): their work may be half done. Scratch
        files of dead daemons go too."""
        output.remove_leftovers(self.settings.logs_dir)

        def kill_leftover(job: Job) -> None:
            if job.pid is not None and proctree.kill_leftover(
                job.pid, job.pid_started, (job.id, self.settings.socket)
            ):
                log.warning("job %d: killed process %d left from the previous run", job.id, job.pid)

        if n := await self.backend.recover_host(kill_leftover):
            log.warning("%d job(s) were running when phxqd last stopped", n)
