"""A persistent Python worker: runs `module:function` jobs sent by phxqd, one at a time.

Started as `python -m phxqd.run.child`, talking over the socket whose fd is in
$PHXQ_WORKER_FD. phxqd may send a few tasks ahead (prefetch): the worker keeps them in an
inbox and runs them in order. Between two tasks it reads whatever phxqd sent meanwhile,
so a `Skip` (the job was cancelled, or phxqd wants it back) removes a task that has not
started. Every reply says which task runs next (`Done.next`, or `Began` when the worker
was idle), so phxqd always knows which job a crash would take down: only that one.

For each task it changes to the job's directory, sets the job's environment, points
stdout and stderr at the job's log file, calls the function, and answers with its return
value or the exception. Importing a module once and reusing it is what makes callables
cheaper than commands; a crash here (segfault, os._exit, the OOM killer) costs phxqd one
worker, never itself.

Creating a file is slow on some file systems (on a busy ext4 it waits for the journal's
commit), and most calls print nothing: a job whose log does not exist yet writes into the
worker's scratch file, which becomes the job's log (a hard link) once the job has printed
something and ended, or has run for `PUBLISH_AFTER` seconds (so `logs --follow` sees a
long job's output while it runs).

This module imports only the standard library, msgspec and `phxqd.run.output` (itself
standard library only): the user's interpreter (config `python`) needs nothing else of
phxq's.
"""

from __future__ import annotations

import importlib
import os
import socket
import struct
import sys
import threading
import traceback
from collections import deque
from typing import Any

import msgspec

from phxqd.run.output import LogSink

HEADER = struct.Struct(">I")
#: the largest return value kept as a job's result, encoded
MAX_RESULT = 1024 * 1024


class Task(msgspec.Struct, tag="task"):
    job_id: int
    attempt: int
    call: str
    args: list[Any]
    kwargs: dict[str, Any]
    log_path: str
    cwd: str | None
    env: dict[str, str]


class Skip(msgspec.Struct, tag="skip"):
    """Do not run this task if it has not started; answered by `Skipped`."""

    job_id: int


class Done(msgspec.Struct, tag="done"):
    job_id: int
    ok: bool
    result: Any = None
    #: "TypeName: message" when not ok
    error: str | None = None
    #: the exception asked not to be retried (PermanentFailure, by name)
    permanent: bool = False
    #: the task the worker starts now (None: it waits for one, and says `Began` then)
    next: int | None = None


class Began(msgspec.Struct, tag="began"):
    """An idle worker started this task."""

    job_id: int


class Skipped(msgspec.Struct, tag="skipped"):
    job_id: int


ToWorker = Task | Skip
FromWorker = Done | Began | Skipped


