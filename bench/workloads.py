"""The six workloads of issue 9, each run on phxq and every peer that can do it.

Repeated runs go round-robin over the systems (run 1 of each, then run 2 of each...), so
that the noise of this shared machine falls on all of them alike; the tables show medians.
A peer that cannot do a workload gets an n/a row with its reason (the peer's NA); one that
fails gets an n/a row with the error, and the run goes on.
"""

from __future__ import annotations

import statistics
import sys
import time
import traceback
from collections.abc import Callable
from functools import partial
from types import ModuleType
from typing import Any

import msgspec

from bench.peers import Backlog, Ctx, NotApplicable, Variant
from bench.report import Row, Table


class Settings(msgspec.Struct):
    """Counts and repeats of one mode (full or quick)."""

    enqueue_jobs: int
    enqueue_repeats: int
    producers: int
    throughput_jobs: int
    throughput_repeats: int
    slow_jobs: int  # for RQ's fork-per-job worker, ~15-30 jobs/s here
    shell_runs: int
    sizes: list[int]
    restarts: int
    cli_runs: int


FULL = Settings(20_000, 2, 16, 1000, 3, 200, 10, [100_000, 1_000_000], 3, 10)
QUICK = Settings(2000, 1, 16, 300, 1, 60, 5, [10_000, 100_000], 1, 3)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def attempt(row: Row, fn: Callable[[], Any]) -> Any:
    """Run one measurement; on NotApplicable or an error, mark the row n/a and go on."""
    if row.na is not None:
        return None
    try:
        return fn()
    except NotApplicable as e:
        row.na = str(e)
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as e:
        traceback.print_exc()
        row.na = f"failed: {type(e).__name__}: {e}"[:200]
    return None


def enqueue(ctx: Ctx, peers: list[ModuleType], s: Settings) -> Table:
    t = Table(
        "1. Durable enqueue",
        "jobs/s",
        higher_is_better=True,
        group_title="producers",
        text=f"""
{s.enqueue_jobs:,} no-op jobs enqueued one per call (phxq: `Client.submit`, one request
each; huey: calling the task; RQ: `Queue.enqueue`; Celery: `task.delay()`), by one producer
process and by {s.producers} concurrent producer processes; every call returns once the job
is durable under the setting shown. Nothing consumes the queue meanwhile (phxq's is
paused). The clock starts once every producer has connected (phxq and huey: and made
1,000 untimed enqueues among them, so that huey's SQLite WAL is past its first checkpoint).
""",
    )
    runs: list[tuple[Row, ModuleType, Variant, int]] = []
    for producers in (1, s.producers):
        for p in peers:
            if "enqueue" in p.NA:
                if producers == 1:
                    t.add(Row(p.SYSTEM, p.variants()[0].setting, p.variants()[0].durability,
                              na=p.NA["enqueue"]))  # fmt: skip
                continue
            for v in p.variants():
                row = t.add(Row(p.SYSTEM, v.setting, v.durability, group=str(producers)))
                runs.append((row, p, v, producers))
    for i in range(s.enqueue_repeats):
        for row, p, v, producers in runs:
            log(f"enqueue {p.SYSTEM} {v.setting} x{producers} run {i + 1}")
            rate = attempt(row, partial(p.enqueue, ctx, v, s.enqueue_jobs, producers))
            if rate is not None:
                row.samples.append(rate)
    t.rows.sort(key=lambda r: (r.group == "", int(r.group or 0)))
    return t


def throughput(ctx: Ctx, peers: list[ModuleType], s: Settings) -> Table:
    from bench.peers.tsp import MAX_QUEUED

    tsp_max = min(MAX_QUEUED, s.throughput_jobs)
    t = Table(
        "2. End-to-end throughput, 2 workers",
        "jobs/s",
        higher_is_better=True,
        group_title="jobs",
        text=f"""
{s.throughput_jobs:,} no-op jobs queued first, then run by 2 workers; jobs/s from the start
of the run to the last job done. *Python callables*: a function that does nothing (phxq:
`--call os:getpid` in its persistent workers; huey: `huey_consumer -w 2 -k process`; RQ: 2
`rq worker` processes, RQ's default Worker, which forks a work horse per job; Celery:
prefork pool of 2, acks_late). *`true` commands*: phxq runs `true` as a command job, task-
spooler as a job (2 slots), the Python peers call `subprocess.run(["true"])` in a task.
phxq's clock starts at `resume` (its daemon is already up); the peers' at their first job
done (their workers' start-up is not counted). RQ runs {s.slow_jobs} jobs (it does ~15-30
jobs/s here), tsp at most {tsp_max} (each queued job holds one of its server's ~1,000
connections). Durability as each system's default in this bench (phxq `always`, Redis
`appendfsync always`, SQLite synchronous=FULL).
""",
    )
    runs = []
    for kind, label in (("call", "Python callables"), ("true", "`true` commands")):
        for p in peers:
            v = p.variants()[0]
            row = t.add(Row(p.SYSTEM, v.setting, v.durability, group=label))
            if "throughput" in p.NA:
                row.na = p.NA["throughput"]
                continue
            runs.append((row, p, kind))
    for i in range(s.throughput_repeats):
        for row, p, kind in runs:
            n = s.slow_jobs if p.SYSTEM == "RQ" else s.throughput_jobs
            log(f"throughput {p.SYSTEM} {kind} ({n} jobs) run {i + 1}")
            rate = attempt(row, partial(p.throughput, ctx, kind, n))
            if rate is not None:
                row.samples.append(rate)
    return t


