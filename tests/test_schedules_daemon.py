"""Schedules and queue rates on a real phxqd: `--every 1s` and cron-with-seconds schedules
fire ordinary jobs keyed by their fire time; a kill -9 right before and right after a
firing is journaled neither loses nor doubles a fire time; a downtime over several fire
times is caught up by each policy; overlap policies; a start rate held under a burst of
1,000 submits.

The kills use the daemon's test-only fault point: with `PHXQ_TEST_FAULT` set to
`schedule-before-fire` (or `schedule-after-fire`), phxqd sends itself SIGKILL right
before the firing goes to the backend (right after it is durable). Downtimes are real:
phxqd is stopped for a few one-second periods; no clock is faked.
"""

from __future__ import annotations

import json
import signal
import time
from datetime import datetime
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Daemon, until
from tests.test_metrics import samples

SOON = 20.0


def lines(d: Daemon, *args: str) -> list[dict[str, Any]]:
    """A `--json` command's JSON lines."""
    return [json.loads(line) for line in d.ok("--json", *args).splitlines()]


def fire_time(key: str) -> float:
    stamp = key.split("@", 1)[1].replace("Z", "+00:00")
    return datetime.fromisoformat(stamp).timestamp()


def fired(d: Daemon, name: str) -> dict[float, list[dict[str, Any]]]:
    """The schedule's jobs by fire time (a list each, to see any fire time twice)."""
    out: dict[float, list[dict[str, Any]]] = {}
    for job in lines(d, "list", "--limit", "100000"):
        key = job["key"] or ""
        if key.startswith(f"schedule:{name}@"):
            out.setdefault(fire_time(key), []).append(job)
    return out


def once_each(by_time: dict[float, list[dict[str, Any]]]) -> list[float]:
    """The fire times, checked to have one job each."""
    assert all(len(jobs) == 1 for jobs in by_time.values()), by_time
    return sorted(by_time)


def start(tmp: Path, **env: str) -> Daemon:
    d = Daemon(tmp, workers=4)
    d.env["TZ"] = "UTC"
    d.env.update(env)
    return d.start()


def test_every_second_and_cron_seconds_fire_ordinary_jobs(tmp_path: Path) -> None:
    d = start(tmp_path)
    # --overlap allow: on a loaded machine a `true` may still be waiting a second later
    allow = ("--overlap", "allow")
    d.ok(
        "schedule", "add", "tick", "--every", "1s", *allow, "--catch-up", "all",
        "--label", "ticker", "--", "true",
    )  # fmt: skip
    d.ok(
        "schedule",
        "add",
        "even",
        "--cron",
        "*/2 * * * * *",
        *allow,
        "--queue",
        "cronq",
        "--",
        "true",
    )
    until(lambda: len(fired(d, "tick")) >= 3 and len(fired(d, "even")) >= 2, SOON, "fires")

    ticks = once_each(fired(d, "tick"))
    assert all(b - a == 1.0 for a, b in pairwise(ticks)), ticks
    assert all(t == int(t) for t in ticks)  # --every counts from a whole second
    evens = once_each(fired(d, "even"))
    assert all(int(t) == t and int(t) % 2 == 0 for t in evens), evens
    jobs = [j for js in fired(d, "tick").values() for j in js]
    assert {(j["label"], j["queue"]) for j in jobs} == {("ticker", "default")}
    assert {j["queue"] for js in fired(d, "even").values() for j in js} == {"cronq"}
    assert d.ctl("wait", *(str(j["id"]) for j in jobs)).returncode == 0

    newest = max(fired(d, "tick"))
    show = d.json("schedule", "show", "tick")
    assert show["last_fire"] >= newest and show["fired"] >= len(ticks)
    assert len(show["next_fires"]) == 5 and show["next_fires"][0] > show["last_fire"]
    assert [b - a for a, b in zip(show["next_fires"], show["next_fires"][1:], strict=False)] == [
        1.0
    ] * 4
    status = d.json("status")
    assert status["schedules"] == 2
    assert {n["schedule"] for n in status["next_fires"]} == {"tick", "even"}
    assert "schedules: 2; next: " in d.ok("status")
    metrics = samples(d.ok("metrics"))
    assert metrics[("phxq_schedule_last_fire_timestamp", (("schedule", "even"),))] > 0
    assert metrics[("phxq_schedule_missed_total", (("schedule", "tick"),))] == 0
    assert metrics[("phxq_schedule_fired_total", (("schedule", "tick"),))] >= len(ticks)

    # pause: no fire while paused, and on resume the times passed while paused are not
    # caught up (even with catch-up `all`): they are counted as missed
    d.ok("schedule", "pause", "tick")
    paused_at = time.time()
    time.sleep(2.5)  # two periods and a half, paused
    assert d.json("schedule", "show", "tick")["next_fires"] == []
    resumed_at = time.time()
    d.ok("schedule", "resume", "tick")
    until(lambda: max(fired(d, "tick")) > resumed_at, SOON, "a fire after resume")
    during = [t for t in fired(d, "tick") if paused_at + 1.0 < t < resumed_at - 0.5]
    assert during == [], during
    assert d.json("schedule", "show", "tick")["missed"] >= 1
    # run NAME: a job now, with a key of its own, the fire times untouched
    ran = d.json("schedule", "run", "even")
    assert ran["key"].startswith("schedule:even!run@")
    d.ok("schedule", "remove", "even")
    assert [s["name"] for s in lines(d, "schedule", "list")] == ["tick"]


