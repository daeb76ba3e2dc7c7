"""HTTP on, the system unit's sandbox still holds: phxqd serving the API, the dashboard
and an event stream makes only system calls its SystemCallFilter= allows (a filtered call
would fail with EPERM under systemd), and needs no address family beyond the unit's
RestrictAddressFamilies= (the unit file, and so its exposure score, is unchanged by
`http_listen`, a phxqd.toml key)."""

from __future__ import annotations

import re
import shutil
import signal
import threading
from pathlib import Path

import pytest

from tests.conftest import Daemon
from tests.test_units import UNITS, _syscall_set, systemd_analyze, tracee
from tests.web_helpers import Http, free_port

__all__ = ["systemd_analyze"]  # the fixture, shared with test_units


def test_http_stays_within_the_system_units_syscall_filter(
    tmp_path: Path, systemd_analyze: str
) -> None:
    if not shutil.which("strace"):
        pytest.skip("strace is not installed")
    unit = (UNITS / "phxqd.service").read_text()
    cache: dict[str, set[str]] = {}
    allowed: set[str] = set()
    for line in unit.splitlines():
        if line.startswith("SystemCallFilter="):
            value = line.split("=", 1)[1]
            names = set().union(
                *(_syscall_set(systemd_analyze, w, cache) for w in value.lstrip("~").split())
            )
            allowed = allowed - names if value.startswith("~") else allowed | names
    families = re.search(r"^RestrictAddressFamilies=(.*)$", unit, re.MULTILINE)
    assert families is not None and "AF_INET" in families.group(1).split()

    trace = tmp_path / "trace"
    port = free_port()
    d = Daemon(tmp_path / "d")
    d.config.write_text(f'http_listen = "127.0.0.1:{port}"\n')
    d.start(wrapper=["strace", "-f", "-qq", "-o", str(trace), "--"])
    daemon = tracee(d)
    h = Http(port)
    job = d.submit("sh", "-c", "echo hi")
    d.ok("wait", str(job))
    events = h.events("/api/v1/events")
    reader = threading.Thread(target=lambda: next(events, None), daemon=True)
    reader.start()
    assert h.get("/").status == 200
    assert h.get(f"/api/v1/jobs/{job}/log").json()["data"] == "hi\n"
    assert h.get("/metrics").status == 200
    assert h.post("/api/v1/pause").status == 200
    daemon.send_signal(signal.SIGTERM)
    assert d.proc is not None and d.wait(30) == 0
    used = set(re.findall(r"^\d+\s+(\w+)\(", trace.read_text(), re.MULTILINE))
    assert {"accept4", "epoll_wait"} & used or "accept" in used
    assert used - allowed == set()
