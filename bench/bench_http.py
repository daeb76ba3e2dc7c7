"""The HTTP API's latency with many jobs queued, and what an idle dashboard costs phxqd.

    .venv/bin/python -m bench.bench_http [--jobs 1000000] [--requests 300] [--idle 60]

1. A real phxqd (`http_listen` on loopback, fsync off, paused) holding N pending jobs, a
   a few of them cancelled: median and p99 wall time of GET requests over one
   kept-alive connection (the standard library's http.client): status, one job, the
   first page of 100 jobs, a page of 100 deep in the list (a random cursor), a page of
   cancelled jobs (from the status index), a label filter (a walk from the newest job).
2. The same phxqd, nothing running: its CPU seconds per minute (from /proc) with HTTP on
   and no page open, then with 5 dashboard pages open; then a phxqd without HTTP holding
   the same jobs. An idle page holds one event
   stream (`/api/v1/events`) and asks for nothing else until something happens, so the
   5 pages are 5 such streams, each opened after a load of the page itself.
Prints a JSON summary on the last line.
"""

from __future__ import annotations

import argparse
import http.client
import json
import random
import socket
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

from bench.bench_journal import Daemon, fill
from phxqctl import Client


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def timed(conn: http.client.HTTPConnection, urls: list[str]) -> dict[str, float]:
    times = []
    for url in urls:
        t0 = time.perf_counter()
        conn.request("GET", url)
        r = conn.getresponse()
        r.read()
        times.append(time.perf_counter() - t0)
        assert r.status == 200, (url, r.status)
    times.sort()
    return {
        "median_ms": round(statistics.median(times) * 1e3, 2),
        "p99_ms": round(times[int(len(times) * 0.99) - 1] * 1e3, 2),
    }


def cpu_per_minute(proc: psutil.Process, seconds: float) -> float:
    before = proc.cpu_times()
    time.sleep(seconds)
    after = proc.cpu_times()
    used = (after.user - before.user) + (after.system - before.system)
    return float(round(used * 60.0 / seconds, 3))


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.bench_http", description=__doc__)
    p.add_argument("--jobs", type=int, default=1_000_000)
    p.add_argument("--requests", type=int, default=300)
    p.add_argument("--idle", type=float, default=60.0, help="seconds per CPU measurement")
    args = p.parse_args()
    rng = random.Random(1)
    results: dict[str, Any] = {"jobs": args.jobs}
    with tempfile.TemporaryDirectory(prefix="phxq-bench-") as tmp:
        d = Daemon(Path(tmp), "off")
        port = free_port()
        with open(d.env["PHXQ_CONFIG"], "a") as f:
            f.write(f'http_listen = "127.0.0.1:{port}"\n')
        d.start()
        try:
            t0 = time.perf_counter()
            fill(d, args.jobs)
            results["fill_seconds"] = round(time.perf_counter() - t0, 1)
            n = args.jobs
            with Client(d.socket) as c:
                c.cancel(list(range(1, n, max(n // 50, 1))))
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            k = args.requests
            cases = {
                "status": ["/api/v1/status"] * k,
                "one job": [f"/api/v1/jobs/{rng.randrange(1, n)}" for _ in range(k)],
                "first page of 100": ["/api/v1/jobs?limit=100"] * k,
                "a page of 100 at a random cursor": [
                    f"/api/v1/jobs?limit=100&before={rng.randrange(200, n)}" for _ in range(k)
                ],
                "a page of 100 cancelled jobs": ["/api/v1/jobs?status=cancelled&limit=100"] * k,
                "a label, walking every job": ["/api/v1/jobs?label=none&limit=100"] * 10,
            }
            for name, urls in cases.items():
                timed(conn, urls[:5])  # warm
                results[name] = timed(conn, urls)
                print(name, results[name], flush=True)
            conn.close()

            assert d.proc is not None
            proc = psutil.Process(d.proc.pid)
            results["idle, HTTP on, no page: CPU s/min"] = cpu_per_minute(proc, args.idle)
            pages = []
            for _ in range(5):
                page = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
                page.request("GET", "/")
                page.getresponse().read()
                page.request("GET", "/api/v1/events")
                r = page.getresponse()
                assert r.status == 200
                r.readline()  # the stream's opening comment
                pages.append(page)
            results["idle, 5 dashboard pages: CPU s/min"] = cpu_per_minute(proc, args.idle)
            for page in pages:
                page.close()
        finally:
            d.close()
    with tempfile.TemporaryDirectory(prefix="phxq-bench-") as tmp:
        d = Daemon(Path(tmp), "off")  # the same, without HTTP
        d.start()
        try:
            fill(d, args.jobs)
            assert d.proc is not None
            proc = psutil.Process(d.proc.pid)
            results["idle, HTTP off: CPU s/min"] = cpu_per_minute(proc, args.idle)
        finally:
            d.close()
    print(json.dumps(results))


if __name__ == "__main__":
    main()
