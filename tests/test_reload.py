"""Every key docs/configuration.md says a reload applies at once takes effect without a
restart: a real phxqd starts with one value, its config file is rewritten with another,
it gets SIGHUP, and the new value is then seen at work through phxqctl or the daemon's
behaviour (jobs, hooks, workers, its log, what it tells systemd), never by reading its
internals.

Each case observes the old value first where that is cheap, which shows the observation
tells the two apart; where the old value would take long to show (a grace period, a
timeout), the new one is chosen so that a daemon still using the old value fails the
check well within its time bounds. The cases' keys are checked against the docs' list, so
a key documented as reloadable without a case here fails.
"""

from __future__ import annotations

import dataclasses
import json
import re
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from phxqd import settings
from phxqd.config import Config
from tests.conftest import Daemon, until
from tests.test_faults import build_fsync_shim
from tests.test_metrics import samples
from tests.test_systemd import Notifications, ready

ROOT = str(Path(__file__).resolve().parent.parent)
DOC = Path(ROOT) / "docs" / "configuration.md"
#: seconds a condition the new value brings about may take to show: generous (a loaded
#: machine), and well below what the old value would take where time is what is checked
SOON = 15.0


class Run:
    """One daemon under test, with the config file the test rewrites and systemd's end of
    NOTIFY_SOCKET, which says when a reload is done whatever phxqd's log level is."""

    def __init__(self, tmp: Path, base: dict[str, Any]) -> None:
        self.tmp = tmp
        self.base = base
        self.d = Daemon(tmp / "d", workers=None)  # no --workers: the file decides
        self.notes = Notifications(tmp)
        self.d.env["NOTIFY_SOCKET"] = self.notes.address
        #: where the hooks of these tests write (hooks inherit phxqd's environment)
        self.hooks = tmp / "hooks"
        self.hooks.mkdir()
        self.d.env["HOOK_OUT"] = str(self.hooks)
        self.d.env.pop("PHXQ_TEST_PYTHON", None)  # the test's interpreter sets it, alone
        self._names = 0

    def write_config(self, key: str, value: Any) -> None:
        self.d.config.write_text(toml({**self.base, key: value}))

    def reload(self, key: str, value: Any) -> None:
        self.write_config(key, value)
        mark = self.notes.count()
        assert self.d.proc is not None
        self.d.proc.send_signal(signal.SIGHUP)
        reloading = self.notes.wait_for(lambda m: "RELOADING" in m, mark)
        done = self.notes.fields(self.notes.wait_for(ready, reloading))
        assert not done.get("STATUS", "").startswith("reload failed"), done["STATUS"]

    def fresh(self, name: str) -> Path:
        """A path in the test's directory not used before (one per observation)."""
        self._names += 1
        return self.tmp / f"{name}-{self._names}"

    def metric(self, name: str, **labels: str) -> float:
        return samples(self.d.ok("metrics")).get((name, tuple(sorted(labels.items()))), 0.0)

    def call(self, func: str, *args: Any, cwd: str = ROOT) -> int:
        argv = ["submit", "--cwd", cwd, "--call", func, "--args", json.dumps(list(args))]
        return int(self.d.ok(*argv))

    def result(self, job_id: int) -> Any:
        self.d.ok("wait", str(job_id))
        return self.d.job(job_id)["result"]


def toml(values: dict[str, Any]) -> str:
    """A config file: JSON's numbers, strings and arrays are TOML's too; `queues` becomes
    its tables, after every plain key; None leaves the key out (its default)."""
    nested = ("queues", "schedules")
    plain = [
        f"{k} = {json.dumps(v)}\n" for k, v in values.items() if k not in nested and v is not None
    ]
    tables = [
        f"[{kind}.{name}]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in table.items())
        for kind in nested
        for name, table in (values.get(kind) or {}).items()
    ]
    return "".join(plain + tables)


