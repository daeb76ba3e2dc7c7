"""The Unix-socket listener: frames in, one reply per request out.

It knows the framing and the protocol's rules (Hello first, the size limit, idle clients)
and nothing of jobs: each decoded request goes to the `handle` callable it was given. A
malformed frame costs its sender an error reply or the connection, never the daemon. A
stop lets the requests being handled be answered before it hangs up (`_drain`).
"""

from __future__ import annotations

import asyncio
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
from types import AsyncGeneratorType
from typing import Any, cast

import anyio
import msgspec

from phxqd import protocol
from phxqd.protocol import Refused

log = logging.getLogger("phxqd.server")

#: A handler answers with a value (one `Ok` reply), or with an async generator of frames
#: (a stream: `JobEvent`/`Chunk` frames, then the final `Ok`, if any).
Handler = Callable[[protocol.Request], Awaitable[Any]]
#: Answers a request without a task when it can (handlers.Handlers.handle_then): True, and
#: the callable it was given is called once with the result (or the Refused error, or
#: another exception: an internal error); False, and the `Handler` answers it. It raises
#: Refused for a request refused at once.
HandlerThen = Callable[[protocol.Request, Callable[[Any], None]], bool]


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


def peer(sock: socket.socket) -> tuple[int, int, int]:
    """(pid, uid, gid) of the process at the other end."""
    data = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", data)
    return pid, uid, gid


async def serve(
    listener: anyio.abc.SocketListener,
    handle: Handler,
    access: Access | None = None,
    timeouts: Timeouts | None = None,
    handle_then: HandlerThen | None = None,
    stop: anyio.Event | None = None,
    grace: Callable[[], float] = lambda: 0.0,
) -> None:
    """Accept clients on `listener` (which stays the caller's) and answer them; once
    `stop` is set, stop gracefully (see `_drain`, given `grace()` seconds: read then, as a
    reload may have changed it) and return.

    Accepted straight from its socket: each connection is then driven by the event loop's
    own transport (see `Wire`), which an anyio stream cannot be handed to.
    """
    access = access or Access()
    timeouts = timeouts or Timeouts()
    live: set[Connection] = set()
    stopping = False
    loop = asyncio.get_running_loop()
    raw: socket.socket = listener.extra(anyio.abc.SocketAttribute.raw_socket)
    raw.setblocking(False)

    async def on_connect(sock: socket.socket) -> None:
        # A client that goes away mid-request needs no answer.
        with contextlib.suppress(ConnectionError):
            pid, uid, gid = peer(sock)
            connection = await Connection.start(sock, handle, pid, handle_then)
            connection.stopping = stopping  # accepted before the stop, started after it
            if not access.allows(uid, gid):
                log.warning("refused a connection from uid %d (pid %d): not allowed", uid, pid)
                connection.refuse(
                    protocol.Err(
                        "refused",
                        f"uid {uid} may not use this phxqd (its config's "
                        "allow_users and allow_groups say who may)",
                    )
                )
                return
            live.add(connection)
            try:
                await connection.run()
            finally:
                live.discard(connection)

    async def accept_until_stopped(accepting: anyio.CancelScope) -> None:
        if stop is not None:
            await stop.wait()
            accepting.cancel()

    async with anyio.create_task_group() as connections:
        connections.start_soon(_watchdog, live, timeouts)
        with anyio.CancelScope() as accepting:
            connections.start_soon(accept_until_stopped, accepting)
            while True:
                try:
                    sock, _ = await loop.sock_accept(raw)
                except OSError as e:
                    # Out of descriptors or memory: the clients in the listen backlog wait
                    # a little; everyone connected is still served.
                    if e.errno not in OUT_OF_RESOURCES:
                        raise
                    log.warning("cannot accept a connection now (%s); retrying shortly", e)
                    await anyio.sleep(ACCEPT_RETRY)
                    continue
                connections.start_soon(on_connect, sock)
        stopping = True
        await _drain(live, grace())
        connections.cancel_scope.cancel()


#: the reply to a request received once phxqd has begun to stop
STOPPING = protocol.Err(
    "refused",
    "phxqd is stopping: the request was not carried out (nothing was done); "
    "send it again once phxqd runs again",
)
#: seconds between looks at the connections while a stop waits for their requests
DRAIN_INTERVAL = 0.01


