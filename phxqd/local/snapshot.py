"""Snapshots: the whole state in one file, replaced atomically, so old segments can go.

`snapshot` is `magic | u32 length | u32 crc32 | msgpack SnapshotFile`. It is written to a
temporary file, fsync'd, renamed over the old one, and the directory fsync'd: at every
instant the directory holds either the old snapshot or the new one, whole. A snapshot that
fails its checksum is never replaced or deleted: the daemon refuses to start and says so.

The jobs are stored in chunks (of up to CHUNK jobs), each its own msgpack array, and the
queue order as packed 64-bit integers. Each job is stored as an array of its fields, not
a map (format 3): the field names were two thirds of a snapshot (265 bytes per job; 80 as
arrays), and every byte is written, fsync'd and read back at each restart.

The last field, `index` (state.SnapshotIndex), holds packed columns of what the State's
indexes read of each job (id, status, queue, priority, run_at, whether it has `after`)
and its counts, keys and lists of running, retrying, failed and cancelled jobs. With it
a restart decodes no job: each chunk becomes a jobtable.Block, its jobs' bytes and its
slice of the columns, all views of the one buffer read from the file, and the State
builds its maps and heaps from the columns at C speed (a million queued jobs: see
docs/benchmarks.md, "Restart in encoded form"); a job is decoded when something reads it.
A snapshot taken later writes each block none of whose jobs was touched as the bytes it
was read as, in a chunk of its own. The index was added without a new magic: an older
phxqd reads the file and ignores it (a msgpack array's trailing elements are), and a
snapshot without it is read as before, each chunk decoded into Jobs and passed through a
`Sharer` before the next, so the heap does not end up full of the holes a million dropped
copies leave. Older formats (1: one msgpack `Snapshot`; 2: jobs as maps) are still read.
"""

from __future__ import annotations

import mmap
import os
import struct
import sys
import zlib
from array import array
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec

from phxqd.local.jobtable import Block, column
from phxqd.local.journal import Corruption, bin_header, fsync_dir
from phxqd.local.state import Sharer, Snapshot, SnapshotIndex
from phxqd.model import Job, StoredJob, as_jobs
from phxqd.schedules_model import Schedule

MAGIC = b"PHXQSNP3"
#: older formats, read and never written: one msgpack `Snapshot`; chunks of jobs as maps
MAGIC_V1, MAGIC_V2 = b"PHXQSNP1", b"PHXQSNP2"
HEADER = struct.Struct("<II")
FILENAME = "snapshot"
TEMPORARY = FILENAME + ".tmp"
#: jobs per chunk: big enough that chunk overhead is nil, small enough to decode in ~10 ms
CHUNK = 10_000


class SnapshotFile(msgspec.Struct, array_like=True):
    lsn: int
    next_id: int
    paused: list[str]
    paused_all: bool
    limits: dict[str, int]
    #: waiting job ids in queue order, as little-endian int64s
    order: bytes
    #: msgpack arrays of at most CHUNK jobs each, decoded one at a time
    chunks: list[msgspec.Raw]
    #: added after format 3 was out: a snapshot without them decodes with none
    schedules: list[Schedule] = []
    rates: dict[str, tuple[float, int]] = {}
    #: added later still (see the module docstring): the indexes' columns
    index: SnapshotIndex | None = None


_encoder = msgspec.msgpack.Encoder()
_file_decoder = msgspec.msgpack.Decoder(SnapshotFile)
_chunk_decoder = msgspec.msgpack.Decoder(list[StoredJob])
_v2_chunk_decoder = msgspec.msgpack.Decoder(list[Job])


class _SnapshotV1(msgspec.Struct):
    """Format 1: one msgpack map, the `Snapshot` of its time."""

    lsn: int
    next_id: int
    jobs: list[Job]
    paused: list[str]
    paused_all: bool
    order: list[int] = []
    limits: dict[str, int] = {}
    schedules: list[Schedule] = []
    rates: dict[str, tuple[float, int]] = {}


_v1_decoder = msgspec.msgpack.Decoder(_SnapshotV1)


def encode(snap: Snapshot) -> bytes:
    """Done on the event loop, so the bytes match the state at one instant."""
    payload = b"".join(_payload(snap, in_place=False))
    return MAGIC + HEADER.pack(len(payload), zlib.crc32(payload)) + payload


