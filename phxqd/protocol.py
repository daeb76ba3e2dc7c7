"""The wire protocol between phxqctl and phxqd, shared by both sides.

A frame is `u32 big-endian length | msgpack payload`. Every connection opens with `Hello`,
so a client and a daemon of different protocol versions say so plainly instead of
misreading each other. Each request gets exactly one `Ok` or `Err` reply.

`phxqctl` imports this module on every start, so it imports nothing heavier than msgspec.
"""

from __future__ import annotations

import struct
from typing import Any, Generic, TypeVar

import msgspec

from phxqd.model import JobSpec

PROTOCOL_VERSION = 1
#: Most job specs in one submit request: its reply (the jobs) must fit in a frame.
MAX_BATCH = 10_000
#: Largest frame either side accepts; a bigger length prefix closes the connection.
MAX_FRAME = 16 * 1024 * 1024
HEADER = struct.Struct(">I")


class Request(msgspec.Struct, tag_field="op", forbid_unknown_fields=True):
    """Base of every request; the tag names the operation."""


class Hello(Request, tag="hello"):
    proto: int
    client: str = ""


class Submit(Request, tag="submit"):
    jobs: list[JobSpec]


class Status(Request, tag="status"):
    pass


class List(Request, tag="list"):
    status: str | None = None
    queue: str | None = None
    limit: int = 50


class Show(Request, tag="show"):
    id: int


class Wait(Request, tag="wait"):
    ids: list[int]
    timeout: float | None = None


class Logs(Request, tag="logs"):
    id: int
    offset: int = 0
    limit: int = 1024 * 1024


class Cancel(Request, tag="cancel"):
    ids: list[int]


class Retry(Request, tag="retry"):
    ids: list[int]


class RetryFailed(Request, tag="retry-failed"):
    queue: str | None = None


class Clear(Request, tag="clear"):
    status: str | None = None
    queue: str | None = None


class ReportProgress(Request, tag="progress"):
    """From inside a job: `attempt` is its PHXQ_ATTEMPT, so a late report of an attempt
    that was since killed and retried cannot overwrite the new attempt's progress."""

    id: int
    attempt: int
    percent: float | None = None
    step: str | None = None
    done: int | None = None
    total: int | None = None


class SetQueue(Request, tag="queue-set"):
    """`phxqctl queue set Q --concurrency N` (None: back to the configured limit)."""

    queue: str
    concurrency: int | None


class Queues(Request, tag="queues"):
    pass


class Metrics(Request, tag="metrics"):
    """The Prometheus text exposition (bytes)."""


class Pause(Request, tag="pause"):
    queue: str | None = None


class Resume(Request, tag="resume"):
    queue: str | None = None


AnyRequest = (
    Hello
    | Submit
    | Status
    | List
    | Show
    | Wait
    | Logs
    | Cancel
    | Retry
    | RetryFailed
    | Clear
    | ReportProgress
    | SetQueue
    | Queues
    | Metrics
    | Pause
    | Resume
)


T = TypeVar("T")


class Ok(msgspec.Struct, Generic[T], tag="ok"):
    """A successful reply. Generic so a client can decode `result` straight into the type
    it expects (`reply_decoder_for(list[Job])`) instead of into dicts and then again."""

    result: T


class Err(msgspec.Struct, tag="err"):
    code: str
    message: str


#: Error codes and the phxqctl exit status each maps to (DESIGN.md, "Exit statuses").
ERROR_EXIT = {
    "usage": 2,  # the request itself is wrong
    "upgrade": 2,  # client and daemon speak different protocol versions
    "not_found": 4,  # no such job
    "refused": 5,  # cannot be done now: disk full, journal failed, illegal transition
    "internal": 1,  # a bug in phxqd; the daemon logs it and carries on
}

request_decoder: msgspec.msgpack.Decoder[AnyRequest] = msgspec.msgpack.Decoder(AnyRequest)
reply_decoder: msgspec.msgpack.Decoder[Ok[Any] | Err] = msgspec.msgpack.Decoder(Ok[Any] | Err)


def reply_decoder_for(result_type: Any) -> msgspec.msgpack.Decoder[Any]:
    return msgspec.msgpack.Decoder(Ok[result_type] | Err)


encoder = msgspec.msgpack.Encoder()


def frame(message: msgspec.Struct) -> bytes:
    """Encode one message with its length prefix."""
    payload = encoder.encode(message)
    return HEADER.pack(len(payload)) + payload


class ProtocolError(Exception):
    """The peer sent something that is not a valid frame; the connection cannot continue."""
