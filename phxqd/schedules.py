"""When schedules fire: the pure next-fire and catch-up logic (no I/O, every time an
argument), over cronsim for cron expressions and zoneinfo for time zones.

Why cronsim: it is small, pure Python with no dependency of its own, kept by the author of
healthchecks.io (where it checks millions of cron schedules), takes the optional seconds
field (six fields, seconds first), names, ranges, steps, `L`, `#` and `W`, and its DST
handling is Debian cron's, stated and tested: a job at a fixed local time (minute and hour
fields not starting with `*`) that falls in a spring-forward gap runs at the first moment
after the gap, and once (the first occurrence) in a fall-back repeat; an expression with a
`*` in the minute or hour field fires by the clock as it is lived, so it skips the gap and
fires in both copies of the repeated hour. croniter was the other candidate: its DST
handling has a long history of bugs and it pulls in python-dateutil. The `@` macros
(`@daily` ...) are translated here: cronsim does not take them.

Imported by the daemon only: phxqctl never imports this module (nor cronsim).
"""

from __future__ import annotations

import math
import os
from collections import deque
from collections.abc import Iterator
from datetime import UTC, datetime, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import msgspec
from cronsim import CronSim, CronSimError

from phxqd.model import validate_spec
from phxqd.schedules_model import MIN_EVERY, Schedule, ScheduleSpec, validate_name

MACROS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
#: catch-up `all` runs at most this many missed times (the newest); older ones are missed
MAX_CATCH_UP = 100
#: how late a fire time may be and still count as on time (not missed): half the
#: interval to the next fire time, at most this many seconds
MAX_GRACE = 60.0
#: fire times counted one by one after a downtime, at most (a cron firing every second
#: over a week of downtime would be 600,000): beyond it `missed` says at least this many
MAX_COUNTED = 20_000


class Due(msgspec.Struct, frozen=True):
    """What a schedule should do now: fire these times (oldest first; empty: none), and
    how many earlier fire times passed without a run of their own."""

    times: list[float]
    missed: int
    #: the newest fire time that has passed (recorded even when nothing fires)
    latest: float | None


def cron_text(expr: str) -> str:
    """The expression cronsim reads: a macro spelled out, spaces normalised."""
    expr = " ".join(expr.split())
    return MACROS.get(expr.lower(), expr)


def zone(name: str | None) -> tzinfo:
    """The zone of `name`, or the machine's (`TZ`, else /etc/localtime, else UTC)."""
    if name is not None:
        return ZoneInfo(name)
    tz = os.environ.get("TZ", "").lstrip(":")
    if tz:
        try:
            return ZoneInfo(tz)
        except (ZoneInfoNotFoundError, ValueError):
            pass
    try:
        with open("/etc/localtime", "rb") as f:
            return ZoneInfo.from_file(f, key="localtime")
    except (OSError, ValueError):
        return UTC


def check(spec: ScheduleSpec) -> str | None:
    """Why `spec` cannot be a schedule, or None (a one-line reason for the user)."""
    if why := validate_name(spec.name):
        return why
    if (spec.cron is None) == (spec.every is None):
        return "a schedule needs exactly one of --cron and --every"
    if spec.every is not None and not (MIN_EVERY <= spec.every < 10 * 365 * 86400):
        return f"--every must be at least {MIN_EVERY:g}s and under ten years"
    if spec.tz is not None:
        if spec.cron is None:
            return "--tz goes with --cron (an --every schedule counts seconds, in no zone)"
        try:
            ZoneInfo(spec.tz)
        except (ZoneInfoNotFoundError, ValueError):
            return f"--tz: unknown time zone {spec.tz!r} (an IANA name such as Europe/Riga)"
    if spec.cron is not None:
        try:
            next(CronSim(cron_text(spec.cron), datetime.now(UTC)))
        except (CronSimError, StopIteration) as e:
            why = str(e) or "it never fires"
            return f"--cron {spec.cron!r}: {why}"
    if spec.job.key is not None:
        return "a schedule's jobs get their keys from phxqd (the schedule's name and fire time)"
    if spec.job.delay is not None or spec.job.run_at is not None or spec.job.after:
        return "a schedule's jobs start at their fire time: no --delay, --at or --after"
    return validate_spec(spec.job)


