"""The snapshot file format: chunked jobs as arrays, packed order, older formats still read."""

from __future__ import annotations

import zlib
from pathlib import Path

import msgspec
import pytest

from phxqd.events import Requeued, Started
from phxqd.local import journal, snapshot
from phxqd.local.jobtable import Block
from phxqd.local.journal import Corruption
from phxqd.local.state import Sharer, Snapshot, State
from phxqd.model import Call, Job, JobSpec, Progress, StoredJob


def filled(n: int) -> State:
    """n jobs, a few retried to the back of the queue so the order is not the id order."""
    state = State()
    specs = [
        JobSpec(argv=["convert", f"in{i}.jpg"] if i % 3 else ["true"], cwd="/srv", priority=i % 2)
        for i in range(n)
    ]
    events, _ = state.submit(specs, 1000.0)
    for e in events:
        state.apply(e)
    if n >= 17:
        cancel, _ = state.cancel([5, 17, 2], 1001.0)
        for e in cancel:
            state.apply(e)
        for e in state.retry([17, 5], 1002.0):
            state.apply(e)
    return state


def claims(state: State, n: int) -> list[int]:
    """The ids the dispatcher would start next, in order."""
    out = []
    for _ in range(n):
        job = state.claim_next(2000.0)
        if job is None:
            break
        out.append(job.id)
    return out


@pytest.mark.parametrize("n", [0, 1, snapshot.CHUNK, 2 * snapshot.CHUNK + 7])
def test_a_snapshot_restores_the_same_jobs_and_queue_order(tmp_path: Path, n: int) -> None:
    state = filled(n)
    snapshot.write(tmp_path, snapshot.encode(state.snapshot(42)))
    snap = snapshot.load(tmp_path, Sharer())
    assert snap is not None and snap.lsn == 42
    back = State.from_snapshot(snap, 2000.0, shared=True)
    assert [msgspec.to_builtins(j) for j in back.jobs.values()] == [
        msgspec.to_builtins(j) for j in state.jobs.values()
    ]
    assert back.summary() == state.summary()
    assert claims(back, 50) == claims(state, 50)


def test_jobs_restored_share_what_they_have_in_common(tmp_path: Path) -> None:
    state = filled(30)
    assert state.jobs[5].status == "pending"
    # without the index (an older snapshot), every job is decoded through the Sharer
    snapshot.write(
        tmp_path, snapshot.encode(msgspec.structs.replace(state.snapshot(1), index=None))
    )
    snap = snapshot.load(tmp_path, Sharer())
    assert snap is not None and snap.index is None
    jobs = {j.id: j for j in snap.jobs}
    assert jobs[3].cwd is jobs[30].cwd and jobs[3].queue is jobs[30].queue
    assert jobs[3].status is jobs[30].status  # a Literal field: one object per value
    assert jobs[3].run_at is jobs[3].created_at
    assert jobs[8].argv == ("convert", "in7.jpg") and jobs[8].argv[0] is jobs[9].argv[0]
    # with it, jobs are decoded when touched, and share their queue, directory and floats
    snapshot.write(tmp_path, snapshot.encode(state.snapshot(1)))
    snap = snapshot.load(tmp_path, Sharer())
    assert snap is not None and snap.index is not None
    assert all(type(j) is Block for j in snap.jobs)
    back = State.from_snapshot(snap, 2000.0, shared=True).jobs
    assert back[3].cwd is back[30].cwd and back[3].queue is back[30].queue
    assert back[3].status is back[30].status and back[3].run_at is back[3].created_at


def test_the_first_snapshot_format_is_still_read(tmp_path: Path) -> None:
    state = filled(20)
    payload = msgspec.msgpack.encode(state.snapshot(9))
    (tmp_path / snapshot.FILENAME).write_bytes(
        snapshot.MAGIC_V1 + snapshot.HEADER.pack(len(payload), zlib.crc32(payload)) + payload
    )
    snap = snapshot.load(tmp_path, Sharer())
    assert snap is not None and snap.lsn == 9
    back = State.from_snapshot(snap, 2000.0, shared=True)
    assert claims(back, 30) == claims(state, 30)


