"""Disk faults through the real write path: a really full filesystem, a really failing fsync.

ENOSPC comes from a small tmpfs that the test fills (root is needed to mount it). EIO comes
from an LD_PRELOAD shim around libc's fdatasync and fsync (a disk cannot be made to fail on
cue here): the daemon's own code runs unchanged and sees the error exactly where the kernel
would report it. The shim also logs every call, so the test can check that a failed
segment is never fsync'd again.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import Daemon, unavailable, until

SHIM = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

static int faulty(const char *name, int fd) {
    static int (*real_fdatasync)(int) = 0, (*real_fsync)(int) = 0;
    if (!real_fdatasync) real_fdatasync = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
    if (!real_fsync) real_fsync = (int (*)(int))dlsym(RTLD_NEXT, "fsync");
    char link[64], path[4096];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, path, sizeof path - 1);
    path[n > 0 ? n : 0] = 0;
    const char *flag = getenv("FAULT_FLAG"), *log = getenv("FAULT_LOG");
    int fail = flag && access(flag, F_OK) == 0;
    if (log) {
        FILE *f = fopen(log, "a");
        if (f) { fprintf(f, "%s %s %s\n", fail ? "EIO" : "ok", name, path); fclose(f); }
    }
    if (fail) { errno = EIO; return -1; }
    return name[1] == 'd' ? real_fdatasync(fd) : real_fsync(fd);
}

int fdatasync(int fd) { return faulty("fdatasync", fd); }
int fsync(int fd) { return faulty("fsync", fd); }
"""


def ids_of(d: Daemon) -> list[int]:
    return sorted(
        json.loads(x)["id"] for x in d.ok("--json", "list", "--limit", "1000").splitlines()
    )


def submit_until_refused(d: Daemon, limit: int = 200) -> tuple[list[int], str]:
    """Submit one job at a time until the daemon refuses; return acked ids and the error."""
    acked = []
    for _ in range(limit):
        r = d.ctl("submit", "--", "echo", "x" * 500)
        if r.returncode != 0:
            assert r.returncode == 5, r.stderr
            return acked, r.stderr
        acked.append(int(r.stdout))
    raise AssertionError("the daemon never refused a submit")


def test_disk_full_refuses_writes_keeps_reads_and_recovers(tmp_path: Path, small_fs: Path) -> None:
    d = Daemon(tmp_path)
    d.state_dir = small_fs / "state"
    d.env["PHXQ_STATE_DIR"] = str(d.state_dir)
    d.config.write_text("write_retry_interval = 0.05\n")
    d.start()
    d.ok("pause")
    before = [d.submit("true") for _ in range(5)]
    # the 1 MiB filesystem is far under the free space preallocation keeps (64 MiB): the
    # segment is appended to instead, and nothing is refused for it
    assert "cannot preallocate journal segments (" in d.logtext()
    assert "bytes free on its filesystem, and 64 MiB are kept" in d.logtext()

    ballast = small_fs / "ballast"
    with contextlib.suppress(OSError), open(ballast, "wb", buffering=0) as f:
        while True:
            f.write(b"\0" * 4096)
    acked, error = submit_until_refused(d)
    assert "No space left on device" in error and error.count("\n") == 1

    # reads keep working, and say why writes do not
    status = d.json("status")
    assert status["writable"] is False and "No space left" in status["journal_error"]
    assert ids_of(d) == before + acked
    assert d.job(before[0])["status"] == "pending"
    assert d.ctl("cancel", str(before[0])).returncode == 5  # changes are refused

    ballast.unlink()
    until(lambda: d.json("status")["writable"], what="writes to resume")
    after = d.submit("true")
    d.kill9()
    d.start()
    assert ids_of(d) == [*before, *acked, after]
    d.ok("resume")
    d.ok("wait", *map(str, [*before, *acked, after]))


