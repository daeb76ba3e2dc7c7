"""The Python a one-job submit costs phxqd on its way through, without sockets or a disk.

    .venv/bin/python -m bench.bench_submit_path [--jobs 32000] [--rounds 5]

What 16 one-job clients cost the daemon beyond bench_ceiling's `inline` stand-in is
Python: the kernel's part (reads, writes, fdatasyncs, wake-ups) is the same for both
(bench_syscalls). This measures that Python alone, in one process on uvloop:

  phxqd   16 connections as phxqd's server drives them (server.Wire, server.Connection,
          a transport that only counts what it is given), a real LocalBackend (State,
          Recorder, Journal with fsync = "always", never written: after every 16 submits
          the batch is marked written and synced, which calls back the waiters, as the
          writer does after its fdatasync). Each submit goes the way a submit that comes
          while its connection waits goes: Wire.data_received, Connection._quick, the
          handlers' checks, the backend, the journal's record, State.apply, and the reply
          written when its record is durable.
  stand-in what bench_ceiling's stand-ins do per submit: decode, State.submit, the journal
          record (encode_record), State.apply, the reply frame, and the batch's join.

CPU µs per submit (process time), the median of the rounds. A hot loop in one process
keeps its code in the caches, which the real daemon, sharing 2 cores with 16 clients,
does not: expect the daemon's figures to be about twice these.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, cast

import uvloop

from phxqd import config, protocol, server
from phxqd.core import Core
from phxqd.local.backend import LocalBackend
from phxqd.local.journal import Journal, encode_record
from phxqd.local.state import State
from phxqd.model import JobSpec
from phxqd.settings import Options, Settings

CLIENTS = 16


class CountingTransport:
    """What a Wire writes to: counts the replies, takes everything at once."""

    def __init__(self) -> None:
        self.replies = 0

    def write(self, data: bytes) -> None:
        self.replies += 1

    def is_closing(self) -> bool:
        return False

    def set_write_buffer_limits(self, high: int = 0) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0


def request() -> bytes:
    return protocol.frame(protocol.Submit([JobSpec(argv=["true"], cwd="/tmp")]))


async def phxqd_path(jobs: int, base: Path) -> float:
    settings = Settings.from_config(
        config.Config(workers=1, snapshot_bytes=1 << 40, logs_dir=str(base / "logs")),
        Options(
            config_path=base / "phxqd.toml",  # never read: the config is given
            config_required=False,
            state_dir=str(base),
            socket=str(base / "phxqd.sock"),  # never listened on
        ),
    )
    settings.journal_dir.mkdir(parents=True)
    journal = Journal(settings.journal_dir, 1, "always")
    state = State()
    state.paused_all = True  # as bench_ceiling's daemon: no dispatch round per submit
    core = Core(LocalBackend(state, journal, settings), settings)
    wires: list[tuple[server.Wire, CountingTransport]] = []
    for _ in range(CLIENTS):
        wire, transport = server.Wire(), CountingTransport()
        wire.connection_made(cast(asyncio.BaseTransport, transport))
        connection = server.Connection(wire, core.handle, 0, core.handle_then)
        connection.greeted = True
        wires.append((wire, transport))
    frame = request()
    cpu0 = time.process_time()
    for _ in range(jobs // CLIENTS):
        for wire, _transport in wires:
            wire.awaiting_request = True  # as Connection._read_frame leaves it
            wire.data_received(frame)
        journal._pending.clear()  # "written and fdatasync'd": the writer's part
        journal._written(journal.last_lsn, 0, 0.0001)
    cpu = time.process_time() - cpu0
    replies = sum(t.replies for _, t in wires)
    if replies != jobs // CLIENTS * CLIENTS:
        raise SystemExit(f"{replies} replies to {jobs} submits")
    return cpu


def stand_in_path(jobs: int) -> float:
    state = State()
    frame = request()
    size = protocol.HEADER.size
    records: list[bytes] = []
    replies: list[bytes] = []
    cpu0 = time.process_time()
    for _ in range(jobs // CLIENTS):
        for _ in range(CLIENTS):
            buf = b"" + frame
            (length,) = protocol.HEADER.unpack_from(buf)
            req: Any = protocol.request_decoder.decode(buf[size : size + length])
            events, results = state.submit(req.jobs, time.time(), {})
            records += [encode_record(e) for e in events]
            for e in events:
                state.apply(e)
            replies.append(protocol.frame(protocol.Ok(results)))
        b"".join(records)
        records.clear()
        replies.clear()
    return time.process_time() - cpu0


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.bench_submit_path", description=__doc__)
    p.add_argument("--jobs", type=int, default=32000)
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args(argv)
    runs: dict[str, list[float]] = {"phxqd": [], "stand-in": []}
    for _ in range(args.rounds):
        with tempfile.TemporaryDirectory(prefix="phxq-path-") as tmp:
            runs["phxqd"].append(uvloop.run(phxqd_path(args.jobs, Path(tmp))) / args.jobs)
        runs["stand-in"].append(stand_in_path(args.jobs) / args.jobs)
    print(f"{args.jobs} one-job submits, {args.rounds} rounds, CPU per submit (median):")
    for name, rs in runs.items():
        lo, mid, hi = (x * 1e6 for x in (min(rs), statistics.median(rs), max(rs)))
        print(f"  {name:9} {mid:6.2f} µs  (rounds {lo:.2f}-{hi:.2f})")


if __name__ == "__main__":
    main()
