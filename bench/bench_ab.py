"""Two versions of phxqd, interleaved, under 16 clients sending one job per request.

    git worktree add /tmp/phxq-base <commit>
    .venv/bin/python -m bench.bench_ab /tmp/phxq-base [--rounds 5] [--clients 16] [--per 1500]

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

from bench.bench_ceiling import Run, timed_submits
from bench.bench_journal import Daemon
from phxqctl import Client

HERE = Path(__file__).resolve().parent.parent


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
    args = p.parse_args(argv)
    if not (args.base / "phxqd" / "__init__.py").is_file():
        raise SystemExit(f"{args.base} holds no phxqd/ package")
    trees = {"base": args.base.resolve(), "this": HERE}
    runs: dict[str, list[Run]] = {name: [] for name in trees}
    for r in range(args.rounds):
        for name, tree in trees.items():
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
