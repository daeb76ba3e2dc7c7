"""The append-only journal: framed records in segment files, written with group commit.

On disk, `journal/` holds segment files named by the log sequence number (LSN) of their
first record, `00000000000000000001.seg`. A record is `u32 length | u32 crc32 | msgpack
event` (little-endian), so record k of a segment has LSN `first + k` and no record needs to
carry its own number.

A segment starts with `SEGMENT_MAGIC` and is preallocated (`posix_fallocate`) a MiB at a
time ahead of its records, so they are written into space the file already has: an
fdatasync then has no file size to commit to the filesystem's journal (on ext4 here a
write of 120 bytes + fdatasync took 123 µs so, against 176 appending:
bench/bench_prealloc.py). The records end at the first all-zero header, with only zeros
after it. Segments without the magic (written
before it, format 2 and older) are read as before: records up to the end of the file.

One writer task owns the open segment. `append` encodes at once (the caller's objects may
change afterwards) and returns the record's LSN; `durable(lsn)` waits until the fsync policy
says that record is safe. Everything appended while one write+fsync is under way goes out in
the next one: a single fdatasync acknowledges many requests (group commit).

After a failed write or fsync the writer stops: the page cache can no longer be trusted to
match the file, so that segment is never written or fsync'd again. Every waiter and every
later `append` gets `JournalError` until the owner calls `restart`, which continues in a
new segment.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import heapq
import itertools
import logging
import os
import queue
import struct
import sys
import threading
import time
import zlib
from array import array
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args

import anyio
import msgspec

from phxqd.events import AnyEvent, Event, SubmittedBatch
from phxqd.local.jobtable import _ID, _PRIORITY, _RUN_AT, STATUS_CODE, Block, bulk_queue, column
from phxqd.model import StoredJob, as_jobs

log = logging.getLogger("phxqd.local.journal")

RECORD_HEADER = struct.Struct("<II")
SEGMENT_SUFFIX = ".seg"
#: the first bytes of every segment written since state format 3: records follow, then
#: zeros to the end of the preallocated file. (A segment without it is read the old way; a
#: phxqd older than format 3 refuses the state dir by its `format` file before reading it.)
SEGMENT_MAGIC = b"PHXQJNL3"
#: preallocated beyond `segment_bytes` (at most `segment_bytes` more): the batch that crosses
#: it still lands in allocated space (a segment is closed after the batch that reaches it)
PREALLOC_SLACK = 64 * 1024
#: a segment is preallocated this much at a time, the next piece once less than half of the
#: last is left: a quiet queue keeps a small journal (SQLite's WAL is ~4 MiB)
PREALLOC_CHUNK = 1024 * 1024
#: a piece is preallocated only if the filesystem keeps this much free beyond it: the last
#: space of a nearly full disk goes to records and snapshots, not to zeros. (A failing
#: fallocate held all of a small tmpfs's free space while it ran: a snapshot written
#: meanwhile found the disk full, test_backend's disk-full test once in 15 runs.)
PREALLOC_RESERVE = 64 * 1024 * 1024
#: the unit a lost write leaves zeroed (a disk sector; filesystem blocks are multiples)
SECTOR = 512
#: Records bigger than this are refused on append and treated as damage on read.
MAX_RECORD = 64 * 1024 * 1024

FsyncPolicy = Literal["always", "batch", "off"]

#: With fsync = "always", a batch (of one client's record or of many's: group commit) is
#: written and fdatasync'd in the event loop itself as long as the last write+fdatasync
#: took less than this; otherwise (a slow or sick disk) the fdatasync goes to the
#: journal's thread and the loop keeps answering. So the loop is never held longer than
#: the disk has just been seen to take (plus one surprise: the first call of a disk that
#: turns slow), and a healthy disk's batch costs no thread wake-ups: with 16 one-job
#: clients the hop to the thread and back (a futex wake each way, the GIL handed over,
#: and the loop turning for each request while the fdatasync runs instead of for the
#: ~16 that gather in the sockets meanwhile) cost ~13 of ~83 µs of daemon CPU per submit
#: (bench/bench_ab.py --clients 16). A reply still waits for the fdatasync covering its
#: record, on either path.
INLINE_SYNC_MAX = 0.005
#: and only a record this small (a batch of thousands of jobs is one record of megabytes)
INLINE_BYTES = 64 * 1024
#: With fsync = "always", a lazy record (a job's start or end: nobody has been told of it)
#: is written at once but fdatasync'd by the next batch that is, when someone waits for it
#: (`durable`), or this many seconds after the last fdatasync if neither comes: a stream
#: of jobs costs one fdatasync per LAZY_SYNC instead of two per job.
LAZY_SYNC = 0.02


class _StoredBatch(Event, tag="subs"):
    """How a `SubmittedBatch` is stored: each job an array of its fields (`StoredJob`)."""

    jobs: list[StoredJob]


#: every event as stored: `subs` records decode as _StoredBatch (then made SubmittedBatch)
_STORED: Any = Union[  # noqa: UP007 (a union built at run time)
    tuple(t if t is not SubmittedBatch else _StoredBatch for t in get_args(AnyEvent))
]
_encoder = msgspec.msgpack.Encoder()
_decoder: msgspec.msgpack.Decoder[Any] = msgspec.msgpack.Decoder(_STORED)


class _RawBatch(Event, tag="subs"):
    """A `subs` record with its jobs left in their stored bytes (recovery, see Block):
    `bulk` is what `encode_record` adds to a batch `bulk_queue` accepts, its queue and
    packed columns (ids, priorities, run_at: little-endian int64, int64, float64)."""

    jobs: msgspec.Raw
    bulk: tuple[str, memoryview, memoryview, memoryview] | None = None


_raw_decoder: msgspec.msgpack.Decoder[Any] = msgspec.msgpack.Decoder(
    Union[tuple(t if t is not SubmittedBatch else _RawBatch for t in get_args(AnyEvent))]  # noqa: UP007
)


class JournalError(Exception):
    """The journal cannot take writes; nothing appended since the last good sync is safe."""


#: what `Journal.when_durable` calls: with None once the record is safe, else the error
Then = Callable[[JournalError | None], None]


class Corruption(Exception):
    """A record before the tail is damaged: the daemon must not start on this journal."""

    def __init__(self, path: Path, offset: int, why: str) -> None:
        super().__init__(f"{path}: damaged record at byte offset {offset}: {why}")
        self.path, self.offset, self.why = path, offset, why


def _framed(payload: bytes) -> bytes:
    return RECORD_HEADER.pack(len(payload), zlib.crc32(payload)) + payload


def encode_record(event: AnyEvent) -> bytes:
    return encode_kept(event)[0]


def encode_kept(event: AnyEvent) -> tuple[bytes, AnyEvent | Block]:
    """The record of `event`, and the event as the State should apply it: a batch that
    can be added in bulk as the Block of its jobs' stored bytes and columns, views of
    the record itself (what a replay makes of it: decode_record_encoded). So a batch's
    Jobs are freed once it is answered (the table holds ~100 bytes a job in the record
    instead of ~350 in objects), and a snapshot child touches none of them."""
    if not isinstance(event, SubmittedBatch):
        return _framed(_encoder.encode(event)), event
    jobs = [msgspec.structs.astuple(j) for j in event.jobs]  # (what _StoredBatch decodes)
    queue = bulk_queue(event.jobs)
    if queue is None:
        return _framed(_encoder.encode(("subs", jobs))), event
    # ("subs", jobs, (queue, ids, priorities, run_at)) as msgspec encodes it (a third
    # element, which a phxqd before it does not read), put together by hand so that
    # where the jobs and the columns are in it is known
    columns = [array("q", map(_ID, event.jobs)), array("q", map(_PRIORITY, event.jobs))]
    columns.append(array("d", map(_RUN_AT, event.jobs)))
    if sys.byteorder != "little":
        for c in columns:
            c.byteswap()
    parts: list[Any] = [b"\x93\xa4subs", _encoder.encode(jobs), b"\x94", _encoder.encode(queue)]
    for c in columns:
        parts.append(bin_header(len(c) * c.itemsize))
        parts.append(memoryview(c).cast("B"))
    crc, size = 0, 0
    for part in parts:
        crc, size = zlib.crc32(part, crc), size + len(part)
    record = b"".join([RECORD_HEADER.pack(size, crc), *parts])
    view, at = memoryview(record), RECORD_HEADER.size
    spans = []
    for part in parts:
        spans.append(view[at : at + len(part)])
        at += len(part)
    return record, batch_block(msgspec.Raw(spans[1]), queue, spans[5], spans[7], spans[9])


def bin_header(n: int) -> bytes:
    """The header of a msgpack bin of n bytes, as msgspec encodes one."""
    if n < 1 << 8:
        return b"\xc4" + n.to_bytes(1, "big")
    if n < 1 << 16:
        return b"\xc5" + n.to_bytes(2, "big")
    return b"\xc6" + n.to_bytes(4, "big")


def decode_record(payload: bytes) -> AnyEvent:
    """The event of a record's payload; msgspec.DecodeError (or UnicodeDecodeError) if
    it is not one."""
    event = _decoder.decode(payload)
    if isinstance(event, _StoredBatch):
        event = SubmittedBatch(as_jobs(event.jobs))
    stored: AnyEvent = event
    return stored


def decode_record_encoded(payload: bytes) -> AnyEvent | Block:
    """`decode_record`, but a batch recorded with its columns (`_RawBatch.bulk`) is a
    Block of its jobs' stored bytes, views of `payload` (recovery, see jobtable.py)."""
    event = _raw_decoder.decode(payload)
    if not isinstance(event, _RawBatch):
        stored: AnyEvent = event
        return stored
    if event.bulk is None:
        return decode_record(payload)
    return batch_block(event.jobs, *event.bulk)


