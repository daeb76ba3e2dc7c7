"""A persistent Python worker: runs `module:function` jobs sent by phxqd, one at a time.

Started as `python -m phxqd.worker`, talking over the socket whose fd is in
$PHXQ_WORKER_FD. For each task it changes to the
job's directory, sets the job's environment, points stdout and stderr at the job's log
file, calls the function, and answers with its return value or the exception. Importing a
module once and reusing it is what makes callables cheaper than commands; a crash here
(segfault, os._exit, the OOM killer) costs phxqd one worker, never itself.

This module imports only the standard library and msgspec: the user's interpreter (config
`python`) needs nothing else of phxq's.
"""

from __future__ import annotations

import importlib
import os
import socket
import struct
import sys
import traceback
from typing import Any

import msgspec

HEADER = struct.Struct(">I")
#: the largest return value kept as a job's result, encoded
MAX_RESULT = 1024 * 1024


class Task(msgspec.Struct):
    job_id: int
    attempt: int
    call: str
    args: list[Any]
    kwargs: dict[str, Any]
    log_path: str
    cwd: str | None
    env: dict[str, str]


class Done(msgspec.Struct):
    ok: bool
    result: Any = None
    #: "TypeName: message" when not ok
    error: str | None = None
    #: the exception asked not to be retried (PermanentFailure, by name)
    permanent: bool = False


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


def run(task: Task, encoder: msgspec.msgpack.Encoder) -> Done:
    saved_env = dict(os.environ)
    saved_cwd = os.getcwd()
    saved_path = list(sys.path)
    log = os.open(task.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.environ.update(task.env)
        if task.cwd:
            os.chdir(task.cwd)
            sys.path.insert(0, task.cwd)
        try:
            value = load(task.call)(*task.args, **task.kwargs)
        except BaseException as e:
            traceback.print_exc()
            permanent = any(c.__name__ == "PermanentFailure" for c in type(e).__mro__)
            return Done(False, error=f"{type(e).__name__}: {e}", permanent=permanent)
        try:
            data = encoder.encode(value)
        except (TypeError, OverflowError) as e:
            return Done(False, error=f"the return value cannot be stored: {e}")
        if len(data) > MAX_RESULT:
            return Done(False, error=f"the return value is {len(data)} bytes, over {MAX_RESULT}")
        return Done(True, value)
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        quiet = os.open(os.devnull, os.O_WRONLY)
        os.dup2(quiet, 1)  # what the job left running must not write into its log forever
        os.dup2(quiet, 2)
        os.close(quiet)
        os.close(log)
        os.environ.clear()
        os.environ.update(saved_env)
        os.chdir(saved_cwd)
        sys.path[:] = saved_path


def main() -> None:
    channel = socket.socket(fileno=int(os.environ.pop("PHXQ_WORKER_FD")))
    decoder = msgspec.msgpack.Decoder(Task)
    encoder = msgspec.msgpack.Encoder()
    reader = channel.makefile("rb")
    while True:
        header = reader.read(HEADER.size)
        if len(header) < HEADER.size:
            return  # phxqd closed the channel: nothing more to do
        (length,) = HEADER.unpack(header)
        task = decoder.decode(reader.read(length))
        done = encoder.encode(run(task, encoder))
        channel.sendall(HEADER.pack(len(done)) + done)


if __name__ == "__main__":
    main()
