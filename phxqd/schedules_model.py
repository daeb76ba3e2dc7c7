"""The nouns of schedules: what a schedule asks for (`ScheduleSpec`) and what the queue
keeps of it (`Schedule`: the spec, paused or not, its last fire and its job).

Imports only msgspec and phxqd.model: the journal events, the snapshot and the wire replies
carry these, and phxqctl.Client imports the replies. The cron library is the daemon's
alone (phxqd/schedules.py).
"""

from __future__ import annotations

from typing import Literal

import msgspec

from phxqd.model import DEFAULT_QUEUE, Call, Job, JobSpec

CatchUp = Literal["skip", "once", "all"]
Overlap = Literal["allow", "skip", "queue"]
CATCH_UPS: tuple[CatchUp, ...] = ("skip", "once", "all")
OVERLAPS: tuple[Overlap, ...] = ("allow", "skip", "queue")
#: names are part of job keys and of the config's `[schedules.NAME]`: kept plain
NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")
MAX_NAME = 100
#: the shortest `--every`: a schedule firing more often than this is a busy loop
MIN_EVERY = 1.0


class ScheduleSpec(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True, gc=False):
    """A schedule as added (`schedule add`) or declared (`[schedules.NAME]`): when it fires
    (`cron` with `tz`, or `every` seconds), what each firing submits (`job`, an ordinary
    job spec whose `key` phxqd sets), and its policies."""

    name: str
    job: JobSpec
    cron: str | None = None
    #: an IANA zone name; None: the machine's zone (as phxqd finds it when it computes)
    tz: str | None = None
    every: float | None = None
    catch_up: CatchUp = "skip"
    overlap: Overlap = "skip"

    def timing(self) -> tuple[str | None, str | None, float | None]:
        """What decides the fire times: a change to it starts the count of fires anew."""
        return (self.cron, self.tz, self.every)


class Schedule(msgspec.Struct, gc=False):
    """What the queue keeps of one schedule, journaled (`ScheduleSet`, `ScheduleFired`,
    ...) and in snapshots.

    `anchor`: the fire times of an `every` schedule are `anchor + k * every`; and no fire
    time at or before it counts as missed (it is when the schedule, or its timing, was set).
    `last_fire`: the newest fire time recorded, the guard of `fire` (a time at or before
    it never fires again); `last_job`: the job of the newest firing (also of `run NAME`).
    """

    spec: ScheduleSpec
    anchor: float
    source: Literal["runtime", "config"] = "runtime"
    paused: bool = False
    last_fire: float | None = None
    last_job: int | None = None
    #: when the newest firing happened (the job's submission), for `show`
    last_fired_at: float | None = None
    fired: int = 0
    missed: int = 0


def validate_name(name: str) -> str | None:
    """Why `name` cannot name a schedule, or None."""
    if not name or len(name) > MAX_NAME or not set(name) <= NAME_CHARS:
        return (
            f"schedule names are 1 to {MAX_NAME} characters of letters, digits, '-', '_', "
            f"'.': got {name!r}"
        )
    return None


class Fired(msgspec.Struct, gc=False):
    """What a firing did: the job it submitted (`jobs`: all of them, for catch-up `all`),
    an existing one (`deduplicated`: its key was live), none because the previous run is
    still going (`skipped` says so; `blocked_by`: overlap `queue`, fire again once that
    job has ended)."""

    job: Job | None = None
    jobs: list[Job] = msgspec.field(default_factory=list)
    deduplicated: bool = False
    skipped: str | None = None
    blocked_by: int | None = None


class ScheduleConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """`[schedules.NAME]` in phxqd.toml: a schedule the file declares (docs/schedules.md)."""

    cron: str | None = None
    tz: str | None = None
    #: seconds, or a duration string: "30s", "5m", "1h", "1d"
    every: float | str | None = None
    catch_up: CatchUp = "skip"
    overlap: Overlap = "skip"
    #: an argv (array), or a string run with /bin/sh -c
    command: list[str] | str | None = None
    #: a Python callable "package.module:function" instead of a command
    call: str | None = None
    args: list[object] = []
    kwargs: dict[str, object] = {}
    queue: str = DEFAULT_QUEUE
    priority: int = 0
    retries: int | None = None
    timeout: float | None = None
    label: str | None = None
    cwd: str | None = None
    env: dict[str, str] = {}

    def spec(self, name: str, default_cwd: str) -> ScheduleSpec:
        """The schedule this table declares (checked by phxqd.schedules.check)."""
        command = self.command
        argv = ["/bin/sh", "-c", command] if isinstance(command, str) else list(command or [])
        call = Call(self.call, list(self.args), dict(self.kwargs)) if self.call else None
        job = JobSpec(
            argv=argv,
            call=call,
            queue=self.queue,
            priority=self.priority,
            max_retries=self.retries,
            timeout=self.timeout,
            label=self.label,
            cwd=self.cwd or default_cwd,
            env=dict(self.env),
        )
        every = parse_duration(self.every) if isinstance(self.every, str) else self.every
        return ScheduleSpec(name, job, self.cron, self.tz, every, self.catch_up, self.overlap)


_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "": 1.0}


def parse_duration(text: str) -> float:
    """ "30", "30s", "5m", "1.5h", "2d" -> seconds (ValueError otherwise)."""
    t = text.strip()
    unit = next((u for u in ("ms", "s", "m", "h", "d") if t.endswith(u)), "")
    try:
        value = float(t[: len(t) - len(unit)])
    except ValueError:
        raise ValueError(f"not a duration: {text!r} (try 30s, 5m, 2h)") from None
    return value * _UNITS[unit]
