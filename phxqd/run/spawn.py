"""Make a command job's process with glibc's posix_spawn, called through ctypes.

A job's process is made in the event loop while that is quick (see `Spawners`), so this
is on the path of every command job. `subprocess.Popen` spends about as much CPU in
Python (its argument handling, the environment encoded variable by variable, an error
pipe) as the spawn itself; `os.posix_spawn` in Python 3.11 has no chdir action and no
close-from action, so it cannot honour a job's `cwd` or close phxqd's descriptors.
glibc's posix_spawn has both (posix_spawn_file_actions_addchdir_np, 2.29;
_addclosefrom_np, 2.34), and clones with CLONE_VFORK like Popen does. A ctypes call also
lets other threads (the journal's fdatasync) run meanwhile. The child gets what Popen
gave it: its own session, stdin /dev/null, the log as stdout and stderr, no other
descriptor, the job's cwd and environment; and every signal at its default (Popen reset
only SIGPIPE and SIGXFSZ, and left ignored what phxqd had inherited ignored).
Without those glibc functions, `AVAILABLE` is False and phxqd uses Popen.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import functools
import math
import os
import queue
import threading
import time
from collections.abc import Callable, Hashable, Sequence
from typing import Any, TypeVar

import anyio

from phxqd.run.attempt import ExecEnv

T = TypeVar("T")

# glibc's <spawn.h> flags
_SETSIGDEF = 0x04
_SETSID = 0x80
#: bytes for posix_spawnattr_t (336 on x86-64 glibc), posix_spawn_file_actions_t (80)
#: and sigset_t (128): generous, since only glibc knows their sizes
_ATTR_BYTES, _ACTIONS_BYTES, _SIGSET_BYTES = 1024, 512, 256


def _libc() -> Any:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        needed = (
            "posix_spawn",
            "posix_spawn_file_actions_addchdir_np",
            "posix_spawn_file_actions_addclosefrom_np",
        )
        return libc if all(hasattr(libc, name) for name in needed) else None
    except OSError:
        return None


_lib = _libc()
AVAILABLE = _lib is not None


def _check(err: int) -> None:
    if err:
        raise OSError(err, os.strerror(err))


@functools.cache
def _attributes() -> ctypes.Array[ctypes.c_char]:
    """The spawn attributes, the same for every job: made once."""
    attr = ctypes.create_string_buffer(_ATTR_BYTES)
    _check(_lib.posix_spawnattr_init(attr))
    # Every signal at its default, SIGPIPE and SIGXFSZ (ignored by Python) among them, and
    # any phxqd inherited ignored (`nohup`, a shell's `&`): a job behaves the same however
    # phxqd was started. Naming them all also halves the child's system calls before its
    # exec, which the event loop waits for: glibc reads the disposition of each signal
    # not named before it sets it (two rt_sigaction calls for each of 64 signals).
    defaults = ctypes.create_string_buffer(_SIGSET_BYTES)
    _lib.sigfillset(defaults)
    _check(_lib.posix_spawnattr_setsigdefault(attr, defaults))
    _check(_lib.posix_spawnattr_setflags(attr, ctypes.c_short(_SETSID | _SETSIGDEF)))
    return attr


def _c_string(text: str) -> bytes:
    """`text` for a C call; ValueError for a NUL byte, which would cut it short silently
    (Popen raised the same)."""
    data = os.fsencode(text)
    if b"\0" in data:
        raise ValueError("embedded null byte")
    return data


class _Actions:
    """A spawn's file actions: stdin /dev/null, `log_fd` as stdout and stderr, the cwd,
    nothing else open. The same for every job with that log descriptor (the lowest free
    one, nearly always the same) and cwd, so kept (`_actions`): making them cost the event
    loop 15 µs a job. glibc's copy (it copies the paths) is freed once nobody holds them,
    a spawn under way included."""

    def __init__(self, log_fd: int, cwd: str | None) -> None:
        path = _c_string(cwd) if cwd is not None else None  # before anything to free
        self.c = ctypes.create_string_buffer(_ACTIONS_BYTES)
        _lib.posix_spawn_file_actions_init(self.c)  # from here on, __del__ frees it
        _check(_lib.posix_spawn_file_actions_addopen(self.c, 0, b"/dev/null", os.O_RDONLY, 0))
        _check(_lib.posix_spawn_file_actions_adddup2(self.c, log_fd, 1))
        _check(_lib.posix_spawn_file_actions_adddup2(self.c, log_fd, 2))
        if path is not None:
            _check(_lib.posix_spawn_file_actions_addchdir_np(self.c, path))
        _check(_lib.posix_spawn_file_actions_addclosefrom_np(self.c, 3))

    def __del__(self) -> None:
        if _lib is not None and hasattr(self, "c"):
            _lib.posix_spawn_file_actions_destroy(self.c)


@functools.lru_cache(maxsize=64)
def _actions(log_fd: int, cwd: str | None) -> _Actions:
    return _Actions(log_fd, cwd)


def _strings(items: Sequence[bytes]) -> ctypes.Array[ctypes.c_char_p]:
    """A NULL-terminated array of C strings; it holds references to `items`."""
    return (ctypes.c_char_p * (len(items) + 1))(*items, None)


@functools.lru_cache(maxsize=64)
def _argv(argv: tuple[str, ...]) -> ctypes.Array[ctypes.c_char_p]:
    """A command's argv for exec: the same for every job of that command, so kept."""
    return _strings([_c_string(a) for a in argv])