def hook(tag: str) -> list[str]:
    """A hook (as an argv) that writes its tag to HOOK_OUT/JOB_ID.EVENT: which hook ran,
    for which job and event."""
    out = '"$HOOK_OUT/$PHXQ_JOB_ID.$PHXQ_EVENT"'
    return ["sh", "-c", f'echo "$0" > {out}.tmp && mv {out}.tmp {out}', tag]


def hook_ran(run: Run, job_id: int, event: str) -> str:
    path = run.hooks / f"{job_id}.{event}"
    return str(until(lambda: path.exists() and path.read_text().strip(), what=path.name))


# ---------------------------------------------------------------------------- observers
# Each asserts that the daemon behaves as `value` of its key says.


def running_at_once(run: Run, limit: int, queue: str = "default") -> None:
    """Of three jobs that wait for a gate, `limit` run at once and the rest wait."""
    gate, started = run.fresh("gate"), run.fresh("started")
    started.mkdir()
    script = f"touch {started}/$PHXQ_JOB_ID; while [ ! -e {gate} ]; do sleep 0.02; done"
    ids = [str(run.d.submit("sh", "-c", script, opts=("--queue", queue))) for _ in range(3)]
    until(lambda: len(list(started.iterdir())) == min(limit, 3), SOON, f"{limit} running")
    counts = run.d.json("status")["counts"]
    assert (counts["running"], counts["pending"]) == (min(limit, 3), 3 - min(limit, 3))
    gate.touch()
    run.d.ok("wait", *ids)


def queue_defaults(run: Run, queues: dict[str, dict[str, Any]]) -> None:
    """A job submitted to the queue without --retries gets the queue's retries."""
    job = run.d.submit("true", opts=("--queue", "img"))
    assert run.d.job(job)["max_retries"] == queues["img"]["retries"]


def schedules(run: Run, declared: dict[str, dict[str, Any]]) -> None:
    """The schedules the daemon has from the file are the file's, and they fire: each
    makes a job keyed by its name within a few of its one-second periods."""
    listed = [json.loads(line) for line in run.d.ok("--json", "schedule", "list").splitlines()]
    assert {s["name"]: s["source"] for s in listed} == dict.fromkeys(declared, "config")
    for name in declared:
        prefix = f"schedule:{name}@"
        until(
            lambda prefix=prefix: prefix in run.d.ok("--json", "list"),
            SOON,
            f"a job of schedule {name}",
        )


def log_level(run: Run, level: str) -> None:
    """A debug line (a hook that went well) is logged at "debug" only. The hooks run one at
    a time, so the warning of the failing hook that follows is logged after it."""
    done = run.d.submit("true")
    run.d.ok("wait", str(done))
    failed = run.d.submit("false", opts=("--retries", "0"))
    run.d.ctl("wait", str(failed))
    until(lambda: f"on_failure hook for job {failed} exited with 3" in run.d.logtext())
    logged = f"on_complete hook for job {done} done" in run.d.logtext()
    assert logged == (level == "debug")


def kill_grace(run: Run, grace: float, callable_job: bool = False) -> None:
    """A job that ignores SIGTERM, cancelled, is killed `grace` seconds later."""
    started = run.fresh("started")
    if callable_job:
        job = run.call("tests.jobs.sample:stubborn", str(started))
    else:
        script = f"trap '' TERM; touch {started}; while :; do sleep 0.02; done"
        job = run.d.submit("sh", "-c", script)
    until(started.exists, what="the job to start")
    t0 = time.monotonic()
    run.d.ok("cancel", str(job))
    assert run.d.ctl("wait", str(job)).returncode == 1
    took = time.monotonic() - t0
    assert run.d.job(job)["status"] == "cancelled"
    assert grace <= took < grace + SOON, took


