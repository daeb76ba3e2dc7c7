"""The journal on real files: group commit, torn tails, corruption, snapshots."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import zlib
from collections.abc import Callable
from pathlib import Path

import anyio
import msgspec
import pytest

from phxqd.events import AnyEvent, Paused, Submitted, SubmittedBatch
from phxqd.local import snapshot
from phxqd.local.journal import (
    INLINE_SYNC_MAX,
    PREALLOC_CHUNK,
    RECORD_HEADER,
    SECTOR,
    SEGMENT_MAGIC,
    Corruption,
    Journal,
    JournalError,
    list_segments,
    scan_segment,
)
from phxqd.local.recovery import recover
from phxqd.local.state import State
from phxqd.model import Job
from tests.conftest import Daemon, until


def job_event(i: int) -> Submitted:
    return Submitted(
        Job(
            id=i,
            argv=("echo", str(i)),
            queue="default",
            priority=0,
            status="pending",
            created_at=float(i),
            run_at=float(i),
        )
    )


def write_journal(
    directory: Path, events: list[AnyEvent], next_lsn: int = 1, segment_bytes: int = 1 << 26
) -> None:
    """Append events one request at a time through the real writer (real fdatasync).
    Each call is one daemon life: it opens a new segment at `next_lsn`."""

    async def main() -> None:
        journal = Journal(directory, next_lsn, "always", segment_bytes=segment_bytes)
        async with anyio.create_task_group() as tg:
            tg.start_soon(journal.run)
            for event in events:
                await journal.durable(journal.append([event]))
            await journal.close()

    directory.mkdir(parents=True, exist_ok=True)
    anyio.run(main)


def record_offsets(path: Path) -> list[int]:
    """Where each record of a segment starts (after the magic, up to the zeros that follow
    the records of a preallocated one)."""
    data = path.read_bytes()
    pos = len(SEGMENT_MAGIC) if data.startswith(SEGMENT_MAGIC) else 0
    out = []
    while pos < len(data):
        length, _ = RECORD_HEADER.unpack_from(data, pos)
        if length == 0:
            break
        out.append(pos)
        pos += RECORD_HEADER.size + length
    return out


def records_end(path: Path) -> int:
    """The byte after a segment's last record (its preallocated zeros follow)."""
    return scan_segment(path).good_bytes


def tear(path: Path, by: int) -> None:
    """Cut the last `by` bytes of a segment's records, as a crash while appending would."""
    path.write_bytes(path.read_bytes()[: records_end(path) - by])


def test_records_roundtrip_and_lsns_continue_after_restart(tmp_path: Path) -> None:
    write_journal(tmp_path, [job_event(i) for i in range(1, 6)])
    got = recover(tmp_path, cut_torn_tail=False)
    assert sorted(got.state.jobs) == [1, 2, 3, 4, 5] and got.next_lsn == 6

    write_journal(tmp_path, [job_event(6)], got.next_lsn)
    assert len(list_segments(tmp_path)) == 2  # a restart always starts a new segment
    assert sorted(recover(tmp_path, cut_torn_tail=False).state.jobs) == [1, 2, 3, 4, 5, 6]


def test_truncation_at_every_byte_of_the_last_records(tmp_path: Path) -> None:
    # Each cut twice: the file ending there (an appended segment, or an older phxqd's), and
    # the preallocated zeros going on after it (a write of the records never made).
    src = tmp_path / "src"
    write_journal(src, [job_event(i) for i in range(1, 11)], segment_bytes=4096)
    [(first, seg)] = list_segments(src)
    data = seg.read_bytes()
    end = records_end(seg)
    assert data.startswith(SEGMENT_MAGIC) and len(data) >= 4096 and not any(data[end:])
    offsets = record_offsets(seg)
    assert len(offsets) == 10
    start = offsets[-3]  # every cut inside the last three records, and at their borders
    for cut in range(start, end + 1):
        for zeros in (0, len(data) - cut):
            d = tmp_path / f"cut{cut}-{zeros}"
            d.mkdir()
            (d / seg.name).write_bytes(data[:cut] + bytes(zeros))
            whole = sum(1 for off in [*offsets[1:], end] if off <= cut)
            got = recover(d, cut_torn_tail=True)
            assert sorted(got.state.jobs) == list(range(1, whole + 1)), cut
            assert got.next_lsn == first + whole
            good = [*offsets, end][whole]
            # (a record may start with zeros: its length's low byte, 256 here; only a
            # preallocated segment ends at zeros, and only after its magic)
            assert (got.torn is None) == (not any(data[good:cut]))
            if got.torn is not None:
                assert (d / seg.name).stat().st_size == good, "the torn bytes are cut off"
            else:  # a clean end: the file is left as it is
                assert (d / seg.name).read_bytes() == data[:cut] + bytes(zeros)


