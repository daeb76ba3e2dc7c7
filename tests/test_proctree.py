"""`proctree.kill_leftover`: what a restarted phxqd does to the processes of jobs an earlier
life left running. Real processes: a pid whose start time does not match the journal's is
someone else's (pids are reused), and must be left alone."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import psutil
import pytest

from phxqd.run import proctree
from tests.conftest import until


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    """A process leading its own group, as a job does."""
    proc = subprocess.Popen(["sleep", "600"], start_new_session=True)
    yield proc
    if proc.poll() is None:
        proc.kill()
    proc.wait()


def test_a_live_process_whose_start_time_does_not_match_is_left_alone(
    sleeper: subprocess.Popen[bytes],
) -> None:
    started = psutil.Process(sleeper.pid).create_time()
    for other in (started - 5.0, started + 5.0, started + 0.5):
        assert proctree.kill_leftover(sleeper.pid, other) is False
    assert sleeper.poll() is None, "kill_leftover killed a process that was not the job's"


def test_the_leftover_whose_start_time_matches_is_killed(sleeper: subprocess.Popen[bytes]) -> None:
    started = proctree.create_time(sleeper.pid)
    assert started is not None
    assert abs(started - psutil.Process(sleeper.pid).create_time()) <= 0.01
    assert proctree.kill_leftover(sleeper.pid, started) is True
    assert sleeper.wait(30) == -9


def test_a_start_time_half_a_tick_off_still_matches(sleeper: subprocess.Popen[bytes]) -> None:
    """A spawn that spanned two adjacent clock ticks is recorded half way between them
    (proctree.spawned_between): whichever of the two it started in, that is close enough
    for kill_leftover to know the process, and a tick and a half off is not."""
    ticks = proctree.spawned_between(0, 0)
    assert ticks == 0 and proctree.spawned_between(0, 1) == 0.5
    assert proctree.spawned_between(0, 2) is None
    with open(f"/proc/{sleeper.pid}/stat", "rb") as f:
        stat = f.read()
    real = int(stat[stat.rindex(b")") + 2 :].split()[19])
    psutil_says = psutil.Process(sleeper.pid).create_time()
    for recorded in (real - 0.5, real + 0.5):
        started = proctree.create_time(sleeper.pid, recorded)
        assert started is not None and abs(started - psutil_says) < 0.01
    far = proctree.create_time(sleeper.pid, real + 1.5)
    assert far is not None
    assert proctree.kill_leftover(sleeper.pid, far) is False
    near = proctree.create_time(sleeper.pid, real + 0.5)
    assert near is not None
    assert proctree.kill_leftover(sleeper.pid, near) is True
    assert sleeper.wait(30) == -9


def test_a_pid_that_is_gone_is_not_reported_killed() -> None:
    proc = subprocess.Popen(["true"], start_new_session=True)
    started = proctree.create_time(proc.pid)
    proc.wait()
    until(lambda: not psutil.pid_exists(proc.pid), what="the pid to be free")
    assert proctree.kill_leftover(proc.pid, started) is False
