"""docs/benchmarks.md, written by `make bench`: the tables plus what they were measured on,
with what durability, and how to reproduce them."""

from __future__ import annotations

import subprocess
import time

from bench.report import Table, comparisons, fmt_ratio, render_section
from bench.workloads import Settings

#: docs/benchmarks.md from this line on is written by hand (phxq-only measurements of the
#: single scripts in bench/) and kept as it is when `make bench` rewrites the file
KEEP = "<!-- Below: written by hand, kept by make bench. -->"

DURABILITY = {
    "phxq": '`fsync = "always"` (default): a request is acknowledged after its journal '
    "records are fdatasync'd; concurrent requests share one fdatasync (group commit). "
    '`fsync = "batch"`: acknowledged after write(), fdatasync every 50 ms: a power cut can '
    "lose the last ~50 ms, a crash of phxqd loses nothing.",
    "huey": "`SqliteHuey(fsync=True)`: SQLite in WAL mode with `synchronous=FULL`, so every "
    "enqueue's commit fsyncs the WAL before it returns.",
    "RQ": 'Redis with the append-only file only (`save ""`): `appendfsync always` fsyncs '
    "before replying (clients served in one event-loop turn share the fsync); `everysec` "
    "fsyncs once a second: a power cut can lose the last ~1-2 s.",
    "Celery": "the same Redis, `appendfsync always`; prefork pool of 2, `task_acks_late`, "
    "no result backend.",
    "tsp": "none: the queue lives in the tsp server's memory and each queued job is a "
    "waiting client process; a reboot, or the server dying, loses it.",
    "nq": "a file per job in `$NQDIR`, never fsync'd; each queued job is a process waiting "
    "on its predecessors' locks, so a reboot leaves files that nothing runs.",
}


def git_commit() -> str:
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, check=True).stdout.strip()  # fmt: skip
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True).stdout.strip()  # fmt: skip
        return rev + (" (with uncommitted changes)" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def render(
    tables: list[Table],
    machine: dict[str, str],
    versions: dict[str, str],
    command: str,
    quick: bool,
    minutes: float,
    settings: Settings,
) -> str:
    out = [
        "# Benchmarks",
        "",
        "<!-- Written by `make bench` (bench/run.py): change bench/, then re-run it. -->",
        "",
        "phxq and the queues its users would otherwise pick, measured in the same run on the",
        "same machine. Each figure is the median of repeated runs (round-robin over the",
        "systems, so the machine's noise falls on all of them alike); the last column is",
        "**how many times phxq is ahead** of that peer (above 1: phxq is better, whether the",
        "unit is jobs/s, ms or bytes), against the phxq row of the same durability class",
        '(`fsync = "batch"` against Redis `everysec`; otherwise phxq\'s default `always`).',
        "",
        f"Run of {time.strftime('%Y-%m-%d %H:%M')} at commit {git_commit()}, "
        f"{'quick' if quick else 'full'} mode, {minutes:.1f} minutes in all.",
        "",
        "## Reproduce",
        "",
        "```sh",
        f"{command}",
        "```",
        "",
        "`make bench` installs the peers (pip extra `bench`; Debian's redis-server,",
        "task-spooler and nq with apt-get when missing and root), runs every workload and",
        "writes this file (about 11 minutes here). `make bench QUICK=1` (under 2 minutes)",
        "prints the same tables with small counts and does not write. One workload, some",
        "peers: `.venv/bin/python -m bench.run --only enqueue --peers rq huey`.",
        "",
        "## Machine",
        "",
        "| | |",
        "|---|---|",
    ]
    out += [f"| {k} | {v} |" for k, v in machine.items()]
    out += [
        "",
        "The machine is shared: other sessions ran tests and benchmarks on the same 2 cores",
        "during this run, so single figures move by 10-30% between runs; the ratios, measured",
        "in the same rounds, move less. Look at the min-max column before trusting a figure.",
        "",
        "## Systems and their durability in this run",
        "",
        "| system | version | durability |",
        "|---|---|---|",
    ]
    out += [f"| {s} | {versions.get(s, '?')} | {d} |" for s, d in DURABILITY.items()]
    out += [f"| Redis (for RQ and Celery) | {versions.get('Redis', '?')} | see RQ |", ""]
    cmp = comparisons(tables)
    ahead = [line for r, line in cmp if r >= 1.05]
    behind = sorted(((r, line) for r, line in cmp if r <= 0.95), key=lambda x: x[0])
    even = [line for r, line in cmp if 0.95 < r < 1.05]
    out += ["## Summary", ""]
    out += [f"phxq is ahead in {len(ahead)} comparisons, even in {len(even)}, and behind in "
            f"{len(behind)}:", ""]  # fmt: skip
    out += [f"- behind: {line}: {fmt_ratio(r)}" for r, line in behind]
    out += [""]
    counts = (
        f"{settings.enqueue_jobs:,} jobs per enqueue run, {settings.throughput_jobs:,} per "
        f"throughput run, backlogs of {', '.join(f'{n:,}' for n in settings.sizes)} jobs; "
        f"{settings.enqueue_repeats} enqueue runs and {settings.throughput_repeats} of the "
        "others per system."
    )
    out += ["## Results", "", counts, ""]
    out += [render_section(t) for t in tables]
    return "\n".join(out).rstrip() + "\n"