def shutdown_grace(run: Run, grace: float) -> None:
    """On SIGTERM, a running job gets `grace` seconds to finish: phxqd asks systemd for
    that much more time, and the job, let go while phxqd is stopping, completes instead of
    being stopped and requeued. (This stops the daemon: it is the last thing observed.)"""
    gate, started, stopped = run.fresh("gate"), run.fresh("started"), run.fresh("stopped")
    script = (
        f"trap 'touch {stopped}; exit 1' TERM; touch {started}; "
        f"while [ ! -e {gate} ]; do sleep 0.02; done"
    )
    job = run.d.submit("sh", "-c", script)
    until(started.exists, what="the job to start")
    mark = run.notes.count()
    assert run.d.proc is not None
    run.d.proc.send_signal(signal.SIGTERM)
    stopping = run.notes.fields(run.notes.wait_for(lambda m: "STOPPING" in m, mark))
    assert int(stopping["EXTEND_TIMEOUT_USEC"]) >= grace * 1e6
    gate.touch()
    assert run.d.wait(SOON + 30) == 0
    assert not stopped.exists(), "the job was stopped"
    run.d.start()
    assert run.d.job(job)["status"] == "completed"


def snapshot_bytes(run: Run, size: int) -> None:
    """Journal records of more than `size` bytes bring a snapshot about."""
    before = run.metric("phxq_snapshot_seconds_count")
    lines = "\n".join(json.dumps({"argv": ["true"], "queue": "held"}) for _ in range(20))
    run.d.ok("pause", "held")
    run.d.ok("submit", "--batch", "-", input=lines)  # ~2 KB of journal
    if size < 1000:
        until(lambda: run.metric("phxq_snapshot_seconds_count") > before, SOON, "a snapshot")
    else:
        assert run.metric("phxq_snapshot_seconds_count") == before


def write_retry_interval(run: Run, interval: float) -> None:
    """After a failed fdatasync (the fault shim's), writes resume within `interval`."""
    flag = run.tmp / "fail-now"
    flag.touch()
    r = run.d.ctl("submit", "--", "true")
    assert r.returncode == 5 and "Input/output error" in r.stderr, r.stderr
    flag.unlink()
    t0 = time.monotonic()
    until(lambda: run.d.json("status")["writable"], interval + SOON, "writes to resume")
    assert time.monotonic() - t0 < interval + SOON


def retention(run: Run, seconds: float) -> None:
    """A finished job is forgotten once `seconds` have passed (checked at least twice
    as often as that for a retention under two minutes)."""
    job = run.d.submit("true")
    if seconds < 60:  # not waited for: it may be gone before a `wait` is asked
        until(lambda: run.d.ctl("show", str(job)).returncode == 4, seconds + SOON, "forgotten")
    else:
        run.d.ok("wait", str(job))
        assert run.d.job(job)["status"] == "completed"


def log_max_bytes(run: Run, cap: int) -> None:
    """A job's log is cut back to about `cap` bytes (0: kept whole)."""
    job = run.d.submit("sh", "-c", "head -c 100000 /dev/zero | tr '\\0' x")
    run.d.ok("wait", str(job))
    out = run.d.ok("logs", str(job))
    if cap:
        assert len(out) < 2 * cap and "bytes of output dropped here" in out, len(out)
    else:
        assert out == "x" * 100000


def on_event(run: Run, command: list[str], event: str) -> None:
    """The hook of `event` that runs is `command` (it says its tag)."""
    opts = {
        "completed": (),
        "failed": ("--retries", "0"),
        "retrying": ("--retries", "1", "--backoff", "1h"),
    }[event]
    job = run.d.submit("true" if event == "completed" else "false", opts=opts)
    assert hook_ran(run, job, event) == command[-1]


def hook_timeout(run: Run, timeout: float) -> None:
    """A hook that hangs is killed after `timeout` seconds."""
    t0 = time.monotonic()
    run.d.submit("true")
    until(
        lambda: run.metric("phxq_hooks_total", hook="on_complete", outcome="timeout") == 1,
        timeout + SOON,
        "the hanging hook killed",
    )
    assert time.monotonic() - t0 < timeout + SOON