def test_a_damaged_snapshot_is_refused(tmp_path: Path) -> None:
    snapshot.write(tmp_path, snapshot.encode(filled(20).snapshot(3)))
    path = tmp_path / snapshot.FILENAME
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(Corruption, match="checksum"):
        snapshot.load(tmp_path)


def test_every_field_of_a_job_comes_back_and_jobs_are_plain_jobs(tmp_path: Path) -> None:
    state = filled(3)
    full = state.jobs[2]
    full.env, full.backoff, full.after = {"A": "1"}, (1.0, 8.0, 0.5), (1,)
    full.progress = Progress(updated_at=5.0, percent=50.0, step="half", done=1, total=2)
    full.call, full.result = Call("pkg.mod:f", [1, "x"], {"k": None}), {"out": [1, 2]}
    full.key, full.label, full.timeout, full.error = "k", "l", 9.5, "boom"
    snapshot.write(tmp_path, snapshot.encode(state.snapshot(7)))
    snap = snapshot.load(tmp_path, Sharer())
    assert snap is not None
    back = State.from_snapshot(snap, 2000.0, shared=True)
    assert [msgspec.to_builtins(j) for j in back.jobs.values()] == [
        msgspec.to_builtins(j) for j in state.jobs.values()
    ]
    # stored as arrays, but what comes back is Job itself: on the wire a map, as ever
    assert all(type(j) is Job for j in back.jobs.values())
    assert msgspec.msgpack.decode(msgspec.msgpack.encode(back.jobs[2]))["env"] == {"A": "1"}


def test_the_second_snapshot_format_is_still_read(tmp_path: Path) -> None:
    # format 2: the same file, but each chunk a msgpack array of jobs as maps
    state = filled(25)
    snap = state.snapshot(4)
    enc = msgspec.msgpack.encode
    payload = enc(
        snapshot.SnapshotFile(
            snap.lsn,
            snap.next_id,
            snap.paused,
            snap.paused_all,
            snap.limits,
            b"".join(i.to_bytes(8, "little") for i in snap.order),
            [msgspec.Raw(enc(snap.jobs[:10])), msgspec.Raw(enc(snap.jobs[10:]))],
        )
    )
    (tmp_path / snapshot.FILENAME).write_bytes(
        snapshot.MAGIC_V2 + snapshot.HEADER.pack(len(payload), zlib.crc32(payload)) + payload
    )
    got = snapshot.load(tmp_path, Sharer())
    assert got is not None and got.lsn == 4
    back = State.from_snapshot(got, 2000.0, shared=True)
    assert back.summary() == state.summary()
    assert claims(back, 30) == claims(state, 30)


@pytest.mark.parametrize("delayed", [False, True])
def test_a_restore_in_bulk_queues_as_one_by_one_does(tmp_path: Path, delayed: bool) -> None:
    # One queue, all pending: from_snapshot builds its heap in bulk (State._ready_in_bulk).
    # A delayed job, or none: the jobs go through the general path; both must agree with
    # the state that was saved, before and after more jobs come.
    state = State()
    specs = [JobSpec(argv=["true"], priority=i % 3) for i in range(40)]
    if delayed:
        specs.append(JobSpec(argv=["true"], delay=5000.0))
    for e in state.submit(specs, 1000.0)[0]:
        state.apply(e)
    snapshot.write(tmp_path, snapshot.encode(state.snapshot(1)))
    snap = snapshot.load(tmp_path, Sharer())
    assert snap is not None
    back = State.from_snapshot(snap, 2000.0, shared=True)
    assert back.summary() == state.summary()
    more = [JobSpec(argv=["true"], priority=p) for p in (2, 0)]
    for s in (state, back):
        for e in s.submit(more, 1500.0)[0]:
            s.apply(e)
    assert claims(back, 50) == claims(state, 50)
    assert len(claims(back, 50)) == 0


@pytest.mark.parametrize("n", [0, 3, snapshot.CHUNK + 1])
def test_a_streamed_snapshot_is_the_same_file(tmp_path: Path, n: int) -> None:
    # the snapshot child writes it a chunk at a time, the jobs briefly made StoredJobs
    state = filled(n)
    if n:
        state.jobs[1].env, state.jobs[1].result = {"A": "1"}, {"out": [1]}
    expected = snapshot.encode(state.snapshot(5))
    snapshot.write_streamed(tmp_path, state.snapshot(5))
    assert (tmp_path / snapshot.TEMPORARY).read_bytes() == expected
    # as the child takes it: the index's columns in pieces, written one after the other
    snapshot.write_streamed(tmp_path, state.snapshot(5, joined=False))
    assert (tmp_path / snapshot.TEMPORARY).read_bytes() == expected
    assert all(type(j) is Job for j in state.jobs.values())


