"""The client side of streams and of human output: `watch` in a real terminal (tmux),
`wait` progress bars (under `script`), `watch --json`, `logs --follow`, the Python API's
`watch` and `follow_logs`, and colour only on a terminal without NO_COLOR."""

from __future__ import annotations

import json
import math
import os
import re
import shlex
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from phxqctl import Client
from phxqd import protocol
from tests.conftest import Daemon, need, until

CTL = f"{shlex.quote(sys.executable)} -m phxqctl"
ESC = "\033["


class Output:
    """What a process writes, collected by a thread, so a test can wait for a text."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.data = b""
        assert proc.stdout is not None
        stream = proc.stdout

        def pump() -> None:
            while chunk := os.read(stream.fileno(), 65536):
                self.data += chunk

        self.thread = threading.Thread(target=pump, daemon=True)
        self.thread.start()

    def text(self) -> str:
        return self.data.decode("utf-8", "replace")


def in_terminal(daemon: Daemon, command: str) -> subprocess.Popen[bytes]:
    """`command` run by `script` in a pseudo-terminal (stdin, stdout and stderr a TTY)."""
    return subprocess.Popen(
        [need("script"), "-qfec", command, "/dev/null"],
        env={**daemon.env, "TERM": "xterm", "COLUMNS": "100", "LINES": "30"},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def gated_progress_job(daemon: Daemon, go: Path, percent: int, step: str) -> int:
    script = (
        f"{CTL} progress --percent {percent} --step {step} && "
        f"while [ ! -e {go} ]; do sleep 0.02; done"
    )
    return daemon.submit("sh", "-c", script)


def test_wait_on_a_terminal_draws_a_progress_bar_per_job(daemon: Daemon, tmp_path: Path) -> None:
    go = tmp_path / "go"
    job_id = gated_progress_job(daemon, go, 50, "halfway")
    proc = in_terminal(daemon, f"{CTL} wait {job_id}")
    out = Output(proc)
    until(lambda: "halfway" in out.text(), what="the bar with the job's step")
    assert "50%" in out.text() and "waiting: 0 of 1 finished" in out.text()
    go.touch()
    assert proc.wait(30) == 0
    out.thread.join(10)
    text = out.text()
    assert f"job {job_id} " in text and "completed" in text
    assert ESC + "J" in text, "the bars are erased at the end"


def test_wait_and_logs_without_a_terminal_print_no_escape_codes(daemon: Daemon) -> None:
    job_id = daemon.submit("echo", "plain")
    out = daemon.ok("wait", str(job_id))
    assert out == f"job {job_id} completed\n"
    assert daemon.ok("logs", "--follow", str(job_id)) == "plain\n"


def tmux(server: str, *args: str) -> str:
    r = subprocess.run(
        [need("tmux"), "-L", server, *args], capture_output=True, text=True, timeout=30
    )
    assert r.returncode == 0, r.stderr
    return r.stdout


@pytest.fixture
def tmux_server() -> Iterator[str]:
    """A tmux server of this test's own (its own socket name), killed at the end."""
    name = f"phxq-test-{os.getpid()}-{threading.get_ident()}"
    yield name
    subprocess.run([need("tmux"), "-L", name, "kill-server"], capture_output=True)


def test_watch_full_screen_in_tmux(daemon: Daemon, tmp_path: Path, tmux_server: str) -> None:
    go, exit_file = tmp_path / "go", tmp_path / "exit"
    command = f"{CTL} watch; echo $? > {exit_file}; sleep 600"
    env = [f"-e{k}={v}" for k, v in daemon.env.items() if k.startswith("PHXQ_")]
    tmux(tmux_server, "new-session", "-d", "-x", "100", "-y", "30", *env, command)

    def screen() -> str:
        return tmux(tmux_server, "capture-pane", "-p")

    until(lambda: "q: quit" in screen(), what="the watch screen")
    assert tmux(tmux_server, "display", "-p", "#{alternate_on}").strip() == "1"
    running = gated_progress_job(daemon, go, 40, "resizing")
    failing = daemon.submit("sh", "-c", "echo boom; exit 3", opts=("--retries", "0"))
    # "40%", not "resizing": the job's row shows its command line, which holds the step
    # word before the job has reported anything
    until(
        lambda: "40%" in screen() and "RECENT FAILURES" in screen(),
        what="the running job's progress and the failure on screen",
    )
    text = screen()
    assert "RUNNING (1 of 2)" in text and "40%" in text and "[########" in text
    [row] = [line for line in text.splitlines() if "resizing" in line]
    assert row.split()[0] == str(running)
    [failure] = [line for line in text.splitlines() if "exited with status 3" in line]
    assert failure.split()[0] == str(failing)
    total = [line.split() for line in text.splitlines() if line.startswith("total")]
    assert total == [["total", "0", "1", "0", "0", "1", "0"]]
    go.touch()
    until(lambda: "RUNNING (0 of 2)" in screen(), what="the job's end on screen")
    tmux(tmux_server, "send-keys", "q")
    until(exit_file.exists, what="watch to exit")
    assert exit_file.read_text().strip() == "0"
    assert tmux(tmux_server, "display", "-p", "#{alternate_on}").strip() == "0"


