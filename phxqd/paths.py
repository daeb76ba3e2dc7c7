"""Where phxq keeps things by default (DESIGN.md, "Contract: paths and environment").

Shared by the daemon and the client so both agree on the socket without being told.
Order: an explicit flag, then the PHXQ_* variable, then systemd's directory variable,
then the user's platformdirs location.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

from phxqd import contract
from phxqd.contract import SOCKET_NAME

APP = "phxq"


def _runtime_dir() -> Path:
    import platformdirs

    with warnings.catch_warnings():
        # Without XDG_RUNTIME_DIR (root in a container, cron) platformdirs falls back to
        # /tmp/runtime-$UID and warns; that fallback is what we want, the warning is noise.
        warnings.simplefilter("ignore")
        return Path(platformdirs.user_runtime_dir(APP))


def socket_path(flag: str | None = None, configured: str | None = None) -> Path:
    if flag:
        return Path(flag)
    if env := os.environ.get("PHXQ_SOCKET"):
        return Path(env)
    if configured:
        return Path(configured)
    if runtime := os.environ.get("RUNTIME_DIRECTORY"):
        return Path(runtime.split(":")[0]) / SOCKET_NAME
    return _runtime_dir() / SOCKET_NAME


#: where the system service's socket is (systemd/phxqd.socket)
SYSTEM_SOCKET = Path(contract.SYSTEM_SOCKET)


def client_socket_path(flag: str | None = None) -> Path:
    """The socket a client talks to: as the daemon's, except that without a flag or
    PHXQ_SOCKET, and no daemon of the user's own, the system service's socket is used."""
    if flag or os.environ.get("PHXQ_SOCKET") or os.environ.get("RUNTIME_DIRECTORY"):
        return socket_path(flag)
    own = socket_path()
    if not own.exists() and SYSTEM_SOCKET.exists():
        return SYSTEM_SOCKET
    return own


def state_dir(flag: str | None = None, configured: str | None = None) -> Path:
    if flag:
        return Path(flag)
    if env := os.environ.get("PHXQ_STATE_DIR"):
        return Path(env)
    if configured:
        return Path(configured)
    if systemd := os.environ.get("STATE_DIRECTORY"):
        return Path(systemd.split(":")[0])
    import platformdirs

    return Path(platformdirs.user_state_dir(APP))


def config_path(flag: str | None = None) -> Path:
    if flag:
        return Path(flag)
    if env := os.environ.get("PHXQ_CONFIG"):
        return Path(env)
    if systemd := os.environ.get("CONFIGURATION_DIRECTORY"):
        return Path(systemd.split(":")[0]) / "phxqd.toml"
    import platformdirs

    return Path(platformdirs.user_config_dir(APP)) / "phxqd.toml"
