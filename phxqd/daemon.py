"""phxqd: read the settings, recover the state, then serve until told to stop.

Start-up order matters: recovery (and the reaping of jobs from a previous life) finishes
before the socket accepts anyone, so no client ever sees a half-recovered queue, and only
then does systemd hear READY=1. A first SIGTERM or SIGINT stops gracefully (jobs requeued,
snapshot taken, exit 0); a second one exits at once, which loses nothing acknowledged
because acknowledged means on disk. SIGHUP reloads the config file.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import logging
import os
import resource
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
import msgspec

from phxqd import config, logsetup, paths, server, statusfile, systemd
from phxqd.backend import Backend
from phxqd.core import Core
from phxqd.hooks import Hooks
from phxqd.local import formats
from phxqd.local.backend import LocalBackend
from phxqd.local.journal import Corruption, Journal, JournalError, make_dirs
from phxqd.local.recovery import StateDirBusy, lock_state_dir, recover
from phxqd.model import QueueConfig
from phxqd.protocol import Refused
from phxqd.settings import Options, Settings
from phxqd.stats import Stats

if TYPE_CHECKING:
    from phxqd.web.app import Serving

log = logging.getLogger("phxqd")

#: allocations of tracked objects between two collections of the youngest generation
YOUNG_GC_THRESHOLD = 10_000
VERSION = "0.1.0"
#: seconds between STATUS= updates to systemd (sent only when the line changed)
STATUS_PERIOD = 1.0
#: what a clean stop needs beyond `shutdown_grace` and `kill_grace` twice (the jobs', then
#: the requests' in flight): the snapshot, the journal closed
STOP_MARGIN = 30.0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="phxqd", description="The phxq job queue daemon.")
    p.add_argument("--version", action="version", version=f"phxqd {VERSION}")
    p.add_argument("--config", help="config file (default: user config dir phxq/phxqd.toml)")
    p.add_argument("--socket", help="Unix socket to listen on (env PHXQ_SOCKET)")
    p.add_argument("--state-dir", help="journal and snapshots (env PHXQ_STATE_DIR)")
    p.add_argument(
        "--store",
        help='where the queue lives: "local" (the journal) or a postgresql:// URI (env PHXQ_STORE)',
    )
    p.add_argument("--workers", type=int, help="most jobs running at once (default: CPUs)")
    p.add_argument(
        "--fsync", choices=["always", "batch", "off"], help="durability policy (default: always)"
    )
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    p.add_argument("--http", metavar="HOST:PORT", help="serve the HTTP API and dashboard there")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    j = sub.add_parser("journal", help="check or mend a state dir (phxqd must not be running)")
    j.add_argument("action", choices=["verify", "repair"])
    j.add_argument(
        "--state-dir", default=argparse.SUPPRESS, help="the state dir (default as for the daemon)"
    )
    t = sub.add_parser("http-token", help="print (or --rotate) the HTTP API's token")
    t.add_argument("--read", action="store_true", help="the read-only token (default: control)")
    t.add_argument("--rotate", action="store_true", help="replace it; the old one stops working")
    t.add_argument(
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


def use_uvloop(event_loop: str) -> bool:
    """Whether phxqd runs on uvloop's event loop: by default (`event_loop = "auto"`) when
    the `fast` extra installed it.

    libuv's loop, its sockets and its callbacks in C cost a request ~10% less of the
    daemon's CPU than asyncio's own loop with 16 clients (docs/benchmarks.md); anyio and
    everything phxqd asks of the loop (transports, add_reader on pidfds, signals,
    subprocesses for hooks) work the same on both, and tests/test_event_loops.py runs
    phxqd on each. `event_loop = "uvloop"` without it is refused at start.
    """
    if event_loop == "asyncio":
        return False
    try:
        import uvloop  # noqa: F401
    except ImportError as e:
        if event_loop == "uvloop":
            raise SystemExit(
                f"phxqd: event_loop = \"uvloop\" needs uvloop ({e}): pip install 'phxq[fast]'"
            ) from None
        return False
    return True


def loop_name() -> str:
    """The running event loop's name for the log: "uvloop" or "asyncio"."""
    import asyncio

    return (
        "uvloop" if type(asyncio.get_running_loop()).__module__.startswith("uvloop") else "asyncio"
    )


