"""The wire protocol between phxqctl and phxqd, shared by both sides.

A frame is `u32 big-endian length | msgpack payload`. Every connection opens with `Hello`,
so a client and a daemon of different protocol versions say so plainly instead of
misreading each other. Each request gets exactly one `Ok` or `Err` reply; a streaming
request (`watch`, `wait` with `stream`, `logs` with `follow`) gets its stream frames
(`JobEvent`, `Chunk`) first.

phxqctl.Client imports this module, so it imports nothing heavier than msgspec. The
constants both sides share (version, frame limits, error codes) are phxqd.contract's,
re-exported here for the daemon's code.
"""

from __future__ import annotations

from typing import Annotated, Any, Generic, NamedTuple, TypeVar

import msgspec

from phxqd import contract
from phxqd.contract import ERROR_EXIT as ERROR_EXIT
from phxqd.contract import HEADER as HEADER
from phxqd.contract import MAX_BATCH as MAX_BATCH
from phxqd.contract import MAX_FRAME as MAX_FRAME
from phxqd.contract import PROTOCOL_VERSION as PROTOCOL_VERSION
from phxqd.model import Job, JobSpec, Progress, SubmitResult
from phxqd.replies import Accepted as Accepted
from phxqd.replies import ClearedCount as ClearedCount
from phxqd.replies import HelloReply as HelloReply
from phxqd.replies import JournalInfo as JournalInfo
from phxqd.replies import LogPart as LogPart
from phxqd.replies import NextFire as NextFire
from phxqd.replies import QueueInfo as QueueInfo
from phxqd.replies import RetriedCount as RetriedCount
from phxqd.replies import RunningJob as RunningJob
from phxqd.replies import ScheduleInfo as ScheduleInfo
from phxqd.replies import StatusReply as StatusReply
from phxqd.schedules_model import ScheduleSpec

#: The ranges of phxqd.contract as msgspec constraints: a request with a value outside
#: them does not decode, and gets a `usage` error naming the field and the bound
#: ("Expected `int` >= 1 - at `$.id`"). Job specs are checked by model.validate_spec
#: instead, with phxqctl's messages (JobSpec is also the journal's record, and a
#: journal written before a limit existed must still replay).
JobId = Annotated[int, msgspec.Meta(ge=contract.JOB_ID[0], le=contract.JOB_ID[1])]
Count = Annotated[int, msgspec.Meta(ge=contract.COUNT[0], le=contract.COUNT[1])]
Seconds = Annotated[float, msgspec.Meta(ge=0, le=contract.MAX_SECONDS)]
QueueName = Annotated[str, msgspec.Meta(min_length=1, max_length=contract.MAX_QUEUE_CHARS)]
Concurrency = Annotated[int, msgspec.Meta(ge=contract.CONCURRENCY[0], le=contract.CONCURRENCY[1])]


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
    queue: QueueName | None = None
    limit: Count = 50


class Show(Request, tag="show"):
    id: JobId


class Wait(Request, tag="wait"):
    """With `stream`, the jobs' events (`JobEvent` frames) come before the final reply,
    so `phxqctl wait` can draw progress bars without asking again."""

    ids: list[JobId]
    timeout: Seconds | None = None
    stream: bool = False


class Logs(Request, tag="logs"):
    """With `follow`, `Chunk` frames carry the log as it grows, and the final reply comes
    once the job has finished and its log has been sent to its end."""

    id: JobId
    offset: Count = 0
    limit: Count = 1024 * 1024
    follow: bool = False


class Watch(Request, tag="watch"):
    """A stream of `JobEvent` frames, of every job (ids None) or of these, until the
    client hangs up. It never ends with a reply of its own, except an error."""

    ids: list[JobId] | None = None


class Cancel(Request, tag="cancel"):
    ids: list[JobId]


class Retry(Request, tag="retry"):
    ids: list[JobId]


class RetryFailed(Request, tag="retry-failed"):
    queue: QueueName | None = None