def test_a_hole_of_zeros_is_a_torn_end_even_with_a_whole_record_behind_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A power cut keeps the sectors of unsynced writes in any order: a record written later
    # can be whole on disk behind a sector still zero. Nothing behind such a hole was
    # acknowledged, so the newest segment is cut there; damage that is not zeros (a flipped
    # bit) with a whole record behind it stays corruption.
    big: list[AnyEvent] = [
        Submitted(msgspec.structs.replace(job_event(i).job, argv=("echo", str(i) * 200)))
        for i in range(1, 30)
    ]
    write_journal(tmp_path, big, segment_bytes=1 << 16)
    [(_, seg)] = list_segments(tmp_path)
    data, offsets = seg.read_bytes(), record_offsets(seg)
    # the record that crosses the 5th sector boundary: its second part lost
    victim = max(i for i, off in enumerate(offsets) if off < 5 * SECTOR)
    hole = bytearray(data)
    hole[5 * SECTOR : 6 * SECTOR] = bytes(SECTOR)
    seg.write_bytes(bytes(hole))
    got = recover(tmp_path, cut_torn_tail=True)
    assert sorted(got.state.jobs) == list(range(1, victim + 1))
    assert got.torn is not None and got.torn[1] == offsets[victim]
    assert seg.stat().st_size == offsets[victim]
    dropped, zeros = len(hole) - offsets[victim], len(hole) - len(bytes(hole).rstrip(b"\0"))
    assert f"{dropped} bytes dropped, {zeros} of them zeros preallocated" in caplog.text

    write_journal(tmp_path / "b", big, segment_bytes=1 << 16)
    [(_, seg)] = list_segments(tmp_path / "b")
    flipped = bytearray(seg.read_bytes())
    flipped[5 * SECTOR + 3] ^= 0x10
    seg.write_bytes(bytes(flipped))
    with pytest.raises(Corruption):
        recover(tmp_path / "b", cut_torn_tail=True)
    assert seg.read_bytes() == bytes(flipped)


def test_segments_are_preallocated_a_piece_at_a_time_and_old_ones_still_read(
    tmp_path: Path,
) -> None:
    write_journal(tmp_path, [job_event(i) for i in range(1, 4)])  # 64 MiB segments
    [(_, seg)] = list_segments(tmp_path)
    assert seg.stat().st_size == PREALLOC_CHUNK, "a quiet journal stays small"
    assert seg.stat().st_blocks * 512 >= PREALLOC_CHUNK, "the space is allocated"
    # a segment of format 2 and older: records from byte 0 up to the end of the file
    old = tmp_path / "old"
    old.mkdir()
    data = seg.read_bytes()
    (old / seg.name).write_bytes(data[len(SEGMENT_MAGIC) : records_end(seg)])
    got = recover(old, cut_torn_tail=False)
    assert sorted(got.state.jobs) == [1, 2, 3] and got.torn is None
    # and an old segment cannot end in zeros: they are damage there
    (old / seg.name).write_bytes(data[len(SEGMENT_MAGIC) :])
    assert recover(old, cut_torn_tail=False).torn is not None


def test_a_busy_segment_is_preallocated_ahead_of_its_records(tmp_path: Path) -> None:
    # 6,000 records of ~1 KiB: more than 5 pieces, every one preallocated before the
    # records reach it (the file never ends less than half a piece after them)
    async def main() -> None:
        journal = Journal(tmp_path, 1, "always", segment_bytes=1 << 26)
        async with anyio.create_task_group() as tg:
            tg.start_soon(journal.run)
            job = msgspec.structs.replace(job_event(1).job, argv=("echo", "x" * 1000))
            for i in range(1, 6001):
                await journal.durable(journal.append([Submitted(job)]))
                if i % 500 == 0:
                    await anyio.sleep(0.01)  # the writer's turn between batches
                    size = os.fstat(journal._fd).st_size
                    assert size - journal._segment_size >= PREALLOC_CHUNK // 2, (i, size)
            await journal.close()

    anyio.run(main)
    [(_, seg)] = list_segments(tmp_path)
    assert scan_segment(seg).records == 6000 and scan_segment(seg).tail_problem is None


