"""The Celery app and tasks, imported by the bench and by `celery worker`.

The broker is the bench's Redis (BENCH_REDIS_URL). acks_late: a message is acknowledged
after its task ran, so a worker killed mid-task leaves it to be redelivered. No result
backend; each task counts itself done with one INCR so the bench knows when all ran.
"""

from __future__ import annotations

import os
import subprocess
from typing import Any

import redis
from celery import Celery

URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
app = Celery("bench", broker=URL)
app.conf.update(
    task_acks_late=True,
    task_ignore_result=True,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)
_counter: Any = None


def _done() -> None:
    global _counter
    if _counter is None:
        _counter = redis.Redis.from_url(URL)
    _counter.incr("bench:done")


@app.task(name="noop")
def noop() -> None:
    _done()


@app.task(name="run_true")
def run_true() -> None:
    subprocess.run(["true"], check=True)
    _done()