def fire_key(name: str, at: float) -> str:
    """The key of the job of `name`'s firing at `at`: one job per schedule and fire time,
    whichever node fires it and however often it is tried."""
    stamp = datetime.fromtimestamp(at, UTC).isoformat(timespec="milliseconds")
    return f"schedule:{name}@{stamp.replace('+00:00', 'Z')}"


def run_key(name: str, now: float) -> str:
    """The key of a `schedule run NAME` job (not a fire time: it fires nothing early)."""
    return fire_key(name, now).replace("@", "!run@", 1)


def after(spec: ScheduleSpec, anchor: float, t: float) -> Iterator[float]:
    """Fire times strictly after `t`, in order (forever, unless a cron never fires)."""
    if spec.every is not None:
        k = max(math.floor((t - anchor) / spec.every) + 1, 1)
        while True:
            at = anchor + k * spec.every
            if at > t:
                yield at
            k += 1
    else:
        assert spec.cron is not None
        where = zone(spec.tz)
        it = CronSim(cron_text(spec.cron), datetime.fromtimestamp(t, where))
        try:
            for dt in it:
                yield dt.timestamp()
        except CronSimError:
            return


def next_after(spec: ScheduleSpec, anchor: float, t: float) -> float | None:
    return next(after(spec, anchor, t), None)


def upcoming(s: Schedule, now: float, n: int = 5) -> list[float]:
    """The next `n` fire times after `now` (and after the last recorded one)."""
    start = max(now, s.last_fire or -math.inf, s.anchor)
    out: list[float] = []
    for at in after(s.spec, s.anchor, start):
        out.append(at)
        if len(out) >= n:
            break
    return out


def next_fire(s: Schedule) -> float | None:
    """The first fire time not yet recorded (it may have passed: then it is due)."""
    return next_after(s.spec, s.anchor, max(s.last_fire or -math.inf, s.anchor))


def due(s: Schedule, now: float, late_ok: bool = False) -> Due:
    """What `s` should fire at `now`, by its catch-up policy.

    The fire times after the last recorded one (and after the anchor) up to `now` are due.
    The newest is on time if it passed at most `grace` ago (half the interval to the next
    fire time, at most MAX_GRACE): a running daemon fires it then, whatever the policy.
    Otherwise phxqd was down (or the machine asleep) over them, and the policy says:
    `skip` runs none of them (the next future time is the next run), `once` runs one job
    for all of them (the newest's), `all` runs each (the newest MAX_CATCH_UP; older ones
    are missed). `late_ok`: the newest counts as on time however late (a firing that
    waited for the previous run to end, overlap `queue`).
    """
    start = max(s.last_fire or -math.inf, s.anchor)
    newest: deque[float] = deque(maxlen=MAX_CATCH_UP)
    count = 0
    if s.spec.every is not None:
        every = s.spec.every
        k_lo = max(math.floor((start - s.anchor) / every) + 1, 1)
        k_hi = math.floor((now - s.anchor) / every)
        count = max(k_hi - k_lo + 1, 0)
        newest.extend(
            s.anchor + k * every for k in range(max(k_lo, k_hi - MAX_CATCH_UP + 1), k_hi + 1)
        )
        newest = deque((t for t in newest if start < t <= now), maxlen=MAX_CATCH_UP)
        count = min(count, MAX_COUNTED) if newest else 0
    else:
        for at in after(s.spec, s.anchor, start):
            if at > now:
                break
            newest.append(at)
            count += 1
            if count >= MAX_COUNTED:
                break
    if not newest:
        return Due([], 0, None)
    latest = newest[-1]
    nxt = next_after(s.spec, s.anchor, latest)
    grace = MAX_GRACE if nxt is None else min(MAX_GRACE, (nxt - latest) / 2)
    on_time = late_ok or now - latest <= grace
    policy = s.spec.catch_up
    if policy == "all":
        times = list(newest)
    elif policy == "once" or on_time:
        times = [latest]
    else:
        times = []
    return Due(times, count - len(times), latest)