def test_flipped_byte_in_an_earlier_record_refuses_with_the_offset(tmp_path: Path) -> None:
    write_journal(tmp_path, [job_event(i) for i in range(1, 8)])
    [(_, seg)] = list_segments(tmp_path)
    offsets = record_offsets(seg)
    original = seg.read_bytes()
    for target, where in ((2, RECORD_HEADER.size + 3), (4, 1), (0, 5)):
        data = bytearray(original)
        data[offsets[target] + where] ^= 0x40
        seg.write_bytes(bytes(data))
        with pytest.raises(Corruption) as info:
            recover(tmp_path, cut_torn_tail=True)
        assert info.value.offset == offsets[target]
        assert info.value.path == seg and str(offsets[target]) in str(info.value)
        assert seg.read_bytes() == bytes(data), "a damaged journal is never modified"


def test_damage_in_an_older_segment_is_corruption_even_at_its_end(tmp_path: Path) -> None:
    write_journal(tmp_path, [job_event(1), job_event(2)])
    write_journal(tmp_path, [job_event(3)], 3)
    (_, old), _ = list_segments(tmp_path)
    tear(old, 3)
    with pytest.raises(Corruption):
        recover(tmp_path, cut_torn_tail=True)


def test_snapshot_replaces_segments_and_replay_skips_covered_records(tmp_path: Path) -> None:
    write_journal(tmp_path, [job_event(i) for i in range(1, 4)])
    got = recover(tmp_path, cut_torn_tail=False)
    snapshot.write(tmp_path, snapshot.encode(got.state.snapshot(2)))  # covers records 1..2
    again = recover(tmp_path, cut_torn_tail=False)
    assert sorted(again.state.jobs) == [1, 2, 3] and again.records == 1
    corrupt = bytearray((tmp_path / "snapshot").read_bytes())
    corrupt[-1] ^= 1
    (tmp_path / "snapshot").write_bytes(bytes(corrupt))
    with pytest.raises(Corruption, match="snapshot"):
        recover(tmp_path, cut_torn_tail=False)


def test_missing_records_are_corruption(tmp_path: Path) -> None:
    write_journal(tmp_path, [job_event(1)])
    [(_, seg)] = list_segments(tmp_path)
    seg.rename(tmp_path / "00000000000000000005.seg")
    with pytest.raises(Corruption, match="missing"):
        recover(tmp_path, cut_torn_tail=False)


def test_replay_is_exact(tmp_path: Path) -> None:
    events: list[AnyEvent] = [job_event(i) for i in range(1, 4)]
    events.append(Paused("default"))
    write_journal(tmp_path, events)
    live = State()
    for e in events:
        live.apply(e)
    replayed = recover(tmp_path, cut_torn_tail=False).state
    assert replayed.jobs == live.jobs and replayed.paused == {"default"}


def test_a_batch_record_replays_as_its_jobs_one_by_one(tmp_path: Path) -> None:
    jobs = [job_event(i).job for i in range(1, 5)]
    write_journal(tmp_path, [SubmittedBatch(jobs[:3]), Submitted(jobs[3])])
    one_by_one = State()
    for job in jobs:
        one_by_one.apply(Submitted(job))
    got = recover(tmp_path, cut_torn_tail=False)
    assert got.next_lsn == 3  # a batch is one record, one LSN
    assert got.state.jobs == one_by_one.jobs
    assert all(type(job) is Job for job in got.state.jobs.values())  # replies are maps
    assert got.state.snapshot(0) == one_by_one.snapshot(0)  # same queue order and indexes
    # stored compactly: each job of the batch an array of its fields, in Job's field order
    seg = list_segments(tmp_path)[0][1]
    data, at = seg.read_bytes(), record_offsets(seg)[0] + RECORD_HEADER.size
    length, _ = RECORD_HEADER.unpack_from(data, at - RECORD_HEADER.size)
    tag, stored = msgspec.msgpack.decode(data[at : at + length])
    assert tag == "subs" and stored[0][:5] == [1, ["echo", "1"], "default", 0, "pending"]


# --------------------------------------------------------------- real daemon


