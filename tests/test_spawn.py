"""What a command job's process gets (phxqd/run/spawn.py): the same as Popen gave it."""

from __future__ import annotations

import os
import signal
import sys
import threading
from pathlib import Path

import anyio
import pytest

from phxqd.run import attempt, spawn
from tests.conftest import Daemon

SHOW = (
    "import os, sys\n"
    "fds = []\n"
    "for fd in range(3, 256):\n"
    "    try:\n"
    "        os.fstat(fd)\n"
    "        fds.append(fd)\n"
    "    except OSError:\n"
    "        pass\n"
    "print(fds, os.getcwd(), os.environ['MINE'], os.path.realpath('/proc/self/fd/0'),\n"
    "      os.getsid(0) == os.getppid())\n"
)


def test_spawn_path_is_used_here() -> None:
    assert spawn.AVAILABLE, "glibc with posix_spawn chdir and closefrom actions expected"


def test_a_job_gets_cwd_env_dev_null_own_session_default_signals_no_other_fds(
    tmp_path: Path,
) -> None:
    r, w = os.pipe()  # a descriptor phxqd inherits and must not pass on
    os.set_inheritable(w, True)
    # and a signal it inherits ignored (as under `nohup` or a shell's `&`), which a job
    # must not: every signal is at its default there
    before = signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    try:
        d = Daemon(tmp_path / "d").start(pass_fds=(w,))
    finally:
        signal.signal(signal.SIGUSR1, before)
    assert _ignored(d.proc.pid) & 1 << (signal.SIGUSR1 - 1), "phxqd should ignore SIGUSR1 here"
    os.close(r)
    os.close(w)
    work = tmp_path / "work"
    work.mkdir()
    # the shell's signal dispositions are the spawn's (Python ignores SIGPIPE itself)
    script = f'grep SigIgn /proc/$$/status; "{sys.executable}" -c "$0"'
    job = d.submit("sh", "-c", script, SHOW, opts=("--cwd", str(work), "--env", "MINE=yes"))
    d.ok("wait", str(job))
    ignored, shown = d.ok("logs", str(job)).splitlines()
    # but glibc's own two (32 and 33, which it reserves for threads), which its
    # posix_spawn sets ignored in every child
    glibc_internal = 1 << 31 | 1 << 32
    assert int(ignored.split()[1], 16) & ~glibc_internal == 0, f"ignored in the job: {ignored}"
    assert shown == f"[] {work} yes /dev/null True"