def shell_submit(ctx: Ctx, peers: list[ModuleType], s: Settings) -> Table:
    t = Table(
        "3. One shell submit command",
        "ms",
        higher_is_better=False,
        digits=1,
        text=f"""
The wall time of one submit command typed in a shell, from exec to exit, median of
{s.shell_runs} runs per round. phxq: `phxqctl submit -- true` (a Python client, console
script of an editable install). tsp and nq are C programs. huey has no enqueue command:
`python -c` importing the task module and calling the task, what a user would script; RQ
and Celery have their own (`rq enqueue`, `celery call`), which import the library.
""",
    )
    for p in peers:
        v = p.variants()[0]
        shell = "phxqctl submit -- true" if p.SYSTEM == "phxq" else p.SHELL
        row = t.add(Row(p.SYSTEM, v.setting, v.durability, note=f"`{shell}`"))
        for i in range(s.throughput_repeats):
            log(f"shell submit {p.SYSTEM} round {i + 1}")
            times = attempt(row, partial(p.shell_submit, ctx, s.shell_runs))
            if times:
                row.samples.append(statistics.median(times) * 1e3)
    return t


def backlog(ctx: Ctx, peers: list[ModuleType], s: Settings) -> list[Table]:
    """Workloads 4 to 6 share one fill per system: up to the largest size."""
    sizes = s.sizes
    results: dict[str, Backlog | None] = {}
    rows: dict[str, Row] = {}
    for p in peers:
        v = p.variants()[0]
        rows[p.SYSTEM] = Row(p.SYSTEM, v.setting, v.durability)
        if all(w in p.NA for w in ("status", "restart", "disk")):
            results[p.SYSTEM] = None
            continue
        log(f"backlog {p.SYSTEM} ({', '.join(f'{n:,}' for n in sizes)} jobs)")
        results[p.SYSTEM] = attempt(
            rows[p.SYSTEM], partial(p.backlog, ctx, sizes, s.restarts, s.cli_runs)
        )
    big = f"{max(sizes):,}"

    def row(p: ModuleType, workloads: tuple[str, ...], group: str = "") -> Row:
        base = rows[p.SYSTEM]
        r = Row(p.SYSTEM, base.setting, base.durability, group=group)
        b = results[p.SYSTEM]
        reasons = {**p.NA, **(b.na if b else {})}
        r.na = base.na or next((reasons[w] for w in workloads if w in reasons), None)
        return r

    status = Table(
        "4. Status query with a large backlog",
        "ms",
        higher_is_better=False,
        digits=2,
        group_title="queued, asked from",
        text="""
The queue holds that many pending jobs. *open client*: one status request from a client
already connected, median of 50 (phxq: `Client.status()`, counts per queue and status plus
the running jobs; huey: `pending_count()`, a SQL count; RQ: `Queue.count`, Celery: Redis
LLEN, both O(1) list lengths). *command*: the shell command, median over its runs (phxq:
`phxqctl status`; RQ: `rq info --only-queues`; huey: `python -c` printing
`pending_count()`). Queues were filled with copies of a real job (the fill is not timed).
""",
    )
    for kind in ("open client", "command"):
        for n in sizes:
            for p in peers:
                b = results[p.SYSTEM]
                keys = ("status",) if kind == "open client" else ("status", "status command")
                r = status.add(row(p, keys, group=f"{n:,}, {kind}"))
                times = (b.status_api if kind == "open client" else b.status_cli) if b else {}
                if n in times:
                    r.samples = [statistics.median(times[n]) * 1e3]
                elif r.na is None:
                    r.na = "no such command" if kind == "command" else "not measured"

    restart = Table(
        f"5a. Restart with {big} queued jobs",
        "s",
        higher_is_better=False,
        digits=2,
        group_title="how",
        text="""
Time from starting the process that holds the queue until it answers a request with all
jobs back: phxqd (status answered) after `kill -9` and after a clean stop (SIGTERM: phxqd
writes a snapshot), redis-server (a command answered, not `LOADING`) after `kill -9` and
after `SHUTDOWN`; Redis reloads its append-only file either way. RQ and Celery rows are the
same redis-server holding their own jobs.
""",
    )
    rss = Table(
        f"5b. Peak memory of that process after restart, {big} queued jobs",
        "MiB",
        higher_is_better=False,
        text="VmHWM of phxqd / redis-server after the restart from `kill -9`.",
    )
    disk = Table(
        "6. Disk bytes per queued job",
        "bytes/job",
        higher_is_better=False,
        group_title="counted",
        text=f"""
Bytes on disk of the whole store divided by the jobs it holds, right after the fill
({big} jobs; nq: {200} jobs queued behind a blocker): phxq's state dir (journal segments
and snapshot), huey's SQLite file with its WAL, Redis's AOF directory. *apparent*: file
sizes; *allocated*: blocks, which is what nq's file per job costs.
""",
    )
    for group, clean in (("after kill -9", False), ("after a clean stop", True)):
        for p in peers:
            b = results[p.SYSTEM]
            r = restart.add(row(p, ("restart",), group=group))
            samples = (b.restart_clean if clean else b.restart) if b else []
            if samples:
                r.samples = samples
            elif r.na is None:
                r.na = "not measured"
    for p in peers:
        b = results[p.SYSTEM]
        r = rss.add(row(p, ("restart",)))
        if b and b.peak_rss_kib:
            r.samples = [k / 1024 for k in b.peak_rss_kib]
        elif r.na is None:
            r.na = "not measured"
    for group in ("apparent", "allocated"):
        for p in peers:
            b = results[p.SYSTEM]
            r = disk.add(row(p, ("disk",), group=group))
            if b and b.jobs and (b.disk_apparent or b.disk_allocated):
                size = b.disk_apparent if group == "apparent" else b.disk_allocated
                r.samples = [size / b.jobs]
            elif r.na is None:
                r.na = "not measured"
    return [status, restart, rss, disk]
