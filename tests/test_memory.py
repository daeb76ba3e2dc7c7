"""A daemon that runs for months keeps flat memory however many jobs have come and gone.

A real phxqd on a temp socket runs rounds of jobs, each round submitted in batches, run to
the end and cleared, while `phxqctl watch`, `phxqctl wait`, `phxqctl logs --follow`, a hook
(`on_failure`, `on_retry`) and, in the commands' test, the status file are in use. Its
RSS, read from /proc after each round (with the queue empty), must not grow from the
third round to the last by more than `MARGIN`: the first two rounds warm the allocator up
(pymalloc arenas, dict tables at their peak size, the feed's and the hooks' buffers,
worker lanes). (From the second round, a fresh clone's run beside another once grew 3.2
MiB: 41.6, 43.1, 45.0, 45.8, 46.3, 46.3, still settling in the third.)

Detection threshold: `MARGIN` is 3 MiB and the rounds after the third carry
`(ROUNDS - 3) * CALLS` = 3 x 14,000 = 42,000 callables, so a leak of 3 MiB / 42,000 =
75 bytes or more per job fails the test (the leak it was written for kept 110-140 bytes
per job: 59.9 -> 64.2 MiB from the third round to the sixth, +4.3). Commands are slower to
run (a process each): their rounds after the third carry 3 x 1,000 = 3,000 of them, so
that test alone catches about 1,050 bytes per job
in what only commands keep (run/command.py, the scratch files, the dispatcher's tasks) and
in the status file's upkeep; what every job keeps is caught by the callables. Measured here
with the leak fixed, the growth was 0.8-1.3 MiB (pymalloc's arenas settling); the
C heap's free pages are given back after each `clear` (phxqd/memory.py), without which its
RSS varied by up to 7 MiB from round to round.

Memory is measured, not timed: the test only reads /proc after each round, whatever the
machine's load.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from phxqctl import Client
from phxqd.local.state import State
from phxqd.model import Call, JobSpec
from tests.conftest import Daemon

ROUNDS = 6
CALLS = 14_000
COMMANDS = 1_000
#: at most this much growth from the third round to the last
MARGIN = 3 << 20
#: a few jobs per round that fail (the on_failure hook) or fail once and are retried
#: (on_retry), so the hooks run while the rounds pass
FAILING = 3


def rss(pid: int) -> int:
    """Resident set size of a process, in bytes, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for process {pid}")


def mib(sizes: list[int]) -> str:
    return ", ".join(f"{s / (1 << 20):.1f}" for s in sizes)


