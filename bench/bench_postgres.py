"""phxq on PostgreSQL, against procrastinate on the same server and against phxq's own
journal, in one run on this machine (docs/benchmarks.md, "Many hosts: PostgreSQL"):

    .venv/bin/python -m bench.bench_postgres [--jobs 5000] [--submits 2000]
        [--only-submits] [--rounds R] [--base TREE] [--skip-procrastinate]

PostgreSQL is a throwaway cluster (bench/pg_server.py) with `fsync = on` and
`synchronous_commit = on`; phxq's journal runs with `fsync = "always"`; procrastinate
commits each defer with the server's synchronous_commit (on). Measured:
- durable submits/s: one client, one job per request; 16 client processes; batches of 1,000;
- end to end: N jobs submitted while paused, then resumed, until the last completed, with
  1, 2 and 3 phxq nodes (2 workers each) on one database: `true` commands and no-op Python
  callables; procrastinate's worker (concurrency 8) on no-op tasks;
- PostgreSQL's work per job over the end-to-end run: transactions committed in the
  database and WAL bytes written by the server (pg_stat_database, pg_stat_wal);
- the floor of one client on this server: a round trip (`SELECT 1`) and a durable commit
  (a one-row INSERT, autocommit: its WAL flushed), one after another, as many per second
  as one connection gets; and the load averages before and after (other work on the
  machine slows every row);
- the floor of any daemon in front of PostgreSQL for one client: a minimal asyncio server
  in its own process (psycopg, one connection) that answers each one-byte request on a
  Unix socket after one durable one-row INSERT, and the same server without the INSERT
  (the hop alone). phxq's "1 client" submit row is this plus its own work.
The nodes all run on this one 2-core machine (with the server): more nodes here share the
same two cores, so the figures for 2 and 3 nodes show the cost of sharing, not a gain.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

from bench.bench_journal import Daemon, bench_batches, bench_concurrent, bench_single
from bench.pg_server import PgServer, cpu_seconds
from phxqctl import Client
from phxqd.model import Call, JobSpec


def phxq_node(root: Path, uri: str | None, tree: Path | None = None) -> Daemon:
    """A phxqd on the journal (`uri` None) or on PostgreSQL; from `tree`'s sources if given."""
    root.mkdir(parents=True, exist_ok=True)
    d = Daemon(root, "always")
    d.cwd = tree
    if uri is not None:
        with open(root / "c.toml", "a") as f:
            f.write(f'store = "{uri}"\nlog_level = "warning"\n')
    d.start()
    return d


