"""The daemon's settings: a TOML file decoded into a typed Struct, then flags on top."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import msgspec


class Config(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Every key of phxqd.toml; docs/configuration.md documents each one."""

    state_dir: str | None = None
    socket: str | None = None
    logs_dir: str | None = None
    #: most jobs running at once; default: the CPUs this process may use
    workers: int | None = None
    #: always: ack after fdatasync; batch: ack after write, fdatasync every fsync_interval_ms;
    #: off: never fsync (tests and benchmarks only)
    fsync: Literal["always", "batch", "off"] = "always"
    fsync_interval_ms: int = 50
    #: take a snapshot once the journal has grown by this many bytes since the last one,
    #: and by at least twice the size of the last snapshot
    snapshot_bytes: int = 16 * 1024 * 1024
    segment_bytes: int = 64 * 1024 * 1024
    #: after a write error (disk full, EIO), seconds between attempts to write again
    write_retry_interval: float = 1.0
    #: seconds between SIGTERM and SIGKILL when a job is cancelled, times out or is stopped
    kill_grace: float = 5.0
    log_level: Literal["debug", "info", "warning", "error"] = "info"


class ConfigError(Exception):
    pass


def load(path: Path, required: bool) -> Config:
    """Read a config file; a missing default file means the defaults."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        if required:
            raise ConfigError(f"config file {path} does not exist") from None
        return Config()
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror}") from None
    try:
        cfg = msgspec.toml.decode(data, type=Config)
    except msgspec.ValidationError as e:
        raise ConfigError(f"{path}: {e}") from None
    except msgspec.DecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    if cfg.workers is not None and cfg.workers < 1:
        raise ConfigError(f"{path}: workers must be 1 or more")
    return cfg


def default_workers() -> int:
    return len(os.sched_getaffinity(0)) or 1


def resolve_logs_dir(cfg: Config, state_dir: Path) -> Path:
    if cfg.logs_dir:
        return Path(cfg.logs_dir)
    if systemd := os.environ.get("LOGS_DIRECTORY"):
        return Path(systemd.split(":")[0])
    return state_dir / "logs"