def test_daemon_cuts_a_torn_tail_and_keeps_the_whole_records(tmp_path: Path) -> None:
    d = Daemon(tmp_path).start()
    d.ok("pause")
    ids = [d.submit("true") for _ in range(3)]
    d.kill9()
    _, seg = list_segments(d.state_dir / "journal")[-1]
    tear(seg, 5)  # tear the last record (job 3)
    d.start()
    assert "torn tail cut" in d.logtext()
    got = [json.loads(x)["id"] for x in d.ok("--json", "list").splitlines()]
    assert got == ids[:2][::-1]
    assert d.submit("true") == 3  # the torn id was never acknowledged: it may be reused
    d.kill9()


def test_a_torn_batch_record_loses_the_whole_unacknowledged_batch(tmp_path: Path) -> None:
    d = Daemon(tmp_path).start()
    d.ok("pause")
    first = d.submit("true")
    batch = tmp_path / "batch.jsonl"
    batch.write_text('{"argv": ["true"]}\n' * 3)
    d.ok("submit", "--batch", str(batch))
    d.kill9()
    _, seg = list_segments(d.state_dir / "journal")[-1]
    assert len(record_offsets(seg)) == 3  # pause, one job, one batch of three
    tear(seg, 5)
    d.start()
    assert "torn tail cut" in d.logtext()
    got = [json.loads(x)["id"] for x in d.ok("--json", "list").splitlines()]
    assert got == [first]  # all of the batch or none of it
    d.kill9()


def test_daemon_refuses_to_start_on_corruption(tmp_path: Path) -> None:
    d = Daemon(tmp_path).start()
    d.ok("pause")
    for _ in range(3):
        d.submit("true")
    d.kill9()
    _, seg = list_segments(d.state_dir / "journal")[-1]
    offsets = record_offsets(seg)
    data = bytearray(seg.read_bytes())
    data[offsets[1] + 10] ^= 0xFF
    seg.write_bytes(bytes(data))
    d.start(expect_ready=False)
    assert d.proc is not None
    assert d.wait(30) != 0
    assert f"{seg}: damaged record at byte offset {offsets[1]}" in d.logtext()
    assert "Traceback" not in d.logtext()
    assert seg.read_bytes() == bytes(data)


def test_concurrent_submits_share_fsyncs(daemon: Daemon) -> None:
    daemon.ok("pause")
    from phxqctl import Client

    per_client, clients = 40, 16
    errors: list[BaseException] = []

    def submitter() -> None:
        try:
            with Client(daemon.socket) as c:
                for _ in range(per_client):
                    c.submit(["true"])
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=submitter) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    status = daemon.json("status")
    assert status["counts"]["pending"] == per_client * clients
    # one fdatasync per request would be 640 (plus the pause); group commit needs far fewer
    assert status["journal"]["fsyncs"] < per_client * clients / 2, status["journal"]


def test_snapshots_bound_the_journal_and_survive_restart(tmp_path: Path) -> None:
    d = Daemon(tmp_path)
    d.config.write_text("snapshot_bytes = 4096\nsegment_bytes = 4096\n")
    d.start()
    d.ok("pause")
    lines = "\n".join('{"argv": ["true"]}' for _ in range(200))
    for _ in range(5):
        d.ok("submit", "--batch", "-", input=lines)
    d.ok("cancel", *map(str, range(1, 1001)))
    d.ok("clear")
    d.ok("submit", "--", "echo", "survivor")
    journal = d.state_dir / "journal"
    # many snapshots were taken on the way; a clean stop takes one more
    assert d.stop(signal.SIGTERM) == 0
    assert (journal / "snapshot").exists()
    total = sum(p.stat().st_size for p in journal.iterdir())
    assert total < 4096 * 3, sorted((p.name, p.stat().st_size) for p in journal.iterdir())
    d.start()
    jobs = [json.loads(x) for x in d.ok("--json", "list").splitlines()]
    assert [(j["id"], j["argv"]) for j in jobs] == [(1001, ["echo", "survivor"])]
    d.kill9()


