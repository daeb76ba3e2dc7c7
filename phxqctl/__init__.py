"""phxqctl: the command-line client of phxq, and its Python API.

`Client` is imported on first use (module `__getattr__`): it needs msgspec, and the
`phxqctl` console script imports this package before anything else, so an eager import
would cost every `phxqctl status` the msgspec import that the command line avoids.
"""

from __future__ import annotations

from phxqctl.errors import DaemonUnreachable, NotInAJob, PhxqError, RemoteError, UsageError
from phxqctl.report import progress

TYPE_CHECKING = False  # not typing's: importing typing costs a few ms
if TYPE_CHECKING:
    from typing import Any

    from phxqctl.client import Client

__all__ = [
    "Client",
    "DaemonUnreachable",
    "NotInAJob",
    "PhxqError",
    "RemoteError",
    "UsageError",
    "progress",
]


def __getattr__(name: str) -> Any:
    if name == "Client":
        from phxqctl.client import Client

        return Client
    raise AttributeError(f"module 'phxqctl' has no attribute {name!r}")
