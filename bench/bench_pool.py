"""End-to-end throughput of no-op jobs, submit to completion, with 2 workers.

    .venv/bin/python -m bench.bench_pool [--jobs N] [--repeat R] [--kind commands|callables]
    .venv/bin/python -m bench.bench_pool --compare [--base TREE] [--jobs N] [--repeat R] [--kind K]
        [--hog N]

A real phxqd (fsync=always, 2 workers) starts paused; N jobs are submitted in batches,
then the queue is resumed and the clock runs until the client has been told that the last
one has completed (`wait`, whose reply follows the durable end of each job). Two kinds:
`true` commands (a process per job) and Python callables (`os:getpid` in the persistent
workers). Each kind runs R times, each in a fresh daemon; the median and the range are
printed. Also printed, per job: the CPU time of the daemon and of its children (the
workers, the `true` processes) during the run, read from /proc, and the raw spawn rate of
`true` with 2 at a time (the floor for commands). A JSON summary is the last line.

`--compare` measures, round after round so that the machine's noise falls on all alike:
for commands, the runner floor (`floor`: `os.posix_spawn` of `/usr/bin/true` two at a time
and `os.wait`, no store, no event loop: what any runner on this machine pays at least; and
`durable`: the same with each end fdatasync'd, jobs in their own session with their output
on a file, what any runner that records every end durably pays at least), task-spooler
(bench/peers/tsp.py, 900 jobs at most), the phxqd of `--base` (a source tree, e.g. `git
worktree add /tmp/phxq-base COMMIT`) and this one; for callables the two phxqds. It
prints each run, the load average, then medians and ratios of this phxqd to each other row
(above 1: this one is faster). `--hog N` runs N processes spinning on the
CPU meanwhile: a loaded machine, the same for every contender.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import psutil

from bench.bench_journal import Daemon
from phxqctl import Client
from phxqd.model import Call, JobSpec


@dataclass
class Run:
    per_s: float
    #: the same clock started before the batch was submitted (submitting included)
    with_submit_per_s: float
    daemon_cpu_us: float
    children_cpu_us: float
    #: the journal's fdatasyncs per job during the run (phxqctl status: journal.fsyncs)
    fsyncs_per_job: float


def _cpu(proc: psutil.Process) -> tuple[float, float]:
    """(the daemon's own CPU seconds, its children's: reaped ones and live workers)."""
    t = proc.cpu_times()
    children = t.children_user + t.children_system
    for child in proc.children(recursive=True):
        try:
            c = child.cpu_times()
            children += c.user + c.system
        except psutil.Error:
            pass
    return t.user + t.system, children


def run(root: Path, specs: list[JobSpec], tree: Path | None = None) -> Run:
    """One daemon (from source tree `tree`, else this one) runs `specs` to completion."""
    root.mkdir()
    d = Daemon(root, "always")
    if tree is not None:
        d.env["PYTHONPATH"] = str(tree)
        d.cwd = tree  # `python -m` puts its directory first in sys.path, before PYTHONPATH
    d.start()
    assert d.proc is not None
    proc = psutil.Process(d.proc.pid)
    try:
        with Client(d.socket) as c:
            c.pause()
            t_submit = time.perf_counter()
            ids = [r.job.id for r in c.submit_batch(specs)]
            syncs0 = c.status()["journal"]["fsyncs"]
            own0, kids0 = _cpu(proc)
            t0 = time.perf_counter()
            c.resume()
            c.wait([ids[-1]])
            jobs = c.wait(ids)
            t1 = time.perf_counter()
            own1, kids1 = _cpu(proc)
            syncs1 = c.status()["journal"]["fsyncs"]
            assert all(j.status == "completed" for j in jobs), "every job must complete"
        n = len(specs)
        return Run(
            n / (t1 - t0),
            n / (t1 - t_submit),
            (own1 - own0) / n * 1e6,
            (kids1 - kids0) / n * 1e6,
            (syncs1 - syncs0) / n,
        )
    finally:
        d.kill()


def runner_floor(n: int) -> float:
    """`true` run n times, two at a time, by the leanest runner Python allows: jobs/s."""
    env = dict(os.environ)
    t0 = time.perf_counter()
    started = 0
    for _ in range(min(2, n)):
        os.posix_spawn("/usr/bin/true", ["true"], env)
        started += 1
    for _ in range(n):
        os.wait()
        if started < n:
            os.posix_spawn("/usr/bin/true", ["true"], env)
            started += 1
    return n / (time.perf_counter() - t0)


def durable_floor(n: int, directory: Path) -> float:
    """`runner_floor` plus what makes a runner durable, and nothing else: each job's end is
    a 100-byte record written into a preallocated file and fdatasync'd (phxqd's journal
    does the same), after the next job is spawned so the disk wait overlaps its run; each
    job in its own session with its output on a file, as phxqd's are. Jobs/s: the floor
    under any runner that records every end durably (no queue, no state, no event loop)."""
    env = dict(os.environ)
    directory.mkdir(parents=True, exist_ok=True)
    journal = os.open(directory / "journal", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    out = os.open(directory / "out", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.posix_fallocate(journal, 0, 128 * n + 4096)
        os.fsync(journal)
        actions = [(os.POSIX_SPAWN_DUP2, out, 1), (os.POSIX_SPAWN_DUP2, out, 2)]
        record = b"x" * 100
        t0 = time.perf_counter()
        started = offset = 0
        for _ in range(min(2, n)):
            os.posix_spawn("/usr/bin/true", ["true"], env, file_actions=actions, setsid=True)
            started += 1
        for _ in range(n):
            os.wait()
            if started < n:
                os.posix_spawn("/usr/bin/true", ["true"], env, file_actions=actions, setsid=True)
                started += 1
            os.pwrite(journal, record, offset)
            offset += len(record)
            os.fdatasync(journal)
        return n / (time.perf_counter() - t0)
    finally:
        os.close(journal)
        os.close(out)


def _phxq_rate(
    where: Path, kind: str, n: int, tree: Path | None, cpu: list[tuple[float, float, float]]
) -> float:
    r = run(where, [KINDS[kind]()] * n, tree)
    cpu.append((r.daemon_cpu_us, r.children_cpu_us, r.fsyncs_per_job))
    return r.per_s


def compare(kinds: list[str], n: int, repeat: int, base: Path | None) -> dict[str, Any]:
    """Round-robin runs of the floor, tsp, the base phxqd and this one; see the doc."""
    from bench.peers import Ctx, tsp

    results: dict[str, Any] = {"jobs": n, "load_before": os.getloadavg()}
    with tempfile.TemporaryDirectory(prefix="phxq-bench-") as tmp:
        ctx = Ctx(Path(tmp), None, False)
        k = 0
        for kind in kinds:
            rows: dict[str, list[float]] = {}
            cpu: dict[str, list[tuple[float, float, float]]] = {"base": [], "this": []}
            for r in range(repeat):
                contenders: list[tuple[str, Callable[[], float]]] = []
                if kind == "commands":
                    contenders.append(("floor", lambda: runner_floor(n)))
                    durable = Path(tmp) / f"durable{r}"
                    contenders.append(("durable", partial(durable_floor, n, durable)))
                    if tsp.missing() is None:
                        contenders.append(("tsp", partial(tsp.throughput, ctx, "true", n)))
                for name, tree in (("base", base), ("this", None)):
                    if name == "this" or tree is not None:
                        k += 1
                        where = Path(tmp) / f"{kind}{k}"
                        contenders.append(
                            (name, partial(_phxq_rate, where, kind, n, tree, cpu[name]))
                        )
                for name, measure in contenders:
                    rate = measure()
                    rows.setdefault(name, []).append(rate)
                    load = os.getloadavg()[0]
                    own = ""
                    if name in cpu:
                        own = f"  CPU µs/job: daemon {cpu[name][-1][0]:,.0f}"
                        own += f", children {cpu[name][-1][1]:,.0f}"
                        own += f"; fdatasyncs/job {cpu[name][-1][2]:.3f}"
                    print(f"{kind} round {r + 1} {name:5} {rate:8,.0f} /s  load {load:.2f}{own}",
                          flush=True)  # fmt: skip
            medians = {name: statistics.median(v) for name, v in rows.items()}
            results[kind] = {
                name: {"median": round(medians[name]), "runs": [round(x) for x in v]}
                for name, v in rows.items()
            }
            for name, m in medians.items():
                if name != "this":
                    results[kind][f"this/{name}"] = round(medians["this"] / m, 2)
            for name, us in cpu.items():
                if us:
                    row = results[kind][name]
                    row["daemon_cpu_us_per_job"] = round(statistics.median(u[0] for u in us))
                    row["children_cpu_us_per_job"] = round(statistics.median(u[1] for u in us))
                    row["fsyncs_per_job"] = round(statistics.median(u[2] for u in us), 3)
    results["load_after"] = os.getloadavg()
    return results


def raw_spawn_rate(n: int) -> float:
    """`true` run n times, two at a time, from Python: what any job runner pays."""
    per_thread = n // 2

    def spawn() -> None:
        for _ in range(per_thread):
            subprocess.run(["true"], check=True)

    threads = [threading.Thread(target=spawn) for _ in range(2)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return 2 * per_thread / (time.perf_counter() - t0)


def summarize(runs: list[Run]) -> dict[str, Any]:
    rates = [r.per_s for r in runs]
    return {
        "per_s_median": round(statistics.median(rates)),
        "per_s_min": round(min(rates)),
        "per_s_max": round(max(rates)),
        "with_submit_per_s_median": round(statistics.median(r.with_submit_per_s for r in runs)),
        "daemon_cpu_us_per_job": round(statistics.median(r.daemon_cpu_us for r in runs), 1),
        "children_cpu_us_per_job": round(statistics.median(r.children_cpu_us for r in runs), 1),
        "fsyncs_per_job": round(statistics.median(r.fsyncs_per_job for r in runs), 3),
    }


KINDS = {
    "commands": lambda: JobSpec(argv=["true"]),
    "callables": lambda: JobSpec(call=Call("os:getpid")),
}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--jobs", type=int, default=5000)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--kind", choices=sorted(KINDS), action="append")
    p.add_argument("--compare", action="store_true", help="round-robin against peers")
    p.add_argument("--base", type=Path, help="with --compare: another phxq source tree")
    p.add_argument(
        "--hog",
        type=int,
        default=0,
        help="N processes that spin on the CPU throughout (a loaded machine)",
    )
    args = p.parse_args()
    with hogs(args.hog):
        measure(args)


@contextlib.contextmanager
def hogs(n: int) -> Iterator[None]:
    """`n` processes spinning on the CPU while the block runs: the load of other work on
    a machine that runs jobs, which every contender of a run then shares alike."""
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]
    try:
        yield
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


def measure(args: argparse.Namespace) -> None:
    n = args.jobs
    if args.compare:
        if args.base is not None and not (args.base / "phxqd" / "__init__.py").is_file():
            raise SystemExit(f"{args.base} holds no phxqd/ package")
        base = args.base.resolve() if args.base is not None else None
        out = compare(args.kind or ["commands", "callables"], n, args.repeat, base)
        for k, v in out.items():
            print(f"{k:12} {v}")
        print(json.dumps(out))
        return
    results: dict[str, Any] = {"jobs": n, "workers": 2, "cores": os.cpu_count()}
    with tempfile.TemporaryDirectory(prefix="phxq-bench-") as tmp:
        spawn = [raw_spawn_rate(2000) for _ in range(args.repeat)]
        results["raw_spawn_true_per_s"] = round(statistics.median(spawn))
        for kind in args.kind or ["commands", "callables"]:
            runs = [run(Path(tmp) / f"{kind}{i}", [KINDS[kind]()] * n) for i in range(args.repeat)]
            results[kind] = summarize(runs)
            results[kind]["runs_per_s"] = [round(r.per_s) for r in runs]
    for k, v in results.items():
        print(f"{k:22} {v}")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
