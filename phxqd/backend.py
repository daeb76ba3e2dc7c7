"""The seam between what the queue *is* and how it is *kept*: the `Backend` interface.

Everything above this line (the request handlers, the dispatcher, the streams, the status
views, metrics, the status file) talks to a `Backend` and to nothing below it. A backend
decides (priorities, FIFO, keys, limits, retries, which job starts next), persists, and
returns only once a change is durable; the daemon around it runs processes and answers
clients. `phxqd/local/` is the embedded backend (pure `State` + journal + snapshots). A
backend for many hosts (PostgreSQL) stands behind the same methods: claims are decided by
the backend, never by a heap the dispatcher reaches into, and every fact about a job
(started, ended, progress) is reported to it, so it can fence and count them cluster-wide.

Rules every backend keeps (tests/test_backend.py checks them on the local one):
- A request method returns once its change is durable, or raises `Refused` having changed
  nothing a client can see (or says in the message that it is in effect but not yet saved).
- `claim` hands out only jobs whose submission is durable, in dispatch order (priority,
  then FIFO, retries first), honouring pauses and each queue's concurrency limit counted
  over the jobs it has handed out and not yet seen end or given back.
- A fact (`report`, `progress`) is never refused: it already happened.
- Every change is told to `feed` listeners after it is applied.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

import anyio
import msgspec

from phxqd.feed import Feed
from phxqd.model import Job, JobSpec, Progress, SubmitResult
from phxqd.notice import Notice
from phxqd.schedules_model import Fired, Schedule, ScheduleSpec
from phxqd.stats import Stats


class Ending(msgspec.Struct):
    """How one claimed job's attempt ended, as the dispatcher saw it.

    `started`: the attempt began (it counts against the job's retries); `cancelled`: it was
    stopped on request (`stop_reason` says why) rather than ending by itself. A job that
    did not start and has no `stop_reason` was given back (to be claimed again before any
    other); with one, it ends without having run (cancelled, unless phxqd is stopping).
    """

    job: Job
    started: bool
    cancelled: bool = False
    stop_reason: str | None = None
    exit_code: int | None = None
    error: str | None = None
    retryable: bool = True
    result: Any = None


class Begun(msgspec.Struct):
    """A claimed job's attempt began: its process is `pid`, started at `pid_started`."""

    job: Job
    at: float
    pid: int | None = None
    pid_started: float | None = None


class Summary(msgspec.Struct):
    """Counts of the whole queue: per status, per queue and status, and queue settings."""

    counts: dict[str, int]
    queues: dict[str, dict[str, int]]
    total: int
    paused: list[str]
    paused_all: bool
    #: concurrency limits set at run time (`queue set`), by queue
    limits: dict[str, int]
    #: jobs claimed and not yet seen to end, by queue (what each queue's limit counts;
    #: on a shared store, over every node)
    busy: dict[str, int]
    #: start rates in force (run time over config), by queue: (per second, burst)
    rates: dict[str, tuple[float, int]] = {}
    #: for each queue whose rate holds its next start back: when it may start
    next_start: dict[str, float] = {}
    #: the queues whose rate was set at run time (the others' is the config's)
    rates_set: list[str] = []


class Health(msgspec.Struct):
    """How the store is doing, for `status`, metrics, the status line and `/health`."""

    kind: str
    writable: bool
    error: str | None
    #: the fsync policy (local) or the commit mode (shared stores)
    durability: str
    records: int
    fsyncs: int
    written_bytes: int
    #: the store's files (journal segments), only when asked for: counting them lists a
    #: directory, which status must not need (it answers even when out of descriptors)
    segments: int | None = None


#: Stop reason of jobs stopped because the daemon is stopping: requeued, attempt not spent.
SHUTDOWN = "daemon shutting down"


@runtime_checkable
class SubmitsThen(Protocol):
    """A backend that can also take a submit without an awaiting task (the local one):
    `then(results)` once it is durable, `then(refusal)` if it never will be; `Refused` at
    once when it is refused before anything changed. The server then answers a one-job
    client straight from its socket's callback, without waking a task twice per request
    (server.Connection._quick). `then` must not raise."""

    def submit_then(
        self,
        specs: list[JobSpec],
        now: float,
        then: Callable[[list[SubmitResult] | Exception], None],
    ) -> None: ...


class Backend(Protocol):
    """See the module docstring for the rules; each method says what it promises."""

    #: job events for whoever listens (watch, streaming wait, hooks, the status file)
    feed: Feed
    #: counters and histograms since this daemon started (metrics)
    stats: Stats
    #: given when a job may have become claimable or a slot freed; the dispatcher waits on
    #: it (and gives it too, when it wants another look)
    wake: Notice

    # ------------------------------------------------------------------ life
    async def run(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        """The backend's own tasks (writer, snapshots, healing, ...) until cancelled;
        ready once `task_status.started()` is called."""

    async def recover_host(self, kill_leftover: Callable[[Job], None]) -> int:
        """Jobs this host was running when its daemon died: `kill_leftover(job)` kills
        what is left of each, then each attempt fails (retried by its policy). Returns how
        many there were."""

    async def close(self) -> None:
        """A last durable save at a clean stop (the local backend's snapshot)."""

    # -------------------------------------------------------------- requests
    async def submit(self, specs: list[JobSpec], now: float) -> list[SubmitResult]: ...

    async def cancel(self, ids: list[int], now: float) -> list[int]:
        """Cancel the waiting jobs among `ids`; return those that are claimed or running,
        which whoever runs them must stop (`Refused` if one is finished or unknown)."""

    async def retry(self, ids: list[int], now: float) -> list[Job]: ...

    async def retry_failed(self, queue: str | None, now: float) -> int: ...

    async def clear(self, status: str | None, queue: str | None) -> list[int]:
        """Forget finished jobs; the ids forgotten. Their logs here are removed with them,
        even when the request is cancelled once they are forgotten (nothing else would)."""

    async def forget_finished_before(self, cutoff: float) -> list[int]:
        """Retention: forget jobs that finished before `cutoff` (their logs too, as
        `clear`); the ids forgotten."""

    async def set_limit(self, queue: str, concurrency: int | None) -> None: ...

    async def pause(self, queue: str | None) -> None: ...

    async def resume(self, queue: str | None) -> None: ...

    async def set_rate(self, queue: str, per_second: float | None, burst: int) -> None:
        """A queue's start rate (token bucket; None: back to the configured one). `claim`
        then hands out at most `burst` jobs of it at once and `per_second` on average."""

    # ------------------------------------------------------------- schedules
    async def set_schedule(self, spec: ScheduleSpec, now: float, source: str) -> Schedule:
        """Add or replace a schedule (`source` "config": declared in phxqd.toml, which a
        runtime change may not override); its record (last fire) is kept."""

    async def remove_schedule(self, name: str, source: str) -> None: ...

    async def pause_schedule(self, name: str, paused: bool) -> Schedule: ...

    async def schedules(self) -> list[Schedule]: ...

    async def get_schedule(self, name: str) -> Schedule | None: ...

    async def fire(
        self,
        name: str,
        times: list[float],
        now: float,
        missed: int,
        run: bool = True,
        manual: bool = False,
    ) -> Fired:
        """One firing, as one atomic operation: record fire times `times` as the
        schedule's last fire and submit their jobs (keys derived from the name and each
        time), or neither. Refused if a time is at or before the recorded last fire: it
        fired already, here or on another node (the guard that makes each fire time fire
        once). The overlap policy is decided here, against the previous firing's job.
        `run` False: the times passed without a run (missed; recorded all the same).
        `manual`: `schedule run`, a job now, the last fire time untouched."""

    # --------------------------------------------------------------- running
    async def claimable(self) -> None:
        """Wait until the jobs submitted so far may be claimed (their submission is durable)."""

    def claim(self, now: float) -> Job | None:
        """The next job to start on this node, claimed for it, or None."""

    def next_wakeup(self) -> float | None:
        """When a job that is not ready now becomes ready (the dispatcher's sleep)."""

    def report(self, begun: list[Begun], ended: list[Ending]) -> None:
        """Facts about claimed jobs, recorded together (one journal append for a lane's
        batch): attempts that began, then jobs that ended or were given back. The slots of
        the ended are free at once; their waiters are told once the ends are durable."""

    def progress(
        self, job_id: int, attempt: int, progress: Callable[[Progress | None], Progress]
    ) -> bool:
        """A running attempt's progress: `progress(old)` makes the new one. False if
        that attempt has ended (a late report)."""

    def paused(self, queue: str) -> bool:
        """Whether jobs of `queue` may not start now (the dispatcher asks it of a job it
        held back for a slot). A shared store answers from what it last heard."""

    # --------------------------------------------------------------- queries
    # Async because a shared store answers them with a round trip; the local backend
    # answers from memory without awaiting anything.
    async def get(self, job_id: int) -> Job:
        """The job (`Refused("not_found")` if there is none)."""

    async def find(self, job_id: int) -> Job | None: ...

    async def select(
        self,
        status: str | None,
        queue: str | None,
        limit: int,
        *,
        before: int | None = None,
        label: str | None = None,
        key: str | None = None,
    ) -> list[Job]:
        """Jobs newest first, filtered; `before`: only ids below it (the cursor of the
        HTTP API's pages). A page must not cost a walk over every job: it starts at the
        cursor."""

    async def summary(self) -> Summary: ...

    def health(self, count_files: bool = False) -> Health:
        """Sync: status must answer even when the store does not (a shared store answers
        from its connection monitor's last word)."""

    async def wait(self, ids: list[int], timeout: float | None) -> list[Job]:
        """The jobs once each has finished durably, or as they are at the timeout."""

    async def log_elsewhere(self, job_id: int) -> tuple[str, bytes] | None:
        """Where the job's log is when it is not on this host (a shared store: the host
        that ran its last attempt) and the tail kept with that attempt's outcome; None
        when its log, if any, is here."""

    def ended(self, job_id: int) -> anyio.Event:
        """Set once the job has finished (or is gone): for a job still going, once its end
        is durable; for one that has finished already, at once. (`wait` is the one that
        promises durability; this is for `logs --follow`, which re-reads the log anyway.)"""
