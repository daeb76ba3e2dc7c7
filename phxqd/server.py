"""The Unix-socket listener: frames in, one reply per request out.

It knows the framing and the protocol's rules (Hello first, the size limit, idle clients)
and nothing of jobs: each decoded request goes to the `handle` callable it was given. A
malformed frame costs its sender an error reply or the connection, never the daemon.
"""

from __future__ import annotations

import contextlib
import errno
import grp
import logging
import os
import pwd
import socket
import stat
import struct
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import msgspec
from anyio.abc import SocketStream, UNIXSocketStream

from phxqd import protocol
from phxqd.protocol import Refused

log = logging.getLogger("phxqd.server")

#: A handler answers with a value (one `Ok` reply), or with an async generator of frames
#: (a stream: `JobEvent`/`Chunk` frames, then the final `Ok`, if any).
Handler = Callable[[protocol.Request], Awaitable[Any]]


@dataclass(frozen=True)
class Timeouts:
    #: a client that sends nothing for this long is disconnected (long requests are exempt)
    idle: float = 300.0
    #: a client that takes none of a frame for this long is disconnected: a reader that
    #: never reads holds at most one frame and the socket's buffers, then it is gone
    send: float = 60.0


#: most bytes taken from a client socket at once
RECEIVE_SIZE = 65536
#: seconds between the watchdog's looks at the connections
WATCH_INTERVAL = 1.0
#: seconds to wait before accepting again when out of file descriptors
ACCEPT_RETRY = 0.1
OUT_OF_RESOURCES = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