def varied(now: float) -> State:
    """Jobs in every status, three queues, priorities, keys, delays, retries and --after
    (blocked and released), a few already touched: what the index must describe."""
    state = State()
    specs = [
        JobSpec(
            argv=["true", str(i)],
            queue=f"q{i % 3}",
            priority=i % 4,
            key=f"k{i}" if i % 7 == 0 else None,
            delay=5000.0 if i % 11 == 0 else None,
        )
        for i in range(60)
    ]
    for e in state.submit(specs, now)[0]:
        state.apply(e)
    for more in (
        [JobSpec(argv=["x"], after=[3, 4])],
        [JobSpec(argv=["y"], after=[61], queue="q1")],
    ):
        for e in state.submit(more, now)[0]:
            state.apply(e)
    rng = __import__("random").Random(1)
    for _ in range(12):
        job = state.claim_next(now + 1)
        assert job is not None
        state.apply(Started(job.id, now + 1, 100 + job.id, 0.0))
    running = sorted(state._listed["running"])
    outcomes = [(0, None), (1, None), (100, None), (None, "boom")]
    for i, job_id in enumerate(running[:8]):
        code, err = outcomes[i % 4]
        state.apply(state.outcome(job_id, code, err, now + 2, rng))
    for e in state.cancel([20, 22], now + 3)[0]:
        state.apply(e)
    return state


@pytest.mark.parametrize("now", [None, 1002.5, 9000.0])
def test_a_restore_from_the_index_is_the_restore_from_the_jobs(
    tmp_path: Path, now: float | None
) -> None:
    # The index (columns of the indexes) and the jobs themselves must give the same state,
    # every index included: State's equality compares the maps and the heaps.
    state = varied(1000.0)
    snap = state.snapshot(3)
    assert snap.index is not None
    snapshot.write(tmp_path, snapshot.encode(snap))
    got = snapshot.load(tmp_path, Sharer())
    assert got is not None and all(type(j) is Block for j in got.jobs)
    from_index = State.from_snapshot(got, now, shared=True)
    assert from_index.jobs.encoded() > 40, "the index path decoded the jobs"
    old = msgspec.structs.replace(snap, index=None)
    snapshot.write(tmp_path, snapshot.encode(old))
    got = snapshot.load(tmp_path, Sharer())
    assert got is not None and got.index is None
    from_jobs = State.from_snapshot(got, now, shared=True)
    assert from_index == from_jobs
    assert claims(from_index, 80) == claims(from_jobs, 80)
    assert from_index == from_jobs


def test_a_restored_state_writes_the_snapshot_it_was_read_from(tmp_path: Path) -> None:
    # Jobs never touched are written as the bytes they were read as, the touched ones
    # encoded again: the same file, whichever jobs were touched.
    state = varied(1000.0)
    first = snapshot.encode(state.snapshot(3))
    snapshot.write(tmp_path, first)
    got = snapshot.load(tmp_path, Sharer())
    assert got is not None
    back = State.from_snapshot(got, 1000.5, shared=True)
    assert snapshot.encode(back.snapshot(3)) == first
    for job_id in (1, 7, 30, 61):
        back.jobs[job_id]
    assert 0 < back.jobs.encoded() < len(back.jobs) - 3
    assert snapshot.encode(back.snapshot(3)) == first
    snapshot.write_streamed(tmp_path, back.snapshot(3))
    assert (tmp_path / snapshot.TEMPORARY).read_bytes() == first
    # the index's columns in pieces (the blocks' own and those of the touched jobs)
    snapshot.write_streamed(tmp_path, back.snapshot(3, joined=False))
    assert (tmp_path / snapshot.TEMPORARY).read_bytes() == first
    assert snapshot.encode(back.snapshot(3, joined=False)) == first
    # and a job decoded is the one the table keeps: a change to it stays
    back.jobs[2].label = "changed"
    assert back.jobs.get(2) is back.jobs[2] and back.jobs[2].label == "changed"