async def _drain(live: set[Connection], grace: float) -> None:
    """The stop's middle step, between the last connection accepted and the closing of
    every connection: the requests being handled are answered, for up to `grace` seconds.

    Why: a change (a submit...) whose record was written when its connection was closed is
    made anyway (the journal is closed, durably, after this), and its client, told
    nothing, would send it again. Meanwhile a request that comes is refused, saying
    nothing was done (`Connection.stopping`). The requests that wait for something to
    happen and change nothing (`WAITS`: wait, watch, logs) are not waited for. A client
    that takes no reply does not hold the stop: its reply was written, the request is
    over. A look every DRAIN_INTERVAL rather than a wake-up from every request: the stop
    pays for it, not every request served.
    """
    for c in live:
        c.stopping = True
    with anyio.move_on_after(grace):
        while any(c.busy for c in live):
            await anyio.sleep(DRAIN_INTERVAL)


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


#: What a connection waits for: its client's next request (READING), phxqd's answer to a
#: request (HANDLING, or WAITING for a request that waits for something to happen and
#: changes nothing: a stop does not wait for those), or its client taking a reply.
READING, HANDLING, WAITING, SENDING = "reading", "handling", "waiting", "sending"
#: the requests answered in the WAITING phase
WAITS = frozenset({protocol.Wait, protocol.Watch, protocol.Logs})


class Wire(asyncio.Protocol):
    """A client's socket as the event loop drives it: the bytes it sends, gathered as they
    arrive, and the replies written to it.

    Why not an anyio stream: its `receive` yields to the loop once, tries recv(), and
    when nothing is there yet (the usual case: the client waits for its previous reply)
    registers the socket with epoll, waits, and unregisters it again: two extra trips
    through the loop and four extra system calls per request. A transport keeps the
    socket registered and hands over what it read; the connection's task is woken only
    when it waits for bytes that are not there yet.

    Reading pauses while more than RECEIVE_SIZE bytes wait unread (a client sending ahead
    costs phxqd that much memory, plus the frame being gathered); writing waits (see
    `Connection._send`) as soon as the socket takes less than a whole reply.
    """

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        #: bytes received and not yet part of a whole frame taken by the connection
        self.buffer = bytearray()
        #: the client shut its side, or the connection is gone
        self.eof = False
        self.lost = False
        self.reading_paused = False
        self.writing_paused = False
        #: called when bytes come while the connection's task waits for its next request
        #: (`awaiting_request`): True if it took care of them (Connection._quick), False to
        #: wake the task
        self.quick: Callable[[], bool] | None = None
        self.awaiting_request = False
        #: a request taken by `quick` is being answered: the task is not woken (whatever
        #: comes meanwhile waits in `buffer`) until its reply is out, which goes first
        self.held = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._readable: asyncio.Future[None] | None = None
        self._writable: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        # asyncio.get_running_loop() makes a getpid() system call each time
        self._loop = asyncio.get_running_loop()
        self.transport.set_write_buffer_limits(high=0)  # see Connection._send

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if len(self.buffer) > RECEIVE_SIZE and not self.reading_paused:
            assert self.transport is not None
            self.transport.pause_reading()
            self.reading_paused = True
        if self.held:
            return
        if self.awaiting_request and self.quick is not None and self.quick():
            return
        self.wake_reader()

    def eof_received(self) -> bool:
        self.eof = True
        if not self.held:
            self.wake_reader()
        return True  # half-closed: the replies to what it sent still go out

    def connection_lost(self, exc: Exception | None) -> None:
        self.eof = self.lost = True
        self.writing_paused = False
        self.wake_reader()
        _wake(self._writable)

    def wake_reader(self) -> None:
        """Wake the task waiting in `readable`, if any (it looks at the buffer again)."""
        self.awaiting_request = False
        _wake(self._readable)

    def pause_writing(self) -> None:
        self.writing_paused = True

    def resume_writing(self) -> None:
        self.writing_paused = False
        _wake(self._writable)

    def more(self) -> None:
        """Read on: the bytes waiting are not enough for the next frame."""
        if self.reading_paused and not self.lost:
            assert self.transport is not None
            self.transport.resume_reading()
            self.reading_paused = False

    async def readable(self, have: int = 0) -> None:
        """Return once the buffer holds more than `have` bytes, or the client shut its
        side."""
        if len(self.buffer) > have or self.eof:
            return
        assert self._loop is not None
        self._readable = self._loop.create_future()
        try:
            await self._readable
        finally:
            self._readable = None

    async def drained(self) -> None:
        """Return once the socket took everything written (or the client is gone)."""
        while self.writing_paused:
            assert self._loop is not None
            self._writable = self._loop.create_future()
            try:
                await self._writable
            finally:
                self._writable = None


