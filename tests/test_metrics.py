"""Metrics through `phxqctl metrics` and the HTTP endpoint, read by a real Prometheus parser."""

from __future__ import annotations

import re
import socket
import urllib.error
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import Daemon


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[s.name, tuple(sorted(s.labels.items()))] = s.value
    return out


def test_metrics_count_what_happened(daemon: Daemon) -> None:
    ok = daemon.submit("true")
    flaky = daemon.submit("false", opts=("--retries", "1", "--backoff", "0.01"))
    later = daemon.submit("true", opts=("--delay", "1h", "--queue", "img"))
    daemon.ctl("wait", str(ok), str(flaky))
    daemon.ok("cancel", str(later))
    m = samples(daemon.ok("metrics"))
    q = (("queue", "default"),)

    def jobs(event: str, queue: str = "default") -> float:
        return m["phxq_jobs_total", (("event", event), ("queue", queue))]

    assert jobs("submitted") == 2 and jobs("submitted", "img") == 1
    assert jobs("completed") == 1 and jobs("retried") == 1 and jobs("failed") == 1
    assert jobs("cancelled", "img") == 1
    assert m["phxq_queue_jobs", (("queue", "default"), ("status", "failed"))] == 1
    assert m["phxq_job_duration_seconds_count", q] == 3  # three attempts ended
    assert m["phxq_job_wait_seconds_count", q] == 3
    assert m["phxq_journal_fsync_seconds_count", ()] > 0
    assert m["phxq_journal_writable", ()] == 1
    assert m["phxq_running_jobs", ()] == 0
    assert daemon.json("metrics")["exposition"].startswith("# HELP")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_http_endpoint_on_loopback(tmp_path: Path) -> None:
    port = free_port()
    d = Daemon(tmp_path)
    d.config.write_text(f'metrics_listen = "127.0.0.1:{port}"\n')
    d.start()
    d.ok("wait", str(d.submit("true")))
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as r:
        assert r.status == 200
        m = samples(r.read().decode())
    assert m["phxq_jobs_total", (("event", "completed"), ("queue", "default"))] == 1
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/nothing-here", timeout=30)
        raise AssertionError("/nothing-here should be 404")
    except urllib.error.HTTPError as e:
        assert e.code == 404


def test_every_metric_is_documented_and_every_documented_one_exists(daemon: Daemon) -> None:
    daemon.ctl("wait", str(daemon.submit("true")))
    exported = {
        f.name + ("_total" if f.type == "counter" else "")
        for f in text_string_to_metric_families(daemon.ok("metrics"))
    }
    doc = (Path(__file__).resolve().parent.parent / "docs" / "operations.md").read_text()
    documented = set(re.findall(r"^  \| `(phxq_\w+)` \|", doc, re.MULTILINE))
    assert exported == documented