def batch_block(
    jobs: msgspec.Raw, queue: str, ids: memoryview, priority: memoryview, run_at: memoryview
) -> Block:
    """The Block of a bulk batch's record: its jobs' bytes and packed columns."""
    n = len(ids) // 8
    if not len(priority) == len(run_at) == 8 * n:
        raise msgspec.DecodeError("the columns of a batch differ in length")
    zeros = _zeros(4 * n)  # all pending (status 0), of queue 0, without flags
    return Block(
        jobs,
        column(ids, "q"),
        column(zeros[:n], "B"),
        column(zeros, "I"),
        [queue],
        column(priority, "q"),
        column(run_at, "d"),
        column(zeros[:n], "B"),
    )


@functools.lru_cache(maxsize=4)
def _zeros(n: int) -> memoryview:
    """n zero bytes, one buffer for all the blocks of a size (batches of 10,000 are)."""
    if STATUS_CODE["pending"] != 0:
        raise AssertionError("a batch's status column is zeros: pending must be 0")
    return memoryview(bytes(n))


def segment_path(directory: Path, first_lsn: int) -> Path:
    return directory / f"{first_lsn:020d}{SEGMENT_SUFFIX}"


def list_segments(directory: Path) -> list[tuple[int, Path]]:
    """(first LSN, path) of every segment, oldest first."""
    out = []
    for p in directory.glob(f"*{SEGMENT_SUFFIX}"):
        try:
            out.append((int(p.stem), p))
        except ValueError:
            continue
    return sorted(out)


