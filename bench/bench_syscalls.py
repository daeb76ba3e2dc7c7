"""System calls per one-job submit: phxqd (this tree's or another's) against bench_ceiling's
stand-ins, counted by `strace -c -f` attached to the server while producers submit.

    .venv/bin/python -m bench.bench_syscalls [--clients 16] [--per 500] [--base TREE]

What CPU per request cannot show: the wake-ups behind it. A futex is a hand-off of the GIL
between the event loop and the journal's thread, an epoll_pwait a turn of the loop, a
getpid an `asyncio.get_running_loop()`. Needs strace (Debian: apt-get install strace).
strace slows the server several times over: the counts compare, the rates do not.
Prints a Markdown table of calls per submit.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import re
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from bench import bench_ceiling
from bench.bench_journal import Daemon, submitter
from bench.common import producers
from phxqctl import Client

#: columns, each the sum of these calls (asyncio's loop and sockets use the second names,
#: uvloop's the first)
SHOWN = {
    "futex": ("futex",),
    "epoll wait": ("epoll_pwait", "epoll_wait"),
    "epoll_ctl": ("epoll_ctl",),
    "read": ("read", "recvfrom"),
    "write": ("write", "sendto", "pwrite64"),
    "fdatasync": ("fdatasync",),
    "getpid": ("getpid",),
}


def count(kind: str, clients: int, per: int, base: Path | None) -> dict[str, float]:
    """Calls per submit of each system call the server made."""
    with tempfile.TemporaryDirectory(prefix="phxq-syscalls-") as tmp:
        root = Path(tmp)
        if kind in ("phxqd", "base"):
            d = Daemon(root, "always")
            if kind == "base" and base is not None:
                d.env["PYTHONPATH"] = str(base)
                d.cwd = base
            d.start()
            assert d.proc is not None
            pid, sock, stop = d.proc.pid, d.socket, d.close
            with Client(sock) as c:
                c.pause()
        else:
            ready = mp.get_context("fork").Event()
            proc = mp.get_context("fork").Process(
                target=bench_ceiling.stand_in, args=(kind, root, ready), daemon=True
            )
            proc.start()
            if not ready.wait(30) or proc.pid is None:
                raise SystemExit(f"the {kind} server did not start")
            pid, sock, stop = proc.pid, root / "sock", proc.kill
        out = root / "strace.txt"
        tracer = subprocess.Popen(["strace", "-c", "-f", "-p", str(pid), "-o", str(out)])
        try:
            time.sleep(1)  # attached to every thread before the clock starts
            producers(lambda: submitter(sock), clients, per)
        finally:
            tracer.send_signal(signal.SIGINT)
            tracer.wait()
            stop()
        jobs = clients * per
        calls: dict[str, float] = {}
        for line in out.read_text().splitlines():
            m = re.match(r"\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(?:\d+\s+)?(\w+)$", line)
            if m and m.group(2) != "total":
                calls[m.group(2)] = int(m.group(1)) / jobs
        return calls


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.bench_syscalls", description=__doc__)
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--per", type=int, default=500, help="jobs per client")
    p.add_argument("--base", type=Path, help="another version's source tree, also counted")
    args = p.parse_args(argv)
    if shutil.which("strace") is None:
        raise SystemExit("bench_syscalls: needs strace (apt-get install strace)")
    kinds = ["ideal", "inline", "prealloc", "phxqd", *(["base"] if args.base else [])]
    rows = {k: count(k, args.clients, args.per, args.base and args.base.resolve()) for k in kinds}
    print(f"{args.clients} clients x {args.per} one-job submits, calls per submit:")
    print()
    print("| server | " + " | ".join(SHOWN) + " | all |")
    print("|---|" + "---:|" * (len(SHOWN) + 1))
    for k, calls in rows.items():
        cells = " | ".join(
            f"{sum(calls.get(n, 0.0) for n in names):.2f}" for names in SHOWN.values()
        )
        print(f"| {k} | {cells} | {sum(calls.values()):.2f} |")


if __name__ == "__main__":
    main()
