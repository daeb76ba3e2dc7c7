"""Who may use the socket: checked by the kernel's peer credentials (SO_PEERCRED).

The test runs as root and forks a child that becomes `nobody` (a real other user) before
it connects; skipped where the tests do not run as root (failed under CI=1).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import select
import shutil
import socket
import stat
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from phxqctl.errors import RemoteError
from phxqctl.wire import Connection
from phxqd import protocol
from tests.conftest import Daemon, unavailable


@pytest.fixture(autouse=True)
def as_root() -> None:
    if os.getuid() != 0:
        unavailable("needs root to act as another user")
    try:
        pwd.getpwnam("nobody")
    except KeyError:
        unavailable("there is no `nobody` user to act as")


def as_user(user: str, act: Callable[[], bytes]) -> bytes:
    """What `act` returns, run in a forked child that has become `user` (or the repr of
    what it raised)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: drop to the user, act, report through the pipe
        try:
            entry = pwd.getpwnam(user)
            os.setgroups([])
            os.setgid(entry.pw_gid)
            os.setuid(entry.pw_uid)
            os.write(w, act())
        except BaseException as e:  # reported to the parent
            os.write(w, repr(e).encode())
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        data = f.read()
    os.waitpid(pid, 0)
    return data


def status_as(user: str, sock: Path) -> protocol.Ok[object] | protocol.Err:
    """Connect as `user`; the reply to hello + status.

    The child sends only once phxqd's first reply has arrived: for a refused user phxqd
    has then hung up, so the send meets a closed socket (EPIPE) every time, not by chance,
    and the refusal must still be readable."""

    def ask() -> bytes:
        s = socket.socket(socket.AF_UNIX)
        s.connect(str(sock))
        # phxqd may refuse and hang up before even the hello is sent
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            s.sendall(protocol.frame(protocol.Hello(protocol.PROTOCOL_VERSION)))
        select.select([s], [], [])  # the hello's answer (or the refusal) has come
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            s.sendall(protocol.frame(protocol.Status()))
        data = b""
        while len(data) < 4 or len(data) < 4 + protocol.HEADER.unpack(data[:4])[0]:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        return data

    data = as_user(user, ask)
    assert data[:4] != b"", "the child got nothing"
    try:
        # the first reply only: the second (Status) may have come in the same read
        return protocol.reply_decoder.decode(data[4 : 4 + protocol.HEADER.unpack(data[:4])[0]])
    except Exception:
        raise AssertionError(data) from None


def phxqctl_as(user: str, sock: Path) -> str:
    """phxqctl's client connecting as `user`, its hello sent only after phxqd hung up:
    the error it raises (its code when phxqd said why)."""

    def connect() -> bytes:
        wire = Connection(str(sock), timeout=30)
        wire.connect()
        select.select([wire.fileno()], [], [])  # refused: phxqd has written and closed
        try:
            wire.greet(b"\x81\xa2op\xa6status")
        except RemoteError as e:
            return e.code.encode()
        return b"no error"

    return as_user(user, connect).decode()


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A socket directory outside pytest's private tmp tree, so others can reach it."""
    d = Path(tempfile.mkdtemp(prefix="phxq-access-", dir="/tmp"))
    os.chmod(d, 0o711)
    yield d
    shutil.rmtree(d)


def test_other_users_are_refused_unless_allowed(tmp_path: Path, shared_dir: Path) -> None:
    sock = shared_dir / "run" / "phxqd.sock"
    d = Daemon(tmp_path)
    d.env["PHXQ_SOCKET"] = str(sock)
    d.start()
    assert stat.S_IMODE(sock.stat().st_mode) == 0o600
    os.chmod(sock.parent, 0o711)
    os.chmod(sock, 0o666)  # let the file system through: the daemon must still refuse
    reply = status_as("nobody", sock)
    assert isinstance(reply, protocol.Err) and reply.code == "refused"
    assert "uid" in reply.message
    assert "refused a connection from uid" in d.logtext()
    assert phxqctl_as("nobody", sock) == "refused"
    d.stop()

    d.config.write_text('allow_users = ["nobody"]\n')
    d.start()
    assert stat.S_IMODE(sock.stat().st_mode) == 0o666
    assert stat.S_IMODE(sock.parent.stat().st_mode) == 0o711
    reply = status_as("nobody", sock)
    assert isinstance(reply, protocol.Ok), reply
    d.stop()

    d.config.write_text('allow_users = ["no-such-user-xyz"]\n')
    d.start(expect_ready=False)
    assert d.proc is not None and d.wait(30) != 0
    assert "no user 'no-such-user-xyz'" in d.logtext()
