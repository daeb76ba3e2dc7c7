"""Upgrades keep the queue: this phxqd on state dirs written by real earlier versions.

Each tests/upgrades/state-COMMIT.tar.gz was written by phxq at that commit
(tests/upgrades/make_fixture.py, which says what is in it); its .json names each job's
role. A downgrade is refused: a state dir naming a newer format stops phxqd and its journal
tools before they read or change anything.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

import pytest

from phxqd.local import formats
from tests.conftest import Daemon, until

FIXTURES = Path(__file__).resolve().parent / "upgrades"
MANIFESTS = sorted(FIXTURES.glob("state-*.json"))


def unpack(manifest: Path, tmp: Path) -> tuple[Daemon, dict[str, int]]:
    """A daemon (not started) on a copy of the fixture's state dir."""
    d = Daemon(tmp)
    with tarfile.open(manifest.with_suffix(".tar.gz")) as tar:
        tar.extractall(tmp, filter="data")
    assert d.state_dir.is_dir()
    roles: dict[str, int] = json.loads(manifest.read_text())["roles"]
    return d, roles


def phxqd(d: Daemon, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "phxqd", *args, "--state-dir", str(d.state_dir)],
        env=d.env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def json_lines(d: Daemon, *args: str) -> list[Any]:
    """What a listing command prints with --json: one object per line."""
    return [json.loads(line) for line in d.ok("--json", *args).splitlines()]


def tree_digest(root: Path) -> str:
    """Names, modes and contents of everything under `root` (the lock file aside)."""
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.name == "lock":
            continue
        h.update(f"{p.relative_to(root)} {p.stat().st_mode}\n".encode())
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


@pytest.mark.parametrize("manifest", MANIFESTS, ids=lambda m: m.stem)
def test_a_newer_phxqd_keeps_every_job_and_setting_of_an_older_state_dir(
    tmp_path: Path, manifest: Path
) -> None:
    d, r = unpack(manifest, tmp_path)
    d.config.write_text("retention = 315360000\n")
    verified = phxqd(d, "journal", "verify")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    d.start()
    job: dict[int, dict[str, Any]] = {i: d.job(i) for i in r.values()}

    def of(role: str) -> dict[str, Any]:
        return job[r[role]]

    assert (of("completed")["status"], of("completed")["key"]) == ("completed", "done-key")
    assert of("completed")["label"] == "ok"
    assert of("completed_progress")["progress"]["percent"] == 40
    assert of("completed_progress")["progress"]["step"] == "halfway"
    assert of("callable_completed")["call"]["func"] == "operator:add"
    assert (of("callable_completed")["status"], of("callable_completed")["result"]) == (
        "completed",
        5,
    )
    assert (of("failed")["status"], of("failed")["exit_code"]) == ("failed", 3)
    assert of("cancelled")["status"] == "cancelled"
    for role in ("pending_key", "dependency", "callable_pending"):
        assert (of(role)["status"], of(role)["queue"]) == ("pending", "held"), role
    assert of("dependency")["priority"] == 5
    assert (of("dependent")["status"], of("dependent")["after"]) == ("pending", [r["dependency"]])
    assert of("callable_pending")["call"]["kwargs"] == {"a": 1}
    assert of("delayed")["status"] == "pending" and of("delayed")["run_at"] > time.time() + 3600
    retrying = of("retrying")
    assert (retrying["status"], retrying["attempts"]) == ("retrying", 1)
    assert retrying["run_at"] > time.time() + 600, "its retry time an hour after it failed"
    # Running when the old phxqd was killed: reaped, that attempt failed, retried by policy.
    running = of("running")
    assert (running["status"], running["attempts"]) == ("retrying", 1), json.dumps(running)
    assert running["run_at"] > time.time() + 600

    # A live key still deduplicates; a finished job's key is free again.
    assert d.json("submit", "--key", "held-key", "--", "true")["id"] == r["pending_key"]
    assert d.json("submit", "--key", "done-key", "--", "true")["id"] not in r.values()

    queues = {q["queue"]: q for q in json_lines(d, "queue", "list")}
    assert (queues["slow"]["concurrency"], queues["slow"]["concurrency_from"]) == (1, "runtime")
    assert queues["held"]["paused"] and not queues["slow"]["paused"]

    # The paused jobs run once resumed, the dependent one after its dependency.
    d.ok("resume", "held")
    done = json_lines(d, "wait", "--timeout", "60", str(r["dependent"]), str(r["callable_pending"]))
    assert [j["status"] for j in done] == ["completed", "completed"]
    assert d.job(r["callable_pending"])["result"] == {"a": 1}
    assert d.job(r["dependent"])["started_at"] >= d.job(r["dependency"])["finished_at"]
    assert d.stop() == 0
    assert formats.read(d.state_dir) == formats.STATE_FORMAT, "stamped with this format"

    # Retention applies to what the old version finished: forgotten, live jobs kept.
    d.config.write_text("retention = 1\n")
    d.start()
    until(
        lambda: not json_lines(d, "list", "--status", "completed"),
        what="completed jobs forgotten",
    )
    assert d.job(r["delayed"])["status"] == "pending"
    assert d.job(r["retrying"])["status"] == "retrying"


@pytest.mark.parametrize("command", [(), ("journal", "verify"), ("journal", "repair")])
def test_a_state_dir_of_a_newer_format_is_refused_and_left_untouched(
    tmp_path: Path, command: tuple[str, ...]
) -> None:
    d, _ = unpack(MANIFESTS[-1], tmp_path)
    newer = formats.STATE_FORMAT + 1
    (d.state_dir / formats.FILE).write_text(f"{formats.PREFIX}{newer}\n")
    before = tree_digest(d.state_dir)
    if command:
        refused = phxqd(d, *command)
    else:
        d.start(expect_ready=False)
        assert d.proc is not None
        code = d.wait(60)
        refused = subprocess.CompletedProcess([], code, "", d.logtext())
    assert refused.returncode == formats.EXIT_NEWER, refused.stderr
    [line] = [x for x in refused.stderr.splitlines() if "format" in x]
    assert f"format {newer}" in line and f"formats 1 to {formats.STATE_FORMAT}" in line
    assert "damaged" not in refused.stderr.lower() and "Traceback" not in refused.stderr
    assert tree_digest(d.state_dir) == before, "nothing changed on disk"


def test_a_format_file_that_says_nothing_known_is_refused(tmp_path: Path) -> None:
    d, _ = unpack(MANIFESTS[-1], tmp_path)
    (d.state_dir / formats.FILE).write_text("garbage\n")
    before = tree_digest(d.state_dir)
    refused = phxqd(d, "journal", "verify")
    assert refused.returncode == 1
    assert "expected `phxq state format N`" in refused.stderr
    assert tree_digest(d.state_dir) == before


def test_a_fresh_state_dir_is_stamped_before_its_first_record(tmp_path: Path) -> None:
    d = Daemon(tmp_path).start()
    assert formats.read(d.state_dir) == formats.STATE_FORMAT
    d.submit("true")
    assert d.stop() == 0
