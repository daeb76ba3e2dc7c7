"""Snapshots: the whole state in one file, replaced atomically, so old segments can go.

`snapshot` is `magic | u32 length | u32 crc32 | msgpack SnapshotFile`. It is written to a
temporary file, fsync'd, renamed over the old one, and the directory fsync'd: at every
instant the directory holds either the old snapshot or the new one, whole. A snapshot that
fails its checksum is never replaced or deleted: the daemon refuses to start and says so.

The jobs are stored in chunks of CHUNK jobs, each its own msgpack array, and the queue
order as packed 64-bit integers: a restart decodes one chunk at a time and lets a `Sharer`
drop each job's duplicate strings before the next chunk is decoded, so the heap does not
end up full of the holes a million dropped copies leave (RSS after a restart with a
million jobs went from 819 to ~600 bytes per job), and the order costs no million
short-lived int objects.

Each job is stored as an array of its fields, not a map (format 3): the field names were
two thirds of a snapshot (265 bytes per job; 80 as arrays), and every byte is written,
fsync'd and read back at each restart. Older formats (1: one msgpack `Snapshot`; 2: jobs
as maps) are still read.
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

from phxqd.local.jobtable import Stored
from phxqd.local.journal import Corruption, fsync_dir
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
_raw_chunk_decoder = msgspec.msgpack.Decoder(list[msgspec.Raw])
_v2_chunk_decoder = msgspec.msgpack.Decoder(list[Job])
_v1_decoder = msgspec.msgpack.Decoder(Snapshot)


def encode(snap: Snapshot) -> bytes:
    """Done on the event loop, so the bytes match the state at one instant."""
    payload = b"".join(_payload(snap, in_place=False))
    return MAGIC + HEADER.pack(len(payload), zlib.crc32(payload)) + payload


def _payload(snap: Snapshot, in_place: bool) -> Iterator[bytes]:
    """The msgpack `SnapshotFile` of `snap`, in parts whose concatenation is its encoding
    (msgpack nests by concatenation), so a writer need never hold the whole of it.

    `in_place`: each chunk's jobs are made `StoredJob`s (the same layout, see model.py)
    while it is encoded, and made `Job`s again after, instead of copied into tuples of
    their fields: for the snapshot child (forked.py), where a tuple per job took a
    reference to each of its fields, and every page holding a float or int of a job was
    copied for that.
    """
    jobs = snap.jobs
    order = array("q", snap.order)
    if sys.byteorder != "little":
        order.byteswap()
    yield _array_header(len(SnapshotFile.__struct_fields__))
    for value in (snap.lsn, snap.next_id, snap.paused, snap.paused_all, snap.limits):
        yield _encoder.encode(value)
    yield _encoder.encode(order.tobytes())
    del order
    yield _array_header(-(-len(jobs) // CHUNK))
    encode_chunk = _encode_chunk_in_place if in_place else _encode_chunk
    for i in range(0, len(jobs), CHUNK):
        yield encode_chunk(jobs[i : i + CHUNK])
    yield _encoder.encode(snap.schedules)
    yield _encoder.encode(snap.rates)
    yield _encoder.encode(snap.index)


def _array_header(n: int) -> bytes:
    if n < 16:
        return bytes([0x90 | n])
    if n < 1 << 16:
        return b"\xdc" + n.to_bytes(2, "big")
    return b"\xdd" + n.to_bytes(4, "big")


def _encode_chunk(jobs: list[Stored]) -> bytes:
    """(A job still in its stored bytes is written as it is, as a msgspec.Raw is.)"""
    return _encoder.encode(
        [job if type(job) is msgspec.Raw else msgspec.structs.astuple(job) for job in jobs]
    )


def _encode_chunk_in_place(jobs: list[Stored]) -> bytes:
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


def _write_all(fd: int, data: bytes) -> None:
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
                snap = _v1_decoder.decode(payload)
                if share is not None:
                    for job in snap.jobs:
                        share(job)  # type: ignore[arg-type]  # (format 1: all Jobs)
                return snap
            return _from_file(_file_decoder.decode(payload), share, as_arrays=magic == MAGIC)
        except (msgspec.DecodeError, UnicodeDecodeError) as e:
            raise Corruption(path, start, f"undecodable snapshot ({e})") from e
        finally:
            payload.release()


def _jobs_from_arrays(chunk: msgspec.Raw) -> list[Job]:
    return as_jobs(_chunk_decoder.decode(chunk))


def _from_file(file: SnapshotFile, share: Sharer | None, as_arrays: bool) -> Snapshot:
    jobs: list[Stored] = []
    if file.index is not None:  # the jobs stay their stored bytes (see jobtable.py)
        for chunk in file.chunks:
            jobs += _raw_chunk_decoder.decode(chunk)
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