def phxqd(d: Daemon, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "phxqd", *args],
        env=d.env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_verify_and_repair(tmp_path: Path) -> None:
    d = Daemon(tmp_path).start()
    d.ok("pause")
    ids = [d.submit("true") for _ in range(6)]
    busy = phxqd(d, "journal", "verify")
    assert busy.returncode != 0 and "in use" in busy.stderr  # never beside a live daemon
    d.kill9()

    clean = phxqd(d, "journal", "verify")
    assert clean.returncode == 0 and "ok" in clean.stdout and "jobs: 6" in clean.stdout

    _, seg = list_segments(d.state_dir / "journal")[-1]
    offsets = record_offsets(seg)
    data = bytearray(seg.read_bytes())
    data[offsets[3] + 9] ^= 0x55  # inside job 3's record (after pause, jobs 1 and 2)
    seg.write_bytes(bytes(data))

    bad = phxqd(d, "journal", "verify")
    assert bad.returncode == 1 and f"byte offset {offsets[3]}" in bad.stdout
    assert seg.read_bytes() == bytes(data), "verify changes nothing"

    fixed = phxqd(d, "journal", "repair")
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    assert f"cut {seg} at byte {offsets[3]}" in fixed.stdout
    backups = list(d.state_dir.glob("journal.backup-*"))
    assert len(backups) == 1 and (backups[0] / seg.name).read_bytes() == bytes(data)

    d.start()
    got = sorted(json.loads(x)["id"] for x in d.ok("--json", "list").splitlines())
    assert got == ids[:2], "the good prefix: the pause and jobs 1 and 2"
    d.kill9()


def sizes(journal: Path) -> dict[str, int]:
    out = {}
    for p in journal.iterdir():
        with contextlib.suppress(FileNotFoundError):  # a segment deleted meanwhile
            out[p.name] = p.stat().st_size
    return out


def within_bound(journal: Path) -> bool:
    files = sizes(journal)
    return sum(files.values()) <= 4 * files.get("snapshot", 0) + 32768


def test_disk_use_stays_within_three_times_the_live_state(tmp_path: Path) -> None:
    from phxqctl import Client
    from phxqd.model import JobSpec

    d = Daemon(tmp_path)
    d.config.write_text("snapshot_bytes = 4096\nsegment_bytes = 8192\n")
    d.start()
    journal = d.state_dir / "journal"
    with Client(d.socket) as c:
        c.pause()
        c.submit_batch([JobSpec(argv=["echo", "a job that stays queued"])] * 300)
        snapshots = set()
        for _ in range(40):  # 4,000 jobs come and go; only the 300 live ones cost disk
            results = c.submit_batch([JobSpec(argv=["true"])] * 100)
            c.cancel([r.job.id for r in results])
            c.clear()
            # every snapshot rotates the journal: a new segment name each time
            snapshots.update(p.name for p in journal.glob("*.seg"))
            # Snapshots are taken in the background, so under load the journal may run a
            # little ahead; within moments it is back to the snapshot plus under twice its
            # size of newer records (plus the last request, and a snapshot being written).
            until(lambda: within_bound(journal), what=f"compaction: {sizes(journal)}")
        assert len(snapshots) >= 4, "compaction kept up with the churn"
        assert c.status()["counts"]["pending"] == 300


@pytest.mark.parametrize("waiter", ["durable", "when_durable"])
@pytest.mark.parametrize("path", ["thread", "loop", "caller"])
def test_a_failed_fdatasync_fails_its_waiters_whoever_made_it(
    tmp_path: Path, path: str, waiter: str
) -> None:
    # Records are synced by the journal's thread (a batch on a disk seen slow), by the
    # writer in the loop (a batch on a disk seen fast), or by the request itself (a lone
    # record while the writer idles, Journal._sync_here): a failure must end in the same
    # place either way, for a task awaiting `durable` and for a `when_durable` callback.
    # The segment's fd is swapped for /dev/null: pwrite() works, the real fdatasync()
    # fails (EINVAL).
    async def main() -> None:
        journal = Journal(tmp_path, 1, "always")
        async with anyio.create_task_group() as tg:
            tg.start_soon(journal.run)
            for i in range(1, 4):
                await journal.durable(journal.append([job_event(i)]))
            for _ in range(3):
                await anyio.sleep(0)  # the writer back to waiting for work
            if path == "caller":
                assert journal._idle and journal._lone, "the next lone record is not its own"
            elif path == "thread":
                journal._last_sync_seconds = INLINE_SYNC_MAX  # as if the disk were slow
            w = os.open(os.devnull, os.O_WRONLY)
            try:
                os.dup2(w, journal._fd)
                events: list[AnyEvent] = [job_event(4)]
                if path != "caller":
                    journal.append([job_event(5)])  # two records: one batch, for the writer
                lsn = journal.append(events)
                if waiter == "durable":
                    with pytest.raises(JournalError, match="Invalid argument"):
                        await journal.durable(lsn)
                else:
                    told: list[JournalError | None] = []
                    journal.when_durable(lsn, told.append)
                    await until_async(lambda: bool(told))
                    assert len(told) == 1 and isinstance(told[0], JournalError)
                    assert "Invalid argument" in str(told[0])
                assert journal.failed is not None
                with pytest.raises(JournalError):
                    journal.append([job_event(7)])
                assert journal.durable_lsn == 3
                told_late: list[JournalError | None] = []
                journal.when_durable(lsn, told_late.append)  # told at once
                assert told_late == [journal.failed]
            finally:
                os.close(w)
            tg.cancel_scope.cancel()

    anyio.run(main)
    assert sorted(recover(tmp_path, cut_torn_tail=False).state.jobs) == [1, 2, 3]


