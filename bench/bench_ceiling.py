"""How fast can 16 clients submit one job per request on this machine, whatever the daemon?

    .venv/bin/python -m bench.bench_ceiling [--rounds 5] [--clients 16] [--per 1500] [--base TREE]

Issue 3 asks for 20,000 durable submits/s from 16 concurrent clients, each sending one job
per request and waiting for its acknowledgement. This puts phxqd beside two stand-ins that
speak its protocol to the same `phxqctl.Client` processes (bench.common.producers):

  floor  a server that decodes each request and sends back a canned reply: no state, no
         journal. What the clients and the kernel's socket round trips cost by themselves.
  ideal  the least a durable Python daemon can do: uvloop, one asyncio Protocol per
         connection (no task per request), phxqd's own State.submit, State.apply and
         journal record encoding, and group commit (one write + fdatasync in a thread per
         batch, replies sent as soon as their batch is on disk). No validation, metrics,
         dispatcher, snapshots or error handling.
  inline the same as ideal, with the write + fdatasync in the event loop itself: the
         loop stalls for each, while the next batch gathers in the sockets.
  prealloc  inline, writing into a file preallocated with posix_fallocate (64 MiB) instead
         of appending: an fdatasync then commits no new file size (phxqd's journal since
         format 3). bench_one's floor for one producer; not in this script's own rounds.
  phxqd  the real daemon, paused, fsync = "always".
  base   with `--base`, the daemon of another source tree (bench_ab's run), the same way.

It also measures what one write + fdatasync costs here, in wall time and in CPU time.

The servers run in turn within each round (noise on this shared machine moves all of them
alike), each fresh; the figures are medians over the rounds, with the CPU seconds per job
of the server and of all the clients. Prints a Markdown table, then a JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from multiprocessing.synchronize import Event as MpEvent
from pathlib import Path
from typing import Any, cast

import uvloop

from bench.bench_journal import Daemon, daemon_cpu_seconds, submitter
from bench.common import WARMUP, producers
from phxqctl import Client
from phxqd import protocol
from phxqd.local.journal import encode_record
from phxqd.local.state import State
from phxqd.model import JobSpec

SERVERS = ("floor", "ideal", "inline", "phxqd")


class StandIn(asyncio.Protocol):
    """One client connection of a stand-in server: frames in, replies out, in order."""

    def __init__(self, answer: Callable[[StandIn, protocol.Request], None]) -> None:
        self.answer = answer
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's: not a subclass

    def data_received(self, data: bytes) -> None:
        buf = self.buffer + data
        size = protocol.HEADER.size
        while len(buf) >= size:
            (length,) = protocol.HEADER.unpack_from(buf)
            if len(buf) < size + length:
                break
            self.answer(self, protocol.request_decoder.decode(buf[size : size + length]))
            buf = buf[size + length :]
        self.buffer = buf

    def reply(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)


class GroupCommit:
    """Records appended between two fdatasyncs share the next one; replies wait for it."""

    def __init__(
        self, path: Path, loop: asyncio.AbstractEventLoop, inline: bool, prealloc: bool = False
    ) -> None:
        self.inline = inline
        self.prealloc = prealloc
        self.offset = 0
        flags = os.O_WRONLY | os.O_CREAT | (0 if prealloc else os.O_APPEND)
        self.fd = os.open(path, flags, 0o600)
        if prealloc:
            os.posix_fallocate(self.fd, 0, 64 * 1024 * 1024)
            os.fsync(self.fd)
        self.loop = loop
        self.thread = ThreadPoolExecutor(1)
        self.records: list[bytes] = []
        self.replies: list[tuple[StandIn, bytes]] = []
        self.syncing = False
        self.batches = 0

    def add(self, records: list[bytes], to: StandIn, reply: bytes) -> None:
        self.records += records
        self.replies.append((to, reply))
        if not self.syncing:
            self.syncing = True
            self.loop.call_soon(self._start)  # after this loop turn's other requests

    def _start(self) -> None:
        data, self.records = b"".join(self.records), []
        replies, self.replies = self.replies, []
        self.batches += 1
        if self.inline:
            self._write(data)
            self._synced(replies)
            return
        done = self.loop.run_in_executor(self.thread, self._write, data)
        done.add_done_callback(lambda _: self._synced(replies))

    def _write(self, data: bytes) -> None:
        if self.prealloc:
            os.pwrite(self.fd, data, self.offset)
            self.offset += len(data)
        else:
            os.write(self.fd, data)
        os.fdatasync(self.fd)

    def _synced(self, replies: list[tuple[StandIn, bytes]]) -> None:
        for to, reply in replies:
            to.reply(reply)
        self.syncing = False
        if self.replies:
            self.syncing = True
            self._start()


def stand_in(kind: str, root: Path, ready: MpEvent) -> None:
    """A stand-in server process (runs until killed)."""
    state = State()
    hello = protocol.frame(protocol.Ok(protocol.HelloReply(protocol.PROTOCOL_VERSION)))
    _, canned = state.submit([JobSpec(argv=["true"], cwd="/")], time.time(), {})
    canned_reply = protocol.frame(protocol.Ok(canned))
    empty = protocol.frame(protocol.Ok({}))

    async def main() -> None:
        loop = asyncio.get_running_loop()
        inline, prealloc = kind in ("inline", "prealloc"), kind == "prealloc"
        journal = GroupCommit(root / "journal", loop, inline, prealloc)

        def answer(conn: StandIn, req: protocol.Request) -> None:
            if isinstance(req, protocol.Hello):
                conn.reply(hello)
            elif not isinstance(req, protocol.Submit):
                conn.reply(empty)  # status, pause
            elif kind == "floor":
                conn.reply(canned_reply)
            else:
                events, results = state.submit(req.jobs, time.time(), {})
                records = [encode_record(e) for e in events]
                for e in events:
                    state.apply(e)
                journal.add(records, conn, protocol.frame(protocol.Ok(results)))

        await loop.create_unix_server(lambda: StandIn(answer), str(root / "sock"))
        ready.set()
        await asyncio.Event().wait()

    uvloop.run(main())


def fdatasync_cost(directory: Path, calls: int = 500) -> tuple[float, float]:
    """(median wall µs, mean CPU µs) of appending 1 KiB and fdatasyncing it."""
    path = directory / "probe"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        walls = []
        cpu0 = time.process_time()
        for _ in range(calls):
            t0 = time.perf_counter()
            os.write(fd, b"x" * 1024)
            os.fdatasync(fd)
            walls.append(time.perf_counter() - t0)
        cpu = (time.process_time() - cpu0) / calls
    finally:
        os.close(fd)
        path.unlink()
    return statistics.median(walls) * 1e6, cpu * 1e6


@dataclass
class Run:
    jobs_per_s: float
    server_us: float
    clients_us: float

    def line(self) -> str:
        return (
            f"{self.jobs_per_s:8.0f} jobs/s  server {self.server_us:5.1f} µs/job  "
            f"clients {self.clients_us:5.1f} µs/job"
        )


def timed_submits(server_pid: int, sock: Path, clients: int, per: int) -> Run:
    """`clients` processes submit `per` one-job requests each (after WARMUP untimed ones
    among them); CPU of both sides during the timed ones."""
    server0: list[float] = []
    spent: list[float] = []
    rate = producers(
        lambda: submitter(sock),
        clients,
        per,
        warmup=WARMUP,
        on_start=lambda: server0.append(daemon_cpu_seconds(server_pid)),
        cpu=spent,
    )
    jobs = clients * per
    server = daemon_cpu_seconds(server_pid) - server0[0]
    return Run(rate, server / jobs * 1e6, sum(spent) / jobs * 1e6)


def measure(kind: str, clients: int, per: int) -> Run:
    with tempfile.TemporaryDirectory(prefix="phxq-ceiling-") as tmp:
        root = Path(tmp)
        proc: Any
        if kind == "phxqd":
            d = Daemon(root, "always")
            d.start()
            assert d.proc is not None
            proc, sock = d.proc, d.socket
            with Client(sock) as c:
                c.pause()
        else:
            ctx = mp.get_context("fork")
            ready = ctx.Event()
            proc = ctx.Process(target=stand_in, args=(kind, root, ready), daemon=True)
            proc.start()
            if not ready.wait(30):
                raise SystemExit(f"the {kind} server did not start")
            sock = root / "sock"
        try:
            return timed_submits(proc.pid, sock, clients, per)
        finally:
            proc.kill()
            if kind != "phxqd":
                proc.join()
            else:
                proc.wait()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.bench_ceiling", description=__doc__)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--per", type=int, default=1500, help="jobs per client per run")
    p.add_argument("--base", type=Path, help="another version's source tree, also measured")
    args = p.parse_args(argv)
    from bench import bench_ab  # it imports this module

    kinds = [*SERVERS, *(["base"] if args.base else [])]
    print(f"load average at the start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    with tempfile.TemporaryDirectory(prefix="phxq-ceiling-") as tmp:
        sync_wall, sync_cpu = fdatasync_cost(Path(tmp))
    print(f"write + fdatasync of 1 KiB: {sync_wall:.0f} µs wall (median), {sync_cpu:.0f} µs CPU")
    runs: dict[str, list[Run]] = {k: [] for k in kinds}
    for r in range(args.rounds):
        for kind in kinds:
            if kind == "base":
                run = bench_ab.measure(args.base.resolve(), args.clients, args.per)
            else:
                run = measure(kind, args.clients, args.per)
            runs[kind].append(run)
            print(f"round {r + 1} {kind:6} {run.line()}", flush=True)
    summary: dict[str, dict[str, Any]] = {}
    #: each round's best durable stand-in: what phxqd is held to (issue 19: >= 90% of it)
    pairs = zip(runs["ideal"], runs["inline"], strict=True)
    best = [max(i.jobs_per_s, n.jobs_per_s) for i, n in pairs]
    for kind, rs in runs.items():
        rates = [r.jobs_per_s for r in rs]
        summary[kind] = {
            "jobs_per_s": round(statistics.median(rates)),
            "x_best": round(statistics.median(r / b for r, b in zip(rates, best, strict=True)), 2),
            "range": [round(min(rates)), round(max(rates))],
            "server_us_per_job": round(statistics.median(r.server_us for r in rs), 1),
            "clients_us_per_job": round(statistics.median(r.clients_us for r in rs), 1),
        }
    print(f"load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print()
    print(f"{args.clients} clients x {args.per} one-job submits, {args.rounds} rounds, medians:")
    print()
    print(
        "| server | jobs/s | range | x best durable stand-in (median of rounds) "
        "| server CPU µs/job | clients CPU µs/job |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for kind, s in summary.items():
        lo, hi = s["range"]
        print(
            f"| {kind} | {s['jobs_per_s']:,} | {lo:,}-{hi:,} | {s['x_best']} "
            f"| {s['server_us_per_job']} | {s['clients_us_per_job']} |"
        )
    print(json.dumps({"fdatasync_us": [round(sync_wall), round(sync_cpu)], **summary}))


if __name__ == "__main__":
    main()
