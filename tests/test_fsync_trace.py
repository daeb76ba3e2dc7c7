"""The order of phxqd's fsyncs, read from a trace of the real system calls (strace -f).

A kill -9 keeps the page cache, so no crash test can tell a missing fsync from a present
one: only a power cut loses what was not synced. This test runs the real daemon under
strace and checks the order the durability rules (DESIGN.md, "Durability") ask for:

- a journal record is fdatasync'd before the request that wrote it is answered;
- a new segment's directory is fsync'd before anything is written to the segment;
- a snapshot file is fsync'd before it is renamed into place, and the directory after the
  rename, before any segment the snapshot covers is deleted (and before phxqd exits);
- a torn tail, once cut, is fsync'd before phxqd answers anyone or writes that segment.

The scenarios keep every request sequential and the queues paused, so each answer the
daemon sends is to the request whose record was just written: "every journal write done
before an answer is synced before it" is then exactly "record before ack".
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import psutil

from phxqctl import Client
from phxqd.local.journal import RECORD_HEADER
from tests.conftest import Daemon, need, until

TRACED = (
    "write,pwrite64,writev,sendto,sendmsg,fsync,fdatasync,openat,"
    "rename,renameat,renameat2,ftruncate,unlink,unlinkat"
)
SYNCS = ("fsync", "fdatasync")
SENDS = ("sendto", "sendmsg", "write", "writev")
#: how records reach a segment (pwrite64: into its preallocated space, at an offset)
WRITES = ("write", "writev", "pwrite64")


@dataclass
class Call:
    """One system call: where in the trace it began and where it returned."""

    pid: int
    name: str
    args: str
    ret: str
    enter: int
    exit: int

    @property
    def ok(self) -> bool:
        return not self.ret.startswith("-1") and self.ret != "?"

    @property
    def fd_path(self) -> str:
        """The path strace -yy shows for the first argument's descriptor."""
        m = re.match(r"-?\d+<(.*?)>(?:,|$)", self.args)
        return m.group(1) if m else ""

    @property
    def opened(self) -> str:
        m = re.search(r"<([^<>]*)>$", self.ret)
        return m.group(1) if m else ""

    def quoted(self, n: int) -> str:
        return re.findall(r'"((?:[^"\\]|\\.)*)"', self.args)[n]


LINE = re.compile(r"^(\d+)\s+(.*)$")
WHOLE = re.compile(r"^(\w+)\((.*)\)\s+=\s+(.*)$")
UNFINISHED = re.compile(r"^(\w+)\((.*?),? <unfinished \.\.\.>$")
RESUMED = re.compile(r"^<\.\.\. (\w+) resumed>(.*)\)\s+=\s+(.*)$")


def parse(text: str) -> list[Call]:
    calls: list[Call] = []
    pending: dict[int, tuple[str, str, int]] = {}
    for seq, line in enumerate(text.splitlines()):
        m = LINE.match(line)
        if m is None:
            continue
        pid, rest = int(m.group(1)), m.group(2)
        if rest.startswith(("---", "+++")):
            continue
        if u := UNFINISHED.match(rest):
            pending[pid] = (u.group(1), u.group(2), seq)
        elif r := RESUMED.match(rest):
            name, args, enter = pending.pop(pid, (r.group(1), "", seq))
            calls.append(Call(pid, name, args + r.group(2), r.group(3), enter, seq))
        elif w := WHOLE.match(rest):
            calls.append(Call(pid, w.group(1), w.group(2), w.group(3), seq, seq))
    return [c for c in calls if c.ok]


def synced_between(calls: list[Call], path: str, after: int, before: float) -> bool:
    """Did an fsync or fdatasync of `path` begin after `after` and return before `before`?"""
    return any(
        c.name in SYNCS and c.fd_path == path and c.enter > after and c.exit < before for c in calls
    )


def is_segment(path: str) -> bool:
    return path.endswith(".seg")


def check_records_before_acks(calls: list[Call], sock: str) -> int:
    """Every journal write done before an answer is synced before the answer is sent.
    Returns how many answers followed a journal write."""
    writes = [c for c in calls if c.name in WRITES and is_segment(c.fd_path)]
    acks, previous = 0, -1
    for send in sorted(calls, key=lambda c: c.enter):
        if send.name not in SENDS or sock not in send.fd_path:
            continue
        before = [w for w in writes if w.exit < send.enter]
        for w in before:
            assert synced_between(calls, w.fd_path, w.exit, send.enter), (
                f"answer at trace line {send.enter} sent before the journal write at line "
                f"{w.exit} ({w.fd_path}) was fdatasync'd"
            )
        acks += any(w.exit > previous for w in before)
        previous = send.enter
    return acks


