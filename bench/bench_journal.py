"""Durable submit throughput, restart time and memory of phxqd, on this machine.

    .venv/bin/python bench/bench_journal.py [--quick] [--jobs-in-state N]

Starts a real phxqd (fsync=always unless --fsync says otherwise) in a temp dir, paused so
that no job runs, and measures:
  1. one client, one job per request (each request waits for its own fsync);
  2. 16 client processes, one job per request (group commit shares fsyncs);
  3. one client, batches of 1000 jobs per request (the `submit --batch` path);
  4. `phxqctl submit --batch FILE` of 1000 jobs, whole command wall time;
  5. restart time (SIGKILL, start, until the socket answers) and peak RSS of the daemon
     with N jobs in the state (default 1,000,000).
Prints a JSON summary on the last line. `--batch-only`: only 3 on a fresh daemon, three
runs of 30 batches, each with the daemon's CPU time per job (user + system, /proc); with
`--tree OTHER`, one run each of that checkout's phxqd and this one's, three times in turn.
phxq alone: `python -m bench.run` (make bench) measures it side by side with its peers,
through these functions.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.common import WARMUP, proc_status_kib, producers
from phxqctl import Client
from phxqd.model import JobSpec


class Daemon:
    def __init__(self, root: Path, fsync: str) -> None:
        self.root = root
        self.socket = root / "phxqd.sock"
        self.env = {
            **os.environ,
            "PHXQ_SOCKET": str(self.socket),
            "PHXQ_STATE_DIR": str(root / "state"),
            "PHXQ_CONFIG": str(root / "c.toml"),
        }
        (root / "c.toml").write_text(f'fsync = "{fsync}"\n')
        self.proc: subprocess.Popen[bytes] | None = None
        #: where phxqd starts; `python -m phxqd` imports the phxqd of this directory first
        self.cwd: Path | None = None

    def start(self) -> float:
        """Start and return seconds until the socket answered a status request."""
        t0 = time.perf_counter()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "phxqd", "--workers", "2", "--log-level", "warning"],
            env=self.env,
            cwd=self.cwd,
        )
        while True:
            try:
                with Client(self.socket) as c:
                    c.status()
                return time.perf_counter() - t0
            except Exception:
                if self.proc.poll() is not None:
                    raise SystemExit("phxqd exited") from None
                time.sleep(0.002)

    def peak_rss_kib(self) -> int:
        assert self.proc is not None
        return proc_status_kib(self.proc.pid, "VmHWM:")

    def rss_kib(self) -> int:
        assert self.proc is not None
        return proc_status_kib(self.proc.pid, "VmRSS:")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)
        self.proc.wait()

    def close(self) -> None:
        """Stop it if it still runs (SIGKILL): for `finally` blocks."""
        if self.proc is not None and self.proc.poll() is None:
            self.kill()


def submitter(socket: Path) -> Callable[[], object]:
    """A connected client's one-job submit (for common.producers)."""
    c = Client(socket)
    c.status()  # connect before the clock starts
    return lambda: c.submit(["true"])


def rate(n: int, seconds: float) -> float:
    return n / seconds


def bench_single(d: Daemon, n: int) -> float:
    """One client process, one job per request, each waiting for its acknowledgement."""
    return producers(lambda: submitter(d.socket), 1, n, warmup=WARMUP)


def bench_concurrent(d: Daemon, clients: int, per_client: int) -> float:
    return producers(lambda: submitter(d.socket), clients, per_client, warmup=WARMUP)


def bench_batches(d: Daemon, batches: int, size: int = 1000) -> float:
    specs = [JobSpec(argv=["true"]) for _ in range(size)]
    with Client(d.socket) as c:
        t0 = time.perf_counter()
        for _ in range(batches):
            c.submit_batch(specs)
        return rate(batches * size, time.perf_counter() - t0)


