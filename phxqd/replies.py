"""The results of `Ok` replies, one Struct per shape (re-exported by phxqd.protocol).

phxqd answers with these, phxqctl.Client decodes them, and phxqd.protocol.OPERATIONS says
which request gets which. The command line reads the same bytes as plain dicts
(phxqctl.mpack) and prints them as its `--json`, so each Struct must encode exactly like
the map it stands for: untagged, every field sent (no omit_defaults), fields in the
order the map had. tests/test_protocol_table.py checks every operation's reply against a
real daemon by decoding it and encoding it again to the same bytes.

Decoding is not strict about unknown fields (no forbid_unknown_fields): a client keeps
working with a newer phxqd that adds one.
"""

from __future__ import annotations

from typing import Literal

import msgspec

from phxqd.model import JobSpec, Progress


class HelloReply(msgspec.Struct):
    """`hello`: the protocol phxqd speaks (an `upgrade` error if it is not the client's)."""

    proto: int


class RunningJob(msgspec.Struct):
    """One running job as `status` lists it: enough for a progress bar, not the whole job."""

    id: int
    queue: str
    argv: tuple[str, ...]
    #: a callable job's "package.module:function", else None
    call: str | None
    started_at: float | None
    progress: Progress | None


class JournalInfo(msgspec.Struct):
    """The journal's counters: `records` the last LSN, `fsyncs` since this daemon started."""

    records: int
    fsyncs: int


class NextFire(msgspec.Struct):
    """One coming fire of a schedule (`status`)."""

    schedule: str
    at: float


class ScheduleInfo(msgspec.Struct):
    """One schedule (`schedule add/list/show/pause/resume/remove`): its definition, its
    next fire times, its last fire and that firing's job."""

    name: str
    cron: str | None
    #: the zone asked for; None: the machine's (`zone` says which that is)
    tz: str | None
    zone: str
    every: float | None
    catch_up: str
    overlap: str
    #: what each firing submits (its key is set per firing)
    job: JobSpec
    source: Literal["runtime", "config"]
    paused: bool
    #: the next fire times (at most 5; none while paused)
    next_fires: list[float]
    #: the newest fire time recorded, when that firing happened, its job and its status
    last_fire: float | None
    last_fired_at: float | None
    last_job: int | None
    last_status: str | None
    fired: int
    missed: int


class StatusReply(msgspec.Struct):
    """`status`, `pause` and `resume`: counts, running jobs, the last minute's rates and the
    journal's health (docs/protocol.md, "Status map")."""

    counts: dict[str, int]
    queues: dict[str, dict[str, int]]
    total: int
    paused: list[str]
    paused_all: bool
    workers: int
    running_jobs: list[RunningJob]
    #: jobs that finished in the last 60 s (completed, or failed with no retry left)
    throughput_per_minute: int
    #: their mean run time
    average_seconds: float | None
    #: how long the pending, retrying and running jobs take at that rate
    eta_seconds: float | None
    #: the fsync policy
    fsync: str
    journal: JournalInfo
    writable: bool
    journal_error: str | None
    uptime: float
    #: how many schedules there are, and the soonest fires (at most 5, soonest first)
    schedules: int = 0
    next_fires: list[NextFire] = msgspec.field(default_factory=list)
    #: queues whose start rate holds their next job back: when it may start
    next_start: dict[str, float] = msgspec.field(default_factory=dict)


class QueueInfo(msgspec.Struct):
    """One queue of `queues` and `queue-set`: counts per status, its concurrency limit and
    where that comes from, whether it is paused, and how many of its jobs are active
    (started and not ended)."""

    queue: str
    counts: dict[str, int]
    concurrency: int | None
    concurrency_from: Literal["runtime", "config"] | None
    paused: bool
    active: int
    #: starts allowed per second (`queue set --rate`, or the config's `rate`), None: no rate
    rate: float | None = None
    #: starts allowed at once under the rate
    burst: int | None = None
    rate_from: Literal["runtime", "config"] | None = None
    #: when the rate lets the queue's next job start (None: now, or no rate)
    next_start: float | None = None


class LogPart(msgspec.Struct):
    """`logs`: bytes of the log from the asked offset, where the next read starts, and
    whether the job had finished before this read (so a follower knows it has it all)."""

    data: bytes
    offset: int
    finished: bool


class RetriedCount(msgspec.Struct):
    """`retry-failed`: how many jobs went back to pending."""

    retried: int


class ClearedCount(msgspec.Struct):
    """`clear`: how many finished jobs were forgotten. (Not `Cleared`: that is the journal
    event, phxqd.events.Cleared.)"""

    cleared: int


class Accepted(msgspec.Struct):
    """`progress`: False when that attempt is no longer running (nothing changed)."""

    accepted: bool
