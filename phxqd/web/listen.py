"""Where the HTTP server listens: "HOST:PORT" (TCP) or a Unix socket path (for a
reverse proxy), bound by phxqd itself before it says it is ready, so a taken port is an
error at start-up, not a log line later."""

from __future__ import annotations

import contextlib
import ipaddress
import os
import socket
import stat
from dataclasses import dataclass


@dataclass(frozen=True)
class Address:
    #: "host:port" or the socket's path
    text: str
    #: a Unix socket path, else None
    path: str | None
    host: str
    port: int

    @property
    def loopback(self) -> bool:
        """Only this machine can reach it: no token is needed (except to submit)."""
        if self.path is not None:
            return False  # a reverse proxy puts the world in front of it
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False


def parse(text: str) -> Address:
    """ "127.0.0.1:8765", "[::1]:8765", ":8765" (loopback), "unix:/run/x.sock" or "/run/x.sock"."""
    if text.startswith("unix:"):
        text = text[5:]
    if text.startswith("/"):
        return Address(text, text, "", 0)
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{text!r} is not HOST:PORT or a Unix socket path")
    host = host.strip("[]") or "127.0.0.1"
    return Address(text, None, host, int(port))


def bind(address: Address) -> socket.socket:
    """A listening socket at `address` (OSError if it cannot be had)."""
    if address.path is not None:
        path = address.path
        with contextlib.suppress(FileNotFoundError):
            if stat.S_ISSOCK(os.lstat(path).st_mode):
                os.unlink(path)  # a leftover of a previous phxqd (the state dir lock is ours)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(path)
            # the proxy is usually another user of the same group
            os.chmod(path, 0o660)
            sock.listen(128)
        except OSError:
            sock.close()
            raise
        return sock
    family = socket.AF_INET6 if ":" in address.host else socket.AF_INET
    # proto given: asyncio sets TCP_NODELAY only on sockets whose proto says TCP (an
    # accepted socket inherits it), and without it a reply written in two parts waits
    # out the client's delayed ACK, 40 ms a request
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((address.host, address.port))
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    return sock
