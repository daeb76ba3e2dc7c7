"""The pure schedule logic (phxqd/schedules.py) against cronsim with fixed clocks: fire
times, DST gaps and repeats, catch-up after a downtime, and the checks of a spec. No
daemon, no clock: every time is an argument (tests/test_schedules_daemon.py runs them)."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime
from itertools import pairwise
from zoneinfo import ZoneInfo

import msgspec
import pytest

from phxqd.config import ConfigError, parse
from phxqd.local.state import State
from phxqd.model import JobSpec
from phxqd.rates import parse_rate
from phxqd.schedules import (
    MAX_CATCH_UP,
    MAX_COUNTED,
    after,
    check,
    cron_text,
    due,
    fire_key,
    run_key,
    upcoming,
)
from phxqd.schedules_model import Schedule, ScheduleSpec

NY = ZoneInfo("America/New_York")
JOB = JobSpec(argv=["true"])


def at(*parts: int, tz: ZoneInfo = NY, fold: int = 0) -> float:
    return datetime(*parts, tzinfo=tz, fold=fold).timestamp()  # type: ignore[misc]


def cron(expr: str, tz: str | None = "America/New_York", **kw: object) -> ScheduleSpec:
    return ScheduleSpec("s", JOB, cron=expr, tz=tz, **kw)  # type: ignore[arg-type]


def fires(spec: ScheduleSpec, start: float, n: int) -> list[float]:
    out = []
    for t in after(spec, 0.0, start):
        out.append(t)
        if len(out) == n:
            break
    return out


def local(t: float) -> str:
    return datetime.fromtimestamp(t, NY).strftime("%m-%d %H:%M:%S %Z")


# ------------------------------------------------------------------ cron syntax


def test_macros_names_ranges_steps_and_seconds() -> None:
    assert cron_text("@daily") == "0 0 * * *"
    assert cron_text(" @Hourly ") == "0 * * * *"
    start = at(2026, 1, 5, 12, 0)  # a Monday, noon
    daily = fires(cron("@daily"), start, 2)
    assert [local(t) for t in daily] == ["01-06 00:00:00 EST", "01-07 00:00:00 EST"]
    weekdays = fires(cron("0 9 * * mon-fri"), start, 6)
    assert [local(t)[:5] for t in weekdays] == [
        "01-06", "01-07", "01-08", "01-09", "01-12", "01-13",
    ]  # fmt: skip
    stepped = fires(cron("*/20 8-9 * jan *"), start, 3)
    assert [local(t) for t in stepped] == [
        "01-06 08:00:00 EST", "01-06 08:20:00 EST", "01-06 08:40:00 EST",
    ]  # fmt: skip
    seconds = fires(cron("*/15 * * * * *"), start, 3)  # six fields: seconds first
    assert [t - start for t in seconds] == [15.0, 30.0, 45.0]


def test_every_counts_from_its_anchor() -> None:
    spec = ScheduleSpec("s", JOB, every=60.0)
    assert list(zip(range(3), after(spec, 1000.0, 1000.0), strict=False)) == [
        (0, 1060.0), (1, 1120.0), (2, 1180.0),
    ]  # fmt: skip
    assert next(after(spec, 1000.0, 1119.5)) == 1120.0


# ------------------------------------------------------------------ DST


def test_a_fixed_time_in_the_spring_gap_fires_once_right_after_it() -> None:
    """2026-03-08 in New York: 02:00 EST becomes 03:00 EDT. A job at 02:30 runs at 03:00
    EDT that day (as Debian cron does), once, and at 02:30 EST/EDT on the days around."""
    times = fires(cron("30 2 * * *"), at(2026, 3, 7, 0, 0), 3)
    assert [local(t) for t in times] == [
        "03-07 02:30:00 EST",
        "03-08 03:00:00 EDT",
        "03-09 02:30:00 EDT",
    ]


def test_a_fixed_time_in_the_autumn_repeat_fires_once() -> None:
    """2026-11-01: 02:00 EDT becomes 01:00 EST, so 01:30 happens twice; a job at 01:30
    runs at the first (EDT) only."""
    times = fires(cron("30 1 * * *"), at(2026, 10, 31, 12, 0), 2)
    assert times[0] == at(2026, 11, 1, 1, 30, fold=0)
    assert local(times[0]) == "11-01 01:30:00 EDT"
    assert local(times[1]) == "11-02 01:30:00 EST"


def test_a_wildcard_hour_fires_by_the_clock_as_lived() -> None:
    """`*/30 * * * *` fires every real half hour across both transitions: the repeated
    hour twice, nothing in the gap, never two fires closer than 30 minutes."""
    autumn = fires(cron("*/30 * * * *"), at(2026, 11, 1, 0, 50), 5)
    assert [local(t) for t in autumn] == [
        "11-01 01:00:00 EDT",
        "11-01 01:30:00 EDT",
        "11-01 01:00:00 EST",
        "11-01 01:30:00 EST",
        "11-01 02:00:00 EST",
    ]
    spring = fires(cron("*/30 * * * *"), at(2026, 3, 8, 1, 10), 3)
    assert [local(t) for t in spring] == [
        "03-08 01:30:00 EST",
        "03-08 03:00:00 EDT",
        "03-08 03:30:00 EDT",
    ]
    for times in (autumn, spring):
        assert all(b - a == 1800 for a, b in pairwise(times))


def test_six_fields_and_every_keep_to_the_clock_as_lived() -> None:
    """A six-field expression gets no Debian-cron fix-up: 02:30 does not happen on the
    day of the gap, 01:30 happens twice on the day of the repeat; `--every` counts
    seconds through both."""
    spring = fires(cron("0 30 2 * * *"), at(2026, 3, 7, 0, 0), 2)
    assert [local(t) for t in spring] == ["03-07 02:30:00 EST", "03-09 02:30:00 EDT"]
    autumn = fires(cron("0 30 1 * * *"), at(2026, 10, 31, 12, 0), 2)
    assert [local(t) for t in autumn] == ["11-01 01:30:00 EDT", "11-01 01:30:00 EST"]
    hourly = ScheduleSpec("s", JOB, every=3600.0)
    start = at(2026, 11, 1, 0, 30)
    times = list(zip(range(3), after(hourly, start, start), strict=False))
    assert [local(t) for _, t in times] == [
        "11-01 01:30:00 EDT", "11-01 01:30:00 EST", "11-01 02:30:00 EST",
    ]  # fmt: skip


def test_the_zone_decides_the_utc_instant() -> None:
    riga = fires(cron("0 3 * * *", tz="Europe/Riga"), at(2026, 5, 31, 23, 0, tz=UTC), 1)
    assert riga == [at(2026, 6, 1, 0, 0, tz=UTC)]  # 03:00 EEST is 00:00 UTC


# ------------------------------------------------------------------ catch-up


def schedule(spec: ScheduleSpec, anchor: float, last_fire: float | None) -> Schedule:
    return Schedule(spec, anchor, last_fire=last_fire)


def every(policy: str) -> ScheduleSpec:
    return ScheduleSpec("s", JOB, every=1.0, catch_up=policy)  # type: ignore[arg-type]


def test_an_on_time_fire_runs_whatever_the_policy() -> None:
    for policy in ("skip", "once", "all"):
        plan = due(schedule(every(policy), 100.0, 104.0), 105.2)
        assert (plan.times, plan.missed, plan.latest) == ([105.0], 0, 105.0)
        assert due(schedule(every(policy), 100.0, 105.0), 105.9).latest is None


@pytest.mark.parametrize(
    ("policy", "times", "missed"),
    [
        ("skip", [], 10),
        ("once", [110.0], 9),
        ("all", [float(t) for t in range(101, 111)], 0),
    ],
)
def test_after_a_downtime_the_policy_decides(policy: str, times: list[float], missed: int) -> None:
    """Down from just after 100 to 110.7: ten fire times passed, the newest 0.7 s ago,
    later than half an interval: none of them is on time."""
    plan = due(schedule(every(policy), 0.0, 100.0), 110.7)
    assert (plan.times, plan.missed, plan.latest) == (times, missed, 110.0)


def test_catch_up_all_is_bounded() -> None:
    plan = due(schedule(every("all"), 0.0, 100.0), 100.0 + 5000.3)
    assert len(plan.times) == MAX_CATCH_UP
    assert plan.times[-1] == 5100.0 and plan.times[0] == 5100.0 - MAX_CATCH_UP + 1
    assert plan.missed == 5000 - MAX_CATCH_UP


def test_cron_catch_up_counts_the_missed_hours() -> None:
    hourly = cron("0 * * * *", catch_up="once")
    plan = due(schedule(hourly, 0.0, at(2026, 1, 5, 0, 0)), at(2026, 1, 5, 5, 10))
    assert plan.times == [at(2026, 1, 5, 5, 0)] and plan.missed == 4
    # a cron firing every second over a week of downtime is counted up to MAX_COUNTED
    busy = cron("* * * * * *", catch_up="skip")
    plan = due(schedule(busy, 0.0, at(2026, 1, 5, 0, 0)), at(2026, 1, 12, 0, 0))
    assert plan.times == [] and plan.missed == MAX_COUNTED


def test_a_late_firing_that_waited_for_the_previous_run_is_on_time() -> None:
    plan = due(schedule(every("skip"), 0.0, 100.0), 101.8, late_ok=False)
    assert (plan.times, plan.missed) == ([], 1)
    plan = due(schedule(every("skip"), 0.0, 100.0), 101.8, late_ok=True)
    assert (plan.times, plan.missed) == ([101.0], 0)


def test_no_fire_time_before_the_anchor_is_missed() -> None:
    """A schedule added (or retimed) at 1000 owes nothing for the times before."""
    plan = due(schedule(every("all"), 1000.0, None), 1000.4)
    assert plan.latest is None
    assert upcoming(schedule(every("all"), 1000.0, None), 1000.4, 3) == [1001.0, 1002.0, 1003.0]


# ------------------------------------------------------------------ keys, checks


def test_keys_name_the_schedule_and_the_fire_time() -> None:
    t = at(2026, 12, 6, 3, 0, tz=UTC)
    assert fire_key("nightly", t) == "schedule:nightly@2026-12-06T03:00:00.000Z"
    assert fire_key("nightly", t + 0.25) != fire_key("nightly", t)
    assert run_key("nightly", t) == "schedule:nightly!run@2026-12-06T03:00:00.000Z"


@pytest.mark.parametrize(
    ("spec", "why"),
    [
        (ScheduleSpec("s", JOB), "exactly one of --cron and --every"),
        (ScheduleSpec("s", JOB, cron="* * * * *", every=5.0), "exactly one"),
        (ScheduleSpec("s", JOB, cron="61 * * * *"), "--cron '61 * * * *'"),
        (ScheduleSpec("s", JOB, cron="* * *"), "--cron '* * *'"),
        (ScheduleSpec("s", JOB, cron="0 0 30 2 *"), "--cron"),
        (ScheduleSpec("s", JOB, cron="@daily", tz="Mars/Olympus"), "unknown time zone"),
        (ScheduleSpec("s", JOB, every=0.5), "--every must be at least 1s"),
        (ScheduleSpec("s", JOB, every=5.0, tz="UTC"), "--tz goes with --cron"),
        (ScheduleSpec("a b", JOB, every=5.0), "schedule names"),
        (ScheduleSpec("s", JobSpec(argv=["x"], key="k"), every=5.0), "get their keys"),
        (ScheduleSpec("s", JobSpec(argv=["x"], delay=3), every=5.0), "no --delay"),
        (ScheduleSpec("s", JobSpec(), every=5.0), "needs a command"),
    ],
)
def test_bad_specs_are_refused_with_a_reason(spec: ScheduleSpec, why: str) -> None:
    reason = check(spec)
    assert reason is not None and why in reason, reason


def test_good_specs_pass() -> None:
    assert check(ScheduleSpec("nightly-1.x", JOB, cron="@daily")) is None
    assert check(ScheduleSpec("s", JOB, cron="*/5 * * * * *", tz="Europe/Riga")) is None
    assert check(ScheduleSpec("s", JOB, every=3600.0, catch_up="all", overlap="queue")) is None


# ------------------------------------------------------------------ config


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ('[schedules.a]\ncron = "61 * * * *"\ncommand = ["true"]\n', "`[schedules.a]`: --cron"),
        ('[schedules.a]\nevery = "soon"\ncommand = ["true"]\n', "not a duration: 'soon'"),
        ("[schedules.a]\nevery = 60\n", "needs a command"),
        ('[schedules.a]\nevery = 60\ncomand = ["x"]\n', "unknown key `comand` in [schedules.a]"),
        ('[schedules.a]\nevery = 60\ncommand = "x"\ncatch_up = "some"\n', "`schedules.a.catch_up`"),
        ('[schedules."a b"]\nevery = 60\ncommand = "x"\n', "schedule names are"),
        ('[queues.q]\nrate = "fast"\n', "`queues.q.rate`: a rate is N/s"),
        ("[queues.q]\nburst = 0\n", "`queues.q.burst` must be an integer of at least 1"),
    ],
)
def test_config_tables_are_checked(text: str, why: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse(text.encode(), "phxqd.toml")
    assert why in str(e.value), str(e.value)


def test_config_tables_make_schedules_and_rates() -> None:
    cfg = parse(
        b'[schedules.nightly]\ncron = "@daily"\ntz = "Europe/Riga"\ncommand = "make report"\n'
        b'catch_up = "once"\nqueue = "reports"\n'
        b'[schedules.ping]\nevery = "5m"\ncall = "app.health:ping"\nkwargs = { deep = true }\n'
        b'[queues.q]\nrate = "30/m"\nburst = 3\n',
        "phxqd.toml",
    )
    nightly = cfg.schedules["nightly"].spec("nightly", "/home/u")
    assert (nightly.cron, nightly.tz, nightly.catch_up) == ("@daily", "Europe/Riga", "once")
    assert nightly.job.argv == ["/bin/sh", "-c", "make report"]
    assert (nightly.job.queue, nightly.job.cwd) == ("reports", "/home/u")
    ping = cfg.schedules["ping"].spec("ping", "/")
    assert ping.every == 300.0 and ping.job.call is not None
    assert ping.job.call.func == "app.health:ping" and ping.job.call.kwargs == {"deep": True}
    assert (parse_rate(cfg.queues["q"].rate or ""), cfg.queues["q"].burst) == (0.5, 3)


def test_the_client_never_imports_the_cron_library() -> None:
    """phxqctl starts with the standard library (and msgspec for the Python API): the
    cron library and the pure schedule logic are the daemon's."""
    code = (
        "import sys, phxqctl.cli, phxqctl.client, phxqd.protocol\n"
        "assert not {'cronsim', 'phxqd.schedules', 'zoneinfo'} & set(sys.modules)"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_a_firing_the_journal_did_not_keep_is_taken_back_whole() -> None:
    """A catch-up `all` firing is several records applied together; if the disk refuses
    them, `take_back` removes every job and puts the last fire time back, so the times
    fire again."""
    state = State()
    spec = ScheduleSpec("s", JOB, every=1.0, catch_up="all", overlap="allow")
    for event in state.set_schedule(spec, 100.0):
        state.apply(event)
    state.apply(state.fire("s", [101.0], 101.0, 0, fire_key)[0][0])
    kept = dict(msgspec.structs.asdict(state.schedules["s"]))
    events, fired = state.fire("s", [102.0, 103.0, 104.0], 104.5, 0, fire_key)
    assert len(fired.jobs) == 3
    for event in events:
        state.apply(event)
    assert state.schedules["s"].last_fire == 104.0
    state.take_back(j.id for j in fired.jobs)
    assert msgspec.structs.asdict(state.schedules["s"]) == kept
    assert sorted(state.jobs) == [kept["last_job"]]