@pytest.mark.parametrize("fault", ["schedule-before-fire", "schedule-after-fire"])
def test_a_kill_at_a_firing_neither_loses_nor_doubles_it(tmp_path: Path, fault: str) -> None:
    """phxqd SIGKILLs itself at its first firing, right before it is handed to the backend
    or right after it is durable; the next phxqd fires each fire time exactly once (catch-up
    `all`: every time since the schedule was added gets its job)."""
    d = start(tmp_path, PHXQ_TEST_FAULT=fault)
    # --overlap allow: the job of the killed daemon's firing is still waiting at restart
    d.ok(
        "schedule",
        "add",
        "tick",
        "--every",
        "1s",
        "--catch-up",
        "all",
        "--overlap",
        "allow",
        "--",
        "true",
    )
    assert d.proc is not None
    assert d.wait(SOON) == -signal.SIGKILL
    assert f"test fault point {fault}" in d.logtext()
    del d.env["PHXQ_TEST_FAULT"]
    restarted = time.time()
    d.start()
    until(lambda: len(fired(d, "tick")) >= 3, SOON, "three fire times")
    times = once_each(fired(d, "tick"))
    assert all(b - a == 1.0 for a, b in pairwise(times)), (times, d.logtext())
    first = fired(d, "tick")[times[0]][0]
    if fault == "schedule-after-fire":  # journaled by the killed daemon: kept, not redone
        assert first["created_at"] < restarted
    else:  # never journaled: fired by the new daemon, as a caught-up time
        assert first["created_at"] >= restarted
    before = len(fired(d, "tick"))
    show = d.json("schedule", "show", "tick")
    assert before <= show["fired"] <= len(fired(d, "tick")) and show["missed"] == 0


def test_downtime_over_several_fire_times_is_caught_up_by_policy(tmp_path: Path) -> None:
    """Three `--every 1s` schedules, phxqd stopped for 3.5 s (a clean stop: the schedules
    come back from the snapshot): `all` runs every missed time, `once` one job for them,
    `skip` none (the next future time is its next run)."""
    d = start(tmp_path)
    for policy in ("skip", "once", "all"):
        d.ok(
            "schedule", "add", policy, "--every", "1s", "--catch-up", policy,
            "--overlap", "allow", "--", "true",
        )  # fmt: skip
    until(lambda: all(fired(d, p) for p in ("skip", "once", "all")), SOON, "first fires")
    assert d.stop() == 0
    stopped = time.time()
    time.sleep(3.5)  # three or four fire times pass
    restarted = time.time()
    d.start()
    until(
        lambda: all(max(fired(d, p)) > restarted for p in ("skip", "once", "all")),
        SOON,
        "fires after the restart",
    )
    # every fire time down: after the last one fired before the stop, before the restart
    down = {p: [t for t in once_each(fired(d, p)) if stopped < t <= restarted] for p in ("all",)}

    everything = once_each(fired(d, "all"))
    assert all(b - a == 1.0 for a, b in pairwise(everything))
    assert len(down["all"]) >= 3

    # `once`: one job for the missed times (the newest's, which may be one that passed
    # while phxqd was starting), then every time on; the others counted as missed
    once = once_each(fired(d, "once"))
    before = max(t for t in once if t < stopped)
    later = [t for t in once if t > stopped]
    assert later[0] - before >= 3, once  # a gap: at least two fire times got no run
    assert all(b - a == 1.0 for a, b in pairwise(later)), once
    assert d.json("schedule", "show", "once")["missed"] == later[0] - before - 1

    skip = once_each(fired(d, "skip"))
    # a time that passed while phxqd was down is never run (one just before the restart
    # might still count as on time: half a period of grace)
    assert not [t for t in skip if stopped < t <= restarted - 0.5], skip
    assert d.json("schedule", "show", "skip")["missed"] >= 2
    missed = samples(d.ok("metrics"))[("phxq_schedule_missed_total", (("schedule", "skip"),))]
    assert missed >= 2