def rounds(d: Daemon, client: Client, make: list[JobSpec], pid: int) -> list[int]:
    """Run `ROUNDS` rounds of the jobs `make`, plus failing ones; RSS after each."""
    sizes = []
    failing = [
        JobSpec(call=Call("tests.jobs.sample:fail_for_good"), max_retries=0) for _ in range(FAILING)
    ] + [
        JobSpec(
            call=Call("tests.jobs.sample:fail", ["once"]),
            max_retries=1,
            backoff=(0.01, 0.01, 0.0),
        )
        for _ in range(FAILING)
    ]
    for _ in range(ROUNDS):
        # one job that prints, followed as it runs, first in the round
        [first] = client.submit_batch([JobSpec(call=Call("tests.jobs.sample:add", [1, 2]))])
        follow = subprocess.Popen(
            [sys.executable, "-m", "phxqctl", "logs", "--follow", str(first.job.id)],
            env=d.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        ids = [r.job.id for r in client.submit_batch([*make, *failing])]
        waited = d.ctl("wait", "--timeout", "600", str(ids[0]), str(ids[len(make) - 1]))
        assert waited.returncode == 0, waited.stderr
        jobs = client.wait(ids, timeout=600)
        assert len(jobs) == len(ids) and all(j.finished for j in jobs)
        assert sum(j.status == "failed" for j in jobs) == 2 * FAILING
        out, err = follow.communicate(timeout=60)
        assert follow.returncode == 0 and b"adding 1 and 2" in out, err
        client.clear()
        # (not `status`: it forgets what the last minute counted, and hid the leak)
        assert client.list(limit=1) == []
        sizes.append(rss(pid))
    return sizes


def check(sizes: list[int], what: str) -> None:
    growth = sizes[-1] - sizes[2]
    print(f"{what}: MiB after each round: {mib(sizes)}")  # shown with -s, or on failure
    assert growth <= MARGIN, (
        f"phxqd's RSS grew by {growth / (1 << 20):.1f} MiB from the third round of "
        f"{what} to the last (MiB after each round: {mib(sizes)})"
    )


def daemon_in_use(tmp_path: Path, config: str) -> tuple[Daemon, subprocess.Popen[bytes]]:
    """A daemon with hooks (and `config`), and a `phxqctl watch` following every job."""
    hooked = tmp_path / "hooked"
    d = Daemon(tmp_path)
    d.config.write_text(
        f'on_failure = ["sh", "-c", "echo f >> {hooked}"]\n'
        f'on_retry = ["sh", "-c", "echo r >> {hooked}"]\n' + config
    )
    d.start()
    watch = subprocess.Popen(
        [sys.executable, "-m", "phxqctl", "--json", "watch"],
        env=d.env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    return d, watch


def run_rounds(tmp_path: Path, make: list[JobSpec], config: str = "") -> list[int]:
    d, watch = daemon_in_use(tmp_path, config)
    assert d.proc is not None
    try:
        with Client(d.socket) as client:
            sizes = rounds(d, client, make, d.proc.pid)
        assert watch.poll() is None, watch.stderr.read() if watch.stderr else ""
    finally:
        watch.kill()
        watch.wait()
    hooked = (tmp_path / "hooked").read_text()
    assert "f" in hooked and "r" in hooked  # the hooks ran
    return sizes


def test_memory_stays_flat_as_callables_pass_through(tmp_path: Path) -> None:
    """No status file here: it asks for `status` once a second, which used to hide the
    leak this test was written for (what `status` counts was kept, one entry per job,
    until someone asked)."""
    sizes = run_rounds(tmp_path, [JobSpec(call=Call("os:getpid")) for _ in range(CALLS)])
    check(sizes, "callables")


def test_memory_stays_flat_as_commands_pass_through_with_a_status_file(tmp_path: Path) -> None:
    status = tmp_path / "status.json"
    sizes = run_rounds(
        tmp_path, [JobSpec(argv=["true"]) for _ in range(COMMANDS)], f'status_file = "{status}"\n'
    )
    assert status.exists()
    check(sizes, "commands")


def test_the_state_rebuilds_its_maps_once_they_are_far_below_their_peak() -> None:
    """A dict keeps the table of its peak until rebuilt (State._compact): after a burst of
    100,000 jobs is forgotten, the maps are sized to what is left, in the same order."""
    state = State()
    specs = [JobSpec(argv=["true"], key=f"k{i}", queue=f"q{i % 3}") for i in range(100_000)]
    events, _ = state.submit(specs, 1.0)
    for event in events:
        state.apply(event)
    peak = sys.getsizeof(state.jobs)
    assert peak > 2 << 20 and sys.getsizeof(state.keys) > 2 << 20
    kept = [5, 75_000, 99_999]
    state.take_back(i for i in list(state.jobs) if i not in kept)
    assert list(state.jobs) == kept and list(state.keys) == ["k4", "k74999", "k99998"]
    for name in ("jobs", "keys", "_queued"):
        assert sys.getsizeof(getattr(state, name)) < 4096, name
    assert state.summary()["counts"]["pending"] == 3
    # the heaps' entries of the jobs taken back are gone too (not only skipped later)
    assert sum(len(heap) for heap in state._ready.values()) == 3
    state.take_back(list(state.jobs))
    assert state.counts == {}
    assert state.claim_next(2.0) is None
