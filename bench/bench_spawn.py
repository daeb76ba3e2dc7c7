"""How long a spawn holds its caller (the event loop, when phxqd spawns in it), per way of
spawning `/usr/bin/true`, interleaved so that all see the same moments of the machine.

    .venv/bin/python -m bench.bench_spawn [--rounds 10] [--per 200]

posix_spawn returns once the child has exec'd (a vfork): its caller waits while the child
resets its signals, applies the file actions and starts the exec. Ways measured:

  os.posix_spawn   Python's, no file actions (no chdir, no closefrom: phxqd cannot use it)
  phxqd            run/spawn.py as phxqd calls it: every signal named in setsigdefault
  phxqd 2 signals  the same with only SIGPIPE and SIGXFSZ named (phxqd before dc624f7):
                   glibc's child then reads each other signal's disposition before it
                   sets it, two system calls per signal instead of one

Each spawn is waited for before the next (one at a time). Prints the medians and 10th
percentiles (µs) of the time the call took, and the CPU time of the children per spawn.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import resource
import signal
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from phxqd.run import attempt, spawn

TRUE = "/usr/bin/true"


def _two_signals() -> ctypes.Array[ctypes.c_char]:
    """The spawn attributes phxqd had before dc624f7: only SIGPIPE and SIGXFSZ reset."""
    lib = spawn._lib
    attr = ctypes.create_string_buffer(spawn._ATTR_BYTES)
    spawn._check(lib.posix_spawnattr_init(attr))
    defaults = ctypes.create_string_buffer(spawn._SIGSET_BYTES)
    lib.sigemptyset(defaults)
    for sig in (signal.SIGPIPE, signal.SIGXFSZ):
        lib.sigaddset(defaults, int(sig))
    spawn._check(lib.posix_spawnattr_setsigdefault(attr, defaults))
    spawn._check(
        lib.posix_spawnattr_setflags(attr, ctypes.c_short(spawn._SETSID | spawn._SETSIGDEF))
    )
    return attr


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def measure(rounds: int, per: int) -> dict[str, dict[str, int]]:
    with tempfile.TemporaryDirectory(prefix="phxq-spawn-") as tmp:
        log = os.open(Path(tmp) / "out", os.O_WRONLY | os.O_CREAT, 0o600)
        env = attempt.exec_env({})
        original = spawn._attributes
        now = spawn._attributes()
        old = _two_signals()

        def phxqd(attributes: ctypes.Array[ctypes.c_char]) -> Callable[[], int]:
            def go() -> int:
                spawn._attributes = lambda: attributes  # type: ignore[assignment]
                return spawn.spawn(TRUE, ("true",), tmp, log, env)

            return go

        ways: dict[str, Callable[[], int]] = {
            "os.posix_spawn": lambda: os.posix_spawn(TRUE, ["true"], os.environ),
            "phxqd": phxqd(now),
            "phxqd 2 signals": phxqd(old),
        }
        held: dict[str, list[float]] = {name: [] for name in ways}
        cpu: dict[str, float] = dict.fromkeys(ways, 0.0)
        try:
            for _ in range(rounds):
                for name, way in ways.items():
                    before = _children_cpu()
                    for _ in range(per):
                        t0 = time.perf_counter()
                        pid = way()
                        held[name].append(time.perf_counter() - t0)
                        os.waitpid(pid, 0)
                    cpu[name] += _children_cpu() - before
        finally:
            spawn._attributes = original
            os.close(log)
    out = {}
    for name, times in held.items():
        times.sort()
        out[name] = {
            "median_us": round(statistics.median(times) * 1e6),
            "p10_us": round(times[len(times) // 10] * 1e6),
            "child_cpu_us": round(cpu[name] / len(times) * 1e6),
        }
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.bench_spawn", description=__doc__)
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--per", type=int, default=200)
    args = p.parse_args(argv)
    print(f"load average at the start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    out = measure(args.rounds, args.per)
    print(f"load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"\n{args.rounds} rounds x {args.per} spawns of {TRUE}, one at a time:\n")
    print("| way | µs the call held its caller (median) | 10th percentile | children's CPU µs |")
    print("|---|---:|---:|---:|")
    for name, row in out.items():
        print(f"| {name} | {row['median_us']} | {row['p10_us']} | {row['child_cpu_us']} |")


if __name__ == "__main__":
    main()
