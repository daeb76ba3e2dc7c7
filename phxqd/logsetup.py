"""phxqd's own log: stderr, in the form its reader wants.

Under journald (systemd sets `$JOURNAL_STREAM` to the device and inode of the stream it
connected to stderr) every line starts with its syslog priority, `<3>` for an error,
`<4>` for a warning..., which journald parses into the entry's priority: that is what
makes `journalctl -p warning` work. journald stamps the time itself, so the line carries
none. Anywhere else (a terminal, a file, a test) lines keep a timestamp and a level name.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping
from typing import NoReturn, TextIO

PLAIN_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
JOURNAL_FORMAT = "%(name)s: %(message)s"

#: syslog priorities (sd-daemon.h's SD_ERR...) of the logging levels
PRIORITIES = {
    logging.CRITICAL: 2,
    logging.ERROR: 3,
    logging.WARNING: 4,
    logging.INFO: 6,
    logging.DEBUG: 7,
}


def priority(levelno: int) -> int:
    """The syslog priority of a logging level (levels between two take the lower one's)."""
    for level, prio in PRIORITIES.items():  # from the most severe down
        if levelno >= level:
            return prio
    return 7


class JournalFormatter(logging.Formatter):
    """`<N>logger: message`, with the prefix on every line of a multi-line record.

    journald makes each line of the stream an entry of its own, so a traceback whose
    continuation lines lacked the prefix would be filed at the default priority (info)
    and vanish from `journalctl -p err`.
    """

    def __init__(self) -> None:
        super().__init__(JOURNAL_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{priority(record.levelno)}>"
        return "\n".join(prefix + line for line in super().format(record).splitlines())


def under_journald(stream: TextIO, environ: Mapping[str, str] | None = None) -> bool:
    """True when `stream` is the journal stream systemd set up for this process.

    `$JOURNAL_STREAM` is inherited by children whose stderr may go elsewhere, so the
    variable alone is not enough: its `device:inode` must be that of the stream itself.
    """
    value = (os.environ if environ is None else environ).get("JOURNAL_STREAM", "")
    dev, _, ino = value.partition(":")
    try:
        st = os.fstat(stream.fileno())
        return (st.st_dev, st.st_ino) == (int(dev), int(ino))
    except (ValueError, OSError):
        return False


def setup(level: str, stream: TextIO | None = None) -> bool:
    """Send phxqd's log to stderr at `level`; True if it goes to journald."""
    stream = sys.stderr if stream is None else stream
    handler = logging.StreamHandler(stream)
    journald = under_journald(stream)
    handler.setFormatter(JournalFormatter() if journald else logging.Formatter(PLAIN_FORMAT))
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
    root.addHandler(handler)
    set_level(level)
    return journald


def set_level(level: str) -> None:
    """Change the log level at run time (the config's `log_level`, on reload)."""
    logging.getLogger().setLevel(level.upper())


def error_text(message: str) -> str:
    """`message` as an error for stderr: each line prefixed `<3>` under journald, where
    unprefixed text would be filed at journald's default priority (info)."""
    if not under_journald(sys.stderr):
        return message
    return "\n".join(f"<{PRIORITIES[logging.ERROR]}>{line}" for line in message.splitlines())


def fatal(message: str, status: int = 1) -> NoReturn:
    """Exit with `status`, saying why on stderr (as an error entry under journald)."""
    if status == 1:
        raise SystemExit(error_text(message))
    print(error_text(message), file=sys.stderr)
    raise SystemExit(status)
