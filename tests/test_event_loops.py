"""phxqd on each event loop it may run on (`event_loop`, docs/configuration.md).

`make test` installs uvloop (the `fast` extra is part of `dev`), so every other test runs
phxqd on uvloop's loop; users without the extra run it on asyncio's. This runs the paths
that lean on the loop itself on both: the Unix-socket transport (requests, a `wait`
answered later), a command's pidfd and its log, a callable in a worker lane, a pause, a cancel
(a signal to a process group), the journal's in-loop and threaded fdatasyncs, kill -9
and recovery, and the HTTP server.
"""

from __future__ import annotations

import http.client
import importlib.util
import signal
from pathlib import Path

import pytest

from tests.conftest import Daemon, until
from tests.web_helpers import free_port


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_phxqd_runs_on_the_event_loop_it_is_told(tmp_path: Path, loop: str) -> None:
    assert importlib.util.find_spec("uvloop") is not None, "make test installs uvloop"
    port = free_port()
    d = Daemon(tmp_path, workers=2)
    d.config.write_text(f'event_loop = "{loop}"\nhttp_listen = "127.0.0.1:{port}"\n')
    d.start()
    assert f", loop {loop}\n" in d.logtext(), d.logtext()

    echo = d.submit("sh", "-c", "echo on the loop")
    call = int(d.ok("submit", "--call", "os:getpid").strip())
    d.ok("wait", str(echo), str(call))
    assert d.ok("logs", str(echo)) == "on the loop\n"
    assert d.job(call)["status"] == "completed"

    d.ok("pause")
    held = d.submit("true")
    assert d.job(held)["status"] == "pending"
    d.ok("resume")
    sleeper = d.submit("sleep", "300")
    until(lambda: d.job(sleeper)["status"] == "running", what="the sleeper runs")
    d.ok("cancel", str(sleeper))
    assert d.job(sleeper)["status"] == "cancelled"

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("GET", "/api/v1/status")
    answer = conn.getresponse()
    assert answer.status == 200 and b'"counts"' in answer.read()
    conn.close()

    acknowledged = [d.submit("true", opts=("--queue", "later")) for _ in range(5)]
    d.stop(signal.SIGKILL)
    d.start()
    assert f", loop {loop}\n" in d.logtext()
    d.ok("resume")
    d.ok("wait", *map(str, [held, *acknowledged]))


def test_event_loop_uvloop_without_uvloop_is_refused(tmp_path: Path) -> None:
    """Asked for by name and missing: a one-line reason and exit status 1, no traceback.
    (uvloop is hidden from phxqd by a module of that name that fails to import.)"""
    shadow = tmp_path / "shadow"
    shadow.mkdir()
    (shadow / "uvloop.py").write_text("raise ImportError('hidden by the test')\n")
    d = Daemon(tmp_path / "d")
    d.config.write_text('event_loop = "uvloop"\n')
    d.env["PYTHONPATH"] = f"{shadow}:{d.env['PYTHONPATH']}"
    d.start(expect_ready=False)
    assert d.wait(30) == 1
    log = d.logtext()
    assert "needs uvloop" in log and "Traceback" not in log, log