def test_the_index_in_pieces_is_the_index_joined(tmp_path: Path) -> None:
    # Whole blocks (their columns as views), a block partly touched, jobs of a journal's
    # bulk batch in a queue numbered otherwise, and new Jobs between them: the child's
    # snapshot (the columns in pieces) is the file the joined index gives.
    state = filled(2 * snapshot.CHUNK + 7)
    snapshot.write(tmp_path, snapshot.encode(state.snapshot(3)))
    got = snapshot.load(tmp_path, Sharer())
    assert got is not None
    back = State.from_snapshot(got, 1000.5, shared=True)
    back.jobs[snapshot.CHUNK + 3]  # the second block touched
    for e in back.submit([JobSpec(argv=["x"])], 1001.0)[0]:
        back.apply(e)
    (batch,) = back.submit([JobSpec(argv=["y"], queue="other")] * 20, 1001.0)[0]
    record = journal.encode_record(batch)
    block = journal.decode_record_encoded(record[journal.RECORD_HEADER.size :])
    assert type(block) is Block and block.queues == ["other"]
    back.apply(block)  # (a replayed batch: its queue is 0 in its block, 1 in the index)
    for e in back.submit([JobSpec(argv=["z"])], 1001.0)[0]:
        back.apply(e)
    pieces = back.snapshot(4, joined=False)
    assert pieces.columns is not None and len(pieces.columns[0]) > 2
    expected = snapshot.encode(back.snapshot(4))
    snapshot.write_streamed(tmp_path, pieces)
    assert (tmp_path / snapshot.TEMPORARY).read_bytes() == expected
    assert snapshot.encode(back.snapshot(4, joined=False)) == expected
    with pytest.raises(ValueError):
        State.from_snapshot(pieces)
    # and that index describes the jobs: the restore from it is the restore from them
    snapshot.publish(tmp_path)
    got = snapshot.load(tmp_path, Sharer())
    assert got is not None
    from_index = State.from_snapshot(got, 1002.0, shared=True)
    snapshot.write(tmp_path, snapshot.encode(msgspec.structs.replace(back.snapshot(4), index=None)))
    got = snapshot.load(tmp_path, Sharer())
    assert got is not None and got.index is None
    from_jobs = State.from_snapshot(got, 1002.0, shared=True)
    assert from_index == from_jobs
    assert claims(from_index, 30) == claims(from_jobs, 30)


def test_a_phxqd_from_before_the_index_reads_a_snapshot_with_one(tmp_path: Path) -> None:
    # The index is a trailing field: the SnapshotFile of before (nine fields) decodes the
    # file and ignores it, and its jobs are what it always read.
    class Before(msgspec.Struct, array_like=True):
        lsn: int
        next_id: int
        paused: list[str]
        paused_all: bool
        limits: dict[str, int]
        order: bytes
        chunks: list[msgspec.Raw]
        schedules: list[object] = []
        rates: dict[str, tuple[float, int]] = {}

    state = varied(1000.0)
    data = snapshot.encode(state.snapshot(3))
    start = len(snapshot.MAGIC) + snapshot.HEADER.size
    old = msgspec.msgpack.decode(data[start:], type=Before)
    jobs = [j for c in old.chunks for j in msgspec.msgpack.decode(c, type=list[StoredJob])]
    assert [msgspec.structs.astuple(j) for j in jobs] == [
        msgspec.structs.astuple(j) for j in state.jobs.values()
    ]


