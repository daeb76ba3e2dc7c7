"""`Settings`: what the running queue is told by the config and the command line (built by
daemon.py; changed in place by a config reload)."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

from phxqd.model import QueueConfig


@dataclass
class Settings:
    workers: int
    kill_grace: float
    snapshot_bytes: int
    journal_dir: Path
    logs_dir: Path
    socket: Path
    retry_interval: float = 1.0
    #: `[queues.NAME]` of the config
    queues: dict[str, QueueConfig] = field(default_factory=dict)
    #: finished jobs are forgotten this many seconds after they finished
    retention: float = 7 * 86400.0
    #: a job's log is cut back to about this many bytes (head and tail kept); None: no cap
    log_max_bytes: int | None = 10 * 1024 * 1024
    #: on a graceful stop, seconds running jobs get to finish before they are stopped
    shutdown_grace: float = 0.0
    #: the interpreter and extra import paths of the Python workers (callable jobs)
    python: str = sys.executable
    pythonpath: list[str] = field(default_factory=list)
    #: a worker is replaced after this many calls, or once its RSS is above worker_max_rss
    worker_max_jobs: int = 1000
    worker_max_rss: int | None = None