def load(call: str) -> Any:
    module_name, sep, attr = call.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"{call!r} is not module:function")
    obj: Any = importlib.import_module(module_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    if not callable(obj):
        raise TypeError(f"{call} is not callable")
    return obj


class Runner:
    """Runs tasks in this process, restoring what a task may change for the next one."""

    def __init__(self) -> None:
        self.encoder = msgspec.msgpack.Encoder()
        self.sink = LogSink()
        self.quiet = os.open(os.devnull, os.O_WRONLY)
        self.base_cwd = os.getcwd()
        self.base_env: dict[bytes, bytes] = dict(os.environb)
        #: os.environ's own dict (CPython), compared in C after each task; None elsewhere
        self.env_data: dict[bytes, bytes] | None = getattr(os.environ, "_data", None)
        self.functions: dict[str, Any] = {}
        threading.Thread(target=self.sink.watch, daemon=True).start()

    def run(self, task: Task) -> Done:
        saved_path = list(sys.path)
        set_keys = list(task.env)
        log = self.sink.open(task.log_path)
        try:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(log, 1)
            os.dup2(log, 2)
            os.environ.update(task.env)
            cwd = task.cwd or self.base_cwd
            if os.getcwd() != cwd:
                os.chdir(cwd)
            if task.cwd:
                sys.path.insert(0, task.cwd)
            try:
                func = self.functions.get(task.call)
                if func is None:
                    func = self.functions[task.call] = load(task.call)
                value = func(*task.args, **task.kwargs)
            except BaseException as e:
                traceback.print_exc()
                permanent = any(c.__name__ == "PermanentFailure" for c in type(e).__mro__)
                return Done(
                    task.job_id, False, error=f"{type(e).__name__}: {e}", permanent=permanent
                )
            try:
                data = self.encoder.encode(value)
            except (TypeError, OverflowError) as e:
                return Done(task.job_id, False, error=f"the return value cannot be stored: {e}")
            if len(data) > MAX_RESULT:
                return Done(
                    task.job_id,
                    False,
                    error=f"the return value is {len(data)} bytes, over {MAX_RESULT}",
                )
            return Done(task.job_id, True, value)
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(self.quiet, 1)  # what the job left running must not write into its log
            os.dup2(self.quiet, 2)
            self.sink.close(log)
            self._restore_env(set_keys)
            sys.path[:] = saved_path

    def _restore_env(self, keys: list[str]) -> None:
        """Undo the task's environment: its own keys, and anything the job changed."""
        for key in keys:
            value = self.base_env.get(os.fsencode(key))
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environb[os.fsencode(key)] = value
        current = self.env_data if self.env_data is not None else dict(os.environb)
        if current != self.base_env:
            os.environb.clear()
            os.environb.update(self.base_env)


class Channel:
    """Framed messages over the socket to phxqd, read ahead into an inbox."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = bytearray()
        self.closed = False
        self.decoder = msgspec.msgpack.Decoder(ToWorker)
        self.encoder = msgspec.msgpack.Encoder()

    def pump(self, inbox: deque[Task], replies: list[FromWorker], block: bool) -> None:
        """Read what has arrived (waiting for something if `block`) into `inbox`."""
        while not self.closed:
            try:
                chunk = self.sock.recv(1 << 16, 0 if block else socket.MSG_DONTWAIT)
            except BlockingIOError:
                return
            if not chunk:
                self.closed = True
                return
            self.buf += chunk
            while len(self.buf) >= HEADER.size:
                (length,) = HEADER.unpack_from(self.buf)
                if len(self.buf) < HEADER.size + length:
                    break
                msg = self.decoder.decode(self.buf[HEADER.size : HEADER.size + length])
                del self.buf[: HEADER.size + length]
                if isinstance(msg, Task):
                    inbox.append(msg)
                else:
                    for task in inbox:
                        if task.job_id == msg.job_id:
                            inbox.remove(task)
                            replies.append(Skipped(msg.job_id))
                            break
            if inbox or replies:
                block = False  # something to do: take only what is already there

    def send(self, replies: list[FromWorker]) -> None:
        out = bytearray()
        for reply in replies:
            data = self.encoder.encode(reply)
            out += HEADER.pack(len(data))
            out += data
        self.sock.sendall(out)


def main() -> None:
    channel = Channel(socket.socket(fileno=int(os.environ.pop("PHXQ_WORKER_FD"))))
    runner = Runner()
    inbox: deque[Task] = deque()
    replies: list[FromWorker] = []
    while True:
        if not inbox:
            channel.pump(inbox, replies, block=True)
            if not inbox:
                if replies:
                    channel.send(replies)
                    replies = []
                if channel.closed:
                    runner.sink.remove()
                    return  # phxqd closed the channel: nothing more to do
                continue
            replies.append(Began(inbox[0].job_id))
            channel.send(replies)
            replies = []
        done = runner.run(inbox.popleft())
        channel.pump(inbox, replies, block=False)
        done.next = inbox[0].job_id if inbox else None
        replies.insert(0, done)
        channel.send(replies)
        replies = []


if __name__ == "__main__":
    main()