def phxq_submits(root: Path, uri: str | None, n: int, tree: Path | None = None) -> dict[str, float]:
    d = phxq_node(root, uri, tree)
    try:
        with Client(d.socket) as c:
            c.pause()
        return {
            "1 client": bench_single(d, n),
            "16 clients": bench_concurrent(d, 16, max(n // 16, 1)),
            "batches of 1,000": bench_batches(d, max(n // 1000, 5)),
        }
    finally:
        d.close()


class Work(NamedTuple):
    """One end-to-end run: jobs/s, and per job what PostgreSQL and the nodes spent."""

    rate: float
    xacts: float = 0.0
    wal: float = 0.0
    #: WAL flushes (fsyncs) per job: commits that waited for the disk, grouped
    syncs: float = 0.0
    #: CPU µs per job of the nodes (phxqd processes, not their jobs) or of the worker
    node_cpu: float = 0.0
    #: CPU µs per job of PostgreSQL's processes
    server_cpu: float = 0.0

    def row(self, name: str, label: str, pg: bool = True) -> list[str]:
        if not pg:
            return [name, label, f"{self.rate:,.0f}", "-", "-", "-", f"{self.node_cpu:,.0f}", "-"]
        return [
            name,
            label,
            f"{self.rate:,.0f}",
            f"{self.xacts:.2f}",
            f"{self.wal:,.0f}",
            f"{self.syncs:.2f}",
            f"{self.node_cpu:,.0f}",
            f"{self.server_cpu:,.0f}",
        ]


WORK_HEADER = [
    "system",
    "jobs",
    "jobs/s",
    "transactions/job",
    "WAL bytes/job",
    "WAL flushes/job",
    "node CPU µs/job",
    "server CPU µs/job",
]


def end_to_end(
    root: Path,
    uri: str | None,
    nodes: int,
    spec: JobSpec,
    n: int,
    pg: PgServer | None,
    db: str,
    tree: Path | None = None,
) -> Work:
    """Jobs/s from resume to the last done, and the work per job over that time."""
    daemons = [phxq_node(root / f"n{i}", uri, tree) for i in range(nodes)]

    def cpu() -> float:
        return sum(cpu_seconds(d.proc.pid) for d in daemons if d.proc is not None)

    try:
        with Client(daemons[0].socket, timeout=600) as c:
            c.pause()
            ids = [r.job.id for r in c.submit_batch([spec] * n)]
            settle_stats(pg)
            before = pg.work_more(db) if pg is not None else (0, 0, 0, 0.0)
            server0 = pg.cpu() if pg is not None else 0.0
            cpu0 = cpu()
            t0 = time.perf_counter()
            c.resume()
            jobs = c.wait(ids)
            took = time.perf_counter() - t0
            node_cpu = cpu() - cpu0
            server_cpu = pg.cpu() - server0 if pg is not None else 0.0
        for d in daemons:
            d.close()
        after = (0, 0, 0, 0.0)
        if pg is not None:
            gone(pg, db)
            after = pg.work_more(db)
        bad = [j for j in jobs if j.status != "completed"]
        if bad:
            raise SystemExit(f"{len(bad)} jobs did not complete: {bad[0]}")
        return Work(
            n / took,
            (after[0] - before[0]) / n,
            (after[1] - before[1]) / n,
            (after[2] - before[2]) / n,
            node_cpu * 1e6 / n,
            server_cpu * 1e6 / n,
        )
    finally:
        for d in daemons:
            d.close()


def settle_stats(pg: PgServer | None) -> None:
    """Let every backend's statistics reach pg_stat_database and pg_stat_wal: a busy
    backend hands them over at most once a second (PostgreSQL 15), an idle one within
    that second (or 10 s later when another held the lock then). Read without this wait,
    a run of a second or so counted none of its own transactions (a callables row showed
    0.00 transactions and 0 WAL bytes a job)."""
    if pg is not None:
        time.sleep(1.5)


def gone(pg: PgServer, db: str) -> None:
    """Until no connection to `db` is left: a backend hands over its statistics as it
    exits (the nodes' were killed), so what the run did is counted in full."""
    deadline = time.monotonic() + 30
    while pg.sql(f"SELECT count(*) FROM pg_stat_activity WHERE datname = '{db}'")[0][0]:
        if time.monotonic() > deadline:
            raise SystemExit(f"connections to {db} are still open after the nodes stopped")
        time.sleep(0.05)


def _procrastinate_defers(uri: str, n: int, start: float) -> float:
    from bench import pg_tasks  # procrastinate is optional (pip extra bench)

    app, noop = pg_tasks.build(uri)

    async def go() -> float:
        async with app.open_async():
            await noop.defer_async()  # connected before the clock starts
            while time.time() < start:
                await asyncio.sleep(0.001)
            t0 = time.perf_counter()
            for _ in range(n):
                await noop.defer_async()
            return time.perf_counter() - t0

    return asyncio.run(go())


def procrastinate_submits(pg: PgServer, n: int) -> dict[str, float]:
    uri = pg.database("procrastinate_submits")
    _procrastinate_schema(uri)
    one = n / _procrastinate_defers(uri, n, 0)
    per = max(n // 16, 1)
    start = time.time() + 2
    with mp.get_context("spawn").Pool(16) as pool:
        t0 = time.perf_counter()
        pool.starmap(_procrastinate_defers, [(uri, per, start)] * 16)
        many = 16 * per / (time.perf_counter() - t0 - max(start - time.time(), 0))
    from bench import pg_tasks  # procrastinate is optional (pip extra bench)

    app, noop = pg_tasks.build(uri)

    async def batches() -> float:
        async with app.open_async():
            k = max(n // 1000, 5)
            t0 = time.perf_counter()
            for _ in range(k):
                await noop.batch_defer_async(*([{}] * 1000))
            return k * 1000 / (time.perf_counter() - t0)

    return {"1 client": one, "16 clients": many, "batches of 1,000": asyncio.run(batches())}


def _procrastinate_schema(uri: str) -> None:
    from bench import pg_tasks

    app, _ = pg_tasks.build(uri)

    async def go() -> None:
        async with app.open_async():
            await app.schema_manager.apply_schema_async()

    asyncio.run(go())


def procrastinate_end_to_end(pg: PgServer, n: int) -> Work:
    """Deferred in batches, then one worker (concurrency 8) until the queue is empty."""
    db = "procrastinate_e2e"
    uri = pg.database(db)
    _procrastinate_schema(uri)
    from bench import pg_tasks  # procrastinate is optional (pip extra bench)

    app, noop = pg_tasks.build(uri)

    async def go() -> Work:
        async with app.open_async():
            for _ in range(0, n, 1000):
                await noop.batch_defer_async(*([{}] * 1000))
            await asyncio.sleep(1.5)  # see settle_stats
            before = pg.work_more(db)
            cpu0 = time.process_time()
            t0 = time.perf_counter()
            await app.run_worker_async(concurrency=8, wait=False, install_signal_handlers=False)
            took = time.perf_counter() - t0
            worker_cpu = time.process_time() - cpu0
            server_cpu = pg.cpu() - before[3]
            await asyncio.sleep(1.5)
            after = pg.work_more(db)
            total = (n + 999) // 1000 * 1000
            return Work(
                total / took,
                (after[0] - before[0]) / total,
                (after[1] - before[1]) / total,
                (after[2] - before[2]) / total,
                worker_cpu * 1e6 / total,
                server_cpu * 1e6 / total,
            )

    return asyncio.run(go())


def floor(pg: PgServer, n: int = 1000) -> dict[str, float]:
    """Round trips and durable one-row commits per second, one connection, one at a time."""
    import psycopg

    with psycopg.connect(pg.database("floor"), autocommit=True) as conn:
        conn.execute("CREATE TABLE t (id bigserial PRIMARY KEY, v int)")
        t0 = time.perf_counter()
        for _ in range(n):
            conn.execute("SELECT 1").fetchall()
        trips = n / (time.perf_counter() - t0)
        t0 = time.perf_counter()
        for _ in range(n):
            conn.execute("INSERT INTO t (v) VALUES (1)")
        commits = n / (time.perf_counter() - t0)
    return {"round trips/s (SELECT 1)": trips, "durable commits/s (1-row INSERT)": commits}


def _floor_server(uri: str, path: str, commit: bool, ready: Any) -> None:
    """A minimal asyncio daemon in front of PostgreSQL: per request (one byte on a Unix
    socket), one durable one-row INSERT (autocommit: its own commit, WAL flushed), then a
    byte back. Without `commit`, only the socket hop."""
    import psycopg

    async def go() -> None:
        async with await psycopg.AsyncConnection.connect(uri, autocommit=True) as conn:
            await conn.execute("CREATE TABLE IF NOT EXISTS t (id bigserial PRIMARY KEY, v int)")

            async def serve(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
                while await r.read(1):
                    if commit:
                        await conn.execute("INSERT INTO t (v) VALUES (1)")
                    w.write(b"k")
                    await w.drain()
                w.close()

            server = await asyncio.start_unix_server(serve, path)
            ready.set()
            async with server:
                await server.serve_forever()

    asyncio.run(go())


class FloorDaemon:
    """A minimal asyncio daemon in front of PostgreSQL (its own process, psycopg, one
    connection; see `_floor_server`), and one connected client of it."""

    def __init__(self, uri: str, path: Path, commit: bool) -> None:
        import socket

        ctx = mp.get_context("spawn")
        ready = ctx.Event()
        self.server = ctx.Process(
            target=_floor_server, args=(uri, str(path), commit, ready), daemon=True
        )
        self.server.start()
        if not ready.wait(60):
            self.close()
            raise SystemExit("the floor server did not start")
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.connect(str(path))
        self.rate(20)

    def rate(self, n: int) -> float:
        """Requests per second, one at a time."""
        t0 = time.perf_counter()
        for _ in range(n):
            self.sock.sendall(b"x")
            if not self.sock.recv(1):
                raise SystemExit("the floor server hung up")
        return n / (time.perf_counter() - t0)

    def close(self) -> None:
        if hasattr(self, "sock"):
            self.sock.close()
        self.server.kill()
        self.server.join()


HOP = "minimal daemon: Unix-socket hop only"
HOP_COMMIT = "minimal daemon: hop + 1-row commit"


def daemon_floor(pg: PgServer, root: Path, n: int) -> dict[str, float]:
    """Requests/s one client gets from a minimal daemon in front of PostgreSQL: the best any
    daemon can do for one client and one job per request, durably. And the same daemon
    without the commit: the hop alone."""
    out: dict[str, float] = {}
    uri = pg.database("daemon_floor")
    for commit, label in ((False, HOP), (True, HOP_COMMIT)):
        floor_daemon = FloorDaemon(uri, root / f"floor-{int(commit)}.sock", commit)
        try:
            out[label] = floor_daemon.rate(n)
        finally:
            floor_daemon.close()
    return out


def one_client_rounds(
    pg: PgServer, root: Path, n: int, rounds: int, base: Path | None, procrastinate: bool
) -> dict[str, list[float]]:
    """One client, one job per request: the minimal daemon, phxq (and the base tree's) on
    PostgreSQL and on its journal, procrastinate, taking turns `rounds` times (the load
    other work puts on the machine then weighs on each alike): jobs/s of every turn."""
    uri = pg.database("one_floor")
    floors = {
        HOP: FloorDaemon(uri, root / "r-hop.sock", False),
        HOP_COMMIT: FloorDaemon(uri, root / "r-commit.sock", True),
    }
    nodes: dict[str, Daemon] = {}
    try:
        if base is not None:
            nodes[f"phxq of {base.name}, PostgreSQL"] = phxq_node(
                root / "r-base", pg.database("one_base"), base
            )
        nodes["phxq, PostgreSQL"] = phxq_node(root / "r-pg", pg.database("one_pg"))
        nodes["phxq, journal (fsync always)"] = phxq_node(root / "r-local", None)
        for d in nodes.values():
            with Client(d.socket) as c:
                c.pause()
        p_uri = pg.database("one_procrastinate") if procrastinate else ""
        if procrastinate:
            _procrastinate_schema(p_uri)
        out: dict[str, list[float]] = {}
        for _ in range(rounds):
            for label, floor_daemon in floors.items():
                out.setdefault(label, []).append(floor_daemon.rate(n))
            for label, d in nodes.items():
                out.setdefault(label, []).append(bench_single(d, n))
            if procrastinate:
                took = _procrastinate_defers(p_uri, n, 0)
                out.setdefault("procrastinate, PostgreSQL", []).append(n / took)
        return out
    finally:
        for floor_daemon in floors.values():
            floor_daemon.close()
        for d in nodes.values():
            d.close()


def load() -> str:
    return ", ".join(f"{x:.2f}" for x in os.getloadavg())


def table(title: str, header: list[str], rows: list[list[str]]) -> str:
    out = [f"**{title}**", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out) + "\n"


def floors_and_submits(
    pg: PgServer,
    root: Path,
    args: argparse.Namespace,
    have_procrastinate: bool,
    say: Callable[[str], None],
) -> None:
    """The floors, the one-client rounds (`--rounds`) and the submits: printed."""
    say("floor: round trips and commits")
    print(
        table(
            "PostgreSQL floor, one connection",
            ["measure", "per second"],
            [[k, f"{v:,.0f}"] for k, v in floor(pg).items()],
        )
    )
    say("floor: a minimal daemon in front of PostgreSQL, one client")
    print(
        table(
            f"A minimal daemon's floor, one client, one request at a time (load {load()})",
            ["measure", "requests/s", "µs each"],
            [
                [k, f"{v:,.0f}", f"{1e6 / v:,.0f}"]
                for k, v in daemon_floor(pg, root, args.submits).items()
            ],
        )
    )
    if args.rounds:
        say(f"one client: {args.rounds} rounds, taking turns")
        turns = one_client_rounds(
            pg, root, args.submits, args.rounds, args.base, have_procrastinate
        )
        print(
            table(
                f"One client, one job per request, {args.rounds} rounds taking turns"
                f" ({args.submits:,} each; load at the end {load()})",
                ["system", "median jobs/s", "µs each", "every round"],
                [
                    [
                        k,
                        f"{statistics.median(v):,.0f}",
                        f"{1e6 / statistics.median(v):,.0f}",
                        ", ".join(f"{x:,.0f}" for x in v),
                    ]
                    for k, v in turns.items()
                ],
            )
        )
    subs: dict[str, dict[str, float]] = {}
    if args.base is not None:
        say(f"submits: phxq of {args.base} on PostgreSQL")
        subs[f"phxq of {args.base.name}, PostgreSQL"] = phxq_submits(
            root / "s-base", pg.database("submits_base"), args.submits, args.base
        )
    say("submits: phxq on PostgreSQL")
    subs["phxq, PostgreSQL"] = phxq_submits(root / "s-pg", pg.database("submits"), args.submits)
    say("submits: phxq, journal")
    subs["phxq, journal (fsync always)"] = phxq_submits(root / "s-local", None, args.submits)
    if have_procrastinate:
        say("submits: procrastinate")
        subs["procrastinate, PostgreSQL"] = procrastinate_submits(pg, args.submits)
    kinds = list(next(iter(subs.values())))
    print(
        table(
            "Durable submits per second",
            ["system", *kinds],
            [[name, *(f"{v[k]:,.0f}" for k in kinds)] for name, v in subs.items()],
        )
    )


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.bench_postgres")
    p.add_argument("--jobs", type=int, default=5000, help="jobs per end-to-end run")
    p.add_argument("--submits", type=int, default=2000, help="jobs per submit measurement")
    p.add_argument("--skip-procrastinate", action="store_true")
    p.add_argument("--only-submits", action="store_true", help="the floors and submits only")
    p.add_argument(
        "--only-e2e", action="store_true", help="the end-to-end runs only (no floors, no submits)"
    )
    p.add_argument(
        "--nodes",
        type=lambda v: [int(x) for x in v.split(",")],
        default=[1, 2, 3],
        help="node counts of the end-to-end runs, comma-separated (default 1,2,3)",
    )
    p.add_argument(
        "--rounds",
        type=int,
        default=0,
        help="also the one-client row of each system, R rounds taking turns (medians)",
    )
    p.add_argument(
        "--base",
        type=Path,
        help="also the submits and 1-node runs of another phxq source tree"
        " (git archive COMMIT | tar -x -C DIR)",
    )
    args = p.parse_args(argv)
    if args.base is not None:
        if not (args.base / "phxqd" / "__init__.py").is_file():
            raise SystemExit(f"{args.base} holds no phxqd/ package")
        args.base = args.base.resolve()
    have_procrastinate = not args.skip_procrastinate
    if have_procrastinate:
        try:
            import procrastinate  # noqa: F401
        except ImportError:
            print("procrastinate is not installed (pip install procrastinate): skipped")
            have_procrastinate = False
    root = Path(tempfile.mkdtemp(prefix="phxq-bench-"))
    say: Callable[[str], None] = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
    print(f"load averages (1, 5, 15 min) at the start: {load()}\n")
    with PgServer() as pg:
        if not args.only_e2e:
            floors_and_submits(pg, root, args, have_procrastinate, say)
        if args.only_submits:
            print(f"load averages (1, 5, 15 min) at the end: {load()}")
            return
        rows: list[list[str]] = []
        for label, spec in (
            ("`true` commands", JobSpec(argv=["true"])),
            ("no-op callables", JobSpec(call=Call("os:getpid"))),
        ):
            if args.base is not None:
                say(f"end to end: {label}, 1 node of {args.base} on PostgreSQL")
                db = f"e2e_base_{'c' if spec.call else 't'}"
                uri = pg.database(db)
                work = end_to_end(root / f"e-{db}", uri, 1, spec, args.jobs, pg, db, args.base)
                rows.append(work.row(f"phxq of {args.base.name}, PostgreSQL, 1 node", label))
            for nodes in args.nodes:
                say(f"end to end: {label}, {nodes} node(s) on PostgreSQL")
                db = f"e2e_{nodes}_{'c' if spec.call else 't'}"
                uri = pg.database(db)
                work = end_to_end(root / f"e-{db}", uri, nodes, spec, args.jobs, pg, db)
                rows.append(work.row(f"phxq, PostgreSQL, {nodes} node(s)", label))
            say(f"end to end: {label}, journal")
            work = end_to_end(root / f"e-local-{label[:4]}", None, 1, spec, args.jobs, None, "")
            rows.append(work.row("phxq, journal (fsync always)", label, pg=False))
        if have_procrastinate:
            say("end to end: procrastinate")
            work = procrastinate_end_to_end(pg, args.jobs)
            rows.append(work.row("procrastinate, 1 worker, concurrency 8", "no-op tasks"))
        print(
            table(
                f"End to end, {args.jobs:,} jobs (resume to the last completed)",
                WORK_HEADER,
                rows,
            )
        )
    print(f"load averages (1, 5, 15 min) at the end: {load()}")


if __name__ == "__main__":
    main()
