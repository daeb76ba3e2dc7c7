"""The suite does not depend on the caller's environment: a representative part of it,
run from a shell with the variables that broke it once (each confirmed by setting it
alone), passes. conftest's `clean_environment` is what makes it so: every daemon, client
and job gets an explicit environment, and the test process itself drops the rest."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT

#: each broke a test once: colour (test_live), the log directory systemd gives a unit
#: (a CI runner under a systemd unit: the log tests), the suite run as a phxq job
#: (test_progress), a proxy (test_metrics' loopback HTTP), systemd's notification socket
#: and watchdog (a daemon would have spoken for the caller), a width, a time zone and a
#: locale unlike the ones the tests pin
HOSTILE = {
    "NO_COLOR": "1",
    "COLUMNS": "20",
    "LOGS_DIRECTORY": "/nonexistent/logs",
    "STATE_DIRECTORY": "/nonexistent/state",
    "RUNTIME_DIRECTORY": "/nonexistent/run",
    "CONFIGURATION_DIRECTORY": "/nonexistent/etc",
    "PHXQ_JOB_ID": "1",
    "PHXQ_ATTEMPT": "1",
    "PHXQ_SOCKET": "/nonexistent/phxqd.sock",
    "http_proxy": "http://127.0.0.1:9",
    "HTTP_PROXY": "http://127.0.0.1:9",
    "no_proxy": "",
    "WATCHDOG_USEC": "1000000",
    "TZ": "Pacific/Chatham",
    "LANG": "tr_TR.UTF-8",
}

#: a part of the suite that touches each of the above
SUBSET = [
    "tests/test_metrics.py",
    "tests/test_progress.py",
    "tests/test_live.py",
    "tests/test_config.py",
    "tests/test_systemd.py::test_systemds_directory_variables_place_everything",
    "tests/test_systemd.py::test_without_journald_lines_keep_their_timestamp",
    "tests/test_cli.py::test_flags_override_environment_and_status_shows_running",
]


def test_the_suite_passes_in_a_hostile_environment(tmp_path: Path) -> None:
    notify = tmp_path / "notify"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(notify))
    listener.setblocking(False)
    env = {**os.environ, **HOSTILE, "NOTIFY_SOCKET": str(notify), "PYTHONPATH": str(ROOT)}
    r = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *SUBSET],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert " passed" in r.stdout and "skipped" not in r.stdout, r.stdout[-2000:]
    try:
        sent = listener.recv(4096)
    except BlockingIOError:
        sent = b""
    listener.close()
    assert sent == b"", f"a process the tests started spoke to the caller's systemd: {sent!r}"
