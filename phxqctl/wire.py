"""One connection to phxqd: framing, the hello exchange, replies and streams.

Standard library only, so `phxqctl status` starts in about the time Python itself does.
Two users: the command line, which sends and receives plain dicts through `Session`
(encoded by phxqctl.mpack), and phxqctl.Client, which encodes and decodes msgspec Structs
itself and uses `Connection` for the bytes. The constants are phxqd.contract's, the
standard-library module both sides import.

Framing (docs/protocol.md): `u32 big-endian length | msgpack payload`, at most MAX_FRAME.
"""

from __future__ import annotations

import _socket  # not `socket`: its import, mostly turning constants into enums, costs 5 ms
import os

from phxqctl import mpack
from phxqctl.errors import DaemonUnreachable, PhxqError, RemoteError, UsageError
from phxqd.contract import HEADER, MAX_FRAME, PROTOCOL_VERSION, request_problem

#: typing costs a few ms to import; the annotations are strings (PEP 563) anyway
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Generator
    from typing import Any


#: replies bigger than this are decoded by msgspec when it can be imported: the same
#: result (tests/test_wire.py), and its import costs less than decoding that much here
LARGE_REPLY = 256 * 1024
#: the longest path a Unix socket can have (sun_path is 108 bytes, with its NUL)
MAX_SOCKET_PATH = 107
#: phxqd hung up while a request was being sent: no whole frame, nothing phxqd could do
CLOSED_UNSENT = (
    "phxqd closed the connection (did it stop?) before the request was sent; nothing was done"
)
#: phxqd hung up after a request was sent, before its reply (a stop cut it, or a crash):
#: a change may have been made, and sending it again could make it twice (a duplicate job)
CLOSED_UNANSWERED = (
    "phxqd closed the connection before answering (did it stop?); "
    "the request may or may not have been carried out"
)


def frame(payload: bytes) -> bytes:
    """The payload with its length prefix; UsageError if it is over MAX_FRAME (phxqd
    would answer so, and close the connection)."""
    if len(payload) > MAX_FRAME:
        raise UsageError(
            f"the request is {len(payload)} bytes, over the protocol's limit of {MAX_FRAME} "
            f"bytes per frame (MAX_FRAME); send it in parts"
        )
    return HEADER.pack(len(payload)) + payload


def encode(request: dict[str, Any]) -> bytes:
    """A request as phxqctl sends it, checked first against what phxqd accepts
    (phxqd.contract.request_problem), so a value out of range is a UsageError naming it,
    not an encoder's OverflowError."""
    if why := request_problem(request):
        raise UsageError(why)
    try:
        return mpack.packb(request)
    except (OverflowError, UnicodeEncodeError, ValueError, TypeError, RecursionError) as e:
        # request_problem knows every field phxqctl sends: this is a bug, told in a line
        raise UsageError(f"cannot encode the {request.get('op')} request: {e}") from None


def decode(payload: bytes) -> Any:
    if len(payload) > LARGE_REPLY:
        try:
            import msgspec
        except ImportError:
            pass
        else:
            try:
                return msgspec.msgpack.decode(payload)
            except (msgspec.DecodeError, UnicodeDecodeError) as e:
                raise mpack.DecodeError(str(e)) from None
    return mpack.unpackb(payload)