def _payload(snap: Snapshot, in_place: bool) -> Iterator[bytes | memoryview]:
    """The msgpack `SnapshotFile` of `snap`, in parts whose concatenation is its encoding
    (msgpack nests by concatenation), so a writer need never hold the whole of it.

    `in_place`: each chunk's jobs are made `StoredJob`s (the same layout, see model.py)
    while it is encoded, and made `Job`s again after, instead of copied into tuples of
    their fields: for the snapshot child (forked.py), where a tuple per job took a
    reference to each of its fields, and every page holding a float or int of a job was
    copied for that.
    """
    chunks = _chunks(snap.jobs)
    yield _array_header(len(SnapshotFile.__struct_fields__))
    for value in (snap.lsn, snap.next_id, snap.paused, snap.paused_all, snap.limits):
        yield _encoder.encode(value)
    if snap.order_is_ids and snap.index is not None:  # (the ids column: packed already)
        yield from (
            _bin(snap.columns[0])
            if snap.columns is not None
            else (_encoder.encode(snap.index.ids),)
        )
    else:
        order = array("q", snap.order)
        if sys.byteorder != "little":
            order.byteswap()
        yield _encoder.encode(order.tobytes())
        del order
    yield _array_header(len(chunks))
    encode_chunk = _encode_chunk_in_place if in_place else _encode_chunk
    for chunk in chunks:
        yield bytes(chunk.data) if type(chunk) is Block else encode_chunk(chunk)
    yield _encoder.encode(snap.schedules)
    yield _encoder.encode(snap.rates)
    if snap.columns is None or snap.index is None:
        yield _encoder.encode(snap.index)
        return
    # SnapshotIndex (array_like) field by field, each column its pieces one after the
    # other: what encoding it joined gives, without the join (see Snapshot.columns)
    index, (ids, status, queue, priority, run_at, flags) = snap.index, snap.columns
    yield _array_header(len(SnapshotIndex.__struct_fields__))
    yield from _bin(ids)
    yield from _bin(status)
    yield from _bin(queue)
    yield _encoder.encode(index.queues)
    yield from _bin(priority)
    yield from _bin(run_at)
    yield from _bin(flags)
    yield _encoder.encode(index.counts)
    yield _encoder.encode(index.keys)
    yield _encoder.encode(index.listed)


def _bin(pieces: list[Any]) -> Iterator[bytes | memoryview]:
    """A msgpack bin of the concatenation of `pieces` (bytes-like, byte format): its
    header, then the pieces themselves."""
    yield bin_header(sum(map(len, pieces)))
    yield from pieces


def _array_header(n: int) -> bytes:
    if n < 16:
        return bytes([0x90 | n])
    if n < 1 << 16:
        return b"\xdc" + n.to_bytes(2, "big")
    return b"\xdd" + n.to_bytes(4, "big")


def _chunks(jobs: list[Any]) -> list[Any]:
    """The snapshot's chunks: a Block (whole and untouched, see State._stored) is its
    own chunk, written as the bytes it was read as; the other jobs (Job, or msgspec.Raw:
    one stored job) go in chunks of at most CHUNK."""
    out: list[Any] = []
    run: list[Any] = []
    for job in jobs:
        if type(job) is Block:
            if run:
                out.append(run)
                run = []
            out.append(job)
            continue
        run.append(job)
        if len(run) == CHUNK:
            out.append(run)
            run = []
    if run:
        out.append(run)
    return out


def _encode_chunk(jobs: list[Any]) -> bytes:
    """(A job still in its stored bytes is written as it is, as a msgspec.Raw is.)"""
    return _encoder.encode(
        [job if type(job) is msgspec.Raw else msgspec.structs.astuple(job) for job in jobs]
    )


def _encode_chunk_in_place(jobs: list[Any]) -> bytes:
    stored: list[Any] = [job for job in jobs if type(job) is Job]
    try:
        for job in stored:
            job.__class__ = StoredJob
        return _encoder.encode(jobs)
    finally:
        for job in stored:
            job.__class__ = Job


