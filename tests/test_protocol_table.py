"""protocol.OPERATIONS against a real daemon: every operation is in the table, and what
phxqd answers to each is exactly the type the table declares.

"Exactly": each reply (and stream frame) decodes into the declared type, and encodes
again to the very bytes phxqd sent. The reply Structs do not forbid unknown fields (a
client must survive a newer daemon), so the round trip is what catches a field the Struct
lacks, a field in another order, or one the Struct would send and phxqd did not.
"""

from __future__ import annotations

import socket
import sys
from typing import Any, get_args

import msgspec

from phxqd import protocol
from phxqd.model import JobSpec
from phxqd.schedules_model import ScheduleSpec
from tests.conftest import Daemon, read_payload


class Conn:
    """A raw connection that checks every reply against the table."""

    def __init__(self, d: Daemon, seen: set[type[protocol.Request]]) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(60)
        self.sock.connect(str(d.socket))
        #: the operations checked so far (the test checks that none was left out)
        self.seen = seen
        self.call(protocol.Hello(protocol.PROTOCOL_VERSION, "test"))

    def call(self, request: protocol.Request) -> Any:
        """Send `request`; its `Ok` result, checked against OPERATIONS."""
        self.sock.sendall(protocol.frame(request))
        return self.reply(request)

    def start(self, request: protocol.Request) -> None:
        """Send a streaming request; read it with `stream_frame` and `reply`."""
        self.sock.sendall(protocol.frame(request))

    def stream_frame(self, request: protocol.Request) -> Any:
        """The next frame of a stream, which must be of the table's frame type."""
        message = self.message(request, streamed=True)
        assert isinstance(message, protocol.OPERATIONS[type(request)].frame), message
        return message

    def reply(self, request: protocol.Request) -> Any:
        message = self.message(request, streamed=False)
        assert isinstance(message, protocol.Ok), message
        return message.result

    def message(self, request: protocol.Request, streamed: bool) -> Any:
        """The next message, decoded as the table says `request` is answered."""
        payload = read_payload(self.sock)
        message = protocol.reply_decoder_for(type(request), streamed).decode(payload)
        assert msgspec.msgpack.encode(message) == payload, (request, message)
        self.seen.add(type(request))
        return message

    def close(self) -> None:
        self.sock.close()


def test_every_request_type_is_in_the_table() -> None:
    assert set(get_args(protocol.AnyRequest)) == set(protocol.OPERATIONS)
    streaming = {op for op, spec in protocol.OPERATIONS.items() if spec.frame is not None}
    assert streaming == {protocol.Wait, protocol.Logs, protocol.Watch}


def test_every_operation_answers_with_its_declared_types(daemon: Daemon) -> None:
    seen: set[type[protocol.Request]] = set()
    c, watcher = Conn(daemon, seen), Conn(daemon, seen)
    sleeper = JobSpec(argv=["sleep", "60"])
    printer = JobSpec(argv=[sys.executable, "-c", "print('hi')"])

    watch = protocol.Watch(None)
    watcher.start(watch)
    [result] = c.call(protocol.Submit([sleeper]))
    sleeping = result.job.id
    while (event := watcher.stream_frame(watch)).event != "started":
        pass
    assert event.id == sleeping
    watcher.close()

    # a running job with progress, so that `status` shows one with every field filled
    report = protocol.ReportProgress(sleeping, event.attempt, 50.0, "half", 1, 2)
    assert c.call(report).accepted
    status = c.call(protocol.Status())
    assert [r.id for r in status.running_jobs] == [sleeping]
    assert status.running_jobs[0].progress.step == "half"
    assert c.call(protocol.Show(sleeping)).status == "running"
    assert [j.id for j in c.call(protocol.Cancel([sleeping]))] == [sleeping]

    # a job with a log to read, once as it is, once followed, and waited on as a stream
    [result] = c.call(protocol.Submit([printer]))
    printed = result.job.id
    wait = protocol.Wait([printed], 60, stream=True)
    c.start(wait)
    while isinstance(frame := c.message(wait, streamed=True), protocol.JobEvent):
        pass
    assert isinstance(frame, protocol.Ok) and frame.result[0].status == "completed"
    assert [j.status for j in c.call(protocol.Wait([printed], 60))] == ["completed"]
    assert c.call(protocol.Logs(printed)).data == b"hi\n"
    follow = protocol.Logs(printed, follow=True)
    c.start(follow)
    assert c.stream_frame(follow).data == b"hi\n"
    assert c.reply(follow).finished

    assert c.call(protocol.Pause("default")).paused == ["default"]
    assert [j.status for j in c.call(protocol.Retry([sleeping]))] == ["pending"]
    assert c.call(protocol.RetryFailed(None)).retried == 0
    assert c.call(protocol.Clear("completed", None)).cleared == 1
    assert [j.id for j in c.call(protocol.List(None, None, 10))] == [sleeping]
    [queue] = c.call(protocol.SetQueue("default", 3))
    assert (queue.concurrency, queue.concurrency_from, queue.paused) == (3, "runtime", True)
    assert c.call(protocol.Queues()) == [queue]
    assert b"phxq_" in c.call(protocol.Metrics())
    assert c.call(protocol.Resume(None)).paused == []
    [queue] = c.call(protocol.SetRate("default", 2.0, 3))
    assert (queue.rate, queue.burst, queue.rate_from) == (2.0, 3, "runtime")

    nightly = ScheduleSpec("nightly", printer, cron="0 3 * * *", tz="Europe/Riga")
    added = c.call(protocol.ScheduleAdd(nightly))
    assert (added.name, added.zone, len(added.next_fires)) == ("nightly", "Europe/Riga", 5)
    assert c.call(protocol.Schedules()) == [added]
    assert c.call(protocol.SchedulePause("nightly")).paused
    assert not c.call(protocol.ScheduleResume("nightly")).paused
    ran = c.call(protocol.ScheduleRun("nightly"))
    assert ran.job.key.startswith("schedule:nightly!run@")
    assert c.call(protocol.ScheduleShow("nightly")).last_job == ran.job.id
    assert c.call(protocol.ScheduleRemove("nightly")).name == "nightly"
    c.close()

    assert seen == set(protocol.OPERATIONS), set(protocol.OPERATIONS) - seen
