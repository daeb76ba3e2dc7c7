"""huey with SqliteHuey(fsync=True): the durable-enqueue peer of bench_journal.py.

SQLite in WAL mode with synchronous=FULL fsyncs the WAL at every commit, so an enqueue
that returned is on disk: the same promise as phxq's default fsync = "always".
"""

from __future__ import annotations

import multiprocessing as mp
import time
from pathlib import Path
from typing import Any


def make_huey(path: Path) -> Any:
    from huey import SqliteHuey

    return SqliteHuey("bench", filename=str(path), fsync=True)


def _enqueue(path: Path, n: int) -> None:
    huey = make_huey(path)

    @huey.task()
    def noop() -> None:
        pass

    for _ in range(n):
        noop()


def rate(path: Path, producers: int, per_producer: int) -> float:
    """Jobs per second enqueued durably by `producers` processes."""
    make_huey(path).storage.flush_queue()
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_enqueue, args=(path, per_producer)) for _ in range(producers)]
    t0 = time.perf_counter()
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    return producers * per_producer / (time.perf_counter() - t0)
