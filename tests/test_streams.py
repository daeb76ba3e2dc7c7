"""Streams (`watch`, streaming `wait`, `logs --follow`) on a real daemon, over raw frames.

The client side of streams is tested through phxqctl elsewhere; here the daemon's side:
what frames come, in what order, that a hang-up ends a stream at once, and that a reader
who does not read costs the daemon bounded memory and nobody else anything.
"""

from __future__ import annotations

import shlex
import socket
import sys
from pathlib import Path
from typing import Any

import msgspec
import psutil

from phxqd import protocol
from tests.conftest import Daemon, read_payload, until


class Conn:
    """A raw protocol connection: the frames as phxqd sends them."""

    def __init__(self, d: Daemon, timeout: float = 30.0) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(str(d.socket))
        self.send(protocol.Hello(protocol.PROTOCOL_VERSION, "test"))
        assert isinstance(self.frame(), protocol.Ok)

    def send(self, message: msgspec.Struct) -> None:
        self.sock.sendall(protocol.frame(message))

    def frame(self) -> Any:
        return protocol.stream_decoder.decode(read_payload(self.sock))

    def events_until(self, done: Any) -> list[protocol.JobEvent]:
        """Frames until one satisfies `done` (that one included)."""
        seen = []
        while True:
            seen.append(self.frame())
            if done(seen[-1]):
                return seen

    def close(self) -> None:
        self.sock.close()


def kinds(events: list[Any], job_id: int) -> list[str]:
    return [e.event for e in events if isinstance(e, protocol.JobEvent) and e.id == job_id]


def test_watch_tells_a_jobs_life_in_order(daemon: Daemon) -> None:
    w = Conn(daemon)
    w.send(protocol.Watch())
    ok = daemon.submit("true")
    seen = w.events_until(lambda e: e.id == ok and e.event == "completed")
    assert kinds(seen, ok) == ["submitted", "started", "completed"]
    done = seen[-1]
    assert done.status == "completed" and done.exit_code == 0 and done.attempt == 1
    assert done.queue == "default"

    bad = daemon.submit("sh", "-c", "exit 3", opts=("--retries", "1", "--backoff", "0.01"))
    seen = w.events_until(lambda e: e.id == bad and e.event == "failed")
    assert kinds(seen, bad) == ["submitted", "started", "retrying", "started", "failed"]
    retrying = next(e for e in seen if e.event == "retrying")
    assert retrying.run_at is not None and retrying.exit_code == 3
    assert seen[-1].status == "failed" and seen[-1].attempt == 2
    w.close()


def test_a_batch_is_told_job_by_job_and_counted(daemon: Daemon, tmp_path: Path) -> None:
    """A batch is one journal record (`subs`): watchers and metrics still see each job."""
    daemon.ok("pause")
    w = Conn(daemon)
    w.send(protocol.Watch())
    batch = tmp_path / "batch.jsonl"
    batch.write_text('{"argv": ["true"]}\n{"argv": ["true"], "queue": "q"}\n{"argv": ["true"]}\n')
    ids = [int(x) for x in daemon.ok("submit", "--batch", str(batch)).split()]
    seen = w.events_until(lambda e: e.id == ids[-1])
    assert [(e.event, e.id, e.queue) for e in seen] == [
        ("submitted", ids[0], "default"),
        ("submitted", ids[1], "q"),
        ("submitted", ids[2], "default"),
    ]
    metrics = daemon.ok("metrics")
    assert 'phxq_jobs_total{event="submitted",queue="default"} 2.0' in metrics
    assert 'phxq_jobs_total{event="submitted",queue="q"} 1.0' in metrics
    w.close()


def test_watch_of_some_ids_and_cancel_cascade(daemon: Daemon, tmp_path: Path) -> None:
    gate, other_gate = tmp_path / "gate", tmp_path / "other-gate"
    first = daemon.submit("sh", "-c", f"while [ ! -e {gate} ]; do sleep 0.05; done; exit 1")
    then = daemon.submit("true", opts=("--after", str(first), "--retries", "0"))
    other = daemon.submit("sh", "-c", f"while [ ! -e {other_gate} ]; do sleep 0.05; done")
    w = Conn(daemon)
    w.send(protocol.Watch(ids=[then]))
    # a watch of all jobs, opened after the first: once it has told of `other`'s end, so
    # has the watch of [then] had its chance to (both are fed in order, one event at a time)
    every = Conn(daemon)
    every.send(protocol.Watch(ids=None))
    other_gate.touch()
    every.events_until(lambda e: e.id == other and e.event == "completed")
    daemon.ok("cancel", str(first))
    [event] = w.events_until(lambda e: True)  # the first frame is then's: nothing of other's
    assert (event.id, event.event, event.status) == (then, "cancelled", "cancelled")
    assert f"job {first}" in (event.error or "")
    w.close()
    every.close()

    w = Conn(daemon)
    w.send(protocol.Watch(ids=[999]))
    err = w.frame()
    assert isinstance(err, protocol.Err) and err.code == "not_found"


