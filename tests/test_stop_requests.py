"""A stop (SIGTERM) while clients are sending requests: every request is answered, refused
saying nothing was done, or its client is told that it may or may not have been done.

Never a job made while its client heard only "connection closed": a script that submits
again then makes a duplicate without any warning.
"""

from __future__ import annotations

import signal
import socket
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import pytest

from phxqctl import Client
from phxqctl.errors import DaemonUnreachable, PhxqError, RemoteError
from phxqd import protocol, server
from phxqd.model import JobSpec
from tests.conftest import Daemon, phxqctl_at, read_payload

#: client threads submitting at once, each on its own connection
CLIENTS = 4
#: replies received before SIGTERM is sent (so requests are surely in flight)
BEFORE_STOP = 60
#: what phxqctl says when a request may have been carried out without a reply
MAYBE = "may or may not have been carried out"


@dataclass
class Outcomes:
    """What each client was told, by the tag of the job it submitted."""

    replied: set[str] = field(default_factory=set)
    refused: dict[str, str] = field(default_factory=dict)  # told nothing was done
    #: told it may have been done (phxqctl), or saw its connection close with no reply
    warned: dict[str, str] = field(default_factory=dict)
    unclear: dict[str, str] = field(default_factory=dict)  # anything else
    lock: threading.Lock = field(default_factory=threading.Lock)
    enough: threading.Event = field(default_factory=threading.Event)


def submit_until_stopped(socket: Path, name: str, out: Outcomes) -> None:
    """Submit one job per request until phxqd stops answering; record what was said."""
    with Client(socket, timeout=60) as client:
        n = 0
        while True:
            tag = f"{name}-{n}"
            n += 1
            try:
                client.submit(["true", tag])
            except RemoteError as e:
                with out.lock:
                    (out.refused if e.code == "refused" else out.unclear)[tag] = str(e)
                return
            except DaemonUnreachable as e:
                with out.lock:
                    said = str(e)
                    if MAYBE in said:
                        out.warned[tag] = said
                    elif said.startswith("phxqd is not running") or "nothing was done" in said:
                        out.refused[tag] = said
                    else:
                        out.unclear[tag] = said
                return
            except PhxqError as e:
                with out.lock:
                    out.unclear[tag] = repr(e)
                return
            with out.lock:
                out.replied.add(tag)
                if len(out.replied) >= BEFORE_STOP:
                    out.enough.set()


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_a_stop_under_submits_answers_each_or_says_it_may_have_been_done(
    tmp_path: Path, loop: str
) -> None:
    daemon = Daemon(tmp_path)
    daemon.config.write_text(f'event_loop = "{loop}"\n')
    daemon.start()
    daemon.ok("pause")  # the jobs stay pending: what was made is what is there after
    out = Outcomes()
    threads = [
        threading.Thread(target=submit_until_stopped, args=(daemon.socket, f"c{i}", out))
        for i in range(CLIENTS)
    ]
    for t in threads:
        t.start()
    assert out.enough.wait(60), "the clients' submits were not answered"
    assert daemon.stop(signal.SIGTERM) == 0, daemon.logtext()
    for t in threads:
        t.join(60)
        assert not t.is_alive()

    daemon.start()
    with Client(daemon.socket, timeout=60) as client:
        made = {job.argv[1] for job in client.list(limit=1_000_000)}
    check_restart(out, made)


def check_restart(out: Outcomes, made: set[str]) -> str:
    """What a graceful stop promises, checked on the jobs `made` (found after the
    restart): every job acknowledged is there, none refused is, each one made was
    acknowledged or its client warned (a retry would duplicate it), and no client was
    told something unclear. The report, for the caller's own checks."""
    report = (
        f"{len(out.replied)} replied, {len(made)} jobs after the restart; refused "
        f"{out.refused}; warned {out.warned}; unclear {out.unclear}"
    )
    assert out.replied <= made, "a job acknowledged before the stop is gone: " + report
    assert not made & out.refused.keys(), "a job refused at the stop was made: " + report
    assert not made - out.replied - out.warned.keys(), (
        "jobs made whose client got no reply and no warning (a retry duplicates them): " + report
    )
    assert not out.unclear, "a client was told something unclear: " + report
    return report


# ------------------------------------------------- the server's stop, step by step
#
# server.serve on a real socket, with a handler standing in for phxqd's (the real ones
# answer too fast to be caught in the middle): a submit is held until the test lets it
# go, a wait never ends.

HELLO = protocol.frame(protocol.Hello(protocol.PROTOCOL_VERSION))
SUBMIT = protocol.frame(protocol.Submit([JobSpec(argv=["true"])]))