def _wake(waiter: asyncio.Future[None] | None) -> None:
    if waiter is not None and not waiter.done():
        waiter.set_result(None)


#: frames taken from bytes already received before yielding to the loop once anyway, so
#: a client pipelining cheap requests cannot keep the others waiting
MAX_UNYIELDED = 32


class Connection:
    """One client: a task reading its requests in turn and answering each, except those
    `handle_then` takes, answered straight from the socket's callback (`_quick`)."""

    def __init__(
        self, wire: Wire, handle: Handler, pid: int = 0, handle_then: HandlerThen | None = None
    ) -> None:
        assert wire.transport is not None
        self.wire = wire
        self.transport = wire.transport
        self.pid = pid  # the client's, for log lines
        self.handle = handle
        self.handle_then = handle_then
        self.scope = anyio.CancelScope()
        #: what the connection waits for (its client, or phxqd), and since when
        self.phase = READING
        self.since = time.monotonic()
        #: the client said a good hello: requests may be answered
        self.greeted = False
        #: phxqd is stopping: a request that comes is refused (`STOPPING`), and the
        #: connection hung up
        self.stopping = False
        #: a request `_quick` decoded and left to the task
        self._taken: protocol.Request | None = None
        self._unyielded = 0
        if handle_then is not None:
            wire.quick = self._quick

    @classmethod
    async def start(
        cls,
        sock: socket.socket,
        handle: Handler,
        pid: int = 0,
        handle_then: HandlerThen | None = None,
    ) -> Connection:
        """A connection on an accepted socket (which it then owns)."""
        try:
            _, wire = await asyncio.get_running_loop().connect_accepted_socket(Wire, sock)
        except BaseException:
            sock.close()
            raise
        return cls(wire, handle, pid, handle_then)

    @property
    def busy(self) -> bool:
        """Whether a stop waits for this connection: it is handling a request that may
        change something, or holds one received and not yet taken (to be refused)."""
        if self.phase is HANDLING or self._taken is not None:
            return True
        buf, size = self.wire.buffer, protocol.HEADER.size
        return len(buf) >= size and len(buf) >= size + protocol.HEADER.unpack_from(buf)[0]

    def refuse(self, err: protocol.Err) -> None:
        """Say why, and hang up."""
        self.transport.write(protocol.frame(err))
        self._close()

    def _close(self) -> None:
        """Hang up: at once if the client left a reply untaken (never flushed after)."""
        if self.transport.get_write_buffer_size():
            self.transport.abort()
        else:
            self.transport.close()

    async def run(self) -> None:
        try:
            with self.scope:
                await self._serve()
        finally:
            self._close()

    async def _serve(self) -> None:
        while True:
            self.phase, self.since = READING, time.monotonic()
            got = await self._read_frame()
            if got is None:
                return
            if self.stopping:
                await self._send(STOPPING)
                return
            self.phase = HANDLING  # a long request (wait) is not idleness
            if isinstance(got, protocol.Request):  # decoded by `_quick`
                req = got
            else:
                try:
                    req = protocol.request_decoder.decode(got)
                # msgspec raises UnicodeDecodeError, not DecodeError, for a string that is
                # not UTF-8 (found by fuzz/fuzz_requests.py: it ended the daemon)
                except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError) as e:
                    await self._send(protocol.Err("usage", f"malformed request: {e}"))
                    continue
            if type(req) in WAITS:
                self.phase = WAITING
            if not self.greeted and not isinstance(req, protocol.Hello):
                await self._send(protocol.Err("upgrade", "the first request must be hello"))
                return
            reply = await self._answer(req)
            if isinstance(reply, AsyncGeneratorType):
                if not await self._stream(reply):
                    return
                continue
            await self._send(reply)
            if not self.greeted and isinstance(reply, protocol.Err):
                return  # a client that failed the hello speaks another protocol
            self.greeted = True

    def _quick(self) -> bool:
        """Bytes came while the task waits for the next request: answer it here if it is
        one `handle_then` takes (a submit to the local backend), without waking the task.
        True when the task may sleep on (the request is under way, or its frame is not
        whole yet); False to wake it (for any other request, or a frame it must refuse).

        Why: a task woken twice per request (its bytes came; its record is durable), each
        time resuming its whole chain of coroutines, was most of the Python a one-job
        submit cost beyond what the work needs. The reply is still written only once the
        fdatasync covering its record has returned (`_answered`, called by the journal),
        and it goes out before anything else is read: the task stays asleep meanwhile.
        """
        wire = self.wire
        buf = wire.buffer
        size = protocol.HEADER.size
        if not self.greeted or wire.eof or wire.writing_paused or self.stopping:
            return False
        if len(buf) < size:
            return True
        (length,) = protocol.HEADER.unpack_from(buf)
        if length > protocol.MAX_FRAME:
            return False
        end = size + length
        if len(buf) < end:
            wire.more()  # a frame over RECEIVE_SIZE: read on (as `_read_frame` does)
            return True
        try:
            req = protocol.request_decoder.decode(bytes(buf[size:end]))
        except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError):
            return False  # the task decodes it again, and says what is wrong
        del buf[:end]
        if len(buf) <= RECEIVE_SIZE:
            wire.more()
        self.phase, wire.held = HANDLING, True
        try:
            taken = self.handle_then is not None and self.handle_then(req, self._answered)
        except Exception as e:  # Refused, or a bug: answered as `_answer` would
            self._answered(e)
            return True
        if not taken:
            wire.held, self._taken = False, req
            return False
        return True

    def _answered(self, result: Any) -> None:
        """The answer to the request `_quick` took: send it, and wake the task if there is
        more for it to do (more bytes, the end of them, a reply the socket did not take
        whole)."""
        wire = self.wire
        wire.held = False
        self.phase, self.since = READING, time.monotonic()
        if isinstance(result, Refused):
            reply: msgspec.Struct = protocol.Err(result.code, result.message)
        elif isinstance(result, Exception):
            log.error("internal error answering a submit", exc_info=result)
            reply = protocol.Err("internal", "internal error in phxqd (see its log)")
        else:
            reply = protocol.Ok(result)
        if wire.lost or self.transport.is_closing():
            return  # the task has ended, or is ending (it was woken by the loss)
        self.transport.write(protocol.frame(reply))
        if wire.buffer or wire.eof or wire.writing_paused:
            wire.wake_reader()

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
                await self.wire.readable()
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

    async def _read_frame(self) -> bytes | protocol.Request | None:
        """The next payload (or the request `_quick` decoded and left to the task), or None
        when the client is gone or broke the framing.

        Taken from the bytes the wire already holds when it can, without a trip through
        the event loop (but not more than MAX_UNYIELDED times in a row). A reply `_quick`
        sent that the socket did not take whole is waited for first.
        """
        wire = self.wire
        buf = wire.buffer
        size = protocol.HEADER.size
        while True:
            if wire.writing_paused:
                await self._drained()
            if self._taken is not None:
                req, self._taken = self._taken, None
                return req
            if len(buf) >= size:
                (length,) = protocol.HEADER.unpack_from(buf)
                if length > protocol.MAX_FRAME:
                    limit = f"frame of {length} bytes is over the {protocol.MAX_FRAME} limit"
                    await self._send(protocol.Err("usage", limit))
                    return None
                end = size + length
                if len(buf) >= end:
                    payload = bytes(buf[size:end])
                    del buf[:end]
                    if len(buf) <= RECEIVE_SIZE:
                        wire.more()
                    self._unyielded += 1
                    if self._unyielded >= MAX_UNYIELDED:
                        self._unyielded = 0
                        await asyncio.sleep(0)
                    return payload
            if wire.eof:
                return None
            wire.more()
            self._unyielded = 0
            wire.awaiting_request = True
            try:
                await wire.readable(len(buf))
            finally:
                wire.awaiting_request = False

    async def _answer(
        self, req: protocol.Request
    ) -> protocol.Ok[Any] | protocol.Err | AsyncGeneratorType[msgspec.Struct, None]:
        try:
            result = await self.handle(req)
            # the concrete type: an isinstance of the abstract one goes through abc, twice
            # per request
            if isinstance(result, AsyncGeneratorType):
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

        The transport writes it to the socket at once; with its high-water mark at 0,
        whatever part the socket could not take pauses writing, and the connection waits
        for the client to take it before it reads or sends anything more. So phxqd never
        holds more than one unsent reply per client.
        """
        wire = self.wire
        if wire.lost:
            raise ConnectionResetError("the client is gone")
        self.transport.write(protocol.frame(frame))
        if wire.writing_paused:
            await self._drained()

    async def _drained(self) -> None:
        """Wait until the client took all of the replies written (see `_send`)."""
        wire = self.wire
        before = self.phase
        self.phase, self.since = SENDING, time.monotonic()
        await wire.drained()
        if wire.lost:
            raise ConnectionResetError("the client is gone")
        self.phase = before
