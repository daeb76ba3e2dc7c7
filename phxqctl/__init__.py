"""phxqctl: the command-line client of phxq, and its Python API."""

from phxqctl.client import (
    Client,
    DaemonUnreachable,
    NotInAJob,
    PhxqError,
    RemoteError,
    progress,
)

__all__ = ["Client", "DaemonUnreachable", "NotInAJob", "PhxqError", "RemoteError", "progress"]