def _ignored(pid: int) -> int:
    """The mask of signals `pid` ignores (SigIgn in /proc/PID/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigIgn:"):
            return int(line.split()[1], 16)
    raise AssertionError(f"no SigIgn for {pid}")


def test_a_relative_program_is_found_in_the_jobs_cwd(tmp_path: Path, daemon: Daemon) -> None:
    script = tmp_path / "run.sh"
    script.write_text("#!/bin/sh\necho ran in $(pwd)\n")
    script.chmod(0o755)
    job = daemon.submit("./run.sh", opts=("--cwd", str(tmp_path)))
    daemon.ok("wait", str(job))
    assert daemon.ok("logs", str(job)) == f"ran in {tmp_path}\n"


def test_a_nul_byte_is_refused_not_cut_short(tmp_path: Path) -> None:
    # c_char_p stops at a NUL: "/tmp\0/etc" would become "/tmp" without this check
    log = os.open(tmp_path / "log", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for cwd, argv, env in [
            ("/tmp\0/etc", ("/bin/true",), {}),
            (None, ("/bin/true", "a\0b"), {}),
            (None, ("/bin/true",), {"A": "1\0B=2"}),
        ]:
            try:
                spawn.spawn("/bin/true", argv, cwd, log, attempt.exec_env(env))
            except ValueError as e:
                assert "null byte" in str(e)
            else:
                raise AssertionError(f"spawned with a NUL in {cwd!r} {argv!r} {env!r}")
    finally:
        os.close(log)


def test_spawner_threads_leave_the_event_loop_free_and_hand_back_errors() -> None:
    """A spawn blocks its thread until the child has exec'd, never the event loop nor
    another spawn: here two calls wait on each other (a barrier of two), and a task on
    the loop runs meanwhile; an exception comes back to the caller."""
    barrier = threading.Barrier(2, timeout=10)
    loop_ran = threading.Event()

    def blocked() -> int:
        barrier.wait()
        assert loop_ran.wait(10)
        return threading.get_ident()

    def broken() -> None:
        raise OSError(2, "no such file")

    async def main() -> None:
        spawners = spawn.Spawners(inline_max=None)  # threads only
        idents: list[int] = []

        async def one() -> None:
            idents.append(await spawners.call(blocked))

        async with anyio.create_task_group() as tg:
            tg.start_soon(one)
            tg.start_soon(one)
            await anyio.sleep(0)
            loop_ran.set()
        assert len(set(idents)) == 2 and threading.get_ident() not in idents
        with pytest.raises(OSError, match="no such file"):
            await spawners.call(broken)
        spawners.close()

    anyio.run(main)


def test_spawns_run_in_the_loop_until_they_hold_it_too_long(tmp_path: Path) -> None:
    """A spawn runs in the event loop's thread while spawns there are quick on average;
    once they held the loop longer than `inline_max`, the next ones go to a thread, and
    so does the first spawn of each program (real processes are made either way)."""
    log = os.open(tmp_path / "log", os.O_WRONLY | os.O_CREAT, 0o600)

    def make() -> tuple[int, int]:
        child = spawn.Spawned(spawn.spawn("/bin/true", ("true",), None, log, attempt.exec_env({})))
        return threading.get_ident(), child.wait()

    async def main() -> None:
        here = threading.get_ident()
        quick = spawn.Spawners(inline_max=float("inf"))
        assert [await quick.call(make) for _ in range(3)] == [(here, 0)] * 3
        slow = spawn.Spawners(inline_max=-1.0)  # every spawn held the loop too long
        first, second = await slow.call(make), await slow.call(make)
        assert first == (here, 0)
        assert second[0] != here and second[1] == 0
        # the first spawn of a program goes to a thread, however quick the loop's were
        firsts = [await quick.call(make, p) for p in ("a", "b", "a", "b")]
        assert [i == here for i, _ in firsts] == [False, False, True, True]
        # and so do the next ones of a program whose first spawn has not come back yet

        def hung() -> tuple[int, int]:
            assert released.wait(30)
            return make()

        released = threading.Event()
        async with anyio.create_task_group() as tg:
            tg.start_soon(quick.call, hung, "c")
            await anyio.sleep(0)
            second = await quick.call(make, "c")
            released.set()
        assert second[0] != here
        quick.close()
        slow.close()

    try:
        anyio.run(main)
    finally:
        os.close(log)


def test_exec_env_is_the_daemons_with_the_jobs_own_over_it() -> None:
    """What a command gets (attempt.exec_env, the daemon's variables encoded once per set
    of names a job sets) is what Popen got (attempt.command_env): every variable of the
    daemon's, the job's own in place of the daemon's of the same name, each name once."""
    for own in ({"PATH": "/nowhere", "NEW": "1"}, {"NEW": "2"}, {"PATH": "/nowhere", "NEW": "3"}):
        entries = attempt.exec_env(own).entries()
        names = [e.split(b"=", 1)[0] for e in entries]
        assert len(names) == len(set(names))
        got = dict(os.fsdecode(e).split("=", 1) for e in entries)
        assert got == attempt.command_env(own)
        assert got["NEW"] == own["NEW"]
        if "PATH" in own:
            assert got["PATH"] == own["PATH"]
        assert set(got) >= set(os.environ) - {"PYTEST_CURRENT_TEST"}
        # and the array exec gets (the daemon's part copied from a kept array) says so
        array, _ = spawn._environ(attempt.exec_env(own))
        assert list(array) == [*entries, None]