def test_progress_reports_reach_watchers_at_once(daemon: Daemon, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    ctl = f"{shlex.quote(sys.executable)} -m phxqctl"
    script = f"{ctl} progress --percent 40 --step half; while [ ! -e {gate} ]; do sleep 0.05; done"
    job = daemon.submit("sh", "-c", script)
    w = Conn(daemon)
    w.send(protocol.Watch(ids=[job]))
    [event] = w.events_until(lambda e: e.event == "progress")[-1:]
    assert event.progress is not None
    assert event.progress.percent == 40 and event.progress.step == "half"
    gate.touch()
    last = w.events_until(lambda e: e.event == "completed")[-1]
    assert last.progress is not None and last.progress.percent == 40
    w.close()


def test_streaming_wait_states_then_events_then_the_jobs(daemon: Daemon, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    done = daemon.submit("true")
    until(lambda: daemon.job(done)["status"] == "completed")
    slow = daemon.submit("sh", "-c", f"while [ ! -e {gate} ]; do sleep 0.05; done")
    until(lambda: daemon.job(slow)["status"] == "running")
    c = Conn(daemon)
    c.send(protocol.Wait([done, slow], stream=True))
    first, second = c.frame(), c.frame()
    assert (first.event, first.id, first.status) == ("state", done, "completed")
    assert (second.event, second.id, second.status) == ("state", slow, "running")
    gate.touch()
    frames = c.events_until(lambda f: isinstance(f, protocol.Ok))
    assert kinds(frames, slow) == ["completed"]
    jobs = frames[-1].result
    assert [j["id"] for j in jobs] == [done, slow]
    assert [j["status"] for j in jobs] == ["completed", "completed"]
    # The connection goes on after a stream that ended with its reply.
    c.send(protocol.Show(done))
    assert c.frame().result["id"] == done

    c.send(protocol.Wait([slow + 1000], stream=True))
    err = c.frame()
    assert isinstance(err, protocol.Err) and err.code == "not_found"


def test_streaming_wait_times_out_with_the_jobs_as_they_are(daemon: Daemon) -> None:
    job = daemon.submit("sleep", "30")
    c = Conn(daemon)
    c.send(protocol.Wait([job], timeout=0.2, stream=True))
    frames = c.events_until(lambda f: isinstance(f, protocol.Ok))
    assert frames[-1].result[0]["status"] in ("pending", "running")
    daemon.ok("cancel", str(job))


def test_logs_follow_streams_output_as_it_is_written(daemon: Daemon, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    job = daemon.submit(
        "sh", "-c", f"echo first; while [ ! -e {gate} ]; do sleep 0.05; done; echo second"
    )
    c = Conn(daemon)
    c.send(protocol.Logs(job, follow=True))
    chunk = c.frame()
    # The job is still blocked on the gate: this chunk was streamed, not read at the end.
    assert isinstance(chunk, protocol.Chunk) and chunk.data == b"first\n"
    assert daemon.job(job)["status"] == "running"
    gate.touch()
    frames = c.events_until(lambda f: isinstance(f, protocol.Ok))
    data = b"".join(f.data for f in frames if isinstance(f, protocol.Chunk))
    assert data == b"second\n"
    final = frames[-1].result
    assert final["finished"] is True and final["offset"] == len(b"first\nsecond\n")


def open_fds(d: Daemon) -> int:
    assert d.proc is not None
    return psutil.Process(d.proc.pid).num_fds()


def test_hanging_up_ends_streams_at_once(daemon: Daemon) -> None:
    daemon.ok("status")
    before = open_fds(daemon)
    conns = [Conn(daemon) for _ in range(20)]
    for i, c in enumerate(conns):
        c.send(
            protocol.Watch() if i % 2 else protocol.Logs(daemon.submit("sleep", "30"), follow=True)
        )
    until(lambda: open_fds(daemon) >= before + 20, what="20 connections open")
    for c in conns:
        c.close()
    # No event happens meanwhile: only noticing the hang-up itself frees them.
    until(lambda: open_fds(daemon) <= before + 6, what="the streams' connections closed")


def test_a_watcher_that_does_not_read_loses_events_not_the_daemon(daemon: Daemon) -> None:
    """Bounded per-watcher backlog: 30,000 events for a reader that reads none of them.

    Meanwhile everyone else is served, the daemon's memory stays within bounds, and when
    the reader comes back it is told how many events it lost."""
    slow = Conn(daemon, timeout=60)
    slow.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    slow.send(protocol.Watch())
    daemon.ok("pause")
    specs = "\n".join('{"argv": ["true"], "label": "%s"}' % ("x" * 200) for _ in range(30_000))
    daemon.ok("submit", "--batch", "-", input=specs)
    assert daemon.json("status")["counts"]["pending"] == 30_000  # others are served
    # An unbounded backlog would deliver all 30,000; the bound (10,000 waiting, plus what
    # the socket holds) drops some, and says how many.
    got = slow.events_until(lambda e: e.event == "dropped")
    assert got[-1].count > 0
    assert len(got) - 1 < 30_000
    slow.close()
