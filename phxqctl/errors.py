"""The client's errors, each with the phxqctl exit status it stands for (DESIGN.md).

Standard library only: the command line imports this on every start.
"""

from __future__ import annotations

#: the protocol's error codes and the exit status each maps to
from phxqd.contract import ERROR_EXIT


class PhxqError(Exception):
    """Base of the client's errors; `exit_status` is what phxqctl exits with."""

    exit_status = 1


class DaemonUnreachable(PhxqError):
    exit_status = 3


class RemoteError(PhxqError):
    """The daemon refused the request; `code` is the protocol's error code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.exit_status = ERROR_EXIT.get(code, 1)


class NotInAJob(PhxqError):
    exit_status = 2


class UsageError(PhxqError):
    exit_status = 2


def one_line(text: str, limit: int = 400) -> str:
    """A message as one line of printable text, whatever a user put in it (newlines,
    escape sequences, bytes that were not UTF-8), and not a screenful."""
    if not text.isprintable():
        text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    return text if len(text) <= limit else text[: limit - 1] + "…"
