"""The State's jobs by id, each held as a Job or, until it is touched, in its stored bytes.

A restart with a million queued jobs spent most of its time and memory building a Job
object per job (1.34 s and 604 bytes a job for msgspec's decode alone, see
bench/bench_restart_floor.py), though most of those jobs are only waited on until they
run. So the jobs of a snapshot's chunk, or of a journal's batch, are loaded as one
`Block`: the msgpack array of their stored forms (StoredJob, ~80 bytes each, a view of
the buffer read from disk) with packed columns of the fields the State's indexes read
(ids, status, queue, priority, run_at, whether it has `after`: views too, nothing is
copied). The table maps each of their ids to the block; a job is decoded the first time
anything reads it (`[]`, `get`, `pop`, a walk of `values`), then kept as a Job: the object
a caller gets is the one the table holds from then on, so a change made to it is never
lost to a second decode. Jobs submitted at run time are Jobs from the start, but for
those of a bulk batch (`bulk_queue`), which the State keeps as the Block of the journal
record just written for them (journal.encode_kept): its Jobs are freed once the batch
is answered, and a snapshot child writes the block without touching a job.

A snapshot writes a block none of whose jobs was touched as the bytes and columns it was
read as (see State.snapshot): no job of it is decoded, encoded, or even looked at.
"""

from __future__ import annotations

import bisect
import collections
import itertools
import operator
import sys
from collections.abc import (
    Container,
    Iterable,
    Iterator,
    Mapping,
    MutableMapping,
    Sequence,
    ValuesView,
)
from typing import Any, Protocol, overload

import msgspec

from phxqd.model import STATUSES, Job, StoredJob

#: a batch of this many jobs or more is added in bulk (State._add_in_bulk)
BULK = 16
#: the code of each status in a block's (and a snapshot index's) status column
STATUS_CODE = {status: code for code, status in enumerate(STATUSES)}
#: a flags column's bit: the job has `after`
HAS_AFTER = 2

_decoder = msgspec.msgpack.Decoder(StoredJob)
_raws_decoder = msgspec.msgpack.Decoder(list[msgspec.Raw])


def decode(raw: msgspec.Raw | bytes | memoryview) -> Job:
    """One stored job, made a plain Job (see StoredJob) with its queue and directory
    interned, as a Sharer would (the other jobs of its queue share the name)."""
    job: Any = _decoder.decode(raw)
    job.__class__ = Job
    job.queue = sys.intern(job.queue)
    if job.cwd is not None:
        job.cwd = sys.intern(job.cwd)
    if job.run_at == job.created_at:
        job.run_at = job.created_at
    return job  # type: ignore[no-any-return]


class _Fields(Protocol):
    @property
    def queue(self) -> str: ...
    @property
    def status(self) -> str: ...
    @property
    def after(self) -> Sequence[int] | None: ...
    @property
    def key(self) -> str | None: ...
    @property
    def run_at(self) -> float: ...
    @property
    def created_at(self) -> float: ...


def bulk_queue(jobs: Sequence[_Fields]) -> str | None:
    """The queue of a batch that can be added in bulk, else None: at least BULK jobs, of
    one queue, all pending and due from their submission, none with a key or `after`
    (what `submit --batch` sends). The journal records it with the batch, so a replay
    adds the jobs as a Block without decoding them."""
    if len(jobs) < BULK:
        return None
    queue = jobs[0].queue
    if (
        set(map(_STATUS, jobs)) != {"pending"}
        or set(map(_QUEUE, jobs)) != {queue}
        or any(map(_AFTER, jobs))
        or set(map(_KEY, jobs)) != {None}
        or not all(map(operator.le, map(_RUN_AT, jobs), map(_CREATED_AT, jobs)))
    ):
        return None
    return queue


#: getters of a job's fields, for loops in C (`map`) over many jobs; state.py and
#: journal.py use them too
_ID, _STATUS, _QUEUE = map(operator.attrgetter, ("id", "status", "queue"))
_AFTER, _KEY, _PRIORITY = map(operator.attrgetter, ("after", "key", "priority"))
_RUN_AT, _CREATED_AT = map(operator.attrgetter, ("run_at", "created_at"))


#: a packed column: a memoryview cast to its number format (or an array, on a big-endian
#: machine); bytes-like, indexable, sliceable without a copy
Column = Any


def column(data: bytes | memoryview, typecode: str) -> Column:
    """A packed little-endian column as a sequence of numbers, without a copy where the
    machine is little-endian."""
    view = memoryview(data).cast("B")
    if sys.byteorder == "little":
        return view.cast(typecode)  # type: ignore[call-overload]
    from array import array

    out = array(typecode, bytes(view))
    out.byteswap()
    return out


