"""Many clients, and clients that misbehave by not reading: a real daemon keeps serving."""

from __future__ import annotations

import contextlib
import socket
import struct
import sys
import threading
from pathlib import Path

import psutil

from phxqd import protocol
from phxqd.model import JobSpec
from tests.conftest import Daemon, read_payload, until

HELLO = protocol.frame(protocol.Hello(protocol.PROTOCOL_VERSION))
STATUS = protocol.frame(protocol.Status())


def read_reply(sock: socket.socket) -> protocol.Ok | protocol.Err:
    return protocol.reply_decoder.decode(read_payload(sock))


def connect(d: Daemon) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(60)
    s.connect(str(d.socket))
    return s


def test_a_thousand_concurrent_connections_are_all_answered(daemon: Daemon) -> None:
    socks = [connect(daemon) for _ in range(1000)]
    for s in socks:  # all connected at once before any is answered
        s.sendall(HELLO + STATUS)
    for s in socks:
        hello, status = read_reply(s), read_reply(s)
        assert isinstance(hello, protocol.Ok) and isinstance(status, protocol.Ok)
        assert status.result["counts"]["pending"] == 0
    for s in socks:
        s.close()
    assert daemon.ctl("status").returncode == 0


def test_out_of_descriptors_delays_connections_and_serves_them_later(tmp_path: Path) -> None:
    """With few file descriptors, accept() fails with EMFILE: the daemon must neither die
    nor spin, and the clients waiting in the listen backlog are served once others leave."""
    limit = 64
    wrapper = [
        sys.executable,
        "-c",
        "import os, resource, sys; "
        f"resource.setrlimit(resource.RLIMIT_NOFILE, ({limit}, {limit})); "
        "os.execv(sys.argv[1], sys.argv[1:])",
    ]
    daemon = Daemon(tmp_path).start(wrapper=wrapper)
    socks = [connect(daemon) for _ in range(2 * limit)]
    for s in socks:
        s.sendall(HELLO + STATUS)
    # Those accepted are answered; the others wait in the kernel's backlog.
    until(lambda: "cannot accept a connection now" in daemon.logtext(), what="EMFILE")
    for s in socks[: limit // 4]:
        assert isinstance(read_reply(s), protocol.Ok)
    for s in socks[: limit // 4]:
        s.close()
    for s in socks[limit // 4 :]:  # served as descriptors free up
        assert isinstance(read_reply(s), protocol.Ok)
        assert isinstance(read_reply(s), protocol.Ok)
        s.close()
    assert daemon.proc is not None and daemon.proc.poll() is None
    assert daemon.ctl("status").returncode == 0


def test_a_client_that_never_reads_costs_one_reply_and_blocks_nobody(daemon: Daemon) -> None:
    """200 requests for ~4 MB replies, none read: unbounded buffering would hold ~800 MB."""
    assert daemon.proc is not None
    daemon.ok("pause")
    specs = "\n".join('{"argv": ["true"], "label": "%s"}' % ("x" * 300) for _ in range(10_000))
    daemon.ok("submit", "--batch", "-", input=specs)
    proc = psutil.Process(daemon.proc.pid)
    rss_before = proc.memory_info().rss
    greedy = connect(daemon)
    greedy.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    request = protocol.frame(protocol.List(limit=10_000))
    sent = threading.Event()

    def flood() -> None:
        with contextlib.suppress(OSError):  # closed by the test at the end
            greedy.sendall(HELLO + request * 200)  # blocks once the socket is full: fine
        sent.set()

    threading.Thread(target=flood, daemon=True).start()

    def replying() -> bool:
        try:
            return bool(greedy.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT))
        except BlockingIOError:
            return False

    # The daemon is stuck sending a ~4 MB reply to a reader that does not read...
    until(replying, what="a reply being sent")
    for _ in range(20):  # ...and serves everyone else meanwhile
        assert daemon.json("status")["counts"]["pending"] == 10_000
    assert proc.memory_info().rss - rss_before < 100 * 1024 * 1024
    greedy.close()
    sent.wait(30)
    assert daemon.ctl("status").returncode == 0


def test_idle_and_non_reading_clients_are_disconnected(tmp_path: Path) -> None:
    d = Daemon(tmp_path)
    d.config.write_text("client_idle_timeout = 1.5\nclient_send_timeout = 1.5\n")
    d.start()
    idle = connect(d)
    idle.sendall(HELLO)
    assert isinstance(read_reply(idle), protocol.Ok)
    # A quiet watcher is not idle: it waits for phxqd, not the other way round.
    watcher = connect(d)
    watcher.sendall(HELLO + protocol.frame(protocol.Watch()))
    assert isinstance(read_reply(watcher), protocol.Ok)
    idle.settimeout(30)
    assert idle.recv(1) == b"", "the idle client was disconnected"

    # A client that asks for a big reply and reads none of it: phxqd gives up on it.
    d.ok("pause")
    specs = "\n".join('{"argv": ["true"], "label": "%s"}' % ("x" * 300) for _ in range(5_000))
    d.ok("submit", "--batch", "-", input=specs)
    greedy = connect(d)
    greedy.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    greedy.sendall(HELLO + protocol.frame(protocol.List(limit=5_000)))
    until(
        lambda: "disconnecting a client that took no reply for 1.5s" in d.logtext(),
        what="the non-reading client disconnected",
    )
    # Closed by phxqd: what the kernel had taken can still be read, then the end.
    greedy.settimeout(30)
    while greedy.recv(1 << 20):
        pass

    d.submit("true")  # an event for the watcher, which is still connected
    watcher.settimeout(30)
    (n,) = struct.unpack(">I", watcher.recv(4, socket.MSG_WAITALL))
    event = protocol.stream_decoder.decode(watcher.recv(n, socket.MSG_WAITALL))
    assert isinstance(event, protocol.JobEvent) and event.event == "submitted"


def submit(*argv: str) -> bytes:
    return protocol.frame(protocol.Submit([JobSpec(argv=list(argv), cwd="/")]))


def test_submits_answered_from_the_socket_and_other_requests_keep_their_order(
    daemon: Daemon,
) -> None:
    """A submit that comes while the connection waits for a request is answered from the
    socket's callback (server.Connection._quick), the rest by the connection's task: each
    reply still comes in its request's order, a refused submit leaves the connection
    usable, and a client that sends a submit and shuts its side still gets the answer."""
    daemon.ok("pause")
    s = connect(daemon)
    s.sendall(HELLO)
    assert isinstance(read_reply(s), protocol.Ok)
    ids = []
    for n in range(3):  # one at a time: each taken while the task sleeps
        s.sendall(submit("true", str(n)))
        reply = read_reply(s)
        assert isinstance(reply, protocol.Ok), reply
        ids.append(reply.result[0]["job"]["id"])
    assert ids == [1, 2, 3]
    s.sendall(submit())  # no command: refused before anything changed
    refused = read_reply(s)
    assert isinstance(refused, protocol.Err) and refused.code == "usage", refused
    # The first taken at once, the rest behind it, answered by the task in their order.
    s.sendall(submit("true") + STATUS + submit() + protocol.frame(protocol.Show(4)) + submit("x"))
    first, status, bad, shown, last = (read_reply(s) for _ in range(5))
    assert isinstance(first, protocol.Ok) and first.result[0]["job"]["id"] == 4
    assert isinstance(status, protocol.Ok) and status.result["counts"]["pending"] == 4
    assert isinstance(bad, protocol.Err) and bad.code == "usage"
    assert isinstance(shown, protocol.Ok) and shown.result["argv"] == ["true"]
    assert isinstance(last, protocol.Ok) and last.result[0]["job"]["id"] == 5
    s.sendall(submit("true", "last"))
    s.shutdown(socket.SHUT_WR)
    reply = read_reply(s)
    assert isinstance(reply, protocol.Ok) and reply.result[0]["job"]["id"] == 6
    assert s.recv(1) == b"", "phxqd hangs up once the client's requests are answered"
    s.close()
    assert daemon.json("status")["counts"]["pending"] == 6