def check_new_segments(calls: list[Call], journal: str) -> int:
    """A segment's directory is fsync'd after its creation, before the first write to it.
    Returns how many segments were created and then written."""
    written = 0
    for c in calls:
        if c.name != "openat" or "O_CREAT" not in c.args or not is_segment(c.opened):
            continue
        writes = [w for w in calls if w.fd_path == c.opened and w.name in WRITES]
        first = min((w.enter for w in writes if w.enter > c.exit), default=float("inf"))
        assert synced_between(calls, journal, c.exit, first), (
            f"{c.opened} created (trace line {c.exit}) and its directory not fsync'd "
            + ("before the first write to it" if writes else "at all")
        )
        written += bool(writes)
    return written


def check_snapshots(calls: list[Call], journal: str) -> int:
    """The snapshot's temporary file is fsync'd after its last write and before the
    rename; the directory after the rename, before a segment is deleted. Returns how many
    snapshots were published."""
    renames = [c for c in calls if c.name.startswith("rename") and c.args.count('"') >= 4]
    published = 0
    for r in renames:
        old, new = r.quoted(0), r.quoted(1)
        if not new.endswith("/snapshot"):
            continue
        published += 1
        writes = [c.exit for c in calls if c.name == "write" and c.fd_path == old]
        assert writes, f"no write of {old} before its rename"
        last = max(w for w in writes if w < r.enter)
        assert synced_between(calls, old, last, r.enter), (
            f"{old} renamed (trace line {r.enter}) without an fsync after its last write"
        )
        unlinks = [
            c.enter
            for c in calls
            if c.name.startswith("unlink") and c.enter > r.exit and c.quoted(0).endswith(".seg")
        ]
        until_ = min(unlinks, default=float("inf"))
        assert synced_between(calls, journal, r.exit, until_), (
            f"snapshot renamed (trace line {r.exit}) without the directory fsync'd "
            + ("before a covered segment was deleted" if unlinks else "at all")
        )
    return published


def check_torn_tail_cut(calls: list[Call], sock: str) -> int:
    """A segment cut short is fsync'd before phxqd answers anyone or writes to it again."""
    cuts = [c for c in calls if c.name == "ftruncate" and is_segment(c.fd_path)]
    for cut in cuts:
        later = [
            c.enter
            for c in calls
            if c.enter > cut.exit
            and (
                (c.name in SENDS and sock in c.fd_path)
                or (c.name in WRITES and c.fd_path == cut.fd_path)
            )
        ]
        assert synced_between(calls, cut.fd_path, cut.exit, min(later, default=float("inf"))), (
            f"{cut.fd_path} cut (trace line {cut.exit}) and not fsync'd before phxqd went on"
        )
    return len(cuts)


def traced(d: Daemon, trace: Path) -> psutil.Process:
    """Start `d` under strace; the phxqd process (strace's child)."""
    strace = need("strace")
    options = ["-f", "-qq", "-yy", "-s", "0", "-e", f"trace={TRACED}", "-o", str(trace)]
    d.start(wrapper=[strace, *options, "--"])
    assert d.proc is not None
    proc = d.proc
    return until(lambda: psutil.Process(proc.pid).children(), what="strace's child")[0]


def stop(d: Daemon, daemon: psutil.Process) -> None:
    daemon.send_signal(signal.SIGTERM)
    assert d.proc is not None and d.wait(60) == 0, d.logtext()


def check_all(d: Daemon, trace: Path) -> tuple[list[Call], dict[str, int]]:
    calls = parse(trace.read_text())
    sock, journal = str(d.socket), str(d.state_dir / "journal")
    counts = {
        "acks": check_records_before_acks(calls, sock),
        "written segments": check_new_segments(calls, journal),
        "snapshots": check_snapshots(calls, journal),
        "cuts": check_torn_tail_cut(calls, sock),
    }
    return calls, counts


def test_records_segments_and_snapshots_are_synced_in_order(tmp_path: Path) -> None:
    """Submits under a small snapshot_bytes: records acked, a snapshot taken and a new
    segment opened while running, then another snapshot and segment at the stop."""
    d = Daemon(tmp_path / "d", workers=1)
    d.config.write_text("snapshot_bytes = 400\n")  # a snapshot every few submits
    trace = tmp_path / "trace"
    daemon = traced(d, trace)
    d.ok("pause")
    for _ in range(12):
        d.submit("true")
    stop(d, daemon)
    calls, counts = check_all(d, trace)
    syncs = [c for c in calls if c.name == "fdatasync" and is_segment(c.fd_path)]
    assert len(syncs) >= 13, f"{len(syncs)} fdatasyncs of the journal for 13 acked requests"
    assert counts["acks"] >= 13, counts
    assert counts["written segments"] >= 2, counts  # the first, and one after a snapshot
    assert counts["snapshots"] >= 2, counts  # one while running, one at the stop