def test_a_fifo_backlog_gives_its_order_without_sorting_and_the_same_order(
    tmp_path: Path,
) -> None:
    # State._fifo: while the queue is first in, first out, a snapshot takes the order as
    # it stands (the ids column when every job waits); it must be the sorted order.
    def sorted_order(state: State) -> list[int]:
        place = {**state._blocked, **state._queued}
        return sorted(place, key=place.__getitem__)

    state = State()
    for batch in range(3):
        specs = [JobSpec(argv=["true"], priority=i % 2) for i in range(40)]
        for e in state.submit(specs, 1000.0 + batch)[0]:
            state.apply(e)
    assert state._fifo and list(state.snapshot(1).queue_order()) == sorted_order(state)
    snapshot.write(tmp_path, snapshot.encode(state.snapshot(1)))
    got = snapshot.load(tmp_path, Sharer())
    assert got is not None
    back = State.from_snapshot(got, 2000.0, shared=True)
    assert back._fifo and list(back.snapshot(1).queue_order()) == sorted_order(back) == list(
        range(1, 121)
    )
    for s in (state, back):
        job = s.claim_next(2000.0)
        assert job is not None and job.id == 2  # priority 1 first
        assert s._fifo and list(s.snapshot(1).queue_order()) == sorted_order(s)
        s.apply(Started(job.id, 2000.0, 1, 0.0))
        s.apply(Requeued(job.id))  # back at the end: no longer in id order
        assert not s._fifo and list(s.snapshot(1).queue_order()) == sorted_order(s)
        assert sorted_order(s)[-1] == 2


def test_walks_by_status_skip_the_jobs_still_stored_and_agree(tmp_path: Path) -> None:
    # Walks by status (retention, clear, list --status, retry-failed) read a stored job's
    # status from its block's column: the same answers as over Jobs, fewer jobs decoded.
    state = varied(1000.0)
    specs = [JobSpec(argv=["true", str(i)]) for i in range(50)]  # an untouched block
    for e in state.submit(specs, 1010.0)[0]:
        state.apply(e)
    snapshot.write(tmp_path, snapshot.encode(state.snapshot(3)))
    got = snapshot.load(tmp_path, Sharer())
    assert got is not None
    back = State.from_snapshot(got, 1020.0, shared=True)
    mine = State.from_snapshot(
        msgspec.msgpack.decode(msgspec.msgpack.encode(state.snapshot(3)), type=Snapshot),
        1020.0,
    )
    # (but the jobs with --after and those they wait on: read to block them)
    assert back.jobs.encoded() == len(back.jobs) - 4 and mine.jobs.encoded() == 0
    for s in ("completed", "failed", "cancelled", "running", "retrying", "pending"):
        assert [j.id for j in back.select(s, None, 500)] == [
            j.id for j in mine.select(s, None, 500)
        ]
        assert [j.id for j in back.by_status(s)] == [j.id for j in mine.by_status(s)]
    assert back.jobs.encoded() == 0  # (pending ones included: all read now)
    back = State.from_snapshot(got, 1020.0, shared=True)
    assert back.finished_before(1e12) == mine.finished_before(1e12) != []
    assert back.clear(None, None) == mine.clear(None, None)
    assert back.retry_failed(None, 2000.0) == mine.retry_failed(None, 2000.0)
    assert back.jobs.encoded() >= 50, "the untouched pending block was decoded"


def test_runs_appended_to_a_sorted_heap_keep_its_order(tmp_path: Path) -> None:
    # State._push_run appends a batch of one priority in one go while the heap's list is
    # sorted; claims, a batch of mixed priorities and single submits unsort it. The jobs
    # must come out as a heap of them all would give them, before and after a restore.
    state = State()
    expected: list[tuple[int, int]] = []  # (-priority, id): ids grow with the seq here

    def batch(priorities: list[int]) -> None:
        specs = [JobSpec(argv=["true"], priority=p) for p in priorities]
        for e in state.submit(specs, 1000.0)[0]:
            state.apply(e)
        first = state.next_id - len(priorities)
        expected.extend((-p, first + i) for i, p in enumerate(priorities))

    def claim(n: int) -> None:
        for _ in range(n):
            job = state.claim_next(2000.0)
            expected.sort()
            assert job is not None and job.id == expected.pop(0)[1]

    batch([1] * 20)
    batch([1] * 20)
    assert state._sorted == {"default"}
    claim(5)
    batch([2] * 20)  # no longer sorted: pushed one by one
    assert not state._sorted
    batch([0, 3] * 10)
    batch([1])
    claim(10)
    snapshot.write(tmp_path, snapshot.encode(state.snapshot(1)))
    got = snapshot.load(tmp_path, Sharer())
    assert got is not None
    back = State.from_snapshot(got, 2000.0, shared=True)
    rest = sorted(expected)
    assert [back.claim_next(2000.0).id for _ in rest] == [i for _, i in rest]  # type: ignore[union-attr]
    claim(len(expected))
