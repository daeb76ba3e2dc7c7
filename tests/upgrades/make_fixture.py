"""Write a state directory with a real earlier phxqd, for the upgrade tests.

    .venv/bin/python tests/upgrades/make_fixture.py COMMIT [NAME]

takes phxq's source at COMMIT (`git archive`, no checkout), runs its phxqd and phxqctl
(this venv's Python and libraries, the old source first on PYTHONPATH) in a temp dir, and
leaves jobs in every state: completed (with a key, a result, progress), failed, cancelled,
pending in a queue paused at run time (a key, a callable with arguments, `--after` waiting
on another), delayed, retrying with its retry time ten years away, and running with progress
when phxqd is killed with SIGKILL; a queue limit set at run time. The first half is saved in
a snapshot (a clean stop), the second half is only in journal segments. It writes
tests/upgrades/NAME.tar.gz (the state dir without its lock) and NAME.json (what the test
expects of each job, by role). NAME defaults to `state-` and the commit's short hash.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
#: the delay and the retry backoff of the jobs that must still be waiting when the test
#: reads the fixture, whenever that is: ten years (a fixture is good until then)
FAR = "3650d"
FAR_BACKOFF = "315360000,315360000,0"
REPO = HERE.parent.parent


class OldPhxq:
    """phxqd and phxqctl of the old source, on a state dir of their own."""

    def __init__(self, src: Path, tmp: Path) -> None:
        self.state = tmp / "state"
        self.socket = tmp / "phxqd.sock"
        config = tmp / "phxqd.toml"
        config.write_text("workers = 2\nretention = 315360000\n")
        self.env = {
            "PATH": os.environ["PATH"],
            "HOME": str(tmp),
            "LANG": "C.UTF-8",
            "TZ": "UTC",
            "PYTHONPATH": str(src),
            "PHXQ_SOCKET": str(self.socket),
            "PHXQ_STATE_DIR": str(self.state),
            "PHXQ_CONFIG": str(config),
        }
        self.proc: subprocess.Popen[bytes] | None = None
        #: not the repo (`python -m` looks in the working directory before PYTHONPATH), and
        #: the jobs' working directory: one every machine has
        self.cwd = Path("/")

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "phxqd"], env=self.env, stderr=subprocess.PIPE, cwd=self.cwd
        )
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            if b" ready: " in line:
                # drained from now on, so a full pipe never stops the daemon
                threading.Thread(target=self.proc.stderr.read, daemon=True).start()
                return
        raise SystemExit("the old phxqd did not start")

    def ctl(self, *args: str, check: bool = True) -> Any:
        out = subprocess.run(
            [sys.executable, "-m", "phxqctl", *args[:1], "--json", *args[1:]],
            env=self.env,
            cwd=self.cwd,
            capture_output=True,
            check=check,
            timeout=60,
        ).stdout
        lines = [json.loads(line) for line in out.splitlines() if line.strip()]
        return lines[0] if len(lines) == 1 else lines

    def submit(self, *args: str) -> int:
        reply = self.ctl("submit", *args)
        return int(reply["id"] if isinstance(reply, dict) else reply[0]["id"])

    def until(self, job_id: int, status: str) -> dict[str, Any]:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            job: dict[str, Any] = self.ctl("show", str(job_id))
            if job["status"] == status and (status != "running" or job.get("progress")):
                return job
            time.sleep(0.05)  # a script run by hand, not a test
        raise SystemExit(f"job {job_id} never became {status}")


def make(commit: str, name: str) -> None:
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        src = tmp / "src"
        src.mkdir()
        archive = subprocess.run(
            ["git", "-C", str(REPO), "archive", commit], capture_output=True, check=True
        ).stdout
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            tar.extractall(src, filter="data")
        old = OldPhxq(src, tmp)
        try:
            roles = scenario(old)
        finally:
            if old.proc is not None and old.proc.poll() is None:
                old.proc.kill()
        (old.state / "lock").unlink(missing_ok=True)
        out = HERE / f"{name}.tar.gz"
        with tarfile.open(out, "w:gz") as tar:
            tar.add(old.state, arcname="state")
        (HERE / f"{name}.json").write_text(
            json.dumps({"commit": commit, "roles": roles}, indent=1) + "\n"
        )
        print(f"{out}: {out.stat().st_size} bytes, jobs {roles}")


def scenario(old: OldPhxq) -> dict[str, int]:
    """The jobs, made as a user would make them; their ids by role."""
    progress = "python3 -m phxqctl progress --percent 40 --step halfway"
    roles: dict[str, int] = {}

    # --- saved in the snapshot written at the clean stop
    old.start()
    roles["completed"] = old.submit("--key", "done-key", "--label", "ok", "--", "true")
    roles["completed_progress"] = old.submit("--shell", progress)
    roles["callable_completed"] = old.submit("--call", "operator:add", "--args", "[2, 3]")
    roles["failed"] = old.submit("--retries", "0", "--shell", "exit 3")
    roles["cancelled"] = old.submit("--delay", "1d", "--", "true")
    old.ctl("cancel", str(roles["cancelled"]))
    for role in ("completed", "completed_progress", "callable_completed", "failed"):
        old.ctl("wait", "--timeout", "60", str(roles[role]), check=False)
    old.ctl("queue", "set", "slow", "--concurrency", "1")
    old.ctl("pause", "held")
    assert old.proc is not None
    old.proc.send_signal(signal.SIGTERM)
    old.proc.wait(60)

    # --- only in the journal: the daemon is killed with SIGKILL at the end
    old.start()
    roles["pending_key"] = old.submit("--queue", "held", "--key", "held-key", "--", "true")
    roles["dependency"] = old.submit("--queue", "held", "--priority", "5", "--", "true")
    roles["dependent"] = old.submit("--after", str(roles["dependency"]), "--", "true")
    roles["callable_pending"] = old.submit(
        "--queue", "held", "--call", "builtins:dict", "--kwargs", '{"a": 1}'
    )
    roles["delayed"] = old.submit("--delay", FAR, "--queue", "slow", "--", "true")
    roles["retrying"] = old.submit("--retries", "2", "--backoff", FAR_BACKOFF, "--shell", "exit 1")
    old.until(roles["retrying"], "retrying")
    roles["running"] = old.submit(
        "--backoff", FAR_BACKOFF, "--shell", f"{progress}; exec sleep 1000"
    )
    running = old.until(roles["running"], "running")
    old.proc.kill()
    old.proc.wait(60)
    os.kill(running["pid"], signal.SIGKILL)  # what the new phxqd would find gone
    return roles


if __name__ == "__main__":
    if len(sys.argv) not in (2, 3):
        raise SystemExit(__doc__)
    commit = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short", sys.argv[1]],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    make(commit, sys.argv[2] if len(sys.argv) == 3 else f"state-{commit}")