#: the pointers of an array's items, copied from one array to another (see `_environ`)
_POINTER = ctypes.sizeof(ctypes.c_char_p)


@functools.lru_cache(maxsize=64)
def _inherited(inherited: tuple[bytes, ...]) -> ctypes.Array[ctypes.c_char_p]:
    return _strings(inherited)


def _environ(env: ExecEnv) -> tuple[ctypes.Array[ctypes.c_char_p], object]:
    """The environment array for exec, and what must stay alive while it is used.

    The daemon's variables (a few dozen) are the same for every job setting the same
    names: their array is made once (`_inherited`) and its pointers copied, instead of
    every variable converted again for every spawn, in the event loop. The copied
    pointers point into the bytes that array holds: the caller keeps it (the second
    value) until the spawn has returned."""
    base = _inherited(env.inherited)
    n = len(env.inherited)
    array = (ctypes.c_char_p * (n + len(env.own) + 1))()
    ctypes.memmove(array, base, n * _POINTER)
    for i, entry in enumerate(env.own, n):
        array[i] = entry  # the array holds a reference to it
    return array, base


def spawn(path: str, argv: tuple[str, ...], cwd: str | None, log_fd: int, env: ExecEnv) -> int:
    """Start `path` with `argv` in a new session, `log_fd` as stdout and stderr, the
    environment `env` (see `attempt.exec_env`); its pid.

    Raises OSError (with the errno of the chdir or the exec) when it cannot start.
    """
    actions = _actions(log_fd, cwd)
    environ, keep = _environ(env)
    pid = ctypes.c_int()
    _check(
        _lib.posix_spawn(
            ctypes.byref(pid),
            _c_string(path),
            actions.c,
            _attributes(),
            _argv(argv),
            environ,
        )
    )
    del keep  # (alive until here: `environ` points into it)
    return pid.value


