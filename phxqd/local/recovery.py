"""Rebuild the state from disk: the snapshot, then every later journal record.

The rules (DESIGN.md, "Durability"): a damaged last record of the newest segment is a torn
write and is cut off; damage anywhere else, or a gap in the LSNs, is corruption, and the
daemon refuses to start rather than guess, naming the file and the byte offset.
"""

from __future__ import annotations

import fcntl
import gc
import itertools
import logging
import os
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import msgspec

from phxqd.events import AnyEvent
from phxqd.local import snapshot
from phxqd.local.jobtable import Block
from phxqd.local.journal import (
    MAX_RECORD,
    RECORD_HEADER,
    Corruption,
    Scan,
    list_segments,
    lost_write,
    make_dirs,
    scan_segment,
)
from phxqd.local.state import Sharer, State

log = logging.getLogger("phxqd.local.recovery")


@dataclass
class Recovered:
    state: State
    next_lsn: int
    snapshot_lsn: int
    segments: int = 0
    records: int = 0
    #: (path, offset, why) of a torn tail found (and cut, when asked to)
    torn: tuple[Path, int, str] | None = None
    notes: list[str] = field(default_factory=list)


class StateDirBusy(Exception):
    pass


def lock_state_dir(state_dir: Path) -> int:
    """Hold an exclusive lock on the state dir for the life of the process.

    Two daemons (or a daemon and `journal repair`) on one journal would corrupt it; the
    lock dies with the process, so a crash never leaves it stale.
    """
    make_dirs(state_dir)
    fd = os.open(state_dir / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise StateDirBusy(f"{state_dir} is in use by another phxqd") from None
    return fd


def recover(journal_dir: Path, cut_torn_tail: bool, now: float | None = None) -> Recovered:
    # Millions of objects are created and none is garbage: the cyclic collector would scan
    # them again and again for nothing (it made a 1M-job restart several times slower).
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        return _recover(journal_dir, cut_torn_tail, now)
    finally:
        if was_enabled:
            gc.enable()


def _recover(journal_dir: Path, cut_torn_tail: bool, now: float | None) -> Recovered:
    snap = snapshot.load(journal_dir, Sharer())
    state = State() if snap is None else State.from_snapshot(snap, now, shared=True)
    snap_lsn = 0 if snap is None else snap.lsn
    out = Recovered(state, snap_lsn + 1, snap_lsn)
    segments = list_segments(journal_dir)
    expected: int | None = None
    for i, (first, path) in enumerate(segments):
        if expected is None:
            if first > snap_lsn + 1:
                raise Corruption(
                    path,
                    0,
                    f"records {snap_lsn + 1}..{first - 1} are missing "
                    "(no snapshot or segment holds them)",
                )
        elif first != expected and not expected < first <= snap_lsn + 1:
            raise Corruption(path, 0, f"segment starts at record {first}, expected {expected}")
        # (A gap whose records the snapshot holds loses nothing. Older phxqd could leave
        # one with fsync = "batch" and a power cut: an empty segment before the gap.)
        # Each event applied as soon as it is decoded (see scan_segment); if the segment
        # then proves damaged, Corruption ends the recovery and this state is dropped.
        lsn = itertools.count(first)

        def replay(event: AnyEvent | Block, lsn: Iterator[int] = lsn) -> None:
            if next(lsn) > snap_lsn:
                state.apply(event)
                out.records += 1

        scan = scan_segment(path, replay, encoded=True)
        if scan.tail_problem is not None:
            last = i == len(segments) - 1
            if not last or not _torn(path, scan):
                raise Corruption(path, scan.good_bytes, scan.tail_problem)
            out.torn = (path, scan.good_bytes, scan.tail_problem)
            if cut_torn_tail:
                _truncate(path, scan.good_bytes)
                log.warning(
                    "torn tail cut: %s at byte %d (%s, %d bytes dropped, %d of them zeros "
                    "preallocated)",
                    path,
                    scan.good_bytes,
                    scan.tail_problem,
                    scan.size - scan.good_bytes,
                    scan.size - max(scan.data_end, scan.good_bytes),
                )
        expected = first + scan.records
        out.segments += 1
    if expected is not None:
        out.next_lsn = max(expected, snap_lsn + 1)
    return out


def _torn(path: Path, scan: Scan) -> bool:
    """Is the damage at the end of the newest segment a torn write (cut it) rather than
    corruption (refuse to start)?

    A crash leaves at most a damaged end; a flipped bit in the middle leaves good records
    after the bad one, and cutting them off would lose acknowledged jobs. So: torn when no
    whole record follows it, or, in a preallocated segment, when the bytes before the next
    whole record hold a sector of zeros, what a lost write leaves (see journal.lost_write).
    """
    data = path.read_bytes()
    after = _next_whole_record(data, scan.good_bytes)
    return after is None or (scan.preallocated and lost_write(data, scan.good_bytes, after))


def _next_whole_record(data: bytes, good: int) -> int | None:
    """Where the first whole, valid record after byte `good` starts, if one does."""
    hsize = RECORD_HEADER.size
    decoder = msgspec.msgpack.Decoder()
    # A record's header has a byte other than zero (its length): none starts in the zeros
    # that end a preallocated segment (64 MiB of positions to try one by one, otherwise).
    last = len(data.rstrip(b"\0"))
    for pos in range(good + 1, min(len(data) - hsize + 1, last)):
        length, crc = RECORD_HEADER.unpack_from(data, pos)
        end = pos + hsize + length
        if 0 < length <= MAX_RECORD and end <= len(data):
            payload = data[pos + hsize : end]
            if zlib.crc32(payload) == crc:
                try:
                    decoder.decode(payload)
                except (msgspec.DecodeError, UnicodeDecodeError):
                    continue
                return pos
    return None


def _truncate(path: Path, size: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.ftruncate(fd, size)
        os.fsync(fd)
    finally:
        os.close(fd)
