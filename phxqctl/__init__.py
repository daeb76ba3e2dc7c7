"""phxqctl: the command-line client of phxq, and its Python API."""

from phxqctl.client import Client, DaemonUnreachable, PhxqError, RemoteError

__all__ = ["Client", "DaemonUnreachable", "PhxqError", "RemoteError"]
