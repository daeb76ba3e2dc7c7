"""The walking skeleton end to end: the README's tour against a real daemon."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import psutil
import pytest

from phxqctl.errors import RemoteError
from tests.conftest import Daemon, until


def test_submit_wait_logs(daemon: Daemon) -> None:
    job_id = daemon.submit("echo", "hi")
    assert job_id == 1
    r = daemon.ctl("wait", str(job_id))
    assert r.returncode == 0, r.stderr
    assert "completed" in r.stdout
    assert daemon.ok("logs", str(job_id)) == "hi\n"
    job = daemon.job(job_id)
    assert job["status"] == "completed" and job["exit_code"] == 0 and job["attempts"] == 1
    for field in (
        "id",
        "queue",
        "status",
        "priority",
        "key",
        "attempts",
        "max_retries",
        "created_at",
        "started_at",
        "finished_at",
        "run_at",
        "progress",
        "exit_code",
        "error",
        "argv",
    ):
        assert field in job


def test_stdout_and_stderr_go_to_the_log_and_job_env_is_set(daemon: Daemon) -> None:
    job_id = daemon.submit(
        "sh", "-c", 'echo "out $PHXQ_JOB_ID $PHXQ_ATTEMPT"; echo err >&2', opts=("--env", "EXTRA=1")
    )
    daemon.ok("wait", str(job_id))
    assert daemon.ok("logs", str(job_id)) == f"out {job_id} 1\nerr\n"
    log = daemon.state_dir / "logs" / f"{job_id}.log"
    assert log.read_text() == f"out {job_id} 1\nerr\n"


def test_job_runs_in_its_own_session(daemon: Daemon, tmp_path: Path) -> None:
    out = tmp_path / "ids"
    job_id = daemon.submit(
        sys.executable,
        "-c",
        f"import os; open({str(out)!r}, 'w').write("
        "f'{os.getpid()} {os.getsid(0)} {os.getpgid(0)}')",
    )
    daemon.ok("wait", str(job_id))
    pid, sid, pgid = out.read_text().split()
    assert pid == sid == pgid
    assert int(sid) != os.getsid(0)


def test_failed_job_then_retry_failed_and_clear(daemon: Daemon, tmp_path: Path) -> None:
    flag = tmp_path / "ok"
    job_id = daemon.submit("sh", "-c", f"test -e {flag}", opts=("--retries", "0"))
    r = daemon.ctl("wait", str(job_id))
    assert r.returncode == 1
    assert "failed" in r.stdout and "exited with status 1" in r.stdout
    job = daemon.job(job_id)
    assert job["status"] == "failed" and job["exit_code"] == 1

    flag.touch()
    assert daemon.json("retry-failed") == {"retried": 1}
    assert daemon.ctl("wait", str(job_id)).returncode == 0
    assert daemon.job(job_id)["status"] == "completed"

    assert daemon.json("clear") == {"cleared": 1}
    assert daemon.ctl("show", str(job_id)).returncode == 4
    assert not (daemon.state_dir / "logs" / f"{job_id}.log").exists()


def test_retries_with_backoff_until_success(daemon: Daemon) -> None:
    job_id = daemon.submit("sh", "-c", 'test "$PHXQ_ATTEMPT" -ge 2', opts=("--retries", "2"))
    assert daemon.ctl("wait", str(job_id)).returncode == 0
    job = daemon.job(job_id)
    assert job["status"] == "completed" and job["attempts"] == 2


def test_command_not_found_fails_without_retrying(daemon: Daemon) -> None:
    job_id = daemon.submit("/nonexistent/program")
    assert daemon.ctl("wait", str(job_id)).returncode == 1
    job = daemon.job(job_id)
    assert job["status"] == "failed" and job["attempts"] == 1
    assert "cannot start" in job["error"]


def _marked(token: str) -> list[psutil.Process]:
    """Live `sleep TOKEN` processes."""
    out = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if p.info["cmdline"] == ["sleep", token] and p.status() != "zombie":
                out.append(p)
        except psutil.Error:
            pass
    return out


def test_cancel_kills_the_whole_process_tree(daemon: Daemon) -> None:
    token = f"{os.getpid()}.4242"  # a unique sleep length marks this test's processes
    job_id = daemon.submit("sh", "-c", f"sleep {token} & sleep {token} & wait")
    until(lambda: len(_marked(token)) == 2, what="the job's two children")
    out = daemon.ok("cancel", str(job_id))
    assert f"job {job_id} cancelled" in out
    job = daemon.job(job_id)
    assert job["status"] == "cancelled" and "SIGTERM" in job["error"]
    until(lambda: not _marked(token), what="the job's processes to be gone")
    assert daemon.ctl("cancel", str(job_id)).returncode == 5  # already finished


def test_cancel_pending_job(daemon: Daemon) -> None:
    job_id = daemon.submit("true", opts=("--delay", "1h"))
    assert daemon.job(job_id)["status"] == "pending"
    daemon.ok("cancel", str(job_id))
    assert daemon.job(job_id)["status"] == "cancelled"
    assert daemon.ctl("wait", str(job_id)).returncode == 1


def test_timeout_kills_and_fails(daemon: Daemon) -> None:
    job_id = daemon.submit("sleep", "60", opts=("--timeout", "0.3", "--retries", "0"))
    assert daemon.ctl("wait", str(job_id)).returncode == 1
    job = daemon.job(job_id)
    assert job["status"] == "failed" and "timed out" in job["error"]


def test_workers_bound_concurrency(tmp_path: Path) -> None:
    """With --workers 2, exactly 2 jobs run at once until the queue drains: each job holds
    its slot until the test opens its gate, so the counts are exact, not a race."""
    d = Daemon(tmp_path / "d", workers=2).start()
    running, gates, seen = tmp_path / "running", tmp_path / "gates", tmp_path / "seen"
    running.mkdir()
    gates.mkdir()
    script = (
        f"touch {running}/$PHXQ_JOB_ID; ls {running} | wc -l >> {seen}; "
        f"while [ ! -e {gates}/$PHXQ_JOB_ID ]; do sleep 0.01; done; rm {running}/$PHXQ_JOB_ID"
    )
    d.ok("pause")  # all six are waiting when the pool may take them
    ids = [d.submit("sh", "-c", script) for _ in range(6)]
    d.ok("resume")
    for done in range(6):
        want = min(2, 6 - done)

        def settled(want: int = want) -> bool:
            counts = d.json("status")["counts"]
            return counts["running"] == want and len(list(running.iterdir())) == want

        until(settled, what=f"{want} jobs running")
        assert d.json("status")["counts"]["pending"] == 6 - done - want
        first = min(int(p.name) for p in running.iterdir())
        (gates / str(first)).touch()
        d.ok("wait", str(first))
    d.ok("wait", *map(str, ids))
    counts = [int(x) for x in seen.read_text().split()]
    # the first two may see each other or not; every later one starts beside one held job
    assert len(counts) == 6 and sorted(counts[:2]) in ([1, 2], [2, 2]), counts
    assert counts[2:] == [2] * 4, counts


def test_status_list_and_json(daemon: Daemon) -> None:
    daemon.ok("pause")
    a = daemon.submit("true", opts=("--queue", "img", "--priority", "5", "--label", "A"))
    b = daemon.submit("true")
    status = daemon.json("status")
    assert status["counts"]["pending"] == 2
    assert status["queues"]["img"]["pending"] == 1 and status["paused_all"] is True
    listed = [j["id"] for j in map(json.loads, daemon.ok("--json", "list").splitlines())]
    assert listed == [b, a]
    assert len(daemon.ok("list", "--queue", "img").splitlines()) == 2  # header + one row
    text = daemon.ok("status")
    assert "img" in text and "paused" in text
    daemon.ok("resume")
    daemon.ok("wait", str(a), str(b))


def test_idempotency_key_returns_live_job(daemon: Daemon) -> None:
    first = daemon.json("submit", "--key", "k1", "--delay", "1h", "--", "true")
    again = daemon.json("submit", "--key", "k1", "--", "echo", "other")
    assert first["deduplicated"] is False and again["deduplicated"] is True
    assert again["id"] == first["id"] and again["argv"] == ["true"]


def test_batch_submit(daemon: Daemon) -> None:
    lines = "\n".join(f'{{"argv": ["echo", "{i}"]}}' for i in range(5))
    out = daemon.ok("submit", "--batch", "-", input=lines)
    ids = [int(x) for x in out.split()]
    assert ids == [1, 2, 3, 4, 5]
    daemon.ok("wait", *map(str, ids))
    assert daemon.ok("logs", "3") == "2\n"


def test_errors_are_one_line_with_documented_exit_status(daemon: Daemon, tmp_path: Path) -> None:
    cases = [
        (("show", "999"), 4),
        (("wait", "999"), 4),
        (("logs", "999"), 4),
        (("cancel", "999"), 4),
        (("submit",), 2),
        (("submit", "--delay", "soon", "--", "true"), 2),
        (("wait", "abc"), 2),
        (("frobnicate",), 2),
        (("submit", "--retries", "-1", "--", "true"), 2),
        (("clear", "--status", "running"), 2),
        (("submit", "--batch", str(tmp_path / "missing.jsonl")), 2),
    ]
    for args, code in cases:
        r = daemon.ctl(*args)
        assert r.returncode == code, (args, r.returncode, r.stderr)
        assert "Traceback" not in r.stderr, r.stderr
        assert r.stderr.strip(), args


def test_daemon_not_running_exit_3(tmp_path: Path) -> None:
    sock = tmp_path / "nowhere.sock"
    r = subprocess.run(
        [sys.executable, "-m", "phxqctl", "--socket", str(sock), "status"],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 3
    assert r.stderr.count("\n") == 1 and str(sock) in r.stderr and "phxqd" in r.stderr


def test_restart_keeps_every_acknowledged_job(tmp_path: Path) -> None:
    d = Daemon(tmp_path).start()
    d.ok("pause")
    ids = [d.submit("echo", str(i)) for i in range(20)]
    d.kill9()
    d.start()
    listed = sorted(
        j["id"] for j in map(json.loads, d.ok("--json", "list", "--limit", "100").splitlines())
    )
    assert listed == ids
    assert d.submit("true") == 21  # ids are never reused
    d.ok("resume")
    d.ok("wait", *map(str, ids))
    assert d.stop() == 0


def test_graceful_stop_requeues_running_job_without_spending_an_attempt(tmp_path: Path) -> None:
    d = Daemon(tmp_path).start()
    job_id = d.submit("sleep", "60")
    until(lambda: d.job(job_id)["status"] == "running", what="the job to start")
    d.ok("pause")
    assert d.stop(signal.SIGTERM) == 0
    assert not d.socket.exists()
    d.start()
    job = d.job(job_id)
    assert job["status"] == "pending" and job["attempts"] == 0
    d.kill9()


def test_kill9_with_running_job_reaps_leftover_and_retries(tmp_path: Path) -> None:
    d = Daemon(tmp_path).start()
    token = f"{os.getpid()}.777"
    job_id = d.submit("sleep", token, opts=("--retries", "1"))
    until(lambda: _marked(token), what="the job to start")
    d.ok("pause")
    d.kill9()
    assert _marked(token), "the job should outlive a kill -9 of the daemon"
    d.start()
    until(lambda: not _marked(token), what="the leftover job to be killed")
    job = d.job(job_id)
    assert job["status"] == "retrying" and job["attempts"] == 1
    assert "phxqd stopped while it ran" in job["error"]
    d.kill9()


def test_a_job_killed_with_sigkill_fails_that_attempt_and_is_retried(daemon: Daemon) -> None:
    # The OOM killer, or an operator's kill -9: the attempt fails, its policy retries it,
    # and phxqd carries on.
    job_id = daemon.submit("sleep", "60", opts=("--retries", "1"))
    pid = until(lambda: daemon.job(job_id)["pid"], what="the job to start")
    os.kill(pid, signal.SIGKILL)
    job = until(
        lambda: (j := daemon.job(job_id))["attempts"] == 1 and j["status"] != "running" and j,
        what="the killed attempt to be recorded",
    )
    assert job["status"] in ("retrying", "pending") and "killed by SIGKILL" in job["error"]
    assert daemon.ctl("status").returncode == 0
    daemon.ok("cancel", str(job_id))


def test_a_second_daemon_on_the_same_socket_or_state_dir_refuses(
    daemon: Daemon, tmp_path: Path
) -> None:
    same_socket = Daemon(tmp_path / "other")
    same_socket.env["PHXQ_SOCKET"] = str(daemon.socket)
    same_state = Daemon(tmp_path / "third")
    same_state.env["PHXQ_STATE_DIR"] = str(daemon.state_dir)
    for other, why in ((same_socket, "already listening"), (same_state, "in use by another")):
        other.tmp.mkdir(exist_ok=True)
        other.start(expect_ready=False)
        assert other.proc is not None
        assert other.wait(30) != 0
        assert why in other.logtext()
    assert daemon.ctl("status").returncode == 0


def test_flags_override_environment_and_status_shows_running(tmp_path: Path) -> None:
    sock, state = tmp_path / "flag.sock", tmp_path / "flagstate"
    d = Daemon(tmp_path, extra=["--socket", str(sock), "--state-dir", str(state)])
    d.start()
    try:
        d.env["PHXQ_SOCKET"] = str(sock)
        job_id = d.submit("sleep", "30")
        until(lambda: d.job(job_id)["status"] == "running", what="the job to start")
        text = d.ok("status")
        assert "running (1 of 2):" in text and "sleep 30" in text
        assert (state / "journal").is_dir() and not d.state_dir.exists()
        assert oct(sock.stat().st_mode & 0o777) == "0o600"
    finally:
        d.stop()  # SIGTERM: the running job is killed and requeued, nothing is left behind


def test_jobs_run_where_they_were_submitted(daemon: Daemon, tmp_path: Path) -> None:
    work = tmp_path / "work"
    (work / "sub").mkdir(parents=True)
    here = daemon.ctl("submit", "--", "pwd", cwd=work)
    there = daemon.ctl("submit", "--cwd", "sub", "--", "pwd", cwd=work)
    ids = [int(here.stdout), int(there.stdout)]
    daemon.ok("wait", *map(str, ids))
    assert daemon.ok("logs", str(ids[0])) == f"{work}\n"
    assert daemon.ok("logs", str(ids[1])) == f"{work / 'sub'}\n"
    missing = daemon.submit("true", opts=("--cwd", str(tmp_path / "nope"), "--retries", "0"))
    assert daemon.ctl("wait", str(missing)).returncode == 1
    assert "cannot start" in daemon.job(missing)["error"]


def test_wrong_protocol_hello_closes_the_connection(daemon: Daemon) -> None:
    import socket as socketlib

    from phxqd import protocol

    s = socketlib.socket(socketlib.AF_UNIX)
    s.connect(str(daemon.socket))
    s.sendall(protocol.frame(protocol.Hello(99)) + protocol.frame(protocol.Status()))
    data = b""
    try:
        while chunk := s.recv(65536):
            data += chunk
    except ConnectionResetError:
        pass  # closed with our Status unread: the kernel says so, after the reply
    s.close()
    (n,) = protocol.HEADER.unpack(data[:4])
    assert len(data) == 4 + n, "one error reply, then the connection is closed"
    reply = protocol.reply_decoder.decode(data[4:])
    assert isinstance(reply, protocol.Err) and reply.code == "upgrade"


def test_list_limit_zero_and_cancel_message(daemon: Daemon) -> None:
    daemon.ok("pause")
    job_id = daemon.submit("true")
    assert daemon.ok("--json", "list", "--limit", "0") == ""
    assert daemon.ok("cancel", str(job_id)).strip() == f"job {job_id} cancelled"


def test_a_job_writing_100_mb_is_capped_head_and_tail_kept(daemon: Daemon) -> None:
    # 10 MiB default cap: the first 5 MiB, a marker, the last 5 MiB
    script = "echo FIRST; head -c 100000000 /dev/zero | tr '\\0' x; echo; echo LAST"
    job_id = daemon.submit("sh", "-c", script)
    daemon.ok("wait", str(job_id))
    log = daemon.state_dir / "logs" / f"{job_id}.log"
    size = log.stat().st_size
    assert 10 * 2**20 <= size <= 10 * 2**20 + 200, size
    data = log.read_bytes()
    assert data.startswith(b"FIRST\n") and data.endswith(b"\nLAST\n")
    assert b"bytes of output dropped here]" in data


def test_batches_beyond_one_request_are_sent_in_parts(daemon: Daemon) -> None:
    from phxqctl import Client
    from phxqd.model import JobSpec

    daemon.ok("pause")
    with Client(daemon.socket) as c:
        results = c.submit_batch([JobSpec(argv=["true"])] * 25_000)
        assert [r.job.id for r in results] == list(range(1, 25_001))
        assert c.status()["counts"]["pending"] == 25_000
    from phxqd import protocol

    r = daemon.ctl("status")
    assert r.returncode == 0
    too_many = protocol.Submit([JobSpec(argv=["true"])] * (protocol.MAX_BATCH + 1))
    with Client(daemon.socket) as c, pytest.raises(RemoteError) as refused:
        c.call(too_many)
    assert "at most 10000 jobs per request" in str(refused.value)


def test_client_falls_back_to_the_system_socket(tmp_path: Path, monkeypatch: Any) -> None:
    from phxqd import paths

    system = tmp_path / "run-phxq" / "phxqd.sock"
    monkeypatch.setattr(paths, "SYSTEM_SOCKET", system)
    monkeypatch.delenv("PHXQ_SOCKET", raising=False)
    monkeypatch.delenv("RUNTIME_DIRECTORY", raising=False)
    (tmp_path / "user-runtime").mkdir(mode=0o700)  # platformdirs ignores a looser one
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "user-runtime"))
    own = tmp_path / "user-runtime" / "phxq" / "phxqd.sock"
    assert paths.client_socket_path() == own  # neither exists: the user's own, for the error
    system.parent.mkdir()
    system.touch()
    assert paths.client_socket_path() == system  # no daemon of the user's: the service's
    own.parent.mkdir()
    own.touch()
    assert paths.client_socket_path() == own
    assert paths.client_socket_path("/x.sock") == Path("/x.sock")


def test_escaped_descendants_are_killed_on_cancel_timeout_and_restart(
    tmp_path: Path, daemon: Daemon
) -> None:
    # one child leaves the process group (setsid); one leaves it and its parent too (a
    # double fork): only the PHXQ_JOB_ID and PHXQ_SOCKET it inherited tie it to the job
    def escaping(token: str) -> str:
        return f"setsid sleep {token} & (setsid sleep {token} &) ; sleep {token} & wait"

    token = f"{os.getpid()}.51"
    job_id = daemon.submit("sh", "-c", escaping(token))
    until(lambda: len(_marked(token)) == 3, what="three sleeps")
    leader = daemon.job(job_id)["pid"]

    def escaped() -> list[psutil.Process]:
        """Out of the job's session, and no longer a child of the job's leader."""
        return [
            p
            for p in _marked(token)
            if p.ppid() != leader and os.getsid(p.pid) != os.getsid(leader)
        ]

    until(escaped, what="a sleep out of the job's session whose parent is gone")
    daemon.ok("cancel", str(job_id))
    until(lambda: not _marked(token), what="every sleep of the cancelled job to be gone")

    token2 = f"{os.getpid()}.52"
    timed = daemon.submit("sh", "-c", escaping(token2), opts=("--timeout", "1", "--retries", "0"))
    assert daemon.ctl("wait", str(timed)).returncode == 1
    until(lambda: not _marked(token2), what="every sleep of the timed-out job to be gone")

    token3 = f"{os.getpid()}.53"
    crashed = daemon.submit("sh", "-c", escaping(token3), opts=("--retries", "0"))
    until(lambda: len(_marked(token3)) == 3, what="three sleeps")
    daemon.ok("pause")
    daemon.kill9()
    daemon.start()
    until(lambda: not _marked(token3), what="the leftovers of a killed daemon to be gone")
    assert daemon.job(crashed)["status"] == "failed"


def test_shell_option_and_logs_follow(daemon: Daemon, tmp_path: Path) -> None:
    go = tmp_path / "go"
    job_id = int(
        daemon.ok(
            "submit",
            "--shell",
            f"echo one | tr a-z A-Z; while [ ! -e {go} ]; do sleep 0.02; done; echo two",
        ).strip()
    )
    assert daemon.job(job_id)["argv"] == ["/bin/sh", "-c", daemon.job(job_id)["argv"][2]]
    follower = subprocess.Popen(
        [sys.executable, "-m", "phxqctl", "logs", "--follow", str(job_id)],
        env=daemon.env,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert follower.stdout is not None
    assert follower.stdout.readline() == "ONE\n"  # streamed while the job still runs
    assert daemon.job(job_id)["status"] == "running"
    go.touch()
    rest, _ = follower.communicate(timeout=30)
    assert rest == "two\n" and follower.returncode == 0
    assert daemon.ctl("submit", "--shell", "true", "--", "echo").returncode == 2
