"""phxqd: read the settings, recover the state, then serve until told to stop.

Start-up order matters: recovery (and the reaping of jobs from a previous life) finishes
before the socket accepts anyone, so no client ever sees a half-recovered queue. A first
SIGTERM or SIGINT stops gracefully (jobs requeued, snapshot taken, exit 0); a second one
exits at once, which loses nothing acknowledged because acknowledged means on disk.
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable

import anyio

from phxqd import config, paths, server
from phxqd.core import Core, Settings
from phxqd.journal import Corruption, FsyncPolicy, Journal, JournalError
from phxqd.recovery import StateDirBusy, lock_state_dir, recover

log = logging.getLogger("phxqd")
VERSION = "0.1.0"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="phxqd", description="The phxq job queue daemon.")
    p.add_argument("--version", action="version", version=f"phxqd {VERSION}")
    p.add_argument("--config", help="config file (default: user config dir phxq/phxqd.toml)")
    p.add_argument("--socket", help="Unix socket to listen on (env PHXQ_SOCKET)")
    p.add_argument("--state-dir", help="journal and snapshots (env PHXQ_STATE_DIR)")
    p.add_argument("--workers", type=int, help="most jobs running at once (default: CPUs)")
    p.add_argument(
        "--fsync", choices=["always", "batch", "off"], help="durability policy (default: always)"
    )
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    j = sub.add_parser("journal", help="check or mend a state dir (phxqd must not be running)")
    j.add_argument("action", choices=["verify", "repair"])
    j.add_argument(
        "--state-dir", default=argparse.SUPPRESS, help="the state dir (default as for the daemon)"
    )
    c = sub.add_parser(
        "check-config",
        help="validate the config file: exit 0 if phxqd would accept it, 1 (and why) if not",
    )
    c.add_argument(
        "--config", default=argparse.SUPPRESS, help="the file (default as for the daemon)"
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.command == "check-config":
        sys.exit(check_config(args.config))
    try:
        if args.command == "journal" and (args.state_dir or os.environ.get("PHXQ_STATE_DIR")):
            # The state dir is named: the file has nothing more to say, and an operator
            # running this as the service's user may not be able to read the default one.
            cfg = config.Config()
        else:
            cfg = config.load(
                paths.config_path(args.config),
                required=bool(args.config or os.environ.get("PHXQ_CONFIG")),
            )
    except config.ConfigError as e:
        sys.exit(f"phxqd: {e}")
    if args.workers is not None and args.workers < 1:
        sys.exit("phxqd: --workers must be 1 or more")
    logging.basicConfig(
        level=(args.log_level or cfg.log_level).upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    state_dir = paths.state_dir(args.state_dir, cfg.state_dir)
    try:
        lock = lock_state_dir(state_dir)
    except StateDirBusy as e:
        sys.exit(f"phxqd: {e}")
    except OSError as e:
        sys.exit(f"phxqd: cannot use state dir {state_dir}: {e.strerror}")
    if args.command == "journal":
        from phxqd import repair

        action = repair.verify if args.action == "verify" else repair.repair
        sys.exit(action(state_dir / "journal"))
    settings = Settings(
        workers=args.workers or cfg.workers or config.default_workers(),
        kill_grace=cfg.kill_grace,
        snapshot_bytes=cfg.snapshot_bytes,
        journal_dir=state_dir / "journal",
        logs_dir=config.resolve_logs_dir(cfg, state_dir),
        socket=paths.socket_path(args.socket, cfg.socket),
        retry_interval=cfg.write_retry_interval,
        queues=cfg.queues,
        retention=cfg.retention,
        log_max_bytes=cfg.log_max_bytes or None,
        shutdown_grace=cfg.shutdown_grace,
    )
    try:
        anyio.run(run, settings, cfg, args.fsync or cfg.fsync)
    except Corruption as e:
        sys.exit(
            f"phxqd: refusing to start: {e}\n"
            "phxqd: the files are left untouched; `phxqd journal verify` tells more, and "
            "`phxqd journal repair` cuts the journal there after taking a backup"
        )
    except KeyboardInterrupt:
        sys.exit(130)
    finally:
        os.close(lock)


def check_config(flag: str | None) -> int:
    """`phxqd check-config`: 0 if the file is valid (or absent and optional), else 1."""
    path = paths.config_path(flag)
    required = bool(flag or os.environ.get("PHXQ_CONFIG"))
    if not required and not path.exists():
        print(f"{path}: no such file; phxqd would use the defaults")
        return 0
    try:
        cfg = config.load(path, required=True)
    except config.ConfigError as e:
        print(f"phxqd: {e}", file=sys.stderr)
        return 1
    defaults = config.Config()
    changed = []
    for key in cfg.__struct_fields__:
        value = getattr(cfg, key)
        if value != getattr(defaults, key):
            tables = isinstance(value, dict)
            changed += (
                [f"[{key}.{n}]" for n in value]
                if tables
                else [f"{key} = {config.toml_value(value)}"]
            )
    print(f"{path}: ok" + (f" ({', '.join(changed)}; the rest default)" if changed else ""))
    return 0


async def run(settings: Settings, cfg: config.Config, fsync: FsyncPolicy) -> None:
    for d in (settings.journal_dir, settings.logs_dir):
        d.mkdir(parents=True, exist_ok=True, mode=0o700)
    recovered = recover(settings.journal_dir, cut_torn_tail=True, now=time.time())
    gc.freeze()  # the recovered jobs live on: keep them out of every later collection
    log.info(
        "recovered %d jobs (snapshot at record %d, %d records replayed from %d segments)",
        len(recovered.state.jobs),
        recovered.snapshot_lsn,
        recovered.records,
        recovered.segments,
    )
    journal = Journal(
        settings.journal_dir,
        recovered.next_lsn,
        fsync,
        batch_interval=cfg.fsync_interval_ms / 1000,
        segment_bytes=cfg.segment_bytes,
    )
    core = Core(recovered.state, journal, settings)
    async with anyio.create_task_group() as tg:
        tg.start_soon(journal.run)
        await core.reap()
        listener = await server.listen(settings.socket)
        serving, snapshots, healing = anyio.CancelScope(), anyio.CancelScope(), anyio.CancelScope()
        dispatching = anyio.Event()
        tg.start_soon(_serve, listener, core, serving)
        tg.start_soon(_in_scope, core.snapshotter, snapshots)
        tg.start_soon(_in_scope, core.heal, healing)
        tg.start_soon(_dispatch, core, dispatching)
        log.info(
            "phxqd %s ready: socket %s, state %s, %d workers, fsync=%s",
            VERSION,
            settings.socket,
            settings.journal_dir.parent,
            settings.workers,
            fsync,
        )
        await _wait_for_signal()
        log.info("stopping: requeueing running jobs")
        await core.stop()
        tg.start_soon(_exit_on_second_signal)
        await dispatching.wait()
        serving.cancel()
        snapshots.cancel()
        healing.cancel()
        try:
            await core.snapshot()
        except (JournalError, OSError) as e:
            log.error("no snapshot at shutdown (%s); the journal keeps what was saved", e)
        await journal.close()
        settings.socket.unlink(missing_ok=True)
        tg.cancel_scope.cancel()
    log.info("stopped")


async def _serve(listener: anyio.abc.SocketListener, core: Core, scope: anyio.CancelScope) -> None:
    with scope:
        async with listener:
            await server.serve(listener, core.handle)


async def _in_scope(func: Callable[[], Awaitable[None]], scope: anyio.CancelScope) -> None:
    with scope:
        await func()


async def _dispatch(core: Core, done: anyio.Event) -> None:
    try:
        await core.dispatch()
    finally:
        done.set()


async def _wait_for_signal() -> None:
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for _ in signals:
            return


async def _exit_on_second_signal() -> None:
    await _wait_for_signal()
    log.warning("second signal: exiting now (acknowledged jobs are already on disk)")
    os._exit(1)


if __name__ == "__main__":
    main()