class Block:
    """Jobs stored together, not decoded: `data` is the msgpack array of their stored
    forms, in id order, and the columns are theirs, in the same order (see the module
    docstring). `taken` marks the jobs decoded or removed since (None: none was)."""

    __slots__ = (
        "_raws",
        "data",
        "flags",
        "ids",
        "priority",
        "queue",
        "queues",
        "run_at",
        "status",
        "taken",
    )

    def __init__(
        self,
        data: msgspec.Raw,
        ids: Column,
        status: Column,
        queue: Column,
        queues: Sequence[str],
        priority: Column,
        run_at: Column,
        flags: Column,
    ) -> None:
        self.data, self.ids, self.status, self.queue = data, ids, status, queue
        self.queues, self.priority, self.run_at, self.flags = queues, priority, run_at, flags
        self.taken: bytearray | None = None
        self._raws: list[msgspec.Raw] | None = None

    def __len__(self) -> int:
        return len(self.ids)

    def position(self, job_id: int) -> int:
        i = bisect.bisect_left(self.ids, job_id)
        if i == len(self.ids) or self.ids[i] != job_id:
            raise KeyError(job_id)
        return i

    def raw(self, i: int) -> msgspec.Raw:
        """The stored bytes of the job at position `i`."""
        if self._raws is None:
            self._raws = _raws_decoder.decode(self.data)
        return self._raws[i]

    def take(self, job_id: int) -> Job:
        """The job `job_id`, decoded; from now on the table holds it (or not at all)."""
        i = self.position(job_id)
        if self.taken is None:
            self.taken = bytearray(len(self.ids))
        self.taken[i] = 1
        return decode(self.raw(i))


Stored = Job | Block


class Jobs(MutableMapping[int, Job]):
    """A dict of jobs by id, in the order they were added (id order), whose values may
    still be Blocks (see the module docstring). `data` is the dict itself, for the few
    loops that add many jobs at once and must not pay a method call per job."""

    __slots__ = ("data",)

    def __init__(self, data: dict[int, Stored] | None = None) -> None:
        self.data: dict[int, Stored] = {} if data is None else data

    def __getitem__(self, job_id: int) -> Job:
        job = self.data[job_id]
        if type(job) is Block:
            job = self.data[job_id] = job.take(job_id)
        return job  # type: ignore[return-value]

    @overload
    def get(self, job_id: int, /) -> Job | None: ...
    @overload
    def get(self, job_id: int, default: Job, /) -> Job: ...
    @overload
    def get(self, job_id: int, default: Any, /) -> Any: ...
    def get(self, job_id: int, default: Any = None) -> Any:
        job = self.data.get(job_id, default)
        if type(job) is Block:
            job = self.data[job_id] = job.take(job_id)
        return job

    def __setitem__(self, job_id: int, job: Job) -> None:
        self.data[job_id] = job

    def __delitem__(self, job_id: int) -> None:
        self.pop(job_id)

    def pop(self, job_id: int, *default: Any) -> Any:
        job = self.data.pop(job_id, *default)
        return job.take(job_id) if type(job) is Block else job

    def __contains__(self, job_id: object) -> bool:
        return job_id in self.data

    def __len__(self) -> int:
        return len(self.data)

    def __iter__(self) -> Iterator[int]:
        return iter(self.data)

    def __reversed__(self) -> Iterator[int]:
        return reversed(self.data)

    def values(self) -> _Values:
        return _Values(self)

    def update(self, other: Any = (), /, **kw: Job) -> None:
        self.data.update(other, **kw)

    def walk(
        self, statuses: Container[str] | None = None, newest_first: bool = False
    ) -> Iterator[Job]:
        """The jobs (of these statuses), in id order or newest first, each decoded and
        kept as it is reached. A job still in a Block whose status column says another
        status is passed over without being decoded (its status cannot have changed: a
        change decodes it), and a whole untouched block of none of these statuses in a
        loop in C: a walk for the few failed jobs among a million queued ones (the
        retention sweep, `clear`) costs a look at each block, not at each job."""
        data = self.data
        items = reversed(data.items()) if newest_first else iter(data.items())
        codes = None if statuses is None else {STATUS_CODE[s] for s in STATUSES if s in statuses}
        step = -1 if newest_first else 1
        block: Block | None = None
        at = 0
        for job_id, job in items:
            if type(job) is Block:
                if codes is not None:
                    if job is not block:
                        block = job
                        if job.taken is None and not codes.intersection(bytes(job.status)):
                            # (untouched: its jobs are the next len(job) - 1 entries too)
                            collections.deque(itertools.islice(items, len(job) - 1), maxlen=0)
                            continue
                        at = job.position(job_id)
                    else:
                        at += step
                        if not 0 <= at < len(job.ids) or job.ids[at] != job_id:
                            at = job.position(job_id)
                    if job.status[at] not in codes:
                        continue
                job = data[job_id] = job.take(job_id)
            elif codes is not None and job.status not in statuses:  # type: ignore[operator]
                continue
            yield job  # type: ignore[misc]

    def encoded(self) -> int:
        """How many jobs are still held in their stored bytes."""
        return sum(type(j) is Block for j in self.data.values())

    def compacted(self) -> Jobs:
        """A copy whose dict is sized to what it holds (see State._compact)."""
        return Jobs(dict(self.data))

    def __sizeof__(self) -> int:
        return sys.getsizeof(self.data)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Mapping):
            return NotImplemented
        return dict(self.items()) == dict(other.items())

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Jobs({len(self.data)} jobs, {self.encoded()} encoded)"


class _Values(ValuesView[Job]):
    """The jobs, each decoded (and kept) as the walk reaches it; reversible, like a
    dict's values, for the newest-first walks of `State.select`."""

    __slots__ = ()
    _mapping: Jobs

    def __iter__(self) -> Iterator[Job]:
        return self._walk(iter(self._mapping.data.items()))

    def __reversed__(self) -> Iterator[Job]:
        return self._walk(reversed(self._mapping.data.items()))

    def _walk(self, items: Iterable[tuple[int, Stored]]) -> Iterator[Job]:
        data = self._mapping.data
        for job_id, job in items:
            if type(job) is Block:
                job = data[job_id] = job.take(job_id)
            yield job  # type: ignore[misc]