class Clear(Request, tag="clear"):
    status: str | None = None
    queue: QueueName | None = None


class ReportProgress(Request, tag="progress"):
    """From inside a job: `attempt` is its PHXQ_ATTEMPT, so a late report of an attempt
    that was since killed and retried cannot overwrite the new attempt's progress."""

    id: JobId
    attempt: Count
    percent: float | None = None
    step: str | None = None
    done: Count | None = None
    total: Count | None = None


class SetQueue(Request, tag="queue-set"):
    """`phxqctl queue set Q --concurrency N` (None: back to the configured limit)."""

    queue: QueueName
    concurrency: Concurrency | None


class SetRate(Request, tag="queue-rate"):
    """`phxqctl queue set Q --rate N/s [--burst B]` (per_second None: back to the
    configured rate, if any)."""

    queue: str
    per_second: float | None
    burst: int = 1


class ScheduleAdd(Request, tag="schedule-add"):
    """Add a schedule, or replace the one of that name (its last fire is kept)."""

    schedule: ScheduleSpec


class Schedules(Request, tag="schedules"):
    pass


class ScheduleShow(Request, tag="schedule-show"):
    name: str


class ScheduleRemove(Request, tag="schedule-remove"):
    name: str


class SchedulePause(Request, tag="schedule-pause"):
    name: str


class ScheduleResume(Request, tag="schedule-resume"):
    name: str


class ScheduleRun(Request, tag="schedule-run"):
    """Fire a schedule now, once (its fire times are not changed)."""

    name: str


class Queues(Request, tag="queues"):
    pass


class Metrics(Request, tag="metrics"):
    """The Prometheus text exposition (bytes)."""


class Pause(Request, tag="pause"):
    queue: QueueName | None = None


class Resume(Request, tag="resume"):
    queue: QueueName | None = None


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
    | SetRate
    | ScheduleAdd
    | Schedules
    | ScheduleShow
    | ScheduleRemove
    | SchedulePause
    | ScheduleResume
    | ScheduleRun
    | Queues
    | Metrics
    | Pause
    | Resume
    | Watch
)


T = TypeVar("T")


class Ok(msgspec.Struct, Generic[T], tag="ok"):
    """A successful reply. Generic so a client can decode `result` straight into the type
    OPERATIONS says (`reply_decoder_for(Show)` decodes `Ok[Job]`) instead of into dicts
    and then again."""

    result: T


class Err(msgspec.Struct, tag="err"):
    code: str
    message: str


#: What a `JobEvent` can say. `state`: the job as it is when a streaming `wait` begins;
#: `dropped`: this listener fell behind and `count` events for it were dropped (the daemon
#: keeps at most a bounded backlog per listener).
EVENT_KINDS = (
    "state",
    "submitted",
    "started",
    "progress",
    "retrying",
    "completed",
    "failed",
    "cancelled",
    "requeued",
    "dropped",
)


class JobEvent(msgspec.Struct, tag="event"):
    """One frame of a stream (`watch`, `wait` with `stream`): something happened to a job.

    `status` is the job's status after the event; `run_at` is when a `retrying` job runs
    again; `progress` is the job's latest progress (for every kind, when it has one).
    """

    event: str
    id: int
    at: float
    queue: str = ""
    status: str = ""
    attempt: int = 0
    label: str | None = None
    key: str | None = None
    exit_code: int | None = None
    error: str | None = None
    run_at: float | None = None
    progress: Progress | None = None
    count: int = 0


class Chunk(msgspec.Struct, tag="chunk"):
    """One frame of `logs` with `follow`: `data` read from the log, `offset` where the
    next read starts."""

    data: bytes
    offset: int


request_decoder: msgspec.msgpack.Decoder[AnyRequest] = msgspec.msgpack.Decoder(AnyRequest)
reply_decoder: msgspec.msgpack.Decoder[Ok[Any] | Err] = msgspec.msgpack.Decoder(Ok[Any] | Err)
#: frames of a streaming request: its stream frames, then one `Ok` or `Err`
stream_decoder: msgspec.msgpack.Decoder[JobEvent | Chunk | Ok[Any] | Err] = msgspec.msgpack.Decoder(
    JobEvent | Chunk | Ok[Any] | Err
)