def hook_concurrency(run: Run, limit: int) -> None:
    """`limit` hooks (of two that wait for a gate) run at once."""
    gate = run.hooks / "gate"
    ok = run.metric("phxq_hooks_total", hook="on_complete", outcome="ok")
    jobs = [run.d.submit("true") for _ in range(2)]
    started = [run.hooks / f"{j}.started" for j in jobs]
    until(lambda: sum(p.exists() for p in started) == min(limit, 2), SOON, f"{limit} hooks")
    assert sum(p.exists() for p in started) == min(limit, 2)
    gate.touch()
    until(lambda: run.metric("phxq_hooks_total", hook="on_complete", outcome="ok") == ok + 2)
    gate.unlink()


def python(run: Run, interpreter: str | None) -> None:
    """A new Python worker runs under `interpreter` (the test's one marks its workers)."""
    job = run.call("tests.jobs.sample:environ", "PHXQ_TEST_PYTHON")
    assert run.result(job) == ("wrapped" if interpreter else None)


def pythonpath(run: Run, dirs: list[str]) -> None:
    """A new Python worker imports from `dirs` (each has a module saying which it is)."""
    job = run.call("whichdir:name", cwd=str(run.tmp))
    assert run.result(job) == Path(dirs[0]).name


def worker_reuse(run: Run, reused: bool) -> None:
    """Two calls in a row run in the same worker, or in two."""
    first = run.result(run.call("tests.jobs.sample:add", 1, 2))["pid"]
    second = run.result(run.call("tests.jobs.sample:add", 3, 4))["pid"]
    assert (first == second) == reused


# -------------------------------------------------------------------------------- cases


def make_python(run: Run) -> None:
    wrapper = run.tmp / "python"
    wrapper.write_text(f'#!/bin/sh\nPHXQ_TEST_PYTHON=wrapped exec {sys.executable} "$@"\n')
    wrapper.chmod(0o755)


def make_pythonpath(run: Run) -> None:
    for name in ("a", "b"):
        (run.tmp / name).mkdir()
        (run.tmp / name / "whichdir.py").write_text(f"def name() -> str:\n    return {name!r}\n")


def make_fsync_shim(run: Run) -> None:
    shim = build_fsync_shim(run.tmp)
    run.d.env.update(LD_PRELOAD=str(shim), FAULT_FLAG=str(run.tmp / "fail-now"))


@dataclass(frozen=True)
class Case:
    key: str
    old: Any
    new: Any
    #: asserts that the daemon behaves as a value of the key says
    observe: Callable[[Run, Any], None]
    #: the rest of the config file (the same before and after)
    base: dict[str, Any] = field(default_factory=dict)
    #: observe the old value before the reload too (where that is quick)
    check_old: bool = True
    #: makes what the values name (an interpreter, directories) or the daemon needs
    prepare: Callable[[Run], None] | None = None
    #: the parametrised test's id, when one key has several cases
    name: str = ""


GATE_HOOK = [
    "sh",
    "-c",
    'touch "$HOOK_OUT/$PHXQ_JOB_ID.started"; while [ ! -e "$HOOK_OUT/gate" ]; do sleep 0.02; done',
]

