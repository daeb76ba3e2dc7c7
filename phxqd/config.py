"""The daemon's settings: a TOML file decoded into a typed Struct, then flags on top.

Bounds live in the types (`msgspec.Meta`), so the decoder rejects a bad value with the key
named; `load` turns msgspec's terse `Expected ... - at $.key` into a sentence an operator
can act on, because `phxqd check-config` and a failed start or reload show it as is.
"""

from __future__ import annotations

import difflib
import os
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec

from phxqd.model import QueueConfig
from phxqd.rates import parse_rate
from phxqd.schedules_model import ScheduleConfig

Positive = Annotated[int, msgspec.Meta(ge=1)]
NonNegativeSeconds = Annotated[float, msgspec.Meta(ge=0)]
PositiveSeconds = Annotated[float, msgspec.Meta(gt=0)]


class Config(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Every key of phxqd.toml; docs/configuration.md documents each one."""

    state_dir: str | None = None
    socket: str | None = None
    logs_dir: str | None = None
    #: most jobs running at once; default: the CPUs this process may use
    workers: Positive | None = None
    #: always: ack after fdatasync; batch: ack after write, fdatasync every fsync_interval_ms;
    #: off: never fsync (tests and benchmarks only)
    #: where the queue lives: None or "local", the journal in state_dir; a PostgreSQL URI,
    #: the database every node naming it shares (docs/scale-out.md)
    store: str | None = None
    #: seconds a PostgreSQL node may go without a heartbeat before its jobs are retried
    #: elsewhere
    lease: PositiveSeconds = 30.0
    fsync: Literal["always", "batch", "off"] = "always"
    #: the event loop: uvloop's when installed (the `fast` extra), else asyncio's; or one
    #: of them by name (asyncio's is the fallback should uvloop ever misbehave)
    event_loop: Literal["auto", "asyncio", "uvloop"] = "auto"
    fsync_interval_ms: Positive = 50
    #: take a snapshot once the journal has grown by this many bytes since the last one,
    #: and by at least twice the size of the last snapshot
    snapshot_bytes: Positive = 16 * 1024 * 1024
    segment_bytes: Positive = 64 * 1024 * 1024
    #: after a write error (disk full, EIO), seconds between attempts to write again
    write_retry_interval: PositiveSeconds = 1.0
    #: seconds between SIGTERM and SIGKILL when a job is cancelled, times out or is stopped
    kill_grace: NonNegativeSeconds = 5.0
    #: on a graceful stop, seconds running jobs get to finish before they are stopped
    shutdown_grace: NonNegativeSeconds = 0.0
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    #: finished jobs are forgotten this many seconds after they finished
    retention: NonNegativeSeconds = 7 * 86400.0
    #: a job's log is cut back to about this many bytes, head and tail kept; 0: no cap
    log_max_bytes: Annotated[int, msgspec.Meta(ge=0)] = 10 * 1024 * 1024
    #: `[queues.NAME]` tables: a queue's concurrency limit and retry defaults
    queues: dict[str, QueueConfig] = {}
    #: `[schedules.NAME]` tables: cron and interval schedules (docs/schedules.md)
    schedules: dict[str, ScheduleConfig] = {}
    #: who else may use the daemon (its own user and root always may): user names or uids,
    #: group names or gids; checked per connection with SO_PEERCRED
    allow_users: list[str | int] = []
    allow_groups: list[str | int] = []
    #: a client connection that sends nothing for this long is closed (a request being
    #: answered, a `wait` or a `watch`, is not idleness)
    client_idle_timeout: PositiveSeconds = 300.0
    #: a client that takes none of a reply for this long is disconnected
    client_send_timeout: PositiveSeconds = 60.0
    #: "HOST:PORT" or a Unix socket path: the HTTP API, the dashboard and /metrics (extra
    #: phxq[web]); None: no HTTP. `metrics_listen` is its older name, still read
    http_listen: str | None = None
    metrics_listen: str | None = None
    #: allow submitting jobs over HTTP (they run as phxqd's user; a control token is needed)
    http_submit: bool = False
    #: the interpreter of the Python workers that run callable jobs (your project's venv)
    python: str | None = None
    #: extra import paths for callable jobs
    pythonpath: list[str] = []
    #: a worker is replaced after this many calls...
    worker_max_jobs: Positive = 1000
    #: ...or once its resident memory passes this many bytes (0: no limit)
    worker_max_rss: Annotated[int, msgspec.Meta(ge=0)] = 0
    #: a JSON file of counts, rates and live jobs' progress for other programs, replaced
    #: atomically at most once a second while something changes; None: none
    status_file: str | None = None
    #: commands run when a job completes, fails for good, or waits to be retried, with the
    #: job's JSON on stdin: a string (run by /bin/sh -c) or an argv array
    on_complete: str | list[str] | None = None
    on_failure: str | list[str] | None = None
    on_retry: str | list[str] | None = None
    #: seconds a hook may run before its process group is killed
    hook_timeout: PositiveSeconds = 30.0
    #: most hooks running at once; the others wait (never the queue)
    hook_concurrency: Positive = 4


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
    return parse(data, str(path))


def parse(data: bytes, where: str) -> Config:
    """Decode a config file's bytes; ConfigError names `where`, the key and the reason."""
    try:
        raw = tomllib.loads(data.decode())
    except UnicodeDecodeError as e:
        raise ConfigError(f"{where}: not valid TOML: not UTF-8 at byte {e.start}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{where}: not valid TOML: {e}") from None
    try:
        cfg = msgspec.convert(raw, type=Config)
    except msgspec.ValidationError as e:
        raise ConfigError(f"{where}: {explain(e, raw)}") from None
    for name, queue in cfg.queues.items():
        for key, least in _QUEUE_BOUNDS.items():
            value = getattr(queue, key)
            if value is not None and value < least:
                kind = "an integer" if isinstance(least, int) else "a number"
                raise ConfigError(
                    f"{where}: `queues.{name}.{key}` must be {kind} of at least {least:g}, "
                    f"not {toml_value(value)}"
                )
        if queue.rate is not None:
            try:
                parse_rate(queue.rate)
            except ValueError as e:
                raise ConfigError(f"{where}: `queues.{name}.rate`: {e}") from None
    if cfg.schedules:
        from phxqd.schedules import check  # the cron library: only for files that need it

        for name, table in cfg.schedules.items():
            try:
                why = check(table.spec(name, "/"))
            except ValueError as e:
                why = str(e)
            if why:
                raise ConfigError(f"{where}: `[schedules.{name}]`: {why}")
    for key in ("on_complete", "on_failure", "on_retry"):
        hook = getattr(cfg, key)
        if hook is not None and (not hook or (isinstance(hook, list) and not hook[0])):
            raise ConfigError(f"{where}: `{key}` must be a command, not {toml_value(hook)}")
    for key in ("http_listen", "metrics_listen"):
        address = getattr(cfg, key)
        if address is not None:
            from phxqd.web import listen  # standard library only: no web stack imported

            try:
                listen.parse(address)
            except ValueError as e:
                raise ConfigError(f"{where}: `{key}`: {e}") from None
    return cfg


#: lower bounds of the `[queues.NAME]` keys (QueueConfig lives in model.py, unbounded)
_QUEUE_BOUNDS: dict[str, float] = {
    "concurrency": 1,
    "burst": 1,
    "retries": 0,
    "backoff_base": 0.0,
    "backoff_max": 0.0,
    "jitter": 0.0,
}


_EXPECTED = re.compile(r"Expected `(?P<type>[^`]+)`(?:, got `(?P<got>\w+)`)?(?P<bound>.*)")
_TYPE_NAMES = {
    "int": "an integer",
    "float": "a number",
    "str": "a string",
    "bool": "true or false",
    "array": "an array",
    "object": "a table",
}


def explain(
    error: msgspec.ValidationError,
    raw: dict[str, Any],
    struct: type[msgspec.Struct] = Config,
    prefix: str = "",
) -> str:
    """msgspec's message, said for a person: the key, what it must be, what it is."""
    what, _, path = str(error).partition(" - at `$")
    path = path.removesuffix("`").lstrip(".")
    if path.startswith("queues[...]") and isinstance(raw.get("queues"), dict):
        # msgspec hides dict keys ("[...]"): find the queue by checking each table alone
        for name, table in raw["queues"].items():
            if not isinstance(table, dict):
                return f"`queues.{name}` must be a table, not {toml_value(table)}"
            try:
                msgspec.convert(table, type=QueueConfig)
            except msgspec.ValidationError as e:
                return explain(e, table, QueueConfig, f"queues.{name}.")
    if path.startswith("schedules[...]") and isinstance(raw.get("schedules"), dict):
        for name, table in raw["schedules"].items():
            if not isinstance(table, dict):
                return f"`schedules.{name}` must be a table, not {toml_value(table)}"
            try:
                msgspec.convert(table, type=ScheduleConfig)
            except msgspec.ValidationError as e:
                return explain(e, table, ScheduleConfig, f"schedules.{name}.")
    if unknown := re.fullmatch(r"Object contains unknown field `(.+)`", what):
        key = unknown.group(1)
        hint = difflib.get_close_matches(key, struct.__struct_fields__, n=1)
        table = f" in [{prefix.removesuffix('.')}]" if prefix else ""
        suggestion = f"; did you mean `{hint[0]}`?" if hint else ""
        return f"unknown key `{key}`{table}{suggestion} (docs/configuration.md lists every key)"
    if not re.fullmatch(r"\w+", path):
        return f"`{prefix}{path}`: {what}" if path else what
    name, shown = prefix + path, toml_value(raw.get(path))
    if choices := _choices(struct, path):
        return f"`{name}` must be one of {', '.join(toml_value(c) for c in choices)}, not {shown}"
    if expected := _EXPECTED.fullmatch(what):
        kinds = [t.strip() for t in expected.group("type").split("|") if t.strip() != "null"]
        must = " or ".join(_TYPE_NAMES.get(k, k) for k in kinds)
        if bound := re.fullmatch(r"\s*(>=|>|<=|<)\s*(\S+)", expected.group("bound")):
            words = {">=": "of at least", ">": "greater than", "<=": "of at most", "<": "below"}
            must += f" {words[bound.group(1)]} {float(bound.group(2)):g}"
        return f"`{name}` must be {must}, not {shown}"
    return f"`{name}`: {what}"


def toml_value(value: Any) -> str:
    """A value as it would be written in the file (for messages)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    return str(value)


def _choices(struct: type[msgspec.Struct], key: str) -> tuple[Any, ...]:
    info = msgspec.inspect.type_info(struct)
    assert isinstance(info, msgspec.inspect.StructType)
    for f in info.fields:
        if f.name == key and isinstance(f.type, msgspec.inspect.LiteralType):
            return f.type.values
    return ()


def default_workers() -> int:
    return len(os.sched_getaffinity(0)) or 1


def resolve_logs_dir(cfg: Config, state_dir: Path) -> Path:
    if cfg.logs_dir:
        return Path(cfg.logs_dir)
    if systemd := os.environ.get("LOGS_DIRECTORY"):
        return Path(systemd.split(":")[0])
    return state_dir / "logs"