class Connection:
    """A connected socket that has said hello; it sends and receives frames (bytes)."""

    def __init__(self, path: str, timeout: float | None = None) -> None:
        self.path = path
        self.timeout = timeout
        self._sock: _socket.socket | None = None

    def open(self, first: bytes) -> None:
        """Connect, then send hello and the first request in one write (one round trip),
        and check the hello reply."""
        self.connect()
        self.greet(first)

    def connect(self) -> None:
        if not self.path or "\0" in self.path or len(os.fsencode(self.path)) > MAX_SOCKET_PATH:
            raise UsageError(
                f"the socket path must be 1 to {MAX_SOCKET_PATH} bytes without NUL "
                f"(Linux's limit for a Unix socket), got {self.path!r:.200}"
            )
        sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
        # Connected blocking: while phxqd's listen backlog is full (a burst of clients, a
        # daemon busy a moment) a Unix connect waits for room, where one with a timeout
        # (a non-blocking socket underneath) fails at once with EAGAIN. The timeout bounds
        # that wait as SO_SNDTIMEO, which the kernel applies to a Unix connect.
        if self.timeout is not None:  # (the CLI has none: struct is imported only here)
            import struct

            seconds = max(self.timeout, 0.001)  # 0 would mean no limit
            whole = int(seconds)
            timeval = struct.pack("@ll", whole, int((seconds - whole) * 1_000_000))
            sock.setsockopt(_socket.SOL_SOCKET, _socket.SO_SNDTIMEO, timeval)
        try:
            sock.connect(self.path)
            sock.settimeout(self.timeout)
        except BlockingIOError:  # the backlog stayed full for the whole timeout
            sock.close()
            raise DaemonUnreachable(
                f"phxqd at {self.path} did not take the connection within {self.timeout:g}s "
                "(too many clients connecting at once, or phxqd is stuck)"
            ) from None
        except (FileNotFoundError, ConnectionRefusedError) as e:
            sock.close()
            why = "no socket there" if isinstance(e, FileNotFoundError) else "nothing listening"
            raise DaemonUnreachable(
                f"phxqd is not running at {self.path} ({why}); start it with `phxqd` "
                f"(or `make run`), or point PHXQ_SOCKET / --socket at its socket"
            ) from None
        except PermissionError:
            sock.close()
            raise DaemonUnreachable(f"no permission to connect to {self.path}") from None
        except OSError as e:  # not a socket, not a directory, timed out...
            sock.close()
            raise DaemonUnreachable(f"cannot connect to {self.path}: {e.strerror or e}") from None
        self._sock = sock

    def greet(self, first: bytes) -> None:
        assert self._sock is not None
        hello = {"op": "hello", "proto": PROTOCOL_VERSION, "client": "phxqctl"}
        # phxqd may hang up before reading (a refused user): its reason is still to read.
        # (Not contextlib.suppress: contextlib imports collections and functools, 3 ms.)
        try:  # noqa: SIM105
            self._sock.sendall(frame(mpack.packb(hello)) + frame(first))
        except (BrokenPipeError, ConnectionResetError):
            pass
        try:
            reply = result_of(decode(self.recv()))
        except mpack.DecodeError as e:
            raise PhxqError(f"phxqd sent a reply this phxqctl cannot read: {e}") from None
        if not isinstance(reply, dict) or reply.get("proto") != PROTOCOL_VERSION:
            raise PhxqError(f"phxqd answered hello with {reply!r}")

    @property
    def is_open(self) -> bool:
        return self._sock is not None

    def request(self, payload: bytes) -> None:
        """Send one request (connecting first if need be)."""
        if self._sock is None:
            self.open(payload)
        else:
            self.send(frame(payload))

    def send(self, data: bytes) -> None:
        assert self._sock is not None
        try:
            self._sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            self.close()
            raise DaemonUnreachable(CLOSED_UNSENT) from None

    def recv(self) -> bytes:
        """The payload of the next frame."""
        (length,) = HEADER.unpack(self._recv_exactly(HEADER.size))
        if length > MAX_FRAME:
            self.close()
            raise PhxqError(
                f"phxqd sent a frame of {length} bytes, over the protocol's limit of "
                f"{MAX_FRAME} (MAX_FRAME); ask for less at once (list --limit)"
            )
        return self._recv_exactly(length)

    def _recv_exactly(self, n: int) -> bytes:
        assert self._sock is not None
        buf = bytearray()
        while len(buf) < n:
            try:
                chunk = self._sock.recv(n - len(buf))
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                self.close()
                raise DaemonUnreachable(CLOSED_UNANSWERED)
            buf += chunk
        return bytes(buf)

    def fileno(self) -> int:
        assert self._sock is not None
        return self._sock.fileno()

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def result_of(reply: Any) -> Any:
    """The `result` of an `ok` reply; RemoteError for an `err` reply."""
    if isinstance(reply, dict):
        if reply.get("type") == "ok" and "result" in reply:
            return reply["result"]
        if reply.get("type") == "err":
            raise RemoteError(str(reply.get("code")), str(reply.get("message")))
    raise PhxqError(f"phxqd sent a reply this phxqctl cannot read: {reply!r:.200}")


class Session:
    """The command line's connection: requests and replies as plain dicts, one
    connection opened on first use."""

    def __init__(self, path: str, timeout: float | None = None) -> None:
        self.conn = Connection(path, timeout)

    def call(self, op: str, **fields: Any) -> Any:
        self.conn.request(encode({"op": op, **fields}))
        return result_of(self._next())

    def stream(self, op: str, **fields: Any) -> Generator[dict[str, Any], None, Any]:
        """The stream frames (`event`, `chunk` dicts) of a streaming request; the final
        reply's result is the generator's return value."""
        self.conn.request(encode({"op": op, **fields}))
        while True:
            message = self._next()
            if isinstance(message, dict) and message.get("type") in ("event", "chunk"):
                yield message
            else:
                return result_of(message)

    def start(self, op: str, **fields: Any) -> None:
        """Send a streaming request; read its frames with `frame()` (for a caller that
        waits on the socket itself, with select)."""
        self.conn.request(encode({"op": op, **fields}))

    def frame(self) -> dict[str, Any]:
        """The next frame of a stream: an `event` or `chunk` dict, or the final `ok`
        reply; RemoteError for an `err` reply."""
        message = self._next()
        if isinstance(message, dict) and message.get("type") in ("event", "chunk"):
            return message
        result_of(message)
        assert isinstance(message, dict)
        return message

    def fileno(self) -> int:
        return self.conn.fileno()

    def _next(self) -> Any:
        try:
            return decode(self.conn.recv())
        except mpack.DecodeError as e:
            raise PhxqError(f"phxqd sent a reply this phxqctl cannot read: {e}") from None

    def close(self) -> None:
        self.conn.close()
