"""Command output written into reused scratch files (phxqd/run/output.py): a job's log is
never another job's, a quiet job leaves no file, and nothing is left behind."""

from __future__ import annotations

import subprocess
from pathlib import Path

import psutil

from phxqd.run import proctree
from tests.conftest import Daemon, until


def scratch_files(d: Daemon) -> list[Path]:
    return sorted((d.state_dir / "logs").glob(".cmd-*.out"))


def test_quiet_jobs_share_a_scratch_file_and_leave_no_log(tmp_path: Path) -> None:
    d = Daemon(tmp_path, workers=1).start()
    loud = d.submit("sh", "-c", "echo hi; echo err >&2")  # its scratch file becomes its log
    quiet = [d.submit("true") for _ in range(20)]
    d.ok("wait", *map(str, [*quiet, loud]))
    logs = d.state_dir / "logs"
    assert not any((logs / f"{i}.log").exists() for i in quiet)
    assert d.ok("logs", str(quiet[0])) == ""
    assert d.ok("logs", str(loud)) == "hi\nerr\n"
    assert len(scratch_files(d)) == 1, "one slot, one scratch file, reused"
    assert d.stop() == 0
    assert scratch_files(d) == []


def test_late_output_of_an_escaped_descendant_stays_in_its_own_jobs_log(
    tmp_path: Path,
) -> None:
    d = Daemon(tmp_path, workers=1).start()
    go, done = tmp_path / "go", tmp_path / "done"
    # A prints nothing itself; what it left behind writes once B has started
    a = d.submit(
        "sh", "-c", f'(setsid sh -c "while [ ! -e {go} ]; do sleep 0.02; done; echo late-A" &)'
    )
    d.ok("wait", str(a))
    b = d.submit("sh", "-c", f"touch {go}; while [ ! -e {done} ]; do sleep 0.02; done")
    until(lambda: d.ok("logs", str(a)) == "late-A\n", what="the escapee's output in A's log")
    done.touch()
    c = d.submit("true")
    d.ok("wait", str(b), str(c))
    assert d.ok("logs", str(b)) == ""
    assert d.ok("logs", str(c)) == ""


def test_each_attempt_appends_to_the_log_of_the_earlier_ones(daemon: Daemon) -> None:
    noisy = daemon.submit(
        "sh", "-c", 'echo "try $PHXQ_ATTEMPT"; test "$PHXQ_ATTEMPT" -ge 2', opts=("--retries", "1")
    )
    quiet_first = daemon.submit(
        "sh", "-c", 'test "$PHXQ_ATTEMPT" -ge 2 && echo second', opts=("--retries", "1")
    )
    daemon.ok("wait", str(noisy), str(quiet_first))
    assert daemon.ok("logs", str(noisy)) == "try 1\ntry 2\n"
    assert daemon.ok("logs", str(quiet_first)) == "second\n"


def test_scratch_files_of_a_killed_daemon_are_removed_at_start(tmp_path: Path) -> None:
    d = Daemon(tmp_path).start()
    d.ok("wait", str(d.submit("true")))
    assert scratch_files(d)
    d.kill9()
    d.start()
    assert scratch_files(d) == []


def test_start_time_known_from_the_clock_is_the_one_proc_and_psutil_give() -> None:
    # A spawn that spans a clock tick (10 ms) proves nothing; a loaded machine makes many
    # of those, so the loop runs until enough spawns fit in one tick, not a fixed count.
    agreed = tries = 0
    while agreed < 5 and tries < 2000:
        tries += 1
        before = proctree.boot_ticks()
        proc = subprocess.Popen(["sleep", "5"])
        after = proctree.boot_ticks()
        try:
            if before == after:  # else phxqd reads /proc, as here
                agreed += 1
                fast = proctree.create_time(proc.pid, before)
                assert fast == proctree.create_time(proc.pid)
                assert fast is not None
                assert abs(psutil.Process(proc.pid).create_time() - fast) < 0.01
        finally:
            proc.kill()
            proc.wait()
    assert agreed == 5, f"only {agreed} of {tries} spawns fit in one clock tick"