def write_streamed(directory: Path, snap: Snapshot) -> None:
    """Encode and write the temporary snapshot a chunk at a time (the snapshot child):
    the same bytes as `write_temporary(directory, encode(snap))`, without ever holding
    them all (three copies of the whole payload were most of what a child allocated)."""
    fd = os.open(directory / TEMPORARY, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        _write_all(fd, MAGIC + HEADER.pack(0, 0))
        length, crc = 0, 0
        for part in _payload(snap, in_place=True):
            _write_all(fd, part)
            length += len(part)
            crc = zlib.crc32(part, crc)
        header = HEADER.pack(length, crc)
        if os.pwrite(fd, header, len(MAGIC)) != len(header):
            raise OSError("short write of the snapshot's header")
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def write(directory: Path, data: bytes) -> None:
    """Atomically replace the snapshot (blocking: run it in a thread)."""
    write_temporary(directory, data)
    publish(directory)


def write_temporary(directory: Path, data: bytes) -> None:
    """The new snapshot, whole and fsync'd, beside the old one (which still counts)."""
    fd = os.open(directory / TEMPORARY, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        _write_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def publish(directory: Path) -> int:
    """Put the written temporary snapshot in the old one's place; its size in bytes."""
    size = (directory / TEMPORARY).stat().st_size
    os.replace(directory / TEMPORARY, directory / FILENAME)
    fsync_dir(directory)
    return size


def load(directory: Path, share: Sharer | None = None) -> Snapshot | None:
    """The snapshot, None if there is none; each job goes through `share` as it is decoded."""
    path = directory / FILENAME
    try:
        with open(path, "rb") as f:
            if os.fstat(f.fileno()).st_size == 0:
                raise Corruption(path, 0, "empty snapshot")
            # Mapped, not read: the bytes of an older snapshot, whose jobs are all decoded,
            # stay in the page cache instead of the heap. One with an index keeps its jobs'
            # bytes (jobtable.py): read, so that they outlive the file (a mapping of a file
            # cut short under it would fault).
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
                if _indexed(mapped):
                    f.seek(0)
                    return _decode(path, f.read(), share)
                return _decode(path, mapped, share)
    except FileNotFoundError:
        return None


def _indexed(data: mmap.mmap) -> bool:
    """Whether the snapshot may have an index: its `SnapshotFile` array has all 10 fields
    (snapshots written before the index have 7 or 9)."""
    start = len(MAGIC) + HEADER.size
    return len(data) > start and data[: len(MAGIC)] == MAGIC and data[start] == 0x9A


def _decode(path: Path, data: mmap.mmap | bytes, share: Sharer | None) -> Snapshot:
    start = len(MAGIC) + HEADER.size
    magic = data[: len(MAGIC)]
    if len(data) < start or magic not in (MAGIC, MAGIC_V2, MAGIC_V1):
        raise Corruption(path, 0, "not a phxq snapshot")
    length, crc = HEADER.unpack_from(data, len(MAGIC))
    if isinstance(data, bytes):  # (jobs kept as views of it: no memoryview to release)
        if (
            len(data) - start < length
            or zlib.crc32(memoryview(data)[start : start + length]) != crc
        ):
            raise Corruption(path, 0, "snapshot checksum mismatch")
        try:
            return _from_file(
                _file_decoder.decode(memoryview(data)[start : start + length]), share, True
            )
        except (msgspec.DecodeError, UnicodeDecodeError) as e:
            raise Corruption(path, start, f"undecodable snapshot ({e})") from e
    with memoryview(data) as view:
        payload = view[start : start + length]
        try:
            if len(payload) != length or zlib.crc32(payload) != crc:
                raise Corruption(path, 0, "snapshot checksum mismatch")
            if magic == MAGIC_V1:
                v1 = _v1_decoder.decode(payload)
                if share is not None:
                    for job in v1.jobs:
                        share(job)
                return Snapshot(**msgspec.structs.asdict(v1))
            return _from_file(_file_decoder.decode(payload), share, as_arrays=magic == MAGIC)
        except (msgspec.DecodeError, UnicodeDecodeError) as e:
            raise Corruption(path, start, f"undecodable snapshot ({e})") from e
        finally:
            payload.release()


def _jobs_from_arrays(chunk: msgspec.Raw) -> list[Job]:
    return as_jobs(_chunk_decoder.decode(chunk))


def _blocks(chunks: list[msgspec.Raw], index: SnapshotIndex) -> list[Block]:
    """Each chunk a Block of its jobs' stored bytes and its slice of the columns (all
    views of the snapshot's buffer): no job is decoded (see jobtable.py)."""
    ids, status, flags = column(index.ids, "q"), index.status, index.flags
    queue, priority = column(index.queue, "I"), column(index.priority, "q")
    run_at = column(index.run_at, "d")
    out, at = [], 0
    for chunk in chunks:
        n = _array_length(chunk)
        end = at + n
        out.append(
            Block(
                chunk,
                ids[at:end],
                status[at:end],
                queue[at:end],
                index.queues,
                priority[at:end],
                run_at[at:end],
                flags[at:end],
            )
        )
        at = end
    if at != len(ids):
        raise msgspec.DecodeError(f"the index has {len(ids)} jobs, the chunks {at}")
    return out


def _array_length(raw: msgspec.Raw) -> int:
    """The number of elements of the msgpack array `raw` (from its header)."""
    with memoryview(raw) as view:
        first = view[0]
        if 0x90 <= first <= 0x9F:
            return first & 0x0F
        if first == 0xDC:
            return int.from_bytes(view[1:3], "big")
        if first == 0xDD:
            return int.from_bytes(view[1:5], "big")
    raise msgspec.DecodeError("a snapshot chunk is not an array")


def _from_file(file: SnapshotFile, share: Sharer | None, as_arrays: bool) -> Snapshot:
    jobs: list[Any] = [] if file.index is None else _blocks(file.chunks, file.index)
    for chunk in file.chunks if file.index is None else ():
        decoded = _jobs_from_arrays(chunk) if as_arrays else _v2_chunk_decoder.decode(chunk)
        if share is not None:
            share.all(decoded)
        jobs += decoded
    order = array("q")
    order.frombytes(file.order)
    if sys.byteorder != "little":
        order.byteswap()
    return Snapshot(
        file.lsn,
        file.next_id,
        jobs,
        file.paused,
        file.paused_all,
        order,
        file.limits,
        file.schedules,
        file.rates,
        file.index,
    )