def test_overlap_skip_and_queue_never_run_two_at_once(tmp_path: Path) -> None:
    """Runs of 2.2 s every second: `skip` drops the fire times that come while a run is
    going; `queue` runs the next fire time once the previous run has ended."""
    d = start(tmp_path)
    for policy in ("skip", "queue"):
        d.ok("schedule", "add", policy, "--every", "1s", "--overlap", policy, "--", "sleep", "2.2")

    def runs(name: str) -> list[dict[str, Any]]:
        return sorted((js[0] for js in fired(d, name).values()), key=lambda j: j["id"])

    until(lambda: all(len(runs(p)) >= 2 for p in ("skip", "queue")), SOON, "second runs")
    for policy in ("skip", "queue"):
        first, second = runs(policy)[:2]
        done = d.json("wait", str(first["id"]))
        assert second["created_at"] >= done["finished_at"] - 0.01, (policy, done, second)
    # `queue` ran a fire time that came during the first run (the newest of them), once
    # that ended; `skip` dropped those and ran the next one after
    for policy, late in (("queue", True), ("skip", False)):
        first, second = runs(policy)[:2]
        finished = d.job(first["id"])["finished_at"]
        assert (fire_time(second["key"]) < finished) == late, (policy, first, second)
    assert d.json("schedule", "show", "skip")["missed"] >= 2


def test_a_rate_limit_holds_under_a_burst_of_1000_submits(tmp_path: Path) -> None:
    d = start(tmp_path)
    d.ok("queue", "set", "slow", "--rate", "40/s")
    batch = "\n".join(json.dumps({"argv": ["true"], "queue": "slow"}) for _ in range(1000))
    d.ok("submit", "--batch", "-", input=batch)
    until(lambda: d.json("status")["counts"]["completed"] >= 60, SOON, "60 jobs done")
    [queue] = lines(d, "queue", "list")
    assert (queue["rate"], queue["burst"], queue["rate_from"]) == (40.0, 1, "runtime")
    d.ok("pause", "slow")
    starts = sorted(j["started_at"] for j in lines(d, "list", "--limit", "2000") if j["started_at"])
    assert 60 <= len(starts) < 1000
    # in every window, at most one more start than the rate allows (a start time is read
    # after the spawn, so two may land a little closer than the bucket let them go)
    for i in range(len(starts)):
        for j in range(i + 1, len(starts)):
            assert j - i <= 1 + 40 * (starts[j] - starts[i]) + 2, (i, j, starts[i], starts[j])
    # journaled: the rate survives a kill -9, and `default` takes it back
    d.kill9()
    d.start()
    [queue] = lines(d, "queue", "list")
    assert queue["rate"] == 40.0
    assert "40/s*" in d.ok("queue", "list")
    [queue] = lines(d, "queue", "set", "slow", "--rate", "default")
    assert queue["rate"] is None


def test_bad_schedules_get_one_line_errors(tmp_path: Path) -> None:
    d = start(tmp_path)
    cases = [
        (["schedule", "add", "x", "--cron", "61 * * * *", "--", "true"], 2, "--cron"),
        (["schedule", "add", "x", "--cron", "@daily", "--tz", "No/Where", "--", "true"], 2, "zone"),
        (["schedule", "add", "x", "--every", "0.2s", "--", "true"], 2, "at least 1s"),
        (["schedule", "add", "x", "--every", "1m"], 2, "needs a command"),
        (["schedule", "add", "x", "--every", "1m", "--call", "m:f", "--", "ls"], 2, "not both"),
        (["schedule", "show", "nope"], 4, "no schedule 'nope'"),
        (["schedule", "remove", "nope"], 4, "no schedule 'nope'"),
        (["schedule", "run", "nope"], 4, "no schedule 'nope'"),
        (["queue", "set", "q", "--rate", "fast"], 2, "N/s"),
        (["queue", "set", "q"], 2, "--concurrency N, --rate N/s"),
    ]
    for args, code, text in cases:
        r = d.ctl(*args)
        assert (r.returncode, r.stdout) == (code, ""), (args, r)
        assert text in r.stderr and r.stderr.count("\n") == 1, (args, r.stderr)
    # a schedule of the config file is the file's
    d.config.write_text('[schedules.conf]\nevery = "1h"\ncommand = ["true"]\n')
    assert d.proc is not None
    d.proc.send_signal(signal.SIGHUP)
    until(lambda: "conf" in d.ok("schedule", "list"), SOON, "the reload")
    r = d.ctl("schedule", "add", "conf", "--every", "1m", "--", "true")
    assert r.returncode == 5 and "phxqd.toml" in r.stderr
    assert d.ctl("schedule", "remove", "conf").returncode == 5
    assert d.json("schedule", "pause", "conf")["paused"]  # pausing is the operator's
