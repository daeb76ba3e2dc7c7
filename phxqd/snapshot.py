"""Snapshots: the whole state in one file, replaced atomically, so old segments can go.

`snapshot` is `magic | u32 length | u32 crc32 | msgpack Snapshot`. It is written to a
temporary file, fsync'd, renamed over the old one, and the directory fsync'd: at every
instant the directory holds either the old snapshot or the new one, whole. A snapshot that
fails its checksum is never replaced or deleted: the daemon refuses to start and says so.
"""

from __future__ import annotations

import mmap
import os
import struct
import zlib
from pathlib import Path

import msgspec

from phxqd.journal import Corruption, fsync_dir
from phxqd.state import Snapshot

MAGIC = b"PHXQSNP1"
HEADER = struct.Struct("<II")
FILENAME = "snapshot"

_encoder = msgspec.msgpack.Encoder()
_decoder: msgspec.msgpack.Decoder[Snapshot] = msgspec.msgpack.Decoder(Snapshot)


def encode(snap: Snapshot) -> bytes:
    """Done on the event loop, so the bytes match the state at one instant."""
    payload = _encoder.encode(snap)
    return MAGIC + HEADER.pack(len(payload), zlib.crc32(payload)) + payload


def write(directory: Path, data: bytes) -> None:
    """Atomically replace the snapshot (blocking: run it in a thread)."""
    tmp = directory / (FILENAME + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, directory / FILENAME)
    fsync_dir(directory)


def load(directory: Path) -> Snapshot | None:
    path = directory / FILENAME
    try:
        with open(path, "rb") as f:
            if os.fstat(f.fileno()).st_size == 0:
                raise Corruption(path, 0, "empty snapshot")
            # mapped, not read: the bytes stay in the page cache instead of the heap
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
                return _decode(path, data)
    except FileNotFoundError:
        return None


def _decode(path: Path, data: mmap.mmap) -> Snapshot:
    start = len(MAGIC) + HEADER.size
    if len(data) < start or data[: len(MAGIC)] != MAGIC:
        raise Corruption(path, 0, "not a phxq snapshot")
    length, crc = HEADER.unpack_from(data, len(MAGIC))
    with memoryview(data) as view:
        payload = view[start : start + length]
        try:
            if len(payload) != length or zlib.crc32(payload) != crc:
                raise Corruption(path, 0, "snapshot checksum mismatch")
            return _decoder.decode(payload)
        except msgspec.DecodeError as e:
            raise Corruption(path, start, f"undecodable snapshot ({e})") from e
        finally:
            payload.release()
