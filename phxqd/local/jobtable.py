"""The State's jobs by id, each held as a Job or as its stored bytes until it is touched.

A restart with a million queued jobs spent most of its time and memory building a Job
object per job (1.34 s and 604 bytes a job for msgspec's decode alone, see
bench/bench_restart_floor.py), though most of those jobs are only waited on until they
run. So a snapshot's jobs are loaded as `msgspec.Raw` views of their stored arrays
(StoredJob, ~80 bytes each, in the snapshot's one buffer), and a job is decoded the first
time anything reads it (`[]`, `get`, `pop`, a walk of `values`), then kept as a Job: the
object a caller gets is the one the table holds from then on, so a change made to it is
never lost to a second decode. Jobs submitted at run time or replayed from the journal are
Jobs from the start.

A snapshot writes what the table holds (`stored`): the bytes of a job never touched are
copied as they are, without a decode and an encode.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator, Mapping, MutableMapping, ValuesView
from typing import Any, overload

import msgspec

from phxqd.model import Job, Status, StoredJob

Stored = Job | msgspec.Raw


class Head(msgspec.Struct, array_like=True, gc=False):
    """The first fields of a StoredJob, those the State's indexes read: decoding a
    stored job as a Head skips its argv and its fields after `after` (a stored array's
    trailing elements are ignored), and builds no Job."""

    id: int
    argv: msgspec.Raw
    queue: str
    priority: int
    status: Status
    created_at: float
    run_at: float
    key: str | None
    label: str | None
    cwd: str | None
    env: dict[str, str] | None
    timeout: float | None
    max_retries: int
    backoff: tuple[float, float, float] | None
    after: tuple[int, ...] | None


class EncodedBatch(msgspec.Struct, gc=False):
    """A journal's `subs` record as recovery reads it: the jobs' stored bytes, and their
    heads for the indexes. `State.apply` of it is `apply(SubmittedBatch(jobs))`, but for
    jobs kept encoded (see jobtable.py); never written."""

    jobs: list[msgspec.Raw]
    heads: list[Head]


_decoder = msgspec.msgpack.Decoder(StoredJob)


def decode(raw: msgspec.Raw) -> Job:
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


class Jobs(MutableMapping[int, Job]):
    """A dict of jobs by id, in the order they were added (id order), whose values may
    still be stored bytes (see the module docstring). `data` is the dict itself, for the
    few loops that add many jobs at once and must not pay a method call per job."""

    __slots__ = ("data",)

    def __init__(self, data: dict[int, Stored] | None = None) -> None:
        self.data: dict[int, Stored] = {} if data is None else data

    def __getitem__(self, job_id: int) -> Job:
        job = self.data[job_id]
        if type(job) is msgspec.Raw:
            job = self.data[job_id] = decode(job)
        return job

    @overload
    def get(self, job_id: int, /) -> Job | None: ...
    @overload
    def get(self, job_id: int, default: Job, /) -> Job: ...
    @overload
    def get(self, job_id: int, default: Any, /) -> Any: ...
    def get(self, job_id: int, default: Any = None) -> Any:
        job = self.data.get(job_id, default)
        if type(job) is msgspec.Raw:
            job = self.data[job_id] = decode(job)
        return job

    def __setitem__(self, job_id: int, job: Job) -> None:
        self.data[job_id] = job

    def __delitem__(self, job_id: int) -> None:
        del self.data[job_id]

    def pop(self, job_id: int, *default: Any) -> Any:
        job = self.data.pop(job_id, *default)
        return decode(job) if type(job) is msgspec.Raw else job

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

    def stored(self) -> list[Stored]:
        """Every job as held: a Job, or the bytes of one never touched since it was
        loaded (a snapshot writes those as they are)."""
        return list(self.data.values())

    def encoded(self) -> int:
        """How many jobs are still held as their stored bytes."""
        return sum(type(j) is msgspec.Raw for j in self.data.values())

    def compacted(self) -> Jobs:
        """A copy whose dict is sized to what it holds (see State._compact)."""
        return Jobs(dict(self.data))

    def __sizeof__(self) -> int:
        return sys.getsizeof(self.data)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Jobs):
            other = dict(other.items())
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
            if type(job) is msgspec.Raw:
                job = data[job_id] = decode(job)
            yield job
