"""The status file and the event hooks, with a real daemon, real jobs and real hooks."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import shlex
import signal
import sys
import threading
from pathlib import Path
from typing import Any

import psutil

from tests.conftest import Daemon, gone, until
from tests.test_metrics import samples

CTL = f"{shlex.quote(sys.executable)} -m phxqctl"


def gate_job(gate: Path, before: str = "") -> list[str]:
    return ["sh", "-c", f"{before} while [ ! -e {gate} ]; do sleep 0.02; done"]


def read_status(path: Path) -> dict[str, Any] | None:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    result: dict[str, Any] = json.loads(data)  # a torn file would raise here
    return result


def test_status_file_shows_live_progress_and_is_never_torn(tmp_path: Path) -> None:
    path = tmp_path / "work_items.json"
    d = Daemon(tmp_path / "d")
    d.config.write_text(f'status_file = "{path}"\n')
    d.start()
    first = until(lambda: read_status(path), what="the status file")
    assert first["counts"]["pending"] == 0 and first["jobs"] == []

    # A reader in a tight loop the whole time: every read must parse, and the file is
    # never rewritten twice within a second.
    reads: list[float] = []
    errors: list[str] = []
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            try:
                doc = read_status(path)
            except ValueError as e:
                errors.append(str(e))
                continue
            if doc is not None and (not reads or doc["updated_at"] != reads[-1]):
                reads.append(doc["updated_at"])

    thread = threading.Thread(target=reader)
    thread.start()
    gate = tmp_path / "gate"
    script = f"{CTL} progress --done 3 --total 4 --step resizing;"
    job = d.submit(*gate_job(gate, script), opts=("--key", "img-7", "--label", "photos"))
    for _ in range(20):
        d.submit("true")
    doc = until(
        # (a `true` may still be running beside it when the file is written: wait it out)
        lambda: (s := read_status(path)) and len(s["jobs"]) == 1 and s["jobs"][0]["step"] and s,
        what="the job's progress in the status file",
    )
    [live] = doc["jobs"]
    assert (live["id"], live["key"], live["label"], live["status"]) == (
        job,
        "img-7",
        "photos",
        "running",
    )
    assert (live["done"], live["total"], live["percent"], live["attempt"]) == (3, 4, 75.0, 1)
    assert live["started_at"] <= live["updated_at"]
    gate.touch()
    until(
        lambda: (s := read_status(path)) and s["counts"]["completed"] == 21,
        what="every job completed in the status file",
    )
    stop.set()
    thread.join()
    assert errors == []
    gaps = [b - a for a, b in itertools.pairwise(reads)]
    assert len(reads) >= 2 and min(gaps) >= 0.9, reads

    # Stopping writes it a last time: the running job requeued, then nothing running.
    slow = d.submit(*gate_job(tmp_path / "never"))
    until(lambda: (s := read_status(path)) and s["counts"]["running"] == 1)
    assert d.stop(signal.SIGTERM) == 0
    last = read_status(path)
    assert last is not None and last["counts"]["running"] == 0
    assert last["counts"]["pending"] == 1 and slow not in [j["id"] for j in last["jobs"]]


def hook(out: Path, name: str) -> str:
    """A hook that saves its stdin and environment for the test to read."""
    return (
        f'cat > {out}/{name}-$PHXQ_JOB_ID.json && echo "$PHXQ_EVENT $PHXQ_JOB_STATUS '
        f'$PHXQ_JOB_QUEUE" > {out}/{name}-$PHXQ_JOB_ID.env'
    )


def test_hooks_get_the_job_on_stdin(tmp_path: Path) -> None:
    out = tmp_path / "hooks"
    out.mkdir()
    d = Daemon(tmp_path / "d")
    d.config.write_text(
        f"on_complete = {json.dumps(hook(out, 'complete'))}\n"
        f"on_failure = {json.dumps(hook(out, 'failure'))}\n"
        f"on_retry = {json.dumps(['/bin/sh', '-c', hook(out, 'retry')])}\n"
    )
    d.start()
    ok = d.submit("echo", "fine", opts=("--queue", "q1"))
    bad = d.submit("sh", "-c", "exit 9", opts=("--retries", "1", "--backoff", "0.01"))
    until(lambda: (out / f"failure-{bad}.env").exists(), what="the failure hook")
    until(lambda: (out / f"complete-{ok}.env").exists(), what="the completion hook")
    job = json.loads((out / f"complete-{ok}.json").read_text())
    assert (job["id"], job["status"], job["argv"], job["exit_code"]) == (
        ok,
        "completed",
        ["echo", "fine"],
        0,
    )
    assert (out / f"complete-{ok}.env").read_text() == "completed completed q1\n"
    failed = json.loads((out / f"failure-{bad}.json").read_text())
    assert (failed["status"], failed["attempts"], failed["exit_code"]) == ("failed", 2, 9)
    assert (out / f"retry-{bad}.env").read_text() == "retrying retrying default\n"
    assert sorted(p.name for p in out.iterdir()) == sorted(
        f"{n}-{i}.{ext}"
        for n, i in (("complete", ok), ("failure", bad), ("retry", bad))
        for ext in ("json", "env")
    )


def test_hooks_that_hang_or_fail_never_hold_up_jobs(tmp_path: Path) -> None:
    d = Daemon(tmp_path / "d")
    # this run's own mark: a make test running beside this one has hooks of its own
    marker = f"phxq-test-hanging-hook-{os.getpid()}"
    d.config.write_text(
        f'on_complete = "sleep 300 # {marker}"\n'
        'on_failure = "echo boom >&2; exit 7"\n'
        'on_retry = ["/nonexistent/hook"]\n'
        "hook_timeout = 0.5\n"
        "hook_concurrency = 1\n"
    )
    d.start()
    ids = [d.submit("true") for _ in range(10)]
    bad = d.submit("false", opts=("--retries", "1", "--backoff", "0.01"))
    # Ten completion hooks, one at a time, each killed after 0.5 s, take ~5 s: the jobs
    # are done long before, and still nothing waits for the hooks.
    d.ok("wait", *map(str, ids))
    d.ctl("wait", str(bad))
    assert d.job(bad)["status"] == "failed"
    until(lambda: "exited with 7: boom" in d.logtext(), what="the failing hook's warning")
    until(lambda: "could not start" in d.logtext(), what="the missing hook's warning")
    until(lambda: "timed out after 0.5s; killed" in d.logtext(), what="a hook killed")
    until(
        lambda: d.logtext().count("timed out after 0.5s; killed") == 10,
        timeout=60,
        what="every hanging hook killed",
    )

    def hanging() -> list[psutil.Process]:
        found = []
        for p in psutil.process_iter(["cmdline"]):
            if marker in " ".join(p.info["cmdline"] or []):
                found.append(p)
        return found

    until(lambda: not hanging(), what="no hook process left")
    assert d.proc is not None and d.proc.poll() is None
    m = samples(d.ok("metrics"))
    hooks = {labels: v for (name, labels), v in m.items() if name == "phxq_hooks_total"}
    assert hooks == {
        (("hook", "on_complete"), ("outcome", "timeout")): 10,
        (("hook", "on_failure"), ("outcome", "failed")): 1,
        (("hook", "on_retry"), ("outcome", "unstartable")): 1,
    }
    assert m["phxq_event_listeners", ()] == 1  # the hooks'


def test_hooks_can_be_set_by_a_reload(tmp_path: Path) -> None:
    out = tmp_path / "hooks"
    out.mkdir()
    d = Daemon(tmp_path / "d")
    d.start()
    before = d.submit("true")
    d.ok("wait", str(before))
    d.config.write_text(f"on_complete = {json.dumps(hook(out, 'complete'))}\n")
    assert d.proc is not None
    d.proc.send_signal(signal.SIGHUP)
    until(lambda: "configuration reloaded" in d.logtext(), what="the reload")
    after = d.submit("true")
    until(lambda: (out / f"complete-{after}.env").exists(), what="the hook after reload")
    assert not (out / f"complete-{before}.env").exists()


def test_a_stop_kills_what_a_running_hook_spawned(tmp_path: Path) -> None:
    """A hook runs in a session of its own; one still running when phxqd stops is
    cancelled, and its whole group must go, not only its leader (all asyncio's transport
    kills): the `sleep` it left in the background outlived phxqd (an audit found it)."""
    pid_file = tmp_path / "grandchild.pid"
    d = Daemon(tmp_path / "d")
    d.config.write_text(
        f'on_complete = "sleep 1000 & echo $! > {pid_file}.tmp; mv {pid_file}.tmp {pid_file};'
        ' wait"\n'
    )
    d.start()
    d.ok("wait", str(d.submit("true")))
    until(pid_file.exists, what="the hook's background child")
    grandchild = psutil.Process(int(pid_file.read_text()))
    try:
        assert "sleep" in grandchild.name()
        assert d.stop(signal.SIGTERM) == 0
        # (SIGKILL is sent before phxqd exits; its end is the kernel's, a moment later)
        until(lambda: gone(grandchild), timeout=10, what="the hook's child to die with phxqd")
    finally:
        with contextlib.suppress(psutil.NoSuchProcess):
            grandchild.kill()