async def until_async(done: Callable[[], bool], seconds: float = 30.0) -> None:
    with anyio.fail_after(seconds):
        while not done():
            await anyio.sleep(0.001)


def test_when_durable_tells_each_callback_once_its_record_is_synced(tmp_path: Path) -> None:
    # Callbacks of records synced in one batch, in the loop or by the thread, and of one
    # synced already; a callback that raises is logged and stops neither the writer nor
    # the other callbacks.
    async def main() -> None:
        journal = Journal(tmp_path, 1, "always")
        told: list[tuple[int, int, JournalError | None]] = []

        def then(lsn: int) -> Callable[[JournalError | None], None]:
            def tell(error: JournalError | None) -> None:
                told.append((lsn, journal.durable_lsn, error))
                if lsn == 2:
                    raise RuntimeError("a bug in a callback")

            return tell

        async with anyio.create_task_group() as tg:
            tg.start_soon(journal.run)
            for slow in (False, True):
                told.clear()
                first = journal.last_lsn + 1
                if slow:
                    journal._last_sync_seconds = INLINE_SYNC_MAX
                for i in range(first, first + 4):
                    journal.when_durable(journal.append([job_event(i)], wake=False), then(i))
                await until_async(lambda: len(told) == 4)
                assert [lsn for lsn, _, _ in told] == list(range(first, first + 4))
                assert all(durable >= lsn and error is None for lsn, durable, error in told)
            before = len(told)
            journal.when_durable(1, then(1))
            assert len(told) == before + 1  # durable already: told at once
            tg.cancel_scope.cancel()

    anyio.run(main)
    assert sorted(recover(tmp_path, cut_torn_tail=False).state.jobs) == list(range(1, 9))


def test_a_bulk_batch_replays_undecoded_and_as_its_jobs(tmp_path: Path) -> None:
    # A batch bulk_queue accepts is recorded with its columns; recovery keeps its jobs in
    # their stored bytes (a Block) and must still end as a replay of the jobs would.
    from phxqd.events import Cancelled, Completed, Started
    from phxqd.local.jobtable import Block
    from phxqd.local.journal import decode_record, decode_record_encoded

    jobs = [job_event(i).job for i in range(1, 41)]
    for job in jobs:
        job.priority = job.id % 3
    small = [job_event(i).job for i in range(41, 44)]
    events: list[AnyEvent] = [SubmittedBatch(jobs), SubmittedBatch(small)]
    events += [Started(7, 50.0, 99, 1.0), Completed(7, 51.0, 0), Cancelled(9, 52.0, "no")]
    write_journal(tmp_path, events)
    live = State()
    for e in events:
        live.apply(msgspec.msgpack.decode(msgspec.msgpack.encode(e), type=type(e)))
    data = list_segments(tmp_path)[0][1].read_bytes()
    start = len(SEGMENT_MAGIC) + RECORD_HEADER.size  # the first record of the segment
    length, _ = RECORD_HEADER.unpack_from(data, len(SEGMENT_MAGIC))
    payload = data[start : start + length]
    assert isinstance(decode_record_encoded(payload), Block)
    assert decode_record(payload) == SubmittedBatch(jobs)  # older readers: the same batch
    got = recover(tmp_path, cut_torn_tail=False).state
    assert 0 < got.jobs.encoded() <= 38
    assert got.summary() == live.summary()
    assert [got.claim_next(100.0) for _ in range(45)] == [live.claim_next(100.0) for _ in range(45)]
    assert got.jobs == live.jobs
    assert got.jobs.encoded() == 0


