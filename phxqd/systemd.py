"""systemd integration in pure Python: sd_notify, the watchdog, socket activation.

The protocols are a few lines each (a datagram of `KEY=VALUE` lines; a count of inherited
file descriptors starting at 3), so phxqd speaks them itself rather than depending on
libsystemd. Everything here is inert when phxqd does not run under systemd: without
`$NOTIFY_SOCKET` the notifier sends nothing, without `$LISTEN_FDS` the daemon binds its
own socket, so the daemon calls these functions unconditionally.

`take_environment` removes systemd's variables from `os.environ`: jobs inherit phxqd's
environment, and a job must neither speak for phxqd to systemd (`NOTIFY_SOCKET`) nor
believe it was handed phxqd's listening socket (`LISTEN_FDS`).
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path

import anyio
from anyio.abc import SocketListener

log = logging.getLogger("phxqd.systemd")

#: the first file descriptor systemd passes (SD_LISTEN_FDS_START)
LISTEN_FDS_START = 3
NOTIFY_VARS = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")
LISTEN_VARS = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")
#: a notification must never stall the event loop for long: systemd reads its socket
#: promptly, so a full queue means something is badly wrong and the message is dropped
SEND_TIMEOUT = 1.0


class ActivationError(Exception):
    """systemd passed sockets, but none phxqd can serve on: the socket unit is wrong."""


@dataclass(frozen=True)
class Environment:
    """What systemd told phxqd through its environment, read once at start-up."""

    notify_socket: str | None = None
    #: seconds between two WATCHDOG=1 (half of WatchdogSec=), None: no watchdog
    watchdog_interval: float | None = None
    #: (fd, name) of each socket passed by socket activation
    listen_fds: list[tuple[int, str]] = field(default_factory=list)


def take_environment(
    environ: MutableMapping[str, str] | None = None, pid: int | None = None
) -> Environment:
    """Read systemd's variables and remove them from the environment jobs inherit.

    The inherited descriptors are marked close-on-exec at once, so no job ever holds the
    listening socket (a job holding it would keep clients connecting to a dead daemon).
    """
    env = os.environ if environ is None else environ
    pid = os.getpid() if pid is None else pid
    values = {name: env.pop(name, None) for name in (*NOTIFY_VARS, *LISTEN_VARS)}
    fds = listen_fds(values["LISTEN_FDS"], values["LISTEN_PID"], values["LISTEN_FDNAMES"], pid)
    for fd, _ in fds:
        os.set_inheritable(fd, False)
    return Environment(
        notify_socket=values["NOTIFY_SOCKET"] or None,
        watchdog_interval=watchdog_interval(values["WATCHDOG_USEC"], values["WATCHDOG_PID"], pid),
        listen_fds=fds,
    )


# ------------------------------------------------------------------------ sd_notify


def notify_address(value: str | None) -> str | bytes | None:
    """The socket address named by `$NOTIFY_SOCKET`: a path, or '@name' for the abstract
    namespace (a leading NUL byte on the wire). Anything else (e.g. vsock) is ignored."""
    if not value:
        return None
    if value.startswith("/"):
        return value
    if value.startswith("@") and len(value) > 1:
        return b"\0" + value[1:].encode()
    return None


class Notifier:
    """Sends sd_notify datagrams; does nothing when not started by systemd.

    A failed send is logged, never raised: systemd's bookkeeping must not take the queue
    down (without READY=1 systemd times the start out and says so itself).
    """

    def __init__(self, notify_socket: str | None) -> None:
        self.address = notify_address(notify_socket)
        if notify_socket and self.address is None:
            log.warning("ignoring NOTIFY_SOCKET=%s: not a path or an @abstract name", notify_socket)
        self._sock: socket.socket | None = None
        self._warned = False

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, *assignments: str) -> bool:
        """Send one datagram of `KEY=VALUE` lines; True if it was sent."""
        if self.address is None or not assignments:
            return False
        message = "\n".join(a.replace("\n", " ") for a in assignments).encode()
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.settimeout(SEND_TIMEOUT)
            self._sock.sendto(message, self.address)
        except OSError as e:
            level = logging.DEBUG if self._warned else logging.WARNING
            log.log(level, "cannot notify systemd (%s): %s", self.address, e)
            self._warned = True
            return False
        return True

    def ready(self, status: str) -> bool:
        return self.send("READY=1", f"STATUS={status}")

    def status(self, status: str) -> bool:
        return self.send(f"STATUS={status}")

    def reloading(self) -> bool:
        # MONOTONIC_USEC lets systemd match this reload to the one it asked for
        # (required by Type=notify-reload, harmless before it).
        return self.send(
            "RELOADING=1", f"MONOTONIC_USEC={monotonic_usec()}", "STATUS=reloading configuration"
        )

    def stopping(self, status: str, needs: float | None = None) -> bool:
        """STOPPING=1; `needs` seconds extends systemd's stop timeout to at least that
        long from now (EXTEND_TIMEOUT_USEC), so a long `kill_grace` is honoured."""
        extra = [] if needs is None else [f"EXTEND_TIMEOUT_USEC={int(needs * 1_000_000)}"]
        return self.send("STOPPING=1", f"STATUS={status}", *extra)

    def watchdog(self) -> bool:
        return self.send("WATCHDOG=1")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def monotonic_usec() -> int:
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


# ------------------------------------------------------------------------- watchdog


def watchdog_interval(usec: str | None, watchdog_pid: str | None, pid: int) -> float | None:
    """Seconds between WATCHDOG=1 pings: half of `$WATCHDOG_USEC`, as sd_watchdog_enabled
    advises. None when there is no watchdog or it is meant for another process."""
    if not usec:
        return None
    if watchdog_pid and watchdog_pid.strip() != str(pid):
        return None
    try:
        value = int(usec)
    except ValueError:
        log.warning("ignoring WATCHDOG_USEC=%s: not an integer", usec)
        return None
    if value <= 0:
        return None
    return value / 2 / 1_000_000


async def feed_watchdog(notifier: Notifier, interval: float) -> None:
    """Ping systemd every `interval` seconds, from the event loop itself.

    A thread would keep pinging while the loop is stuck; this task only runs when the
    loop does, so a blocked loop stops the pings and systemd restarts phxqd
    (WatchdogSec=, then Restart=on-failure).
    """
    while True:
        notifier.watchdog()
        await anyio.sleep(interval)


async def publish_status(
    notifier: Notifier, line: Callable[[], Awaitable[str]], period: float, sent: str | None = None
) -> None:
    """Keep `systemctl status`'s Status: line current; `sent` is the line systemd has
    already, and a line is sent only when it changed."""
    last = sent
    while True:
        text = await line()
        if text != last:
            notifier.status(text)
            last = text
        await anyio.sleep(period)


# ---------------------------------------------------------------- socket activation


def listen_fds(
    count: str | None, listen_pid: str | None, names: str | None, pid: int
) -> list[tuple[int, str]]:
    """The (fd, name) pairs passed by socket activation, as sd_listen_fds_with_names:
    only when `$LISTEN_PID` is this process (the variables may be stale, inherited
    from a parent that was activated itself)."""
    if not count or not listen_pid:
        return []
    try:
        if int(listen_pid) != pid:
            return []
        n = int(count)
    except ValueError:
        log.warning("ignoring LISTEN_FDS=%s LISTEN_PID=%s: not integers", count, listen_pid)
        return []
    labels = names.split(":") if names else []
    if len(labels) != n:
        labels = ["unknown"] * n
    return [(LISTEN_FDS_START + i, labels[i]) for i in range(max(n, 0))]


def _is_unix_listener(sock: socket.socket) -> bool:
    try:
        accepting = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
    except OSError:
        return False
    return sock.family == socket.AF_UNIX and sock.type == socket.SOCK_STREAM and bool(accepting)


def activated_socket(fds: list[tuple[int, str]]) -> socket.socket | None:
    """The listening AF_UNIX stream socket among the activated fds, or None if there
    were none. The others are closed (systemd keeps its own copies).

    Raises ActivationError when fds were passed but none is usable: serving on a socket
    of phxqd's own would leave the socket unit's clients waiting forever.
    """
    chosen: socket.socket | None = None
    for fd, name in fds:
        try:
            sock = socket.socket(fileno=fd)
        except OSError as e:
            log.warning("ignoring socket-activated fd %d (%s): %s", fd, name, e.strerror)
            continue
        if chosen is None and _is_unix_listener(sock):
            chosen = sock
        else:
            why = "a second socket" if chosen is not None else "not a listening AF_UNIX stream"
            log.warning("ignoring socket-activated fd %d (%s): %s", fd, name, why)
            sock.close()
    if fds and chosen is None:
        raise ActivationError(
            f"socket activation passed {len(fds)} fd(s) and none is a listening Unix stream "
            "socket: phxqd.socket needs one ListenStream= with a path"
        )
    if chosen is not None:
        chosen.setblocking(False)  # anyio's listener expects a non-blocking socket
    return chosen


def socket_path(sock: socket.socket) -> Path | None:
    """The filesystem path a socket is bound to; None for an abstract or unnamed one."""
    name = sock.getsockname()
    if isinstance(name, str) and name and not name.startswith("\0"):
        return Path(name)
    return None


async def wrap_listener(sock: socket.socket) -> SocketListener:
    """An anyio listener over an already bound and listening socket (takes ownership)."""
    return await SocketListener.from_socket(sock)
