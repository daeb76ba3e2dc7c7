"""`Settings`: every value the running daemon takes from its config file and command line.

One function, `Settings.from_config`, makes them, at start-up and again on each reload
(SIGHUP), so the two cannot drift apart. The daemon's parts hold a reference to one live
`Settings` and read a field at the moment they use it: a reload changes a value by copying
it into that object (`Settings.reload_from`), and nobody keeps a copy that would go stale.
Which fields a reload may change is said once, in `RELOADABLE`; every other field (paths,
the socket, the journal's fsync policy and segment size, what the listeners were opened
with) is read at start-up only, and a reload that would change one logs that it needs a
restart (`Settings.restart_needed`).
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from phxqd import config, paths
from phxqd.hooks import HookSettings
from phxqd.local.journal import FsyncPolicy
from phxqd.model import QueueConfig
from phxqd.schedules_model import ScheduleSpec


@dataclass(frozen=True)
class Options:
    """What the command line fixed: a reload re-reads the file, never these."""

    config_path: Path
    config_required: bool
    socket: str | None = None
    state_dir: str | None = None
    store: str | None = None
    workers: int | None = None
    fsync: FsyncPolicy | None = None
    log_level: str | None = None
    http: str | None = None


@dataclass(kw_only=True)
class Settings:
    """The effective values. A start-up-only field is named after its config key; the
    reloadable ones are listed, with their keys, in `RELOADABLE`."""

    # Read at start-up only.
    state_dir: Path
    logs_dir: Path
    #: where phxqd listens (under socket activation: the socket systemd passed), and the
    #: PHXQ_SOCKET jobs get
    socket: Path
    #: None: the embedded journal; else the PostgreSQL URI of the shared store
    store: str | None
    #: with a shared store, seconds without a heartbeat before a node is taken for dead
    lease: float
    fsync: FsyncPolicy
    fsync_interval_ms: int
    #: "auto", "asyncio" or "uvloop" (see `daemon.use_uvloop`)
    event_loop: str
    segment_bytes: int
    allow_users: list[str | int]
    allow_groups: list[str | int]
    client_idle_timeout: float
    client_send_timeout: float
    #: the HTTP API and dashboard (`http_listen`, or `metrics_listen`, or --http)
    http_listen: str | None
    #: its older name, kept as read (a reload compares it)
    metrics_listen: str | None
    http_submit: bool
    status_file: Path | None

    # Reloadable (RELOADABLE).
    workers: int
    #: `[queues.NAME]` of the config
    queues: dict[str, QueueConfig]
    #: `[schedules.NAME]` of the config, as schedules (a job's cwd: its `cwd`, else home)
    schedules: dict[str, ScheduleSpec]
    log_level: str
    kill_grace: float
    #: on a graceful stop, seconds running jobs get to finish before they are stopped
    shutdown_grace: float
    snapshot_bytes: int
    #: after a journal failure, seconds between attempts to write again
    retry_interval: float
    #: finished jobs are forgotten this many seconds after they finished
    retention: float
    #: a job's log is cut back to about this many bytes (head and tail kept); None: no cap
    log_max_bytes: int | None
    hooks: HookSettings
    #: the interpreter and extra import paths of the Python workers (callable jobs)
    python: str
    pythonpath: list[str]
    #: a worker is replaced after this many calls, or once its RSS is above worker_max_rss
    worker_max_jobs: int
    worker_max_rss: int | None

    @classmethod
    def from_config(cls, cfg: config.Config, opts: Options, socket: Path | None = None) -> Settings:
        """The settings a config and the flags make, the flags winning over the file.

        `socket` is the path of a socket systemd passed (socket activation): it wins over the
        flag and the file, which are then ignored. Paths follow the order of
        docs/configuration.md ("Flags and variables that win over the file").
        """
        state_dir = paths.state_dir(opts.state_dir, cfg.state_dir)
        return cls(
            state_dir=state_dir,
            logs_dir=config.resolve_logs_dir(cfg, state_dir),
            socket=socket or paths.socket_path(opts.socket, cfg.socket),
            store=store_uri(opts.store or cfg.store),
            lease=cfg.lease,
            fsync=opts.fsync or cfg.fsync,
            fsync_interval_ms=cfg.fsync_interval_ms,
            event_loop=cfg.event_loop,
            segment_bytes=cfg.segment_bytes,
            allow_users=cfg.allow_users,
            allow_groups=cfg.allow_groups,
            client_idle_timeout=cfg.client_idle_timeout,
            client_send_timeout=cfg.client_send_timeout,
            http_listen=opts.http or cfg.http_listen or cfg.metrics_listen,
            metrics_listen=cfg.metrics_listen,
            http_submit=cfg.http_submit,
            status_file=Path(cfg.status_file) if cfg.status_file else None,
            workers=opts.workers or cfg.workers or config.default_workers(),
            queues=cfg.queues,
            schedules={n: t.spec(n, str(Path.home())) for n, t in cfg.schedules.items()},
            log_level=opts.log_level or cfg.log_level,
            kill_grace=cfg.kill_grace,
            shutdown_grace=cfg.shutdown_grace,
            snapshot_bytes=cfg.snapshot_bytes,
            retry_interval=cfg.write_retry_interval,
            retention=cfg.retention,
            log_max_bytes=cfg.log_max_bytes or None,
            hooks=HookSettings(
                cfg.on_complete,
                cfg.on_failure,
                cfg.on_retry,
                cfg.hook_timeout,
                cfg.hook_concurrency,
            ),
            python=cfg.python or sys.executable,
            pythonpath=cfg.pythonpath,
            worker_max_jobs=cfg.worker_max_jobs,
            worker_max_rss=cfg.worker_max_rss or None,
        )

    @property
    def journal_dir(self) -> Path:
        return self.state_dir / "journal"

    def reload_from(self, new: Settings) -> None:
        """Take the reloadable values of `new` (a reload); the others stay as they were."""
        for name in RELOADABLE:
            setattr(self, name, getattr(new, name))

    def restart_needed(self, new: Settings) -> dict[str, Any]:
        """The start-up-only values `new` would change: {config key: value in `new`}."""
        return {
            f.name: getattr(new, f.name)
            for f in dataclasses.fields(self)
            if f.name not in RELOADABLE and getattr(new, f.name) != getattr(self, f.name)
        }


#: The fields a reload copies into the live Settings, each with the config keys it is
#: made from; docs/configuration.md ("Reloading") lists the same keys, and a test holds
#: the two together.
RELOADABLE: dict[str, tuple[str, ...]] = {
    "workers": ("workers",),
    "queues": ("queues",),
    "schedules": ("schedules",),
    "log_level": ("log_level",),
    "kill_grace": ("kill_grace",),
    "shutdown_grace": ("shutdown_grace",),
    "snapshot_bytes": ("snapshot_bytes",),
    "retry_interval": ("write_retry_interval",),
    "retention": ("retention",),
    "log_max_bytes": ("log_max_bytes",),
    "hooks": ("on_complete", "on_failure", "on_retry", "hook_timeout", "hook_concurrency"),
    "python": ("python",),
    "pythonpath": ("pythonpath",),
    "worker_max_jobs": ("worker_max_jobs",),
    "worker_max_rss": ("worker_max_rss",),
}


def store_uri(value: str | None) -> str | None:
    """The store a flag or key names: None for the embedded journal ("local" or nothing),
    else a PostgreSQL URI (checked by phxqd when it connects)."""
    if value is None or value.strip() in ("", "local"):
        return None
    return value.strip()


def reloadable_keys() -> frozenset[str]:
    """The config keys a reload applies at once."""
    return frozenset(key for keys in RELOADABLE.values() for key in keys)