def build_fsync_shim(directory: Path) -> Path:
    """The SHIM library, compiled into `directory` (the test skips without a compiler)."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        unavailable("no C compiler to build the fdatasync shim (make test installs gcc)")
    src, lib = directory / "shim.c", directory / "shim.so"
    src.write_text(SHIM)
    subprocess.run([cc, "-shared", "-fPIC", "-o", str(lib), str(src), "-ldl"], check=True)
    return lib


@pytest.fixture
def fsync_shim(tmp_path: Path) -> Path:
    return build_fsync_shim(tmp_path)


def test_fsync_eio_never_acks_never_reuses_the_segment_and_recovers(
    tmp_path: Path, fsync_shim: Path
) -> None:
    flag, log = tmp_path / "fail-now", tmp_path / "fsyncs.log"
    d = Daemon(tmp_path)
    d.env.update(LD_PRELOAD=str(fsync_shim), FAULT_FLAG=str(flag), FAULT_LOG=str(log))
    d.config.write_text("write_retry_interval = 0.05\n")
    d.start()
    d.ok("pause")
    before = [d.submit("true") for _ in range(3)]

    flag.touch()
    r = d.ctl("submit", "--", "echo", "lost")
    assert r.returncode == 5 and "Input/output error" in r.stderr, r.stderr
    failed_segment = next(
        line.split(" ", 2)[2] for line in log.read_text().splitlines() if line.startswith("EIO")
    )
    assert d.json("status")["writable"] is False
    assert ids_of(d) == before  # the refused job is not shown either

    flag.unlink()
    until(lambda: d.json("status")["writable"], what="writes to resume")
    after = d.submit("true")
    synced_after_failure = log.read_text().split(f"EIO fdatasync {failed_segment}\n", 1)[1]
    assert failed_segment not in synced_after_failure, "a failed segment was fsync'd again"
    assert not os.path.exists(failed_segment), "the failed segment is gone after resuming"

    d.kill9()
    d.start()
    got = ids_of(d)
    assert got == [*before, after]
    assert after == before[-1] + 2, "the refused job's id is not reused"


def test_a_cancel_whose_fsync_fails_says_it_took_effect_and_is_saved_later(
    tmp_path: Path, fsync_shim: Path
) -> None:
    # A submit whose fdatasync fails is taken back; a cancel cannot be (its job may have
    # been signalled already): the refusal says it is done, and the healing snapshot keeps it.
    flag = tmp_path / "fail-now"
    d = Daemon(tmp_path)
    d.env.update(LD_PRELOAD=str(fsync_shim), FAULT_FLAG=str(flag))
    d.config.write_text("write_retry_interval = 0.05\n")
    d.start()
    d.ok("pause")
    first, second = d.submit("true"), d.submit("true")

    flag.touch()
    r = d.ctl("cancel", str(first))
    assert r.returncode == 5 and "done but not yet on disk" in r.stderr, r.stderr
    assert d.json("show", str(first))["status"] == "cancelled"
    r = d.ctl("cancel", str(second))  # the journal is known broken: refused, nothing done
    assert r.returncode == 5 and "accepts no changes" in r.stderr, r.stderr
    assert d.json("show", str(second))["status"] == "pending"

    flag.unlink()
    until(lambda: d.json("status")["writable"], what="writes to resume")
    d.kill9()
    d.start()
    assert [d.json("show", str(i))["status"] for i in (first, second)] == ["cancelled", "pending"]


def test_a_schedule_due_while_fsync_fails_is_tried_again_and_fires_each_time_once(
    tmp_path: Path, fsync_shim: Path
) -> None:
    """An `--every 1s` schedule while every fsync fails: its firing is refused (the job
    taken back), and phxqd says once that schedules cannot fire, answers, and tries again
    after a growing pause (it tried the refused time again at once, in a loop, with a
    warning each time); once writes resume it fires each fire time once (catch-up `all`:
    those of the failure too, none lost, none doubled)."""
    from tests.test_postgres import SCHEDULES_BACK, SCHEDULES_CUT_OFF, until_or_ended
    from tests.test_schedules_daemon import fired, once_each

    flag = tmp_path / "fail-now"
    d = Daemon(tmp_path)
    d.env.update(LD_PRELOAD=str(fsync_shim), FAULT_FLAG=str(flag))
    d.config.write_text("write_retry_interval = 0.05\n")
    d.start()
    d.ok(
        "schedule", "add", "tick", "--every", "1s", "--catch-up", "all", "--overlap", "allow",
        "--", "true",
    )  # fmt: skip
    until(lambda: len(fired(d, "tick")) >= 2, 20, "two fire times")
    flag.touch()
    failing = time.time()
    noticed = until_or_ended(lambda: SCHEDULES_CUT_OFF in d.logtext(), d, 20)
    log = d.logtext()
    assert noticed, f"{log.count('not fired')} lines 'not fired', the last ones:\n" + log[-1500:]

    def retry_at() -> float:
        """When the scheduler tries `tick` next (0: not now, while it is being fired)."""
        fires = d.json("status")["next_fires"]
        return next((n["at"] for n in fires if n["schedule"] == "tick"), 0.0)

    # still trying two fire times later (the status shows when it tries next)
    until(lambda: retry_at() > failing + 2, 20, "a retry two fire times into the failure")
    assert d.json("status")["writable"] is False
    flag.unlink()
    until(lambda: d.json("status")["writable"], what="writes to resume")
    resumed = time.time()
    until(lambda: max(fired(d, "tick")) > resumed + 1, 20, "fire times after writes resumed")
    times = once_each(fired(d, "tick"))
    assert times == [times[0] + k for k in range(len(times))], "every fire time, once"
    assert [t for t in times if failing < t < resumed], "the failure's times caught up"
    log = d.logtext()
    assert log.count(SCHEDULES_CUT_OFF) == 1 and log.count(SCHEDULES_BACK) == 1, log
    assert "not fired" not in log, log