class Spawned:
    """A child made by `spawn`: what run_command needs of a Popen (pid, wait)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None

    def wait(self) -> int:
        """Reap it (its pidfd said it exited); its exit code, negative for a signal."""
        if self.returncode is None:
            _, status = os.waitpid(self.pid, 0)
            self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode


#: when spawns made in the event loop hold it longer than this (seconds, a moving
#: average), the spawns of the next THREADED_FOR seconds go to threads
INLINE_MAX = 0.002
THREADED_FOR = 1.0
#: the weight of the latest spawn in that average: a few slow spawns in a row count, one
#: alone does not (at load 2 here, one spawn in twenty took over 0.9 ms, the median 0.5;
#: at load 7, the median 8 ms)
WEIGHT = 0.2
#: programs remembered as spawned before (forgotten all at once past this)
KNOWN_MAX = 1024


class Spawners:
    """Where command processes are made: in the event loop while that is quick, in
    threads while the machine is loaded.

    `posix_spawn` returns only once the child has exec'd (a vfork). The child needs a CPU
    for that: on a loaded machine it waits for one, up to milliseconds, and an event loop
    making it waited with it, every other job and request too (a cProfile of phxqd at load
    8 on 2 cores: 5 ms per spawn, 70% of the loop's time). The ctypes call releases the
    GIL, so a thread blocked in it holds up nothing else. But a thread costs too: the
    hand-off there and back (a futex wake, the GIL taken and given back, a wake-up of the
    loop) cost phxqd 400 µs of CPU per `true` job on this 2-core machine, more than the
    rest of its work for the job (bench/bench_pool.py, docs/benchmarks.md). So a spawn
    runs in the loop (0.2-0.5 ms here, quiet), and when spawns there hold the loop longer
    than `inline_max` on average, the spawns of the next THREADED_FOR seconds go to
    threads; then the loop tries again, its average started again from 0. A program (from
    a directory) goes to threads too until one spawn of it has come back from its thread:
    an exec, or the look along PATH, on a filesystem that hangs (an NFS server gone) holds
    its caller as long, and a daemon that answers nobody meanwhile is worse than a slow
    spawn. (A program that started well and whose filesystem hangs later would still hold
    the loop: a risk taken for ~400 µs of CPU a job.) In threads: one is
    started when a spawn finds none free (so as many as spawns at once, at most
    `workers`), and kept; the hand-off is one queue put and one `call_soon_threadsafe`.
    """

    def __init__(self, inline_max: float | None = INLINE_MAX) -> None:
        """`inline_max` None: every spawn in a thread."""
        self._calls: queue.SimpleQueue[
            tuple[Callable[[], Any], asyncio.Future[Any], asyncio.AbstractEventLoop] | None
        ] = queue.SimpleQueue()
        self._threads = 0
        self._idle = 0
        self._lock = threading.Lock()
        self._inline_max = inline_max
        #: until when (time.monotonic()) spawns go to threads
        self._threaded_until = -math.inf
        #: the moving average of the seconds spawns held the loop, from 0 at the start
        #: and after each spell in threads: one slow first spawn must not send a second
        #: of spawns to threads, as it did when the average started from it (4 of 16
        #: quiet benchmark runs of 1,000 `true` jobs at 740-820 µs of CPU a job instead of
        #: 410-500)
        self._held = 0.0
        #: the programs (with the directory they start in) spawned before
        self._known: set[Hashable] = set()

    async def call(self, fn: Callable[[], T], program: Hashable = None) -> T:
        """`fn()`, in the loop or a spawner thread (see the class): its result or its
        exception. `program` names what `fn` starts, for the first-spawn rule (None: no
        such rule). Never abandoned: a cancelled caller still gets the child it asked for
        (to kill it), so the wait for a thread is shielded."""
        if program is not None and program not in self._known:
            result = await self._in_thread(fn)  # a spawn that hangs never makes it known
            if len(self._known) >= KNOWN_MAX:
                self._known.clear()
            self._known.add(program)
            return result
        if self._inline_max is not None:
            start = time.monotonic()
            if start >= self._threaded_until:
                try:
                    return fn()
                finally:
                    end = time.monotonic()
                    held = self._held + WEIGHT * (end - start - self._held)
                    self._held = held
                    if held > self._inline_max:
                        self._threaded_until = end + THREADED_FOR
                        self._held = 0.0
        return await self._in_thread(fn)

    async def _in_thread(self, fn: Callable[[], T]) -> T:
        loop = asyncio.get_running_loop()
        done: asyncio.Future[T] = loop.create_future()
        with self._lock:
            start = self._idle == 0
            if start:
                self._threads += 1
            else:
                self._idle -= 1
        if start:
            threading.Thread(target=self._serve, name="phxqd-spawn", daemon=True).start()
        self._calls.put((fn, done, loop))
        with anyio.CancelScope(shield=True):
            result: T = await done
        return result

    def close(self) -> None:
        """Let the threads end (each ends once the calls queued before are done)."""
        with self._lock:
            n, self._threads, self._idle = self._threads, 0, 0
        for _ in range(n):
            self._calls.put(None)

    def _serve(self) -> None:
        while (item := self._calls.get()) is not None:
            fn, done, loop = item
            try:
                result = fn()
            except BaseException as e:  # handed to the awaiting task
                _hand(loop, done, e, True)
            else:
                _hand(loop, done, result, False)
            with self._lock:
                self._idle += 1


def _hand(
    loop: asyncio.AbstractEventLoop, done: asyncio.Future[Any], value: Any, error: bool
) -> None:
    with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
        loop.call_soon_threadsafe(_settle, done, value, error)


def _settle(done: asyncio.Future[Any], value: Any, error: bool) -> None:
    if not done.done():
        if error:
            done.set_exception(value)
        else:
            done.set_result(value)
