"""What schedules cost phxqd: 10,000 schedules firing every minute, and the latency of a
fire (fire time to job start).

    .venv/bin/python -m bench.bench_schedules [--schedules 10000] [--fires 30]

A real phxqd (fsync = "always", 2 workers). First its CPU over `--idle` seconds with no
schedule, then `--schedules` schedules are added (`--every 60`, each submitting `true` to
a paused queue, so what is measured is the firing, not running 10,000 processes a
minute), its RSS is read, and its CPU time (user + system, /proc) is counted over the
next full minute, in which every schedule fires once. Meanwhile one more schedule fires
every second into a queue that runs, and for `--fires` of its jobs the time from the fire
time (in the job's key) to the job's start (`started_at`) is the dispatch latency.
Prints a JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from datetime import datetime
from pathlib import Path

import psutil

from bench.bench_journal import Daemon
from phxqctl import Client
from phxqd.model import JobSpec


def cpu_seconds(p: psutil.Process) -> float:
    t = p.cpu_times()
    return float(t.user + t.system)


def fire_time(key: str) -> float:
    return datetime.fromisoformat(key.split("@", 1)[1].replace("Z", "+00:00")).timestamp()


def run(schedules: int, fires: int, idle: float) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="phxq-sched-") as tmp:
        d = Daemon(Path(tmp), "always")
        try:
            d.start()
            assert d.proc is not None
            proc = psutil.Process(d.proc.pid)
            rss_empty = d.rss_kib()
            c0 = cpu_seconds(proc)
            time.sleep(idle)
            idle_per_minute = (cpu_seconds(proc) - c0) * 60 / idle
            with Client(d.socket) as c:
                c.pause("parked")
                job = JobSpec(argv=["true"], queue="parked", cwd=tmp)
                t0 = time.perf_counter()
                for i in range(schedules):
                    c.schedule_add(f"s{i}", job, every=60.0)
                add_seconds = time.perf_counter() - t0
                rss_schedules = d.rss_kib()
                # one minute after the last add, every schedule has fired once more
                c0, w0 = cpu_seconds(proc), time.monotonic()
                probe = JobSpec(argv=["true"], cwd=tmp)
                c.schedule_add("probe", probe, every=1.0, overlap="allow")
                time.sleep(60.0)
                cpu_minute = cpu_seconds(proc) - c0
                wall = time.monotonic() - w0
                fired = c.status()["counts"]["pending"]
                latencies = []
                for j in c.list(limit=100000):
                    if (j.key or "").startswith("schedule:probe@") and j.started_at:
                        latencies.append(j.started_at - fire_time(j.key or ""))
                latencies = sorted(latencies)[-fires:] if fires else latencies
            return {
                "schedules": schedules,
                "add_seconds": round(add_seconds, 2),
                "rss_empty_mib": round(rss_empty / 1024, 1),
                "rss_with_schedules_mib": round(rss_schedules / 1024, 1),
                "kib_per_schedule": round((rss_schedules - rss_empty) / schedules, 2),
                "idle_cpu_s_per_minute": round(idle_per_minute, 3),
                "cpu_s_in_the_minute": round(cpu_minute * 60 / wall, 2),
                "jobs_fired_in_the_minute": fired,
                "latency_median_ms": round(statistics.median(latencies) * 1000, 1),
                "latency_p95_ms": round(
                    statistics.quantiles(latencies, n=20, method="inclusive")[-1] * 1000
                    if len(latencies) > 1
                    else 0,
                    1,
                ),
                "latency_max_ms": round(max(latencies) * 1000, 1),
                "latency_samples": len(latencies),
                "cpus": os.cpu_count() or 0,
            }
        finally:
            if d.proc is not None:
                d.kill()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--schedules", type=int, default=10_000)
    ap.add_argument("--fires", type=int, default=50, help="latency samples kept (newest)")
    ap.add_argument("--idle", type=float, default=20.0, help="seconds of idle CPU measured")
    args = ap.parse_args()
    print(json.dumps(run(args.schedules, args.fires, args.idle)))


if __name__ == "__main__":
    main()