def prepare_socket_path(path: Path) -> None:
    """Make the socket's directory private, and clear a stale socket file left by a crash.

    A socket file that someone still listens on is not ours to take: refuse instead.
    """
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        st = path.lstat()
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise SystemExit(f"phxqd: {path} exists and is not a socket; not touching it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except (ConnectionRefusedError, FileNotFoundError):
        path.unlink(missing_ok=True)
    else:
        raise SystemExit(f"phxqd: another phxqd is already listening on {path}")
    finally:
        probe.close()


async def listen(path: Path) -> anyio.abc.SocketListener:
    prepare_socket_path(path)
    old = os.umask(0o177)  # the socket is born 0600: no window where others may connect
    try:
        return await anyio.create_unix_listener(path)
    finally:
        os.umask(old)


@dataclass(frozen=True)
class Access:
    """Who may use the daemon: its own user and root always, then these users and groups.

    Checked on every connection with SO_PEERCRED (the kernel's word, not the client's), so
    a socket the file system lets others reach is still not theirs to use.
    """

    uids: frozenset[int] = frozenset()
    gids: frozenset[int] = frozenset()

    def allows(self, uid: int, gid: int) -> bool:
        if uid in (0, os.getuid()) or uid in self.uids or gid in self.gids:
            return True
        if not self.gids:
            return False
        try:  # the peer's supplementary groups, as the system knows them
            name = pwd.getpwuid(uid).pw_name
            return not self.gids.isdisjoint(os.getgrouplist(name, gid))
        except KeyError:
            return False


def resolve_access(users: list[str | int], groups: list[str | int]) -> Access:
    """Names to ids; an unknown name is a configuration error (ValueError)."""

    def uid(u: str | int) -> int:
        try:
            return u if isinstance(u, int) else pwd.getpwnam(u).pw_uid
        except KeyError:
            raise ValueError(f"allow_users: no user {u!r} on this system") from None

    def gid(g: str | int) -> int:
        try:
            return g if isinstance(g, int) else grp.getgrnam(g).gr_gid
        except KeyError:
            raise ValueError(f"allow_groups: no group {g!r} on this system") from None

    return Access(frozenset(map(uid, users)), frozenset(map(gid, groups)))


def open_to(path: Path, access: Access) -> None:
    """Let the allowed others reach the socket; SO_PEERCRED still checks each of them.

    With allowed users, anyone may connect (0666) and the daemon refuses the rest; with
    allowed groups only, the socket is 0660 in the first group. The directory becomes 0711:
    traversable, not listable.
    """
    if access.uids:
        os.chmod(path, 0o666)
    elif access.gids:
        os.chown(path, -1, min(access.gids))
        os.chmod(path, 0o660)
    else:
        return
    os.chmod(path.parent, 0o711)


def peer(stream: UNIXSocketStream) -> tuple[int, int, int]:
    """(pid, uid, gid) of the process at the other end."""
    sock = stream.extra(anyio.abc.SocketAttribute.raw_socket)
    data = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", data)
    return pid, uid, gid


async def serve(
    listener: anyio.abc.SocketListener,
    handle: Handler,
    access: Access | None = None,
    timeouts: Timeouts | None = None,
) -> None:
    access = access or Access()
    timeouts = timeouts or Timeouts()
    live: set[Connection] = set()

    async def on_connect(stream: SocketStream) -> None:
        assert isinstance(stream, UNIXSocketStream)
        # A client that goes away mid-request needs no answer.
        with contextlib.suppress(
            anyio.BrokenResourceError, anyio.ClosedResourceError, ConnectionError
        ):
            pid, uid, gid = peer(stream)
            if not access.allows(uid, gid):
                log.warning("refused a connection from uid %d (pid %d): not allowed", uid, pid)
                async with stream:
                    await stream.send(
                        protocol.frame(
                            protocol.Err(
                                "refused",
                                f"uid {uid} may not use this phxqd (its config's "
                                "allow_users and allow_groups say who may)",
                            )
                        )
                    )
                return
            connection = Connection(stream, handle, pid)
            live.add(connection)
            try:
                await connection.run()
            finally:
                live.discard(connection)

    async with anyio.create_task_group() as connections:
        connections.start_soon(_watchdog, live, timeouts)
        while True:
            try:
                stream = await listener.accept()
            except anyio.BrokenResourceError as e:
                # Out of descriptors or memory (anyio wraps the OSError): the clients in
                # the listen backlog wait a little; everyone connected is still served.
                cause = e.__cause__
                if not isinstance(cause, OSError) or cause.errno not in OUT_OF_RESOURCES:
                    raise
                log.warning("cannot accept a connection now (%s); retrying shortly", cause)
                await anyio.sleep(ACCEPT_RETRY)
                continue
            connections.start_soon(on_connect, stream)


async def _watchdog(live: set[Connection], timeouts: Timeouts) -> None:
    """End the connections whose client keeps them waiting too long.

    One look a second at every connection, instead of a timer per connection moved at
    every frame: moving an anyio deadline reschedules a loop timer, and doing that four
    times per request cost over a tenth of the daemon's time under load.
    """
    while True:
        await anyio.sleep(WATCH_INTERVAL)
        now = time.monotonic()
        for c in list(live):
            if c.phase is READING and now - c.since > timeouts.idle:
                log.debug("closing a connection idle for %gs (pid %d)", timeouts.idle, c.pid)
                c.scope.cancel()
            elif c.phase is SENDING and now - c.since > timeouts.send:
                log.warning(
                    "disconnecting a client that took no reply for %gs (pid %d)",
                    timeouts.send,
                    c.pid,
                )
                c.scope.cancel()


READING, HANDLING, SENDING = "reading", "handling", "sending"


class Connection:
    def __init__(self, stream: UNIXSocketStream, handle: Handler, pid: int = 0) -> None:
        self.stream = stream
        self._socket: socket.socket = stream.extra(anyio.abc.SocketAttribute.raw_socket)
        self.pid = pid  # the client's, for log lines
        #: bytes received and not yet part of a whole frame
        self._buffer = bytearray()
        self.handle = handle
        self.scope = anyio.CancelScope()
        #: what the connection waits for (its client, or phxqd), and since when
        self.phase = READING
        self.since = time.monotonic()

    async def run(self) -> None:
        with self.scope:
            async with self.stream:
                greeted = False
                while True:
                    self.phase, self.since = READING, time.monotonic()
                    payload = await self._read_frame()
                    if payload is None:
                        return
                    self.phase = HANDLING  # a long request (wait) is not idleness
                    try:
                        req = protocol.request_decoder.decode(payload)
                    # msgspec raises UnicodeDecodeError, not DecodeError, for a string that
                    # is not UTF-8 (found by fuzz/fuzz_requests.py: it ended the daemon)
                    except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError) as e:
                        await self._send(protocol.Err("usage", f"malformed request: {e}"))
                        continue
                    if not greeted and not isinstance(req, protocol.Hello):
                        await self._send(protocol.Err("upgrade", "the first request must be hello"))
                        return
                    reply = await self._answer(req)
                    if isinstance(reply, AsyncGenerator):
                        if not await self._stream(reply):
                            return
                        continue
                    await self._send(reply)
                    if not greeted and isinstance(reply, protocol.Err):
                        return  # a client that failed the hello speaks another protocol
                    greeted = True

    async def _stream(self, frames: AsyncGenerator[msgspec.Struct]) -> bool:
        """Send a stream's frames as they come; False when the client hung up meanwhile.

        The client says nothing during a stream, so anything it sends (end of file
        included) ends the stream at once, not at the next frame, which for a quiet
        `watch` could be never.
        """
        hung_up = False
        async with contextlib.aclosing(frames), anyio.create_task_group() as tg:

            async def notice_hangup() -> None:
                nonlocal hung_up
                with contextlib.suppress(anyio.EndOfStream, anyio.BrokenResourceError):
                    await self.stream.receive()
                hung_up = True
                tg.cancel_scope.cancel()

            tg.start_soon(notice_hangup)
            try:
                async for frame in frames:
                    await self._send(frame)
            except Refused as e:
                await self._send(protocol.Err(e.code, e.message))
            except Exception:
                log.exception("internal error in a stream")
                await self._send(protocol.Err("internal", "internal error in phxqd (see its log)"))
            tg.cancel_scope.cancel()
        return not hung_up

    async def _read_frame(self) -> bytes | None:
        """The next payload, or None when the client is gone or broke the framing.

        One `receive` per request in the common case (a whole frame arrives at once),
        instead of one per header and one per payload.
        """
        buf = self._buffer
        size = protocol.HEADER.size
        while True:
            if len(buf) >= size:
                (length,) = protocol.HEADER.unpack_from(buf)
                if length > protocol.MAX_FRAME:
                    limit = f"frame of {length} bytes is over the {protocol.MAX_FRAME} limit"
                    await self._send(protocol.Err("usage", limit))
                    return None
                if len(buf) >= size + length:
                    payload = bytes(buf[size : size + length])
                    del buf[: size + length]
                    return payload
            try:
                data = await self.stream.receive(RECEIVE_SIZE)
            except anyio.EndOfStream:
                return None
            if not buf and len(data) >= size:
                (length,) = protocol.HEADER.unpack_from(data)
                if len(data) == size + length:  # exactly one frame: no copy into buf
                    return data[size:]
            buf += data

    async def _answer(
        self, req: protocol.Request
    ) -> protocol.Ok[Any] | protocol.Err | AsyncGenerator[msgspec.Struct]:
        try:
            result = await self.handle(req)
            if isinstance(result, AsyncGenerator):
                return result
            return protocol.Ok(result)
        except Refused as e:
            return protocol.Err(e.code, e.message)
        except Exception:
            log.exception("internal error answering %s", type(req).__name__)
            return protocol.Err("internal", "internal error in phxqd (see its log)")

    async def _send(self, frame: msgspec.Struct) -> None:
        """Send one frame; a client that takes none of it for `Timeouts.send` is dropped
        by the watchdog (which cancels `scope`, ending `run`).

        A reply almost always fits in the socket's buffer: it is sent at once, straight
        on the socket, without the trip through the event loop that the stream's `send`
        makes first (a tenth of the daemon's time per request with 16 clients). Only
        what does not fit waits for the client, through the stream. The connection still
        yields to the loop once per request, when it reads the next one.
        """
        data = protocol.frame(frame)
        try:
            sent = self._socket.send(data)
        except BlockingIOError:
            sent = 0
        except OSError:
            sent = 0  # the stream's send raises it as anyio's error for a broken stream
        if sent == len(data):
            return
        before = self.phase
        self.phase, self.since = SENDING, time.monotonic()
        await self.stream.send(data[sent:])
        self.phase = before
