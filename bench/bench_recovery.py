"""What rebuilding the state costs, in one process and without the daemon around it:
memory per job and instructions, figures the machine's load does not move.

    .venv/bin/python -m bench.bench_recovery [--jobs 1000000] [--state DIR] [--tree DIR ...]
    valgrind --tool=callgrind .venv/bin/python -m bench.bench_recovery --one DIR

Without `--state`, a real phxqd of this tree takes `--jobs` jobs (bench_journal.fill, as
`make bench` does) and is killed with SIGKILL, leaving a snapshot and a journal tail.
Then, for this tree and each `--tree` (another checkout: its phxqd is imported through
`PYTHONPATH`), a fresh interpreter runs `phxqd.local.recovery.recover` on that state dir
(read only: no torn tail is cut) and reports RSS and VmHWM growth per job and CPU seconds.
`--one DIR` is that child: run it under callgrind to count instructions.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def _kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1])
    raise SystemExit(f"no {field} in /proc/self/status")


def one(journal_dir: Path) -> dict[str, Any]:
    """Recover once in this process (the child)."""
    from phxqd.local import recovery

    assert recovery.__file__ is not None
    rss0, cpu0, t0 = _kib("VmRSS:"), time.process_time(), time.perf_counter()
    got = recovery.recover(journal_dir, cut_torn_tail=False, now=time.time())
    n = len(got.state.jobs)
    return {
        "jobs": n,
        "replayed_records": got.records,
        "rss_bytes_per_job": round((_kib("VmRSS:") - rss0) * 1024 / max(n, 1)),
        "hwm_bytes_per_job": round((_kib("VmHWM:") - rss0) * 1024 / max(n, 1)),
        "cpu_s": round(time.process_time() - cpu0, 3),
        "wall_s": round(time.perf_counter() - t0, 3),
        "load_1min": round(os.getloadavg()[0], 2),
        "phxqd": str(Path(recovery.__file__).parents[2]),
    }


def fill_state(root: Path, jobs: int) -> Path:
    from bench.bench_journal import Daemon, fill

    d = Daemon(root, "always")
    try:
        d.start()
        fill(d, jobs)
        d.kill(signal.SIGKILL)
    finally:
        d.close()
    return root / "state" / "journal"


def run_tree(journal_dir: Path, tree: Path | None) -> dict[str, Any]:
    """`--one` in a fresh interpreter; this file run as a script, so that with `tree`
    only phxqd comes from there (PYTHONPATH goes before the editable install)."""
    env = dict(os.environ)
    if tree is not None:
        env["PYTHONPATH"] = str(tree)
    out = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--one", str(journal_dir)],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    result: dict[str, Any] = json.loads(out.splitlines()[-1])
    result["tree"] = str(tree) if tree is not None else "this tree"
    return result


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.bench_recovery", description=__doc__)
    p.add_argument("--jobs", type=int, default=1_000_000)
    p.add_argument("--state", type=Path, help="a journal dir to recover (default: fill one)")
    p.add_argument("--tree", type=Path, action="append", default=[], help="another tree")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--one", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.one is not None:
        print(json.dumps(one(args.one)))
        return
    with tempfile.TemporaryDirectory(prefix="phxq-recovery-") as tmp:
        journal_dir = args.state or fill_state(Path(tmp), args.jobs)
        for _ in range(args.rounds):
            for tree in [None, *args.tree]:
                print(json.dumps(run_tree(journal_dir, tree)), flush=True)


if __name__ == "__main__":
    main()
