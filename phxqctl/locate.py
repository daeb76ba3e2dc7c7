"""Which socket phxqctl talks to, without importing platformdirs in the common cases.

The rules are phxqd.paths.client_socket_path's (flag, PHXQ_SOCKET, RUNTIME_DIRECTORY, the
user's runtime directory, else the system service's socket). The user's runtime directory
is platformdirs' choice, which checks $XDG_RUNTIME_DIR carefully (owner, mode, parents);
platformdirs costs about 10 ms to import. So when $XDG_RUNTIME_DIR passes a check at least
as strict as platformdirs' it is used directly, and anything unusual is handed to
phxqd.paths. tests/test_wire.py checks that both give the same answer.
"""

from __future__ import annotations

import os
import stat

from phxqd.contract import SOCKET_NAME, SYSTEM_SOCKET


def socket_path(flag: str | None = None) -> str:
    if flag:
        return flag
    if env := os.environ.get("PHXQ_SOCKET"):
        return env
    if runtime := os.environ.get("RUNTIME_DIRECTORY"):
        return os.path.join(runtime.split(":")[0], SOCKET_NAME)
    xdg = os.environ.get("XDG_RUNTIME_DIR", "")
    if _surely_private(xdg):
        own = os.path.join(xdg, "phxq", SOCKET_NAME)
        if not os.path.exists(own) and os.path.exists(SYSTEM_SOCKET):
            return SYSTEM_SOCKET
        return own
    from phxqd import paths  # the careful way: platformdirs

    return str(paths.client_socket_path())


def _surely_private(directory: str) -> bool:
    """A directory platformdirs accepts as the runtime directory: absolute, a real
    directory of ours with mode 0700, below parents that are real directories owned by
    root or us and writable by no other user (stricter than platformdirs: when in doubt,
    False, and platformdirs decides)."""
    if not os.path.isabs(directory):
        return False
    uid = os.geteuid()
    try:
        info = os.lstat(directory)
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != uid or info.st_mode & 0o777 != 0o700:
            return False
        parent = os.path.dirname(os.path.normpath(directory))
        while True:
            info = os.lstat(parent)
            if (
                not stat.S_ISDIR(info.st_mode)
                or info.st_uid not in (0, uid)
                or info.st_mode & (stat.S_IWOTH | stat.S_IWGRP)
            ):
                return False
            if parent == "/":
                return True
            parent = os.path.dirname(parent)
    except OSError:
        return False
