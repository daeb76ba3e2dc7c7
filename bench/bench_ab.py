"""Two versions of phxqd, interleaved: 16 clients sending one job per request, or
Python callables run end to end.

    git worktree add /tmp/phxq-base <commit>
    .venv/bin/python -m bench.bench_ab /tmp/phxq-base [--rounds 5] [--clients 16] [--per 1500]
    .venv/bin/python -m bench.bench_ab /tmp/phxq-base --workload callables [--per 5000]

`callables`: `per` no-op callables (`os:getpid`) submitted to a paused daemon with 2
workers, then run to completion (bench_pool's run); jobs/s from the resume to the last
durable end, and the daemon's CPU per job (the `clients` column then holds the workers' CPU).

The daemon runs from the given source tree (PYTHONPATH), then from this one, in turn in
each round; the clients are always this tree's. On a machine whose speed moves 30-60%
from one minute to the next, only versions measured side by side like this compare.
Prints each run, then the medians.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from bench import bench_pool
from bench.bench_ceiling import Run, timed_submits
from bench.bench_journal import Daemon
from phxqctl import Client
from phxqd.model import Call, JobSpec

HERE = Path(__file__).resolve().parent.parent


def measure_callables(tree: Path, per: int) -> Run:
    with tempfile.TemporaryDirectory(prefix="phxq-ab-") as tmp:
        r = bench_pool.run(Path(tmp) / "d", [JobSpec(call=Call("os:getpid"))] * per, tree)
        return Run(r.per_s, r.daemon_cpu_us, r.children_cpu_us)


def measure(tree: Path, clients: int, per: int) -> Run:
    with tempfile.TemporaryDirectory(prefix="phxq-ab-") as tmp:
        d = Daemon(Path(tmp), "always")
        d.env["PYTHONPATH"] = str(tree)
        d.cwd = tree  # `python -m` puts its directory first in sys.path, before PYTHONPATH
        try:
            d.start()
            assert d.proc is not None
            with Client(d.socket) as c:
                c.pause()
            return timed_submits(d.proc.pid, d.socket, clients, per)
        finally:
            d.close()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.bench_ab", description=__doc__)
    p.add_argument("base", type=Path, help="the other version's source tree")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--per", type=int, default=1500)
    p.add_argument("--workload", choices=["enqueue", "callables"], default="enqueue")
    args = p.parse_args(argv)
    if not (args.base / "phxqd" / "__init__.py").is_file():
        raise SystemExit(f"{args.base} holds no phxqd/ package")
    trees = {"base": args.base.resolve(), "this": HERE}
    runs: dict[str, list[Run]] = {name: [] for name in trees}
    for r in range(args.rounds):
        for name, tree in trees.items():
            if args.workload == "callables":
                run = measure_callables(tree, args.per)
            else:
                run = measure(tree, args.clients, args.per)
            runs[name].append(run)
            print(f"round {r + 1} {name} {run.line()}", flush=True)
    for name, rs in runs.items():
        print(
            f"{name} ({trees[name]}): median {statistics.median(r.jobs_per_s for r in rs):,.0f}"
            f" jobs/s, daemon {statistics.median(r.server_us for r in rs):.1f} µs/job"
        )


if __name__ == "__main__":
    main()
