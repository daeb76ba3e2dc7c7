"""The huey instance and tasks, imported by the bench and by `huey_consumer`.

The database path comes from BENCH_HUEY_DB so the consumer (a separate process) opens the
same file. fsync=True: SQLite in WAL mode with synchronous=FULL, every enqueue fsync'd.
"""

from __future__ import annotations

import os
import subprocess

from huey import SqliteHuey

HUEY = SqliteHuey("bench", filename=os.environ.get("BENCH_HUEY_DB", "huey.db"), fsync=True)


@HUEY.task()
def noop() -> bool:
    return True  # stored as the result: the bench counts results to know it is done


@HUEY.task()
def run_true() -> bool:
    subprocess.run(["true"], check=True)
    return True
