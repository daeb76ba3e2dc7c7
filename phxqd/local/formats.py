"""Which on-disk format a state directory holds, so an upgrade reads it and a downgrade
refuses it instead of calling it damage.

The state directory's `format` file names the format of everything phxqd writes there
(journal records, the snapshot, the layout of journal/ and logs/), one number for all: a
newer phxqd that writes anything an older one cannot read (a new event, a new snapshot
layout) raises `STATE_FORMAT` and adds a line to `HISTORY`. It reads every earlier format;
an older phxqd given a newer one stops before reading or writing anything (`NewerFormat`),
and so do `phxqd journal verify` and `repair`, so no tool of an older version ever "repairs"
a newer journal away.

The file is stamped before the first record is appended, so a directory never holds
records of a format it does not name (a directory with no `format` file was written by a
phxqd from before the file existed: format 1, whose records every version reads).
"""

from __future__ import annotations

import os
from pathlib import Path

#: the format this phxqd writes
STATE_FORMAT = 3
#: what each format added; docs/architecture.md "Formats" says the same
HISTORY: dict[int, str] = {
    1: "journal segments of `u32 length | u32 crc32 | msgpack event` records (the events of "
    "phxqd/events.py, submits stored as `subs` arrays), snapshot PHXQSNP3 (PHXQSNP1 and "
    "PHXQSNP2 still read); the `format` file appeared within format 1, so a state dir "
    "without one is format 1",
    2: "schedules and queue rates: the events `queue-rate`, `sched`, `sched-rm`, "
    "`sched-pause` and `sched-fire` (a firing's fire time and its job in one record), and "
    "two trailing fields of the PHXQSNP3 snapshot (`schedules`, `rates`), empty when read "
    "from format 1",
    3: "preallocated journal segments: each new segment starts with the magic PHXQJNL3 and "
    "is preallocated with zeros, its records ending at the first all-zero header (segments "
    "without the magic are still read the old way)",
}
#: the file's name in the state dir, and the words before the number in it
FILE = "format"
PREFIX = "phxq state format "
#: phxqd's exit status when the state dir is of a newer format (the unit does not restart)
EXIT_NEWER = 3


class NewerFormat(Exception):
    """The state dir was written by a newer phxqd: this one must not touch it."""

    def __init__(self, path: Path, found: int) -> None:
        super().__init__(
            f"{path} says the state dir holds format {found}, written by a newer phxq; "
            f"this phxqd reads formats 1 to {STATE_FORMAT}. Nothing was changed: run the "
            "newer phxqd on it (a downgrade is not supported; see docs/operations.md, "
            "Upgrades)"
        )
        self.path, self.found = path, found


class UnreadableFormat(Exception):
    """The `format` file is there but says nothing phxqd understands."""


def read(state_dir: Path) -> int | None:
    """The format the state dir names, None if it names none (fresh, or format 1)."""
    path = state_dir / FILE
    try:
        text = path.read_text(encoding="ascii", errors="replace")
    except FileNotFoundError:
        return None
    number = text.strip().removeprefix(PREFIX.strip()).strip()
    if not text.startswith(PREFIX) or not number.isdigit():
        raise UnreadableFormat(
            f"{path}: expected `{PREFIX}N`, found {text[:60]!r}; put back the file the "
            "state dir came with (nothing was changed)"
        )
    return int(number)


def check(state_dir: Path) -> int:
    """The format of the state dir (1 if it names none); `NewerFormat` if this phxqd
    cannot read it."""
    found = read(state_dir)
    if found is not None and found > STATE_FORMAT:
        raise NewerFormat(state_dir / FILE, found)
    return 1 if found is None else found


def stamp(state_dir: Path) -> None:
    """Name this phxqd's format in the state dir, durably, unless it does already.

    Written to a temporary file, fsync'd, renamed, and the directory fsync'd: after a power
    cut the directory names the old format (and holds only its records) or the new one.
    """
    if read(state_dir) == STATE_FORMAT:
        return
    path, tmp = state_dir / FILE, state_dir / (FILE + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, f"{PREFIX}{STATE_FORMAT}\n".encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dir_fd = os.open(state_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