@dataclass
class Scan:
    """What reading one segment found: its events, and where its good bytes end."""

    events: list[AnyEvent]
    good_bytes: int
    size: int
    #: why the bytes after good_bytes are not a record (None when the file ends cleanly)
    tail_problem: str | None
    #: whole records read (with `each`, `events` stays empty)
    records: int = 0
    #: the segment starts with SEGMENT_MAGIC (records end at zeros; see `lost_write`)
    preallocated: bool = False
    #: after a tail problem: where the file's last byte other than zero ends (its size for
    #: a segment not preallocated): what cutting at `good_bytes` drops besides zeros
    data_end: int = 0


def scan_segment(
    path: Path,
    each: Callable[[AnyEvent | Block], None] | None = None,
    encoded: bool = False,
) -> Scan:
    """Read every whole record; stop at the first bad one and say why.

    Whether a bad record is a torn tail or corruption is the caller's call: only the very
    end of the newest segment may be torn. `each`: every event is handed to it as soon as
    it is decoded, and none is kept (recovery: a segment of 690,000 submitted jobs decoded
    at once left the heap full of the holes of their dropped duplicate strings, ~90 bytes
    a job of RSS for good). `encoded`: batches of submitted jobs may come as Blocks
    (recovery keeps their jobs in their stored bytes, see jobtable.py).

    A preallocated segment (it starts with SEGMENT_MAGIC) ends cleanly at an all-zero
    header followed by nothing but zeros: the space not written yet. (A zero header cannot
    start a record: no event encodes to an empty payload.)
    """
    data = path.read_bytes()
    events: list[Any] = []  # (Blocks only if `encoded`)
    keep = events.append if each is None else each
    decode = decode_record_encoded if encoded else decode_record
    preallocated = data.startswith(SEGMENT_MAGIC)
    records, size = 0, len(data)
    pos = len(SEGMENT_MAGIC) if preallocated else 0
    hsize = RECORD_HEADER.size

    def stop(why: str | None) -> Scan:
        end = len(data.rstrip(b"\0")) if why is not None and preallocated else size
        return Scan(events, pos, size, why, records, preallocated, end)

    while pos < size:
        if size - pos < hsize:
            if preallocated and zeros(data, pos, size):
                return stop(None)
            return stop("partial record header")
        length, crc = RECORD_HEADER.unpack_from(data, pos)
        if length == 0 and preallocated:
            if crc == 0 and zeros(data, pos + hsize, size):
                return stop(None)
            return stop("a zero record header with data after it" if crc == 0 else "length 0")
        if length > MAX_RECORD:
            return stop(f"record length {length} is impossible")
        end = pos + hsize + length
        if end > size:
            return stop("partial record")
        payload = data[pos + hsize : end]
        if zlib.crc32(payload) != crc:
            return stop("checksum mismatch")
        try:
            event = decode(payload)
        except (msgspec.DecodeError, UnicodeDecodeError) as e:  # the latter: not UTF-8
            return stop(f"undecodable record ({e})")
        keep(event)
        records += 1
        pos = end
    return stop(None)