def main(argv: list[str] | None = None) -> None:
    # A reload asked for before the daemon listens for it must not kill it (SIGHUP's
    # default action); the signal receiver in `run` takes over from here.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    args = parse_args(argv)
    if args.command == "check-config":
        sys.exit(check_config(args.config))
    # Read and removed before anything can spawn a job: jobs inherit os.environ.
    sd = systemd.take_environment()
    opts = Options(
        config_path=paths.config_path(args.config),
        config_required=bool(args.config or os.environ.get("PHXQ_CONFIG")),
        socket=args.socket,
        state_dir=args.state_dir,
        store=args.store or os.environ.get("PHXQ_STORE") or None,
        workers=args.workers,
        fsync=args.fsync,
        log_level=args.log_level,
        http=args.http,
    )
    try:
        if args.command == "journal" and (args.state_dir or os.environ.get("PHXQ_STATE_DIR")):
            # The state dir is named: the file has nothing more to say, and an operator
            # running this as the service's user may not be able to read the default one.
            cfg = config.Config()
        else:
            cfg = config.load(opts.config_path, opts.config_required)
    except config.ConfigError as e:
        logsetup.fatal(f"phxqd: {e}")
    if args.workers is not None and args.workers < 1:
        logsetup.fatal("phxqd: --workers must be 1 or more")
    settings = Settings.from_config(cfg, opts)
    logsetup.setup(settings.log_level)
    if args.command == "http-token":
        from phxqd.web import tokens

        kind: tokens.Kind = "read" if args.read else "control"
        store = tokens.Tokens(settings.state_dir)
        print(store.rotate(kind) if args.rotate else store.ensure()[kind])
        sys.exit(0)
    state_dir = settings.state_dir
    try:
        lock = lock_state_dir(state_dir)
    except StateDirBusy as e:
        logsetup.fatal(f"phxqd: {e}")
    except OSError as e:
        logsetup.fatal(f"phxqd: cannot use state dir {state_dir}: {e.strerror}")
    try:  # before anything reads the journal: a newer format is not damage
        formats.check(state_dir)
    except formats.NewerFormat as e:
        logsetup.fatal(f"phxqd: refusing to start: {e}", formats.EXIT_NEWER)
    except formats.UnreadableFormat as e:
        logsetup.fatal(f"phxqd: refusing to start: {e}")
    if args.command == "journal":
        from phxqd.local import repair

        action = repair.verify if args.action == "verify" else repair.repair
        sys.exit(action(state_dir / "journal"))
    try:
        activated = systemd.activated_socket(sd.listen_fds)
    except systemd.ActivationError as e:
        logsetup.fatal(f"phxqd: {e}")
    activated_path = None
    if activated is not None:
        activated_path = systemd.socket_path(activated)
        if activated_path is None:
            log.warning(
                "the activated socket has no path: jobs get PHXQ_SOCKET=%s", settings.socket
            )
        else:  # it wins over the flag and the file
            settings = Settings.from_config(cfg, opts, socket=activated_path)
    raise_open_files_limit()
    try:
        anyio.run(
            run,
            settings,
            opts,
            sd,
            activated,
            activated_path,
            backend_options={"use_uvloop": use_uvloop(settings.event_loop)},
        )
    except Corruption as e:
        logsetup.fatal(
            f"phxqd: refusing to start: {e}\n"
            "phxqd: the files are left untouched; `phxqd journal verify` tells more, and "
            "`phxqd journal repair` cuts the journal there after taking a backup"
        )
    except SystemExit as e:  # e.g. the socket path is taken by another phxqd
        if isinstance(e.code, str):
            logsetup.fatal(e.code)
        raise
    except KeyboardInterrupt:
        sys.exit(130)
    finally:
        os.close(lock)