def test_a_bulk_batch_is_kept_as_the_block_of_its_own_record() -> None:
    # Applied live, a bulk batch is the Block of the record just written (its Jobs are
    # freed once answered): the record is what msgspec encodes, byte for byte, and the
    # state the Block makes is the state the Jobs make, job for job and claim for claim.
    from array import array

    from phxqd.events import Started
    from phxqd.local.jobtable import Block
    from phxqd.local.journal import decode_record_encoded, encode_kept

    jobs = [job_event(i).job for i in range(1, 41)]
    for job in jobs:
        job.priority = job.id % 3
    batch = SubmittedBatch(jobs)
    record, kept = encode_kept(batch)
    columns = [array("q", [j.id for j in jobs]), array("q", [j.priority for j in jobs])]
    columns.append(array("d", [j.run_at for j in jobs]))
    if sys.byteorder != "little":
        for c in columns:
            c.byteswap()
    payload = msgspec.msgpack.encode(
        ("subs", [msgspec.structs.astuple(j) for j in jobs], (jobs[0].queue, *map(bytes, columns)))
    )
    assert record[RECORD_HEADER.size :] == payload
    assert RECORD_HEADER.unpack_from(record) == (len(payload), zlib.crc32(payload))
    assert type(kept) is Block and type(decode_record_encoded(payload)) is Block
    small = SubmittedBatch([job_event(i).job for i in range(41, 44)])
    assert encode_kept(small)[1] is small  # not a bulk batch: applied as it is
    assert encode_kept(Paused(None))[1] == Paused(None)
    live, kept_state = State(), State()
    live.apply(msgspec.msgpack.decode(msgspec.msgpack.encode(batch), type=SubmittedBatch))
    kept_state.apply(kept)
    assert kept_state.jobs.encoded() == 40
    for state in (live, kept_state):
        state.apply(Started(7, 50.0, 99, 1.0))
    assert kept_state.summary() == live.summary()
    assert [kept_state.claim_next(100.0) for _ in range(41)] == [
        live.claim_next(100.0) for _ in range(41)
    ]
    assert kept_state.jobs == live.jobs


def test_a_lazy_record_is_written_at_once_and_synced_with_the_next_that_is(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A job's start or end (append(lazy=True)) costs no fdatasync of its own: it is in
    the segment at once (a kill -9 keeps the page cache), and durable once the next record
    that is not lazy is synced, at once when someone waits for it (`durable`), or
    LAZY_SYNC after the last fdatasync if neither comes."""
    from phxqd.local import journal as journal_module

    monkeypatch.setattr(journal_module, "LAZY_SYNC", 3600.0)

    async def main() -> None:
        journal = Journal(tmp_path, 1, "always")
        async with anyio.create_task_group() as tg:
            tg.start_soon(journal.run)
            await journal.durable(journal.append([job_event(1)]))
            syncs = journal.fsyncs
            lazy = journal.append([job_event(2)], lazy=True)
            await until_async(lambda: journal._written_lsn >= lazy)
            [(_, segment)] = list_segments(tmp_path)
            assert len(record_offsets(segment)) == 2, "written at once"
            assert journal.fsyncs == syncs and journal.durable_lsn == lazy - 1
            eager = journal.append([job_event(3)])
            await journal.durable(eager)
            assert journal.fsyncs == syncs + 1 and journal.durable_lsn == eager

            # written, then waited for (a `wait` about to report a job's end): synced at
            # once, not an hour later
            waited = journal.append([job_event(4)], lazy=True)
            await until_async(lambda: journal._written_lsn >= waited)
            with anyio.fail_after(30):
                await journal.durable(waited)
            assert journal.fsyncs == syncs + 2

            monkeypatch.setattr(journal_module, "LAZY_SYNC", 0.05)
            alone = journal.append([job_event(5)], lazy=True)
            # nobody waits, nothing else comes: the interval's fdatasync
            await until_async(lambda: journal.durable_lsn >= alone)
            assert journal.fsyncs == syncs + 3
            await journal.close()

    anyio.run(main)
    assert sorted(recover(tmp_path, cut_torn_tail=False).state.jobs) == [1, 2, 3, 4, 5]
