"""One fuzz input through phxqd's request path, and the checks every input must pass.

The bytes go where a client's would: into a `server.Connection` (Hello first, MAX_FRAME,
the frame reader) over a real Unix socket pair, then `protocol` decoding, then
`Core.handle` on a real Core (real State, real Journal in a temp dir with fsync "off",
real anyio). Nothing is mocked; what is left out is what a malformed request cannot reach
and what would make inputs slow or unsafe: the dispatcher (so no job ever runs, whatever
the input submits or resumes: fuzzed argv must never be executed), the peer-credential
check of `server.serve` (the kernel's answer, not input) and the idle watchdog.

Each input gets a fresh Core and journal, so an input's outcome never depends on the ones
before it and a crash file reproduces on its own.

What must hold for every input (a `Finding` otherwise):
- no exception escapes the connection (in phxqd one would end `server.serve`, the daemon);
- phxqd logs no error and answers no `internal` error (a handler raised: a bug);
- everything phxqd sends decodes with `protocol.stream_decoder`, frame by frame;
- the connection ends within `INPUT_TIMEOUT` once the input is sent and every job someone
  waits for has been cancelled (a stream ends when its client hangs up);
- afterwards, hello+status on a fresh connection still get two `ok` replies;
- the journal replays (`recovery.recover`) to the state phxqd holds in memory: no request
  can write something phxqd would refuse, or read differently, at its next start.

This module needs no atheris: tests/test_fuzz_target.py drives it directly too.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import socket
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import msgspec
from anyio.abc import UNIXSocketStream

from phxqd import config, protocol, server
from phxqd.core import Core
from phxqd.local.backend import LocalBackend
from phxqd.local.journal import Journal
from phxqd.local.recovery import recover
from phxqd.local.state import State
from phxqd.settings import Options, Settings

#: Flags in the first byte of an input (see `parse`).
HELLO = 0x01  # put a valid hello frame first: the fuzzer need not rediscover it
FRAMED = 0x02  # the rest is payloads separated by SEP, each given its length prefix
CHUNKED = 0x04  # send in pieces of (flags >> 3) + 1 bytes, letting phxqd read between
#: Between payloads in FRAMED inputs: unlikely inside msgpack the fuzzer starts from.
SEP = b"\xff\xfe\x00\xfe\xff"

HELLO_FRAME = protocol.frame(protocol.Hello(protocol.PROTOCOL_VERSION, "fuzz"))
#: Seconds one input may take once sent; longer is a hang (the checks are all local and
#: a typical input takes a millisecond or two).
INPUT_TIMEOUT = 10.0
#: Seconds between looks for requests waiting on jobs that will never run.
UNBLOCK_INTERVAL = 0.002


class Finding(AssertionError):
    """An input broke one of the rules in the module docstring."""


@dataclass(frozen=True)
class Exchange:
    """What one connection got back: its frames, decoded."""

    frames: list[Any]


def parse(data: bytes) -> tuple[bytes, int | None]:
    """An input to (bytes the client sends, piece size or None for one send)."""
    if not data:
        return b"", None
    flags, rest = data[0], data[1:]
    if flags & FRAMED:
        rest = b"".join(protocol.HEADER.pack(len(p)) + p for p in rest.split(SEP))
    if flags & HELLO:
        rest = HELLO_FRAME + rest
    return rest, ((flags >> 3) + 1 if flags & CHUNKED else None)


def build(payloads: list[bytes], hello: bool = True, chunk: int | None = None) -> bytes:
    """An input (as `parse` reads it) that sends these payloads as frames."""
    flags = FRAMED | (HELLO if hello else 0)
    if chunk is not None:
        assert 1 <= chunk <= 32
        flags |= CHUNKED | ((chunk - 1) << 3)
    return bytes([flags]) + SEP.join(payloads)


def decode_frames(data: bytes) -> list[Any]:
    """Every frame phxqd sent; a Finding if the bytes are not whole, valid frames."""
    frames = []
    view = memoryview(data)
    while view:
        if len(view) < protocol.HEADER.size:
            raise Finding(f"phxqd sent {len(view)} stray bytes after its last frame")
        (length,) = protocol.HEADER.unpack_from(view)
        if length > protocol.MAX_FRAME:
            raise Finding(f"phxqd sent a frame of {length} bytes, over MAX_FRAME")
        end = protocol.HEADER.size + length
        if len(view) < end:
            raise Finding(f"phxqd sent a truncated frame ({len(view) - 4} of {length} bytes)")
        try:
            frames.append(protocol.stream_decoder.decode(view[protocol.HEADER.size : end]))
        except (msgspec.DecodeError, msgspec.ValidationError) as e:
            raise Finding(f"phxqd sent a frame that does not decode: {e}") from e
        view = view[end:]
    return frames


class ErrorLog(logging.Handler):
    """Keeps phxqd's error log lines: each one is a finding (an internal error answered,
    a stream that failed)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


_errors = ErrorLog()
_errors.setFormatter(logging.Formatter("%(name)s: %(message)s"))
_phxqd_log = logging.getLogger("phxqd")
_phxqd_log.addHandler(_errors)
_phxqd_log.propagate = False  # quiet: warnings of a fuzzed daemon are expected