def raise_open_files_limit(target: int = 65536) -> None:
    """Raise the soft limit of open files towards the hard one (systemd's default soft
    limit is 1024, a few hundred clients' worth). Each client connection, running job and
    worker holds descriptors; past the limit the daemon delays new connections instead of
    failing, but should not get there with a thousand clients. Jobs inherit the raised
    soft limit (at most `target`)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = target if hard == resource.RLIM_INFINITY else min(hard, target)
    if soft != resource.RLIM_INFINITY and soft < want:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


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
        print(logsetup.error_text(f"phxqd: {e}"), file=sys.stderr)
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


async def run(
    settings: Settings,
    opts: Options,
    sd: systemd.Environment,
    activated: socket.socket | None,
    activated_path: Path | None,
) -> None:
    notifier = systemd.Notifier(sd.notify_socket)
    # Opened first: a SIGTERM during recovery waits for it, then stops cleanly.
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        for d in (settings.journal_dir, settings.logs_dir):
            make_dirs(d)
        stats = Stats()
        if settings.store is not None:
            notifier.status("connecting to PostgreSQL")
            # the backend stops jobs of this node itself (a cancel from another node, a
            # lost lease): through the dispatcher, built below
            backend: Backend = await _open_postgres(
                settings,
                stats,
                lambda ids, why: core.dispatcher.stop(ids, why),
                lambda: core.scheduler.changed(),
            )
        else:
            notifier.status("recovering the journal")
            backend = _open_local(settings, stats)
        core = Core(backend, settings)
        backend, views = core.backend, core.views
        # bound before the task group: a taken port stops the start with one line
        web = _open_web(core) if settings.http_listen else None
        async with anyio.create_task_group() as tg:
            await tg.start(backend.run)
            await core.dispatcher.reap()
            await _declare_schedules(core)
            scheduling = anyio.CancelScope()
            tg.start_soon(_schedule, core, scheduling)
            try:
                access = server.resolve_access(settings.allow_users, settings.allow_groups)
            except ValueError as e:
                raise SystemExit(f"phxqd: {e}") from None
            if activated is not None:
                listener = await systemd.wrap_listener(activated)
            else:
                listener = await server.listen(settings.socket)
                server.open_to(settings.socket, access)
            stop_serving, served, dispatching = anyio.Event(), anyio.Event(), anyio.Event()
            timeouts = server.Timeouts(settings.client_idle_timeout, settings.client_send_timeout)
            tg.start_soon(_serve, listener, core, access, timeouts, stop_serving, served)
            tg.start_soon(_dispatch, core, dispatching)
            hooks = Hooks(backend.feed, backend.find, backend.stats.hooks)
            hooks.configure(settings.hooks)
            tg.start_soon(hooks.run)
            status_file = settings.status_file
            if status_file is not None:
                tg.start_soon(statusfile.keep, status_file, backend.feed, views.status_export)
            if web is not None:
                tg.start_soon(web.run)
            # The socket is listening: a client connecting from now on is answered.
            ready = await views.status_line()
            notifier.ready(ready)
            if sd.watchdog_interval is not None and notifier.enabled:
                tg.start_soon(systemd.feed_watchdog, notifier, sd.watchdog_interval)
            if notifier.enabled:
                tg.start_soon(publish_status, notifier, views.status_line, ready)
            log.info(
                "phxqd %s ready: socket %s%s, state %s, %d workers, fsync=%s, loop %s",
                VERSION,
                settings.socket,
                " (socket-activated)" if activated is not None else "",
                settings.journal_dir.parent if settings.store is None else "PostgreSQL",
                settings.workers,
                settings.fsync,
                loop_name(),
            )
            reloader = Reloader(opts, activated_path, core, hooks, notifier)
            await _until_stop_signal(signals, reloader.reload)
            running = (await backend.summary()).counts["running"]
            if settings.shutdown_grace > 0 and running:
                stopping = (
                    f"stopping: {running} running jobs get {settings.shutdown_grace:g}s to "
                    "finish, then are requeued"
                )
            else:
                stopping = f"stopping: requeueing {running} running jobs"
            log.info("%s", stopping)
            notifier.stopping(
                stopping, needs=settings.shutdown_grace + 2 * settings.kill_grace + STOP_MARGIN
            )
            scheduling.cancel()  # no firing once stopping: the next start catches up
            await core.dispatcher.shutdown()
            tg.start_soon(_exit_on_second_signal, signals)
            await dispatching.wait()
            if activated is None:  # from now on a client is told phxqd is not running
                settings.socket.unlink(missing_ok=True)
            stop_serving.set()
            if web is not None:  # it stops as the socket does, alongside
                await web.stop(settings.kill_grace)
            await served.wait()
            notifier.status("stopping: writing a snapshot")
            try:
                await backend.close()
            except (JournalError, OSError) as e:
                log.error("no snapshot at shutdown (%s); the journal keeps what was saved", e)
            if status_file is not None:  # the last word: every job requeued or ended
                await statusfile.write_now(status_file, views.status_export)
            tg.cancel_scope.cancel()
    notifier.close()
    log.info("stopped")


def _open_web(core: Core) -> Serving:
    """The HTTP API and dashboard, bound now (a taken port stops the start, saying so);
    imported only here, so a daemon without `http_listen` never loads the web stack."""
    try:
        from phxqd.web import app
    except ImportError as e:
        raise SystemExit(
            f"phxqd: http_listen needs the web extra ({e.name} is missing): pip install 'phxq[web]'"
        ) from None
    try:
        return app.open_server(core)
    except (OSError, ValueError) as e:
        raise SystemExit(f"phxqd: http_listen {core.settings.http_listen}: {e}") from None


def _open_local(settings: Settings, stats: Stats) -> Backend:
    """The embedded backend: the state recovered from the journal in the state dir."""
    recovered = recover(settings.journal_dir, cut_torn_tail=True, now=time.time())
    formats.stamp(settings.state_dir)  # before the first record of this version
    gc.freeze()  # the recovered jobs live on: keep them out of every later collection
    # A batch of 1,000 jobs allocates a few thousand short-lived tracked objects (specs,
    # results, events): at the default threshold of 700 the collector ran several
    # times per batch, about 1.5 us per job. Jobs themselves are not tracked, so a
    # larger young generation costs little memory.
    gc.set_threshold(YOUNG_GC_THRESHOLD, *gc.get_threshold()[1:])
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
        settings.fsync,
        batch_interval=settings.fsync_interval_ms / 1000,
        segment_bytes=settings.segment_bytes,
        on_sync=stats.fsync.observe,
    )
    return LocalBackend(recovered.state, journal, settings, stats=stats)


async def _open_postgres(
    settings: Settings,
    stats: Stats,
    stop: Callable[[list[int], str], object],
    schedules_told: Callable[[], object],
) -> Backend:
    """The shared store (`store = "postgresql://..."`): schema migrated, node registered.
    Imported here: psycopg is an optional extra (`phxq[postgres]`). `schedules_told`:
    a schedule changed on another node (this node's Scheduler reads them again)."""
    assert settings.store is not None
    try:
        import psycopg

        from phxqd.postgres.backend import PostgresBackend
        from phxqd.postgres.schema import SchemaError
    except ImportError as e:
        raise SystemExit(
            f"phxqd: store is PostgreSQL, but {e.name} is not installed:"
            " pip install 'phxq[postgres]'"
        ) from None
    backend = PostgresBackend(settings.store, settings, lease=settings.lease, stats=stats)
    backend.stopper = stop
    backend.schedules_told = schedules_told
    try:
        await backend.open()
    except (psycopg.Error, SchemaError, OSError) as e:
        why = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise SystemExit(f"phxqd: cannot use the PostgreSQL store: {why}") from None
    log.info("PostgreSQL store: this is node %d (lease %gs)", backend.node, settings.lease)
    return backend


async def _serve(
    listener: anyio.abc.SocketListener,
    core: Core,
    access: server.Access,
    timeouts: server.Timeouts,
    stop: anyio.Event,
    done: anyio.Event,
) -> None:
    """Serve until `stop`; then the requests being handled get `kill_grace` seconds to be
    answered, as running jobs get it to end (server.serve), before the connections close.
    `done` once the listener is closed: an activated socket's backlog waits for the next
    phxqd."""
    try:
        async with listener:
            await server.serve(
                listener,
                core.handle,
                access,
                timeouts,
                core.handle_then,
                stop,
                lambda: core.settings.kill_grace,
            )
    finally:
        done.set()


async def _declare_schedules(core: Core) -> None:
    """The config file's `[schedules.NAME]` become the queue's (at start and reload)."""
    try:
        await core.scheduler.reconcile(core.settings.schedules, time.time())
    except Refused as e:
        log.error("the config file's schedules could not be saved: %s", e.message)


async def _schedule(core: Core, scope: anyio.CancelScope) -> None:
    with scope:
        await core.scheduler.run()


async def _dispatch(core: Core, done: anyio.Event) -> None:
    try:
        await core.dispatcher.dispatch()
    finally:
        done.set()


async def publish_status(
    notifier: systemd.Notifier, line: Callable[[], Awaitable[str]], sent: str
) -> None:
    await systemd.publish_status(notifier, line, STATUS_PERIOD, sent)


async def _until_stop_signal(
    signals: AsyncIterator[signal.Signals], on_hangup: Callable[[], Awaitable[None]]
) -> None:
    async for signum in signals:
        if signum == signal.SIGHUP:
            await on_hangup()
        else:
            return


async def _exit_on_second_signal(signals: AsyncIterator[signal.Signals]) -> None:
    async for signum in signals:
        if signum == signal.SIGHUP:
            log.info("ignoring SIGHUP: phxqd is stopping")
            continue
        log.warning("second signal: exiting now (acknowledged jobs are already on disk)")
        os._exit(1)


class Reloader:
    """SIGHUP: re-read the config file and apply at once what can change while running.

    The new file (with the command line's flags, which keep winning) is made into
    `Settings` by `Settings.from_config`, as at start-up, and the fields that
    `settings.RELOADABLE` names are copied into the live Settings, which the daemon's
    parts read where they use a value. Some need more than that: the log level is set,
    the hooks take their new commands (hooks already running finish), idle Python workers
    are let go so the next call gets a worker of the new kind, and the dispatcher is woken
    (a higher limit starts waiting jobs now, a lower one lets running jobs finish). Every
    other field is read at start-up only; a change to one is logged as needing a restart.
    A file phxqd cannot accept changes nothing: the running settings stay, and the error
    is logged and shown in `systemctl status`.
    """

    def __init__(
        self,
        opts: Options,
        activated_path: Path | None,
        core: Core,
        hooks: Hooks,
        notifier: systemd.Notifier,
    ) -> None:
        self.opts = opts
        #: the path of the socket systemd passed, which wins over the file's
        self.activated_path = activated_path
        self.core = core
        self.hooks = hooks
        self.notifier = notifier

    async def reload(self) -> None:
        self.notifier.reloading()
        path = self.opts.config_path
        try:
            cfg = config.load(path, self.opts.config_required)
        except config.ConfigError as e:
            log.error("reload failed, the running configuration stays: %s", e)
            self.notifier.ready(f"reload failed ({e}); " + await self.core.views.status_line())
            return
        new = Settings.from_config(cfg, self.opts, socket=self.activated_path)
        live = self.core.settings
        old_workers, old_queues = live.workers, live.queues
        live.reload_from(new)
        logsetup.set_level(live.log_level)
        self.hooks.configure(live.hooks)
        await _declare_schedules(self.core)
        # Python workers read the live settings; the idle ones are let go so the next
        # call gets a worker of the new kind.
        workers_pool = self.core.dispatcher.workers
        workers_pool.close()
        if live.queues != old_queues:
            log.info("queue settings: %s", _queues_text(live.queues) or "none")
        if live.workers != old_workers:
            log.info("workers: %d -> %d", old_workers, live.workers)
        # Also when only a queue limit changed: it wakes the dispatcher, which then
        # starts what the new limits allow.
        self.core.dispatcher.reconfigured()
        for key, value in live.restart_needed(new).items():
            log.warning(
                "%s: `%s` changed to %s; it takes effect when phxqd restarts",
                path,
                key,
                config.toml_value(str(value) if isinstance(value, Path) else value),
            )
        log.info("configuration reloaded from %s", path)
        log.debug("configuration now: %s", cfg)
        self.notifier.ready(await self.core.views.status_line())


def _queues_text(queues: dict[str, QueueConfig]) -> str:
    return "; ".join(
        f"{name}: " + ", ".join(f"{k} {v}" for k, v in msgspec.structs.asdict(q).items() if v)
        for name, q in sorted(queues.items())
    )


if __name__ == "__main__":
    main()