def test_a_cut_torn_tail_is_synced_before_phxqd_goes_on(tmp_path: Path) -> None:
    d = Daemon(tmp_path / "d", workers=1)
    d.start()
    d.ok("pause")
    d.submit("true")
    d.kill9()
    journal = d.state_dir / "journal"
    segment = sorted(journal.glob("*.seg"))[-1]
    with segment.open("ab") as f:  # a record whose write was cut short by the crash
        f.write(RECORD_HEADER.pack(100, 0) + b"x" * 10)
    trace = tmp_path / "trace"
    daemon = traced(d, trace)
    assert "torn tail cut" in d.logtext()
    d.submit("true")
    stop(d, daemon)
    _, counts = check_all(d, trace)
    assert counts["cuts"] == 1, counts
    assert counts["acks"] >= 1, counts


def test_a_journal_repair_syncs_its_cut_and_the_dropped_segments(tmp_path: Path) -> None:
    """`phxqd journal repair` cuts a damaged segment and deletes every later one: both
    must be on disk before it says it is done (a later segment come back after a power
    cut would not follow the cut one)."""
    d = Daemon(tmp_path / "d", workers=1)
    d.config.write_text("segment_bytes = 300\n")  # a new segment every few records
    d.start()
    d.ok("pause")
    for _ in range(12):
        d.submit("true")
    d.kill9()
    journal = d.state_dir / "journal"
    segments = sorted(journal.glob("*.seg"))
    assert len(segments) >= 3, segments
    first = segments[0]
    data = bytearray(first.read_bytes())
    data[-5] ^= 0x55  # inside the first segment's last record
    first.write_bytes(bytes(data))
    trace = tmp_path / "trace"
    options = ["-f", "-qq", "-yy", "-s", "0", "-e", f"trace={TRACED}", "-o", str(trace)]
    r = subprocess.run(
        [need("strace"), *options, "--", sys.executable, "-m", "phxqd", "journal", "repair"],
        env=d.env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"cut {first}" in r.stdout, r.stdout
    calls = parse(trace.read_text())
    assert check_torn_tail_cut(calls, str(d.socket)) == 1
    unlinks = [
        c for c in calls if c.name.startswith("unlink") and c.quoted(0).startswith(f"{journal}/")
    ]
    assert len(unlinks) == len(segments) - 1, unlinks
    last = max(c.exit for c in unlinks)
    assert synced_between(calls, str(journal), last, float("inf")), (
        "later segments deleted and the directory not fsync'd after"
    )


def test_batch_mode_syncs_every_record_within_its_interval_without_more_requests(
    tmp_path: Path,
) -> None:
    """`fsync = "batch"` answers after the write and syncs later, on its own: once the
    requests stop, an fdatasync still comes (the trace is watched for it), and before
    the stop. A writer that synced only when more requests came, or at the stop, fails."""
    d = Daemon(tmp_path / "d", workers=1)
    d.config.write_text('fsync = "batch"\nfsync_interval_ms = 1000\n')
    trace = tmp_path / "trace"
    daemon = traced(d, trace)
    d.ok("pause")
    # Three submits in a row, well within the interval of the sync the first one brings
    # about: the last ones are synced by the writer's timer, or never.
    with Client(d.socket) as c:
        for _ in range(3):
            c.submit(["true"])

    def synced_after_the_last_write() -> bool:
        calls = parse(trace.read_text())
        writes = [c for c in calls if c.name in WRITES and is_segment(c.fd_path)]
        return bool(writes) and synced_between(calls, writes[-1].fd_path, writes[-1].exit, 1e18)

    until(synced_after_the_last_write, what="an fdatasync after the last record, unasked")
    text = trace.read_text()
    stop(d, daemon)
    calls = parse(text)  # the trace up to before the stop: every record synced by then
    writes = [c for c in calls if c.name in WRITES and is_segment(c.fd_path)]
    assert len(writes) >= 5, writes  # the segment's magic, the pause and three submits
    for w in writes:
        assert synced_between(calls, w.fd_path, w.exit, float("inf")), f"line {w.exit}"