class Held:
    """The stand-in handler: `submit` answers once `release` is set."""

    def __init__(self) -> None:
        self.submitting = anyio.Event()
        self.release = anyio.Event()

    async def handle(self, req: protocol.Request) -> Any:
        if isinstance(req, protocol.Hello):
            return protocol.HelloReply(protocol.PROTOCOL_VERSION)
        if isinstance(req, protocol.Submit):
            self.submitting.set()
            await self.release.wait()
            return "made"
        if isinstance(req, protocol.Wait):
            await anyio.sleep_forever()
        return "status"


async def reply(stream: anyio.abc.ByteStream) -> protocol.Ok[Any] | protocol.Err | None:
    """The next reply, or None when phxqd hung up first."""
    data = b""
    while len(data) < protocol.HEADER.size or len(data) < protocol.HEADER.size + int(
        protocol.HEADER.unpack_from(data)[0]
    ):
        try:
            data += await stream.receive()
        except (anyio.EndOfStream, anyio.BrokenResourceError):
            return None
    return protocol.reply_decoder.decode(data[protocol.HEADER.size :])


async def greeted(path: Path) -> anyio.abc.SocketStream:
    stream = await anyio.connect_unix(path)
    await stream.send(HELLO)
    assert isinstance(await reply(stream), protocol.Ok)
    return stream


def serving(path: Path, held: Held, stop: anyio.Event, grace: float) -> Any:
    async def run(*, task_status: anyio.abc.TaskStatus[None]) -> None:
        async with await server.listen(path) as listener:
            task_status.started()
            await server.serve(listener, held.handle, stop=stop, grace=lambda: grace)

    return run


def test_a_stop_answers_the_request_in_flight_and_refuses_those_that_come(
    tmp_path: Path,
) -> None:
    async def main() -> None:
        path, held, stop = tmp_path / "s.sock", Held(), anyio.Event()
        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                await tg.start(serving(path, held, stop, 60.0))
                submitter, idle, waiter = [await greeted(path) for _ in range(3)]
                await waiter.send(protocol.frame(protocol.Wait([1])))
                await submitter.send(SUBMIT)
                await held.submitting.wait()
                stop.set()
                await anyio.wait_all_tasks_blocked()  # the stop waits for the submit
                newcomer = await anyio.connect_unix(path)  # into the backlog, never taken
                await newcomer.send(HELLO)
                await idle.send(protocol.frame(protocol.Status()))
                assert await reply(idle) == server.STOPPING
                assert await reply(idle) is None  # and it hung up
                held.release.set()
                assert await reply(submitter) == protocol.Ok("made")
                assert await reply(waiter) is None  # a wait is not waited for
                assert await reply(newcomer) is None
            # serve returned: every connection closed, none accepted any more
            with socket.socket(socket.AF_UNIX) as late:
                try:
                    late.connect(str(path))
                except (ConnectionRefusedError, FileNotFoundError):
                    pass
                else:
                    raise AssertionError("the socket still accepts after the stop")

    anyio.run(main)


def test_a_request_that_never_ends_holds_the_stop_only_for_the_grace(tmp_path: Path) -> None:
    async def main() -> None:
        path, held, stop = tmp_path / "s.sock", Held(), anyio.Event()
        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                await tg.start(serving(path, held, stop, 0.2))
                submitter = await greeted(path)
                await submitter.send(SUBMIT)
                await held.submitting.wait()
                stop.set()  # held.release is never set
            assert await reply(submitter) is None

    anyio.run(main)


def test_phxqctl_says_a_request_unanswered_may_have_been_done(tmp_path: Path) -> None:
    """phxqd (here the test in its place) reads the submit and hangs up without a reply:
    phxqctl cannot know whether the job was made, and says so, with exit status 3."""
    path = tmp_path / "phxqd.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(1)
    listener.settimeout(60)

    def answer_hello_only() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.settimeout(60)
            read_payload(conn)  # hello
            conn.sendall(protocol.frame(protocol.Ok(protocol.HelloReply(1))))
            read_payload(conn)  # the submit, never answered

    thread = threading.Thread(target=answer_hello_only, daemon=True)
    thread.start()
    r = phxqctl_at(path, tmp_path, "submit", "--", "true")
    thread.join(60)
    listener.close()
    assert (r.returncode, r.stdout) == (3, "")
    assert r.stderr == (
        "phxqctl: phxqd closed the connection before answering (did it stop?); "
        "the request may or may not have been carried out\n"
    )
