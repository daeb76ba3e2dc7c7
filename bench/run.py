"""phxq and its peers, side by side, in one run on this machine: `make bench`.

    .venv/bin/python -m bench.run [--quick] [--only WORKLOAD ...] [--peers NAME ...]
                                  [--write docs/benchmarks.md] [--install]

Workloads (issue 9): enqueue, throughput, submit, backlog (status, restart, memory, disk).
Peers: huey (SQLite), RQ and Celery (on a Redis the bench starts on 127.0.0.1 in its own
temp dir and always stops), task-spooler, nq. Prints the Markdown; --write also saves it.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType

from bench import machine, page, system, workloads
from bench.peers import Ctx
from bench.peers import celery as celery_peer
from bench.peers import huey as huey_peer
from bench.peers import nq as nq_peer
from bench.peers import phxq as phxq_peer
from bench.peers import rq as rq_peer
from bench.peers import tsp as tsp_peer
from bench.redis_server import RedisServer
from bench.report import Row, Table

PEERS: list[ModuleType] = [phxq_peer, huey_peer, rq_peer, celery_peer, tsp_peer, nq_peer]
WORKLOADS = ("enqueue", "throughput", "submit", "backlog")


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="small counts, one run (under 2 min)")
    p.add_argument("--only", nargs="+", choices=WORKLOADS, help="these workloads only")
    p.add_argument("--peers", nargs="+", metavar="NAME", help="peers besides phxq (default all)")
    p.add_argument("--write", metavar="FILE", help="save the Markdown there")
    p.add_argument("--install", action="store_true", help="apt-get the missing Debian packages")
    p.add_argument("--dir", default=tempfile.gettempdir(), help="where the temp dir goes")
    return p.parse_args(argv)


def select(names: list[str] | None) -> tuple[list[ModuleType], dict[str, str]]:
    """The peers to run, and why the others are left out."""
    chosen = [phxq_peer]
    skipped: dict[str, str] = {}
    for p in PEERS[1:]:
        if names is not None and p.SYSTEM.lower() not in {n.lower() for n in names}:
            continue
        reason = p.missing()
        if reason is None:
            chosen.append(p)
        else:
            skipped[p.SYSTEM] = reason
    return chosen, skipped


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.install:
        system.install()
    settings = workloads.QUICK if args.quick else workloads.FULL
    peers, skipped = select(args.peers)
    only = set(args.only or WORKLOADS)
    started = time.monotonic()
    command = "make bench" + (" QUICK=1" if args.quick else "")
    if args.only:
        command = f"python -m bench.run {'--quick ' if args.quick else ''}--only {' '.join(only)}"
    with tempfile.TemporaryDirectory(prefix="phxq-bench-", dir=args.dir) as tmp:
        root = Path(tmp)
        info = machine.describe(root)
        info["disk used"] = f"{args.dir} ({machine_fs(root)})"
        workloads.log("machine: " + "; ".join(f"{k} {v}" for k, v in info.items()))
        redis = None
        if any(p in peers for p in (rq_peer, celery_peer)):
            redis = RedisServer(root)
        try:
            if redis is not None:
                redis.start()
            ctx = Ctx(root, redis, args.quick)
            tables: list[Table] = []
            if "enqueue" in only:
                tables.append(workloads.enqueue(ctx, peers, settings))
            if "throughput" in only:
                tables.append(workloads.throughput(ctx, peers, settings))
            if "submit" in only:
                tables.append(workloads.shell_submit(ctx, peers, settings))
            if "backlog" in only:
                tables += workloads.backlog(ctx, peers, settings)
        finally:
            if redis is not None:
                redis.close()
    for t in tables:
        for name, reason in skipped.items():
            t.add(Row(name, "", na=f"not run: {reason}"))
    versions = {p.SYSTEM: p.version() for p in peers}
    versions["Redis"] = redis_version() if redis is not None else "not run"
    md = page.render(
        tables,
        info,
        versions,
        command=command,
        quick=args.quick,
        minutes=(time.monotonic() - started) / 60,
        settings=settings,
    )
    print(md)
    if args.write:
        out = Path(args.write)
        old = out.read_text() if out.exists() else ""
        if page.KEEP in old:  # the hand-written sections below the marker stay
            md = md + "\n" + old[old.index(page.KEEP) :]
        out.write_text(md)
        workloads.log(f"wrote {args.write}")
    return 0


def machine_fs(path: Path) -> str:
    """The filesystem and device the temp dir is on, from /proc/mounts."""
    best = ("", "?", "?")
    try:
        for line in Path("/proc/mounts").read_text().splitlines():
            dev, mnt, fs = line.split()[:3]
            if str(path).startswith(mnt) and len(mnt) >= len(best[0]):
                best = (mnt, dev, fs)
    except OSError:
        pass
    return f"{best[2]} on {best[1]}"


def redis_version() -> str:
    import subprocess

    out = subprocess.run(["redis-server", "--version"], capture_output=True, text=True).stdout
    for part in out.split():
        if part.startswith("v="):
            return part[2:]
    return out.strip()


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("bench: interrupted", file=sys.stderr)
        sys.exit(130)