def zeros(data: bytes, start: int, end: int) -> bool:
    """Whether `data[start:end]` is all zero bytes (counted in C, no copy)."""
    return data.count(0, start, end) == end - start


def lost_write(data: bytes, pos: int, until: int) -> bool:
    """Whether the damage at `pos` of a preallocated segment, before the whole record at
    `until`, looks like a write that never reached the disk: a sector of zeros.

    Records overwrite preallocated zeros in place, and a disk writes the sectors of what
    was never fdatasync'd in any order: after a power cut, a later record can be whole on
    disk behind an earlier one that is not (its sectors still zero). Nothing after such a
    hole was acknowledged (the fdatasync that acknowledged it would have covered the hole),
    so the newest segment is cut there, as at a torn end. Damage that is not zeros (a
    flipped bit) keeps the old rule: corruption when a whole record follows it.
    """
    sector_end = min((pos // SECTOR + 1) * SECTOR, until)
    if zeros(data, pos, sector_end):  # the rest of the sector the record starts in
        return True
    return any(zeros(data, q, q + SECTOR) for q in range(sector_end, until - SECTOR + 1, SECTOR))


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_dirs(directory: Path, mode: int = 0o700) -> None:
    """Create `directory` and its missing parents, each made durable in its parent.

    A new directory's entry is in its parent's page cache only: records fdatasync'd into
    files under it are lost with it at a power cut until the parent is fsync'd (found by
    tests/test_powercut.py: a cut during the first run on a new state dir lost every
    acknowledged job). One fsync per directory created; none when all exist.
    """
    missing = []
    while not directory.is_dir():
        missing.append(directory)
        if directory.parent == directory:
            break
        directory = directory.parent
    for d in reversed(missing):
        try:
            d.mkdir(mode=mode)
        except FileExistsError:
            if not d.is_dir():
                raise
            continue
        fsync_dir(d.parent)


class Journal:
    """The open journal of a running daemon. See the module docstring."""

    def __init__(
        self,
        directory: Path,
        next_lsn: int,
        policy: FsyncPolicy = "always",
        batch_interval: float = 0.05,
        segment_bytes: int = 64 * 1024 * 1024,
        on_sync: Callable[[float], None] | None = None,
    ) -> None:
        self.directory = directory
        self.policy = policy
        self.batch_interval = batch_interval
        self.segment_bytes = segment_bytes
        self.last_lsn = next_lsn - 1  # last appended
        self.durable_lsn = next_lsn - 1  # last safe by the policy
        self._written_lsn = next_lsn - 1  # last handed to write(): where a new segment starts
        self.failed: JournalError | None = None
        #: set when writes fail; a fresh Event after `restart`
        self.failure = anyio.Event()
        self._restarted = anyio.Event()
        self.bytes_since_snapshot = 0
        self._pending: list[bytes] = []
        # asyncio's own events, not anyio's: one of each is made per batch (per request
        # with one client), and anyio's constructor looks up the running backend each time
        self._wake = asyncio.Event()
        self._progress = asyncio.Event()
        #: (lsn, order, waiter) of those waiting in `durable` (a future) or `when_durable`
        #: (a callback), the smallest LSN first
        self._durable_waiters: list[tuple[int, int, asyncio.Future[None] | Then]] = []
        self._waiter_order = itertools.count()
        self._rotate = False
        #: the last record the segment being left must hold (see `rotate`)
        self._rotate_after = 0
        self._closing = False
        self._fd = -1
        self._segment_size = 0
        self._unsynced = False
        #: a record pending that is not lazy (see `append`): the next batch is fdatasync'd
        self._eager = False
        self._last_sync = time.monotonic()
        self.fsyncs = 0
        self.written_bytes = 0
        #: the last batch held one record: the next lone record may be synced by its own
        #: caller (`_may_sync_here`); the seconds of the last write+fdatasync decide whether
        #: a batch is synced in the loop (see INLINE_SYNC_MAX)
        self._lone = False
        #: records in the last batch the writer took
        self._last_batch = 0
        self._last_sync_seconds = float("inf")
        #: the writer waits for records to write (see `_sync_here`)
        self._idle = False
        #: what a write or fdatasync made by `_sync_here` raised, for the writer to raise
        self._deferred: OSError | None = None
        #: called with the seconds of each write+fdatasync, for metrics
        self.on_sync = on_sync
        self._disk = DiskThread()
        #: the event loop of the running writer
        self._loop: asyncio.AbstractEventLoop | None = None
        #: bytes of the open segment preallocated
        self._allocated = 0
        #: the last preallocation failed (said once, until one works again)
        self._prealloc_failed = False

    # ----------------------------------------------------------- caller's side

    def append(self, events: list[AnyEvent], wake: bool = True, lazy: bool = False) -> int:
        """Queue records for the writer; returns the LSN of the last one.

        `wake=False` leaves the writer asleep: for a caller that awaits `durable` at once
        (which wakes it, unless the caller writes the record itself), or calls `wake`.
        `lazy`: records nobody waits for (see LAZY_SYNC): written at once, so a kill -9
        keeps them, and fdatasync'd with the next batch that is, or LAZY_SYNC after the
        last fdatasync. A power cut meanwhile can lose them; phxqd's state then goes back
        to before them, as after any crash.
        """
        return self.append_kept(events, wake, lazy)[0]

    def append_kept(
        self, events: list[AnyEvent], wake: bool = True, lazy: bool = False
    ) -> tuple[int, list[AnyEvent | Block]]:
        """`append`, and the events as the State should apply them (see encode_kept):
        a bulk batch as the Block of the record just queued."""
        if self.failed is not None:
            raise self.failed
        if not lazy:
            self._eager = True
        kept: list[AnyEvent | Block] = []
        for event in events:
            record, as_kept = encode_kept(event)
            if len(record) > MAX_RECORD:
                self._wake.set()  # for those before it
                raise JournalError(f"a record of {len(record)} bytes is too large")
            self._pending.append(record)
            kept.append(as_kept)
            self.last_lsn += 1
        if wake:
            self._wake.set()
        return self.last_lsn, kept

    def wake(self) -> None:
        """Have the writer take what is pending (after `append(..., wake=False)`)."""
        self._wake.set()

    async def durable(self, lsn: int) -> None:
        """Return once record `lsn` is safe by the fsync policy; raise if it never will be.

        Each waiter is woken once, when its own record is safe (or writes failed), not at
        every batch: with many clients a request arrives while the batch before it is
        being synced, and waking it then only to wait again cost a trip through the loop.
        """
        if self.durable_lsn < lsn:
            if self._may_sync_here():
                self._sync_here()
            else:
                self._eager = True  # a lazy record waited for is synced at once
                self._wake.set()
        while self.durable_lsn < lsn:
            if self.failed is not None:
                raise self.failed
            # A bare future, not an anyio.Event (an asyncio.Event holding a deque of
            # futures): one is made per request. Cancelling the waiting task cancels it.
            # (the writer's loop: asyncio.get_running_loop() makes a getpid() system call)
            loop = self._loop or asyncio.get_running_loop()
            woken: asyncio.Future[None] = loop.create_future()
            heapq.heappush(self._durable_waiters, (lsn, next(self._waiter_order), woken))
            await woken
        if self.failed is not None and self.durable_lsn < lsn:
            raise self.failed

    def when_durable(self, lsn: int, then: Then) -> None:
        """`durable` for a caller that does not wait: `then(None)` once record `lsn` is safe
        by the fsync policy, `then(error)` if it never will be; at once when that is known
        already (the record synced by this call, say: see `_sync_here`).

        A request answered straight from the socket's callback (server.Connection._quick)
        costs no task wake-up, no future and no coroutine to resume. `then` runs in the
        writer's task (or the caller's): it must not raise, block or await.
        """
        if self.durable_lsn < lsn and self.failed is None:
            if self._may_sync_here():
                self._sync_here()
            else:
                self._eager = True
                self._wake.set()
        if self.durable_lsn >= lsn:
            then(None)
        elif self.failed is not None:
            then(self.failed)
        else:
            heapq.heappush(self._durable_waiters, (lsn, next(self._waiter_order), then))

    async def rotate(self) -> None:
        """Start a new segment once everything appended so far is written."""
        self._rotate = True
        target = self.last_lsn
        self._rotate_after = max(self._rotate_after, target)
        self._wake.set()
        while self._rotate and self.failed is None:
            await self._progress.wait()
        await self.durable(target)

    async def close(self) -> None:
        """Write and sync what is pending, then stop the writer."""
        self._closing = True
        self._wake.set()
        while self._fd != -1 and self.failed is None:
            await self._progress.wait()

    # ------------------------------------------------------------ writer's side

    async def run(self) -> None:
        """The writer task: one write and at most one fdatasync per batch.

        After a failure it waits for `restart` (the owner first makes everything in memory
        durable another way) and carries on in a new segment; it returns once closed.
        """
        self._loop = asyncio.get_running_loop()
        try:
            while True:
                try:
                    await self._open_segment(self._written_lsn + 1)
                    await self._write_loop()
                    return
                except OSError as e:
                    self._fail(e)
                await self._restarted.wait()
                self._restarted = anyio.Event()
        finally:
            self._disk.stop()
            self._loop = None

    def segments(self) -> int:
        """Segment files on disk now (a directory listing: for metrics, not hot paths)."""
        return len(list_segments(self.directory))

    def restart(self, next_lsn: int) -> None:
        """Take writes again from `next_lsn`, in a new segment; the failed one is never
        written or fsync'd again. The caller has already made records before `next_lsn`
        durable (a snapshot) and removed the segments that held them."""
        assert self.failed is not None
        self.failed = None
        self.failure = anyio.Event()
        self.last_lsn = self.durable_lsn = self._written_lsn = next_lsn - 1
        self._pending = []
        self._unsynced = self._rotate = self._eager = False
        self.bytes_since_snapshot = 0
        self._restarted.set()

    async def _write_loop(self) -> None:
        while True:
            if not self._pending and not self._rotate and not self._closing:
                # idle with lazy records unsynced too: a lone client may still sync its
                # record itself (`_sync_here`), which covers them
                self._idle = True
                try:
                    if self.policy != "off" and self._unsynced:
                        delay = self._sync_interval() - (time.monotonic() - self._last_sync)
                        with anyio.move_on_after(max(delay, 0)):
                            await self._wake.wait()
                    else:
                        await self._wake.wait()
                finally:
                    self._idle = False
            self._wake = asyncio.Event()
            if self._deferred is not None:  # a write or fdatasync failed in `_sync_here`
                error, self._deferred = self._deferred, None
                raise error
            await self._write_batch()
            await self._preallocate()
            # Records appended before `rotate` was asked for but after the batch above was
            # taken (while its write or fdatasync was awaited) go in the segment being
            # left, which is fdatasync'd below: the snapshot that asked covers them, and
            # with "batch" a new segment holding them could be empty after a power cut,
            # leaving a gap that refused to start (found by tests/test_powercut.py).
            while self._rotate and self._pending and self._written_lsn < self._rotate_after:
                await self._write_batch()
            if self._rotate or self._segment_size >= self.segment_bytes:
                await self._sync(force=True)
                self._close_segment()
                await self._open_segment(self._written_lsn + 1)
                # A rotate() asked for during the fdatasync above (while a rotation for
                # size was under way) wants a segment after its records: another one.
                self._rotate = self._written_lsn < self._rotate_after
                self._signal()
            if self._closing and not self._pending:
                await self._sync(force=True)
                self._close_segment()
                self._signal()
                return

    async def _write_batch(self) -> None:
        if (
            1 < len(self._pending) < self._last_batch
            and self.policy == "always"
            and self._last_sync_seconds < INLINE_SYNC_MAX
            and not self._rotate
            and not self._closing
        ):
            # Fewer records than the last batch had: the other clients' next requests
            # are likely in their sockets already (their replies went out a moment ago).
            # One more turn of the loop reads them into this batch instead of leaving
            # them to one more fdatasync (16 one-job clients: ~11 -> ~14 records per
            # fdatasync, 54.8 -> 50.2 µs of daemon CPU per submit, bench_ab). Not for a
            # lone record (one client waits for nobody), nor a segment being left.
            await asyncio.sleep(0)
        if self._pending:
            batch, self._pending = self._pending, []
            self._last_batch = len(batch)
            last = self.last_lsn
            data = b"".join(batch)
            fd, offset = self._fd, self._segment_size
            sync = self.policy == "always" and self._eager
            self._eager = False
            inline = (
                sync and self._last_sync_seconds < INLINE_SYNC_MAX and len(data) <= INLINE_BYTES
            )
            self._lone = len(batch) == 1
            t0 = time.perf_counter()
            if inline:
                # A disk answering fast: the requests that come meanwhile wait in their
                # sockets and are read together after it (see INLINE_SYNC_MAX); for a lone
                # client the hop to the thread and back cost a third of its round trip.
                _write_and_sync(fd, data, offset, True)
            elif len(data) > 1024 * 1024:
                await self._disk.call(_write_and_sync, fd, data, offset, sync)
            else:
                # A small write() into the page cache does not block: only the fdatasync
                # goes to the thread. Each call there costs the thread the GIL back twice
                # more (after the write, after the fdatasync), taken from this loop.
                _write_and_sync(fd, data, offset, False)
                if sync:
                    await self._disk.call(os.fdatasync, fd)
            self._written(last, len(data), time.perf_counter() - t0 if sync else None)
        await self._sync(force=False)

    def _written(self, last: int, size: int, synced: float | None) -> None:
        """Records up to `last` (`size` bytes) are written, and fdatasync'd in `synced`
        seconds unless that is None: tell the waiters."""
        if synced is not None:
            self._last_sync_seconds = synced
            if self.on_sync is not None:
                self.on_sync(synced)
        self._written_lsn = last
        self._segment_size += size  # where the next record goes
        self.written_bytes += size
        self.bytes_since_snapshot += size
        if synced is not None:
            self.fsyncs += 1
            self._last_sync = time.monotonic()
            self._unsynced = False  # the fdatasync covered lazy records written before
        else:
            self._unsynced = True
        if synced is not None or self.policy != "always":  # else lazy: see `_sync`
            self.durable_lsn = last
        self._signal()

    def _may_sync_here(self) -> bool:
        """Whether the record a caller waits for may be written and fdatasync'd by the
        caller itself, at once: the writer would do the same (see INLINE_SYNC_MAX), one
        turn of the loop later, and the caller would wait one more turn to hear of it."""
        return (
            self._idle
            and self._lone
            and len(self._pending) == 1
            and len(self._pending[0]) <= INLINE_BYTES
            and self._last_sync_seconds < INLINE_SYNC_MAX
            and self.policy == "always"
            and self.failed is None
            and self._deferred is None
            and not self._rotate
            and not self._closing
            and self._fd != -1
        )

    def _sync_here(self) -> None:
        """Write and fdatasync the one pending record in the caller's task, while the
        writer waits for work (it wakes to find none, and rotates if the segment is full).
        A failure is the writer's to handle: it raises it on waking, as if its own."""
        data, self._pending = self._pending[0], []
        self._eager = False
        last = self.last_lsn
        # Not lone until the loop has gone round and nobody else's record came in:
        # requests gathered while this fdatasync held the loop are read together after it
        # (their tasks run before the callback below), and the first of them must not sync
        # alone again, ahead of the others: they go to the writer, as one batch.
        self._lone = False
        assert self._loop is not None  # the writer runs: it is idle
        self._loop.call_soon(self._confirm_lone)
        t0 = time.perf_counter()
        try:
            _write_and_sync(self._fd, data, self._segment_size, True)
        except OSError as e:
            self._deferred = e
            self._wake.set()
            return
        self._written(last, len(data), time.perf_counter() - t0)
        if self._segment_size >= self.segment_bytes or self._wants_space():
            self._wake.set()  # the writer starts the next segment, or preallocates more

    def _confirm_lone(self) -> None:
        """After a record synced by its caller: nobody else's came in, a lone client still
        (who may then sync its next record itself)."""
        if not self._pending:
            self._lone = True

    async def _sync(self, force: bool) -> None:
        """fdatasync what was written without (in `batch` mode; lazy records in `always`)
        once the interval has passed since the last one, or when forced."""
        if not self._unsynced or (self.policy == "off" and not force):
            return
        waited_for = self._eager and self.policy == "always"  # see `durable`
        if force or waited_for or time.monotonic() - self._last_sync >= self._sync_interval():
            if not self._pending:  # (records pending keep theirs for their own batch)
                self._eager = False
            if waited_for and self._last_sync_seconds < INLINE_SYNC_MAX:
                os.fdatasync(self._fd)  # someone waits: as a batch's would be (INLINE_SYNC_MAX)
            else:
                await self._disk.call(os.fdatasync, self._fd)
            self.fsyncs += 1
            self._unsynced = False
            self._last_sync = time.monotonic()
            if self.durable_lsn < self._written_lsn:  # lazy records, now durable
                self.durable_lsn = self._written_lsn
                self._signal()

    def _sync_interval(self) -> float:
        return LAZY_SYNC if self.policy == "always" else self.batch_interval

    def _signal(self) -> None:
        self._progress.set()
        self._progress = asyncio.Event()
        waiters = self._durable_waiters
        failed = self.failed
        if failed is not None:
            for _, _, woken in waiters:
                _tell(woken, failed)
            waiters.clear()
        durable = self.durable_lsn
        while waiters and waiters[0][0] <= durable:
            _tell(heapq.heappop(waiters)[2], None)

    def _fail(self, error: OSError) -> None:
        msg = f"journal write failed: {os.strerror(error.errno) if error.errno else error}"
        log.error("%s; refusing writes until restart (reads keep working)", msg)
        self.failed = JournalError(msg)
        self._abandon()
        self.failure.set()
        self._signal()

    def _abandon(self) -> None:
        """Close the failed segment's fd without another fsync (its cache is untrustworthy).

        Its preallocated space after the last records written is given back first: on a
        full disk that space is what the healing snapshot needs (a test on a 1 MiB
        filesystem healed never without this). Only unacknowledged bytes go; if the cut
        does not reach the disk before a crash, the zeros come back, the end of records.
        """
        if self._fd != -1:
            if self._allocated > self._segment_size:
                with contextlib.suppress(OSError):
                    os.ftruncate(self._fd, self._segment_size)
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = -1

    async def _open_segment(self, first_lsn: int) -> None:
        """Create the segment for records from `first_lsn` on, preallocated (in the
        journal's thread: requests meanwhile gather into the next batch).

        A file of that name can only be a segment without records (the last one at a
        crash, or the one just closed): it is started again from nothing.
        """
        path = segment_path(self.directory, first_lsn)
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        self._segment_size = len(SEGMENT_MAGIC)
        self._allocated = 0
        fsync_dir(self.directory)
        await self._disk.call(_write_and_sync, self._fd, SEGMENT_MAGIC, 0, False)
        await self._preallocate()

    def _prealloc_target(self) -> int:
        return -(-(self.segment_bytes + min(PREALLOC_SLACK, self.segment_bytes)) // 4096) * 4096

    def _wants_space(self) -> bool:
        """Is the open segment's next piece due to be preallocated?"""
        start = self._allocated
        if start >= self._prealloc_target():
            return False
        return not start or start - self._segment_size < PREALLOC_CHUNK // 2

    async def _preallocate(self) -> None:
        """Preallocate the open segment's next piece when less than half a piece is left,
        up to a little more than `segment_bytes`. Between batches (no write is under way:
        glibc's fallback for a filesystem without fallocate writes zeros itself). A failure
        leaves the rest of the segment to be appended to, as before preallocation."""
        if not self._wants_space():
            return
        target = self._prealloc_target()
        end = min(
            (max(self._allocated, self._segment_size) // PREALLOC_CHUNK + 1) * PREALLOC_CHUNK,
            target,
        )
        problem = await self._disk.call(_allocate, self._fd, self._allocated, end)
        if problem is None:
            self._allocated = end
        else:
            self._allocated = target  # nothing more asked in this segment
            if not self._prealloc_failed:
                log.warning("cannot preallocate journal segments (%s): appending", problem)
        self._prealloc_failed = problem is not None

    def _close_segment(self) -> None:
        os.close(self._fd)
        self._fd = -1


T = TypeVar("T")


class DiskThread:
    """One long-lived thread for the writer's blocking write()s and fdatasyncs, one at a
    time, in order.

    Why not `anyio.to_thread.run_sync`: with one producer the hand-off to its worker pool
    and back (capacity limiter, checkpoints, its own wake-ups) cost more per request than
    the fdatasync itself (bench/bench_ab.py --clients 1). This hands the call over through a
    queue and comes back with one `call_soon_threadsafe`. The call is never abandoned: a
    cancelled writer still waits for the write under way (as `run_sync` did), so nothing
    writes to a segment once the writer has moved on.
    """

    def __init__(self) -> None:
        self._calls: queue.SimpleQueue[
            tuple[Callable[..., Any], tuple[Any, ...], asyncio.Future[Any]] | None
        ] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """`fn(*args)` in the thread; its result or its exception."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._serve, name="phxqd-journal", daemon=True)
            self._thread.start()
        done: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._calls.put((fn, args, done))
        with anyio.CancelScope(shield=True):
            result: T = await done
        return result

    def stop(self) -> None:
        """End the thread once the calls queued are done (it is started again if needed)."""
        if self._thread is not None:
            self._calls.put(None)
            self._thread = None

    def _serve(self) -> None:
        while (item := self._calls.get()) is not None:
            fn, args, done = item
            try:
                result = fn(*args)
            except BaseException as e:  # handed to the awaiting task
                _report(done, _set_exception, e)
            else:
                _report(done, _set_result, result)


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():  # a cancelled waiter's is
        waiter.set_result(None)


def _tell(waiter: asyncio.Future[None] | Then, error: JournalError | None) -> None:
    """Wake a waiter of `durable` (it reads the outcome itself), or call one of
    `when_durable` with it. A callback that raises is a bug, logged: it must not stop the
    writer, nor the other waiters being told."""
    if isinstance(waiter, asyncio.Future):
        _wake(waiter)
        return
    try:
        waiter(error)
    except Exception:
        log.exception("internal error in a callback of a durable record")


def _report(
    done: asyncio.Future[Any], how: Callable[[asyncio.Future[Any], Any], None], value: Any
) -> None:
    with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
        done.get_loop().call_soon_threadsafe(how, done, value)


def _set_result(done: asyncio.Future[Any], value: Any) -> None:
    if not done.done():
        done.set_result(value)


def _set_exception(done: asyncio.Future[Any], error: BaseException) -> None:
    if not done.done():
        done.set_exception(error)


def _write_and_sync(fd: int, data: bytes, offset: int, sync: bool) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n
    if sync:
        os.fdatasync(fd)


def _allocate(fd: int, start: int, size: int) -> str | None:
    """Preallocate the file from `start` to `size` bytes and fdatasync it (its new size
    then costs no record's fdatasync). None, or why the space was not preallocated: the
    segment is then appended to, as before (a filesystem without fallocate, a nearly full
    one: no reason to refuse writes). A failing fdatasync raises, as a record's would."""
    st = os.fstatvfs(fd)
    free = st.f_bavail * st.f_frsize
    if free - (size - start) < PREALLOC_RESERVE:
        return (
            f"{free:,} bytes free on its filesystem, and "
            f"{PREALLOC_RESERVE // (1024 * 1024)} MiB are kept for records and snapshots"
        )
    problem = None
    try:
        os.posix_fallocate(fd, start, size - start)
    except OSError as e:
        problem = os.strerror(e.errno) if e.errno else str(e)
    os.fdatasync(fd)
    return problem