class ReplySpec(NamedTuple):
    """What one operation answers: the type of its `Ok` reply's `result` (None: there is
    no `Ok` reply, the stream goes on until the client hangs up), and, for an operation
    that can stream (`watch`, `wait` with `stream`, `logs` with `follow`), the type of
    its stream frames, which come before that reply."""

    reply: Any
    frame: Any = None


#: Every operation: its request type and what it answers. The one place a reply's type is
#: said: phxqctl.Client decodes by it, and tests/test_protocol_table.py sends each request
#: to a real phxqd and checks the answer against it (and that no operation is missing).
OPERATIONS: dict[type[Request], ReplySpec] = {
    Hello: ReplySpec(HelloReply),
    Submit: ReplySpec(list[SubmitResult]),
    Status: ReplySpec(StatusReply),
    List: ReplySpec(list[Job]),
    Show: ReplySpec(Job),
    Wait: ReplySpec(list[Job], frame=JobEvent),
    Logs: ReplySpec(LogPart, frame=Chunk),
    Watch: ReplySpec(None, frame=JobEvent),
    Cancel: ReplySpec(list[Job]),
    Retry: ReplySpec(list[Job]),
    RetryFailed: ReplySpec(RetriedCount),
    Clear: ReplySpec(ClearedCount),
    ReportProgress: ReplySpec(Accepted),
    SetQueue: ReplySpec(list[QueueInfo]),
    SetRate: ReplySpec(list[QueueInfo]),
    ScheduleAdd: ReplySpec(ScheduleInfo),
    Schedules: ReplySpec(list[ScheduleInfo]),
    ScheduleShow: ReplySpec(ScheduleInfo),
    ScheduleRemove: ReplySpec(ScheduleInfo),
    SchedulePause: ReplySpec(ScheduleInfo),
    ScheduleResume: ReplySpec(ScheduleInfo),
    ScheduleRun: ReplySpec(SubmitResult),
    Queues: ReplySpec(list[QueueInfo]),
    Metrics: ReplySpec(bytes),
    Pause: ReplySpec(StatusReply),
    Resume: ReplySpec(StatusReply),
}

_decoders: dict[tuple[type[Request], bool], msgspec.msgpack.Decoder[Any]] = {}


def reply_decoder_for(op: type[Request], streamed: bool = False) -> msgspec.msgpack.Decoder[Any]:
    """The decoder of what phxqd sends for a request of type `op`, by OPERATIONS: its
    `Ok` (result typed) or `Err` reply, preceded, when `streamed`, by its stream frames.
    Made once per operation: building a decoder costs more than most replies' decoding."""
    decoder = _decoders.get((op, streamed))
    if decoder is None:
        spec = OPERATIONS[op]
        if streamed and spec.frame is None:
            raise ValueError(f"{op.__name__} does not stream")
        ok: Any = Ok  # parametrised at run time, which a type checker cannot follow
        kinds: Any = Err
        if spec.reply is not None:
            kinds = ok[spec.reply] | kinds
        if streamed:
            kinds = spec.frame | kinds
        decoder = _decoders[op, streamed] = msgspec.msgpack.Decoder(kinds)
    return decoder


encoder = msgspec.msgpack.Encoder()


def frame(message: msgspec.Struct) -> bytes:
    """Encode one message with its length prefix."""
    payload = encoder.encode(message)
    return HEADER.pack(len(payload)) + payload


class Refused(Exception):
    """A request phxqd will not carry out, answered as an `Err` with this code (one of
    `ERROR_EXIT`) and message. Raised by whoever decides: the handlers, the backend."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class ProtocolError(Exception):
    """The peer sent something that is not a valid frame; the connection cannot continue."""
