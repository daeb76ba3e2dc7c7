"""What a snapshot child's extra memory (its USS) is made of, part by part, in one process.

    .venv/bin/python -m bench.bench_snapshot_parts [--jobs 1000000] [--state DIR]
    PYTHONPATH=OTHER_TREE .venv/bin/python bench/bench_snapshot_parts.py --state DIR

bench_restart measures the whole (the largest USS of a real phxqd's child while batches
keep coming); this says where it comes from. Without `--state`, a real phxqd takes
`--jobs` jobs and is killed (bench_recovery.fill_state). Then, for each case, a fresh
interpreter recovers that state dir (`recover`, read only), submits `runtime` jobs in
batches of 1,000 the way the Recorder does (State.submit, the journal's encoding, apply;
nothing written), forks, and the child does `what`: nothing, takes the snapshot
(`State.snapshot` as forked.py's child takes it, and keeps it: the columns it built
held), or writes it (snapshot.write_streamed, to a scratch dir); then it reads its own
USS (Private_Clean + Private_Dirty of /proc/self/smaps_rollup). The parent then applies
`during` more batches (its own writes while a child runs copy pages too) and the child
reads its USS again. The parent's RSS is read before the fork. Run with PYTHONPATH set
to another tree to measure that tree's phxqd (this file imports only phxqd and the
standard library, and uses what the tree has).
"""

from __future__ import annotations

import argparse
import gc
import inspect
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

MiB = 2**20
#: (jobs submitted after the restart, what the child does, batches the parent takes meanwhile)
CASES = [
    (0, "nothing", 0),
    (0, "take", 0),
    (200_000, "nothing", 0),
    (200_000, "take", 0),
    (200_000, "write", 0),
    (200_000, "take", 50),
]


def _uss() -> int:
    return _smaps(os.getpid(), ("Private_Clean", "Private_Dirty"))


def _smaps(pid: int, fields: tuple[str, ...]) -> int:
    n = 0
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.split(":")[0] in fields:
                n += int(line.split()[1])
    return n * 1024


def one(journal_dir: Path, runtime: int, what: str, during: int, out_dir: Path) -> dict[str, Any]:
    """One case, in this process (a fresh interpreter: see `main`)."""
    from phxqd.local import journal, recovery, snapshot
    from phxqd.local.state import State
    from phxqd.model import JobSpec

    state = recovery.recover(journal_dir, cut_torn_tail=False, now=time.time()).state
    gc.freeze()  # as phxqd.daemon does after recovery
    gc.set_threshold(10_000, *gc.get_threshold()[1:])
    specs = [JobSpec(argv=["true"], cwd="/tmp") for _ in range(1000)]
    kept = getattr(journal, "encode_kept", None)  # (a tree without it applies the Jobs)
    pieces = "joined" in inspect.signature(State.snapshot).parameters
    kw: dict[str, Any] = {"joined": False} if pieces else {}

    def batch() -> None:
        events, _ = state.submit(specs, time.time())
        for e in events:
            if kept is None:
                journal.encode_record(e)
                state.apply(e)
            else:
                state.apply(kept(e)[1])

    for _ in range(runtime // 1000):
        batch()
    rss = _smaps(os.getpid(), ("Rss",))
    r1, w1 = os.pipe()
    r2, w2 = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child, as forked.py's: no collection
        gc.disable()
        t0 = time.perf_counter()
        held = None
        if what == "take":
            held = state.snapshot(1, **kw)
        elif what == "write":
            snapshot.write_streamed(out_dir, state.snapshot(1, **kw))
        seconds = time.perf_counter() - t0
        os.write(
            w1,
            json.dumps([_uss(), seconds]).encode(),
        )
        os.read(r2, 1)
        os.write(w1, json.dumps([_uss(), 0]).encode())
        os.read(r2, 1)
        del held
        os._exit(0)
    uss, seconds = json.loads(os.read(r1, 200))
    for _ in range(during):
        batch()
    os.write(w2, b"x")
    uss_after, _ = json.loads(os.read(r1, 200))
    os.write(w2, b"x")
    os.waitpid(pid, 0)
    return {
        "jobs": len(state.jobs),
        "runtime_jobs": runtime,
        "child": what,
        "parent_batches_meanwhile": during,
        "daemon_rss_mib": round(rss / MiB, 1),
        "child_uss_mib": round(uss / MiB, 1),
        "child_uss_after_parent_mib": round(uss_after / MiB, 1),
        "child_s": round(seconds, 2),
        "columns_in_pieces": pieces,
        "live_batches_as_blocks": kept is not None,
    }


def main() -> None:
    p = argparse.ArgumentParser(prog="bench_snapshot_parts", description=__doc__)
    p.add_argument("--jobs", type=int, default=1_000_000)
    p.add_argument("--state", type=Path, help="a state dir filled before (its journal dir)")
    p.add_argument("--one", nargs=4, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        journal_dir, runtime, what, during = args.one
        with tempfile.TemporaryDirectory(prefix="phxq-parts-") as tmp:
            print(json.dumps(one(Path(journal_dir), int(runtime), what, int(during), Path(tmp))))
        return
    with tempfile.TemporaryDirectory(prefix="phxq-parts-") as tmp:
        journal_dir = args.state
        if journal_dir is None:
            from bench.bench_recovery import fill_state

            journal_dir = fill_state(Path(tmp), args.jobs)
        print(f"load before: {os.getloadavg()}", flush=True)
        for runtime, what, during in CASES:
            # this file as a script: with PYTHONPATH, only phxqd comes from there
            subprocess.run(
                [
                    *(sys.executable, str(Path(__file__).resolve()), "--one", str(journal_dir)),
                    *(str(runtime), what, str(during)),
                ],
                check=True,
            )
        print(f"load after: {os.getloadavg()}", flush=True)


if __name__ == "__main__":
    main()