def ticking_job(daemon: Daemon, go: Path) -> int:
    """A job that reports progress every 50 ms until `go` exists: a stream that has
    subscribed is sure to see an event of it soon (no race with the subscription)."""
    script = (
        f"echo one; while [ ! -e {go} ]; do {CTL} progress --step tick; sleep 0.05; done; echo two"
    )
    return daemon.submit("sh", "-c", script)


def test_watch_json_lines(daemon: Daemon, tmp_path: Path) -> None:
    go = tmp_path / "go"
    job_id = ticking_job(daemon, go)
    proc = subprocess.Popen(
        [sys.executable, "-m", "phxqctl", "--json", "watch", str(job_id)],
        env=daemon.env,
        stdout=subprocess.PIPE,
    )
    out = Output(proc)

    def events() -> list[dict[str, object]]:
        return [json.loads(line) for line in out.text().splitlines(keepends=True) if "\n" in line]

    try:
        until(lambda: any(e["event"] == "progress" for e in events()), what="a progress event")
        go.touch()
        until(lambda: events()[-1]["event"] == "completed", what="the completed event")
    finally:
        proc.terminate()
        proc.wait(10)
    for e in events():
        assert e["id"] == job_id
        assert "type" not in e and "data" not in e
        assert set(e) >= {"event", "id", "at", "queue", "status", "attempt", "progress"}
    assert events()[-1]["status"] == "completed"


def test_python_api_watch_and_follow_logs(daemon: Daemon, tmp_path: Path) -> None:
    go = tmp_path / "go"
    job_id = ticking_job(daemon, go)
    with Client(daemon.socket) as c:
        events = c.watch([job_id])
        first = next(events)
        assert isinstance(first, protocol.JobEvent) and first.id == job_id
        chunks = c.follow_logs(job_id)
        assert next(chunks) == b"one\n"
        go.touch()
        assert b"".join(chunks) == b"two\n"
        kinds = []
        for event in events:
            assert isinstance(event, protocol.JobEvent) and event.id == job_id
            kinds.append(event.event)
            if event.event == "completed":
                break
        assert kinds[-1] == "completed"
        assert c.get(job_id).status == "completed"  # the client's own connection still works


# ------------------------------------------------------------------- colour


def test_colour_only_on_a_terminal_and_never_with_no_color(daemon: Daemon) -> None:
    daemon.ok("pause")
    daemon.submit("true")
    for args in (["status"], ["list"], ["show", "1"]):
        piped = subprocess.run(
            [sys.executable, "-m", "phxqctl", *args],
            env={k: v for k, v in daemon.env.items() if k != "NO_COLOR"},
            capture_output=True,
            text=True,
        )
        assert piped.returncode == 0 and ESC not in piped.stdout, args  # a pipe: no colour
        plain = subprocess.run(
            [sys.executable, "-m", "phxqctl", *args],
            env={**daemon.env, "NO_COLOR": "1"},
            capture_output=True,
            text=True,
        )
        assert plain.returncode == 0 and ESC not in plain.stdout

    # What colour depends on is set here, whatever the caller's environment (or the
    # harness) holds: NO_COLOR unset unless a case sets it, a terminal that has colours.
    without_no_color = {k: v for k, v in daemon.env.items() if k != "NO_COLOR"}

    def on_terminal(args: str, **extra: str) -> str:
        proc = subprocess.run(
            [need("script"), "-qfec", f"{CTL} {args}", "/dev/null"],
            env={**without_no_color, "TERM": "xterm", **extra},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 0, proc.stdout
        return proc.stdout

    assert ESC in on_terminal("list") and "pending" in on_terminal("list")
    assert ESC in on_terminal("status")
    assert ESC not in on_terminal("list", NO_COLOR="1")
    assert ESC not in on_terminal("--json list")
    assert ESC in on_terminal("list", NO_COLOR="")  # set but empty: colour (no-color.org)


def test_tables_fit_80_columns_with_relative_times(daemon: Daemon) -> None:
    daemon.ok("pause")
    began = time.monotonic()
    daemon.submit("sh", "-c", "echo " + "x" * 200, opts=("--queue", "q" * 30, "--delay", "1h"))
    listing = daemon.ok("list").splitlines()
    took = time.monotonic() - began  # a loaded machine may take seconds: bound, not guess
    assert all(len(line) <= 80 for line in listing), listing
    assert "in 59m" in listing[1] or "in 1h00m" in listing[1]
    ago = re.search(r"\b(\d+)s ago\b", listing[1])
    assert ago is not None and int(ago.group(1)) <= math.ceil(took), listing[1]
    assert all(len(line) <= 80 for line in daemon.ok("status").splitlines())