CASES = [
    Case("workers", 1, 3, running_at_once),
    Case(
        "queues",
        {"img": {"concurrency": 1}},
        {"img": {"concurrency": 3}},
        lambda run, q: running_at_once(run, q["img"]["concurrency"], "img"),
        name="queues-concurrency",
    ),
    Case("queues", {"img": {"retries": 1}}, {"img": {"retries": 5}}, queue_defaults),
    Case(
        "schedules",
        {"old": {"every": "1s", "command": ["true"]}},
        {"new": {"every": 1, "command": "true"}},
        schedules,
    ),
    Case(
        "log_level",
        "info",
        "debug",
        log_level,
        base={"on_complete": "true", "on_failure": "exit 3", "hook_concurrency": 1},
    ),
    Case("kill_grace", 30.0, 0.5, kill_grace, check_old=False, name="kill_grace-command"),
    Case(
        "kill_grace",
        30.0,
        0.5,
        lambda run, grace: kill_grace(run, grace, callable_job=True),
        check_old=False,
        name="kill_grace-callable",
    ),
    Case("shutdown_grace", 0.0, 60.0, shutdown_grace, check_old=False),
    Case("snapshot_bytes", 1 << 30, 1, snapshot_bytes),
    Case(
        "write_retry_interval",
        3600.0,
        0.05,
        write_retry_interval,
        check_old=False,
        prepare=make_fsync_shim,
    ),
    Case("retention", 7 * 86400.0, 0.5, retention),
    Case("log_max_bytes", 0, 2000, log_max_bytes),
    Case("on_complete", hook("old"), hook("new"), lambda r, c: on_event(r, c, "completed")),
    Case("on_failure", hook("old"), hook("new"), lambda r, c: on_event(r, c, "failed")),
    Case("on_retry", hook("old"), hook("new"), lambda r, c: on_event(r, c, "retrying")),
    Case(
        "hook_timeout",
        60.0,
        0.5,
        hook_timeout,
        base={"on_complete": ["sleep", "120"]},
        check_old=False,
    ),
    Case("hook_concurrency", 1, 2, hook_concurrency, base={"on_complete": GATE_HOOK}),
    Case("python", None, "{tmp}/python", python, prepare=make_python),
    Case("pythonpath", ["{tmp}/a"], ["{tmp}/b"], pythonpath, prepare=make_pythonpath),
    Case("worker_max_jobs", 1000, 1, lambda run, n: worker_reuse(run, n > 1)),
    Case("worker_max_rss", 0, 1, lambda run, rss: worker_reuse(run, rss == 0)),
]


def in_tmp(value: Any, tmp: Path) -> Any:
    """`value` with "{tmp}" in its strings replaced by the test's directory."""
    if isinstance(value, str):
        return value.replace("{tmp}", str(tmp))
    if isinstance(value, list):
        return [in_tmp(v, tmp) for v in value]
    return value


@pytest.mark.parametrize("case", CASES, ids=[c.name or c.key for c in CASES])
def test_a_reload_applies_the_key_at_once(tmp_path: Path, case: Case) -> None:
    run = Run(tmp_path, {"workers": 4, **case.base})
    old, new = in_tmp(case.old, tmp_path), in_tmp(case.new, tmp_path)
    if case.prepare is not None:
        case.prepare(run)
    run.write_config(case.key, old)
    run.d.start()
    if case.check_old:
        case.observe(run, old)
    run.reload(case.key, new)
    case.observe(run, new)
    assert run.d.stop() == 0


# ------------------------------------------------------------------ the docs and the code


def documented() -> tuple[set[str], set[str]]:
    """(keys a reload applies at once, keys read at start-up only), as the "Reloading"
    section of docs/configuration.md lists them."""
    section = DOC.read_text().split("## Reloading", 1)[1].split("\n## ", 1)[0]
    applied, _, rest = section.partition("Applied at once:")[2].partition("The other keys (")
    startup = rest.split(")", 1)[0]

    def keys(text: str) -> set[str]:
        return {a or b for a, b in re.findall(r"`\[(\w+)\.NAME\]`|`(\w+)`", text)}

    return keys(applied), keys(startup)


def test_every_key_documented_as_reloadable_has_a_case() -> None:
    reloadable, _ = documented()
    assert reloadable == {c.key for c in CASES}


def test_the_docs_and_settings_agree_on_what_a_reload_applies() -> None:
    reloadable, startup = documented()
    assert reloadable == settings.reloadable_keys()
    assert not reloadable & startup
    assert reloadable | startup == set(Config.__struct_fields__)
    # every start-up-only key is a Settings field of its own name (a reload compares them)
    fields = {f.name for f in dataclasses.fields(settings.Settings)}
    assert startup == fields - settings.RELOADABLE.keys()