class Target:
    """A scratch directory for the journals; `run` takes one input."""

    def __init__(self, base: Path | None = None) -> None:
        if base is None:
            shm = Path("/dev/shm")  # journals in memory: no disk in the loop
            base = Path(tempfile.mkdtemp(prefix="phxq-fuzz-", dir=shm if shm.is_dir() else None))
            self._owned = True
        else:
            self._owned = False
        self.base = base

    def close(self) -> None:
        if self._owned:
            shutil.rmtree(self.base, ignore_errors=True)

    def run(self, data: bytes) -> Exchange:
        """Feed one input; raise a Finding if a rule broke."""
        sent, chunk = parse(data)
        _errors.lines.clear()
        journal_dir, logs_dir = self.base / "journal", self.base / "logs"
        for d in (journal_dir, logs_dir):
            shutil.rmtree(d, ignore_errors=True)
            d.mkdir()
        settings = Settings.from_config(
            config.Config(
                workers=1, kill_grace=1.0, snapshot_bytes=1 << 40, logs_dir=str(logs_dir)
            ),
            Options(
                config_path=self.base / "phxqd.toml",  # never read: the config is given
                config_required=False,
                state_dir=str(self.base),
                socket=str(self.base / "phxqd.sock"),  # never listened on: no job runs
            ),
        )
        assert settings.journal_dir == journal_dir
        result: Exchange = anyio.run(_session, settings, sent, chunk)
        if _errors.lines:
            raise Finding("phxqd logged an error:\n" + "\n".join(_errors.lines))
        return result


async def _session(settings: Settings, sent: bytes, chunk: int | None) -> Exchange:
    journal = Journal(settings.journal_dir, 1, "off")
    state = State()
    backend = LocalBackend(state, journal, settings)
    core = Core(backend, settings)
    async with anyio.create_task_group() as tg:
        await tg.start(core.backend.run)
        await core.handle(protocol.Pause(None))  # as the shared test daemon; belt and braces
        with anyio.move_on_after(INPUT_TIMEOUT) as timer:
            got = await exchange(core, backend, sent, chunk)
        if timer.cancelled_caught:
            raise Finding(f"the connection did not end within {INPUT_TIMEOUT}s of the input")
        for frame in got.frames:
            if isinstance(frame, protocol.Err) and frame.code == "internal":
                raise Finding(f"phxqd answered an internal error: {frame.message}")
        with anyio.move_on_after(INPUT_TIMEOUT):
            after = await exchange(
                core, backend, HELLO_FRAME + protocol.frame(protocol.Status()), None
            )
        if [type(f) for f in after.frames] != [protocol.Ok, protocol.Ok]:
            raise Finding(f"hello+status on a fresh connection got {after.frames!r}")
        await journal.close()
        tg.cancel_scope.cancel()
    _check_replay(state, journal, settings.journal_dir)
    return got


def _comparable(state: State, lsn: int) -> bytes:
    """The state's snapshot as msgpack, its jobs as Jobs (a replay keeps a batch's jobs
    in their stored bytes, phxqd/local/jobtable.py) and its queue order spelled out."""
    snap = state.snapshot(lsn)
    snap.order, snap.order_is_ids = list(snap.queue_order()), False
    snap.jobs = list(state.jobs.values())
    return msgspec.msgpack.encode(snap)


def _check_replay(state: State, journal: Journal, journal_dir: Path) -> None:
    """The journal must rebuild the state in memory exactly (what a restart would see)."""
    recovered = recover(journal_dir, cut_torn_tail=False, now=time.time())
    if recovered.torn is not None:
        raise Finding(f"the journal has a torn tail after a clean close: {recovered.torn}")
    lsn = journal.last_lsn
    live, replayed = _comparable(state, lsn), _comparable(recovered.state, lsn)
    if live != replayed:
        raise Finding(
            "the journal replays to another state than phxqd holds:\n"
            f"live:     {state.snapshot(lsn)!r}\n"
            f"replayed: {recovered.state.snapshot(lsn)!r}"
        )


async def exchange(core: Core, backend: LocalBackend, sent: bytes, chunk: int | None) -> Exchange:
    """One client connection: send `sent`, hang up the sending side, read to the end."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    client = await UNIXSocketStream.from_socket(ours)
    connection = await server.Connection.start(theirs, core.handle, 0, core.handle_then)
    received = bytearray()
    async with client, anyio.create_task_group() as tg:
        tg.start_soon(_serve, connection)
        tg.start_soon(_send, client, sent, chunk)
        unblocker = anyio.CancelScope()
        tg.start_soon(_unblock, core, backend, unblocker)
        with contextlib.suppress(anyio.EndOfStream, anyio.BrokenResourceError):
            while True:
                received += await client.receive()
        unblocker.cancel()
    return Exchange(decode_frames(bytes(received)))


async def _serve(connection: server.Connection) -> None:
    # What `server.serve`'s on_connect lets end a connection quietly; anything else escaping
    # would end the daemon, so it escapes here too and fails the input.
    with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError, ConnectionError):
        await connection.run()


async def _send(client: UNIXSocketStream, data: bytes, chunk: int | None) -> None:
    # phxqd may close first (a failed hello, an oversized frame): the rest goes nowhere.
    with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
        if chunk is None:
            await client.send(data)
        else:
            for i in range(0, len(data), chunk):
                await client.send(data[i : i + chunk])
                await anyio.sleep(0)  # let phxqd read this piece alone
        await client.send_eof()


async def _unblock(core: Core, backend: LocalBackend, scope: anyio.CancelScope) -> None:
    """Cancel the jobs a request waits for: none will ever run here, so a `wait` for them
    would last until its timeout, or for ever. (Asks the local backend which jobs someone waits
    on: the one place a request blocks on jobs and not on its client.)"""
    with scope:
        while True:
            await anyio.sleep(UNBLOCK_INTERVAL)
            waited = [
                i
                for i in backend.waited_for()
                if (job := await backend.find(i)) is not None and not job.finished
            ]
            if waited:
                await core.handle(protocol.Cancel(waited))
