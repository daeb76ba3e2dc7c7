"""`phxqd journal verify` and `phxqd journal repair`: look at a state dir, and mend it.

verify reads everything the daemon would read at start-up and changes nothing. repair
first copies the whole journal directory aside, then cuts the journal at the first damaged
record (dropping every record after it, and any later segment), so that the daemon starts
with the good prefix. What was cut is said, and stays in the backup.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from phxqd.local.journal import Corruption, fsync_dir, list_segments
from phxqd.local.recovery import Recovered, recover
from phxqd.local.snapshot import FILENAME as SNAPSHOT


def verify(journal_dir: Path) -> int:
    """Print what the journal holds; exit status 0 if phxqd can start on it, else 1."""
    if not journal_dir.is_dir():
        print(f"{journal_dir}: no journal here (a new state dir)")
        return 0
    try:
        got = recover(journal_dir, cut_torn_tail=False)
    except Corruption as e:
        print(f"DAMAGED: {e}")
        print(
            f"phxqd will not start on it; `phxqd journal repair` cuts it at byte {e.offset}"
            " after taking a backup"
        )
        return 1
    describe(journal_dir, got)
    return 0


def describe(journal_dir: Path, got: Recovered) -> None:
    snap = "none" if got.snapshot_lsn == 0 else f"up to record {got.snapshot_lsn}"
    print(f"{journal_dir}: ok")
    print(f"  snapshot: {snap}")
    print(
        f"  segments: {got.segments}, records replayed: {got.records}, next record: {got.next_lsn}"
    )
    print(f"  jobs: {len(got.state.jobs)}, next job id: {got.state.next_id}")
    if got.torn is not None:
        path, offset, why = got.torn
        print(
            f"  torn tail: {path} at byte {offset} ({why}); phxqd cuts it at start "
            "(those bytes were never acknowledged)"
        )


def repair(journal_dir: Path) -> int:
    if not journal_dir.is_dir():
        print(f"{journal_dir}: no journal here, nothing to repair")
        return 0
    backup = journal_dir.with_name(f"journal.backup-{time.strftime('%Y%m%dT%H%M%S')}")
    shutil.copytree(journal_dir, backup)
    print(f"backup of the journal as it was: {backup}")
    for _ in range(len(list_segments(journal_dir)) + 1):
        try:
            got = recover(journal_dir, cut_torn_tail=True)
        except Corruption as e:
            if e.path.name == SNAPSHOT:
                print(
                    f"DAMAGED SNAPSHOT: {e}\nrepair cannot rebuild a snapshot: restore the "
                    "state dir from a backup"
                )
                return 1
            cut(journal_dir, e)
            continue
        describe(journal_dir, got)
        return 0
    print("repair did not converge; the backup is untouched")
    return 1


def cut(journal_dir: Path, damage: Corruption) -> None:
    """Truncate the damaged segment at the bad record and drop every later segment.

    Damage at offset 0 (a segment that starts at the wrong record) drops the segment whole.
    """
    size = damage.path.stat().st_size
    fd = os.open(damage.path, os.O_WRONLY)
    try:
        os.ftruncate(fd, damage.offset)
        os.fsync(fd)
    finally:
        os.close(fd)
    print(
        f"cut {damage.path} at byte {damage.offset}: dropped {size - damage.offset} bytes "
        f"({damage.why})"
    )
    first = int(damage.path.stem)
    for seg_first, path in list_segments(journal_dir):
        if seg_first > first:
            print(f"dropped later segment {path} ({path.stat().st_size} bytes)")
            path.unlink()
    fsync_dir(journal_dir)