def daemon_cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (/proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def batch_only(
    fsync: str, runs: int = 3, batches: int = 30, tree: Path | None = None
) -> list[dict[str, float]]:
    """Batches of 1,000 on a fresh paused daemon: jobs/s and daemon CPU µs per job.
    `tree`: that checkout's phxqd (through PYTHONPATH), to compare in one run."""
    out = []
    with tempfile.TemporaryDirectory(prefix="phxq-bench-") as tmp:
        d = Daemon(Path(tmp), fsync)
        if tree is not None:
            d.env["PYTHONPATH"] = str(tree)
            d.cwd = tree
        try:
            d.start()
            assert d.proc is not None
            with Client(d.socket) as c:
                c.pause()
            for _ in range(runs):
                cpu = daemon_cpu_seconds(d.proc.pid)
                jobs_per_s = bench_batches(d, batches)
                cpu = daemon_cpu_seconds(d.proc.pid) - cpu
                out.append(
                    {
                        "jobs_per_s": round(jobs_per_s),
                        "daemon_us_per_job": round(cpu / (batches * 1000) * 1e6, 1),
                    }
                )
        finally:
            d.close()
    return out


def bench_cli_batch(d: Daemon, root: Path, runs: int) -> float:
    f = root / "batch.jsonl"
    f.write_text("".join('{"argv": ["true"]}\n' for _ in range(1000)))
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "phxqctl", "submit", "--batch", str(f)],
            env=d.env,
            check=True,
            stdout=subprocess.DEVNULL,
        )
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def fill(d: Daemon, n: int) -> None:
    specs = [JobSpec(argv=["true"]) for _ in range(10_000)]  # the client adds cwd
    with Client(d.socket) as c:
        c.pause()
        done = c.status()["total"]
        while done < n:
            chunk = specs[: min(len(specs), n - done)]
            c.submit_batch(chunk)
            done += len(chunk)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--quick", action="store_true")
    p.add_argument("--fsync", default="always", choices=["always", "batch", "off"])
    p.add_argument("--jobs-in-state", type=int, default=None)
    p.add_argument("--batch-only", action="store_true")
    p.add_argument("--tree", type=Path, help="with --batch-only: also this checkout, in turn")
    args = p.parse_args()
    if args.batch_only:
        if args.tree is None:
            print(json.dumps(batch_only(args.fsync)))
            return
        for _ in range(3):  # alternating, so both see the same load
            for tree in (args.tree, None):
                got = batch_only(args.fsync, runs=1, tree=tree)
                print(json.dumps({"tree": str(tree or "this tree"), **got[0]}), flush=True)
        return
    quick = args.quick
    n_state = args.jobs_in_state or (100_000 if quick else 1_000_000)
    results: dict[str, Any] = {"fsync": args.fsync, "cores": os.cpu_count()}
    with tempfile.TemporaryDirectory(prefix="phxq-bench-") as tmp:
        root = Path(tmp)
        d = Daemon(root, args.fsync)
        d.start()
        with Client(d.socket) as c:
            c.pause()
        results["single_client_jobs_per_s"] = round(bench_single(d, 500 if quick else 3000))
        results["clients16_jobs_per_s"] = round(bench_concurrent(d, 16, 200 if quick else 1500))
        results["batch1000_jobs_per_s"] = round(bench_batches(d, 10 if quick else 100))
        results["cli_batch1000_seconds"] = round(bench_cli_batch(d, root, 3 if quick else 9), 4)
        with Client(d.socket) as c:
            fsyncs = c.status()["journal"]["fsyncs"]
            results["fsyncs_so_far"] = fsyncs
        d.kill()

        # restart and memory with n_state jobs in the state
        (root / "big").mkdir()
        big = Daemon(root / "big", args.fsync)
        big.start()
        base_rss = big.rss_kib()
        fill(big, n_state)
        big.kill(signal.SIGTERM)  # clean stop: a snapshot of the whole state
        results["jobs_in_state"] = n_state
        restarts = [big.start() for _ in range(1)]
        results["restart_seconds"] = round(restarts[0], 3)
        rss = big.rss_kib()
        results["rss_mib"] = round(rss / 1024, 1)
        results["rss_bytes_per_job"] = round((rss - base_rss) * 1024 / n_state)
        results["peak_rss_mib_after_restart"] = round(big.peak_rss_kib() / 1024, 1)
        big.kill()
        # recovery from the journal alone (no clean-stop snapshot): the kill -9 case
        journal_bytes = sum(f.stat().st_size for f in (root / "big/state/journal").iterdir())
        results["state_disk_bytes_per_job"] = round(journal_bytes / n_state)
    for k, v in results.items():
        print(f"{k:32} {v}")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
