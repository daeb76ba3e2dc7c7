"""Test harness: a real phxqd in a temp dir, driven through the real phxqctl.

`Daemon.start()` returns once the daemon has logged that it is ready (after recovery, with
the socket accepting): the test waits on that event, not on a sleep.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar, NoReturn

import psutil
import pytest

from phxqd import config, protocol
from phxqd.settings import Options, Settings

#: the throwaway PostgreSQL of the PostgreSQL backend's tests (fixtures pg_cluster, pg_uri)
pytest_plugins = ["tests.pgfixture"]

READY_TIMEOUT = 30.0

#: the source tree under test: what daemons, clients and jobs import (`make mutants` runs
#: the tests of a copy of the tree, which must be the one imported)
ROOT = Path(__file__).resolve().parents[1]

#: the caller's variables that change what phxqctl prints (colour, width). No longer used
#: here (`clean_environment` drops every variable not asked for); kept for importers.
CALLERS_OUTPUT_SETTINGS = frozenset({"NO_COLOR", "COLUMNS"})

#: all the tests take from the caller's environment: where programs are, where pytest
#: keeps its temp dirs, and the test knobs (CI=1: a missing tool fails; the torture
#: settings). Everything else (NO_COLOR, LOGS_DIRECTORY, NOTIFY_SOCKET, PHXQ_JOB_ID from a
#: run as a phxq job, http_proxy, TZ, LANG...) is dropped: a test does not depend on it.
FROM_CALLER = (
    "PATH",
    "TMPDIR",
    "CI",
    # knobs of long runs (make torture, make fuzz-cli): a test reading one at import
    # sees only what is listed here
    "PHXQ_TORTURE_CYCLES",
    "PHXQ_TORTURE_SEED",
    "PHXQ_POWERCUT_CYCLES",
    "PHXQ_POWERCUT_SEED",
    "CLI_FUZZ_EXAMPLES",
)
#: what the tests pin, whatever the caller had
PINNED = {"TZ": "UTC", "LANG": "C.UTF-8"}
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def clean_environment(home: Path, source: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a process the tests start (daemon, client, shell): an explicit
    list, never the caller's whole environment. `home` is made if missing."""
    source = os.environ if source is None else source
    home.mkdir(parents=True, exist_ok=True)
    env = {k: source[k] for k in FROM_CALLER if k in source}
    env.setdefault("PATH", DEFAULT_PATH)
    env.update(PINNED, HOME=str(home), PYTHONPATH=str(ROOT))
    return env


def phxqctl_at(socket_path: Path, cwd: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    """phxqctl run against `socket_path` (a test standing in for phxqd there), from `cwd`,
    in a clean environment whose HOME is `cwd`/home."""
    return subprocess.run(
        [sys.executable, "-m", "phxqctl", *argv],
        cwd=cwd,
        env={**clean_environment(cwd / "home"), "PHXQ_SOCKET": str(socket_path)},
        capture_output=True,
        text=True,
        timeout=60,
    )


_callers_environment: dict[str, str] = {}


def pytest_configure(config: pytest.Config) -> None:
    """The test process itself runs in a clean environment too (in-process tests read
    os.environ: the metrics test's HTTP client its proxy, the config its LOGS_DIRECTORY),
    with a HOME of its own, so no test reads or writes the caller's home."""
    _callers_environment.update(os.environ)
    home = Path(tempfile.mkdtemp(prefix="phxq-tests-home-"))
    env = clean_environment(home, _callers_environment)
    env.pop("PYTHONPATH")  # this process has imported what it runs already
    env.update({k: v for k, v in _callers_environment.items() if k.startswith("PYTEST_")})
    os.environ.clear()
    os.environ.update(env)
    time.tzset()


def pytest_unconfigure(config: pytest.Config) -> None:
    home = os.environ.get("HOME")
    if home and Path(home).name.startswith("phxq-tests-home-"):
        shutil.rmtree(home, ignore_errors=True)
    if _callers_environment:
        os.environ.clear()
        os.environ.update(_callers_environment)
        time.tzset()


def unavailable(why: str) -> NoReturn:
    """Skip a test for a missing tool or privilege, saying so; under CI=1, fail it (CI
    installs everything, so a skip there would hide a test that never runs)."""
    if os.environ.get("CI"):
        pytest.fail(why)
    pytest.skip(why)


class Daemon:
    #: every daemon started by the current test; the autouse fixture kills what is left
    started: ClassVar[list[Daemon]] = []

    def __init__(self, tmp: Path, workers: int | None = 2, extra: list[str] | None = None) -> None:
        self.tmp = tmp
        self.state_dir = tmp / "state"
        self.socket = tmp / "run" / "phxqd.sock"
        self.workers = workers
        self.extra = extra or []
        #: how phxqd is run (test_wheel: the console script of a wheel's install)
        self.program = [sys.executable, "-m", "phxqd"]
        self.proc: subprocess.Popen[str] | None = None
        #: reads phxqd's stderr into `log` (see `wait`)
        self._pump: threading.Thread | None = None
        self.log: list[str] = []
        self.config = tmp / "phxqd.toml"
        tmp.mkdir(parents=True, exist_ok=True)
        self.config.touch()
        self.env = {
            **clean_environment(tmp / "home"),
            "PHXQ_SOCKET": str(self.socket),
            "PHXQ_STATE_DIR": str(self.state_dir),
            "PHXQ_CONFIG": str(self.config),
        }

    def start(
        self,
        expect_ready: bool = True,
        wrapper: list[str] | None = None,
        pass_fds: tuple[int, ...] = (),
    ) -> Daemon:
        """Start phxqd (workers None: no --workers flag, the config file decides).

        `wrapper` is a command put before phxqd's (it must exec it, keeping its pid), and
        `pass_fds` the descriptors it inherits: how tests play systemd's part.
        """
        assert self.proc is None or self.proc.poll() is not None
        self.log = []
        flags = ["--workers", str(self.workers)] if self.workers is not None else []
        self.proc = subprocess.Popen(
            [*(wrapper or []), *self.program, *flags, *self.extra],
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            pass_fds=pass_fds,
        )
        Daemon.started.append(self)
        ready = threading.Event()
        said_ready: list[bool] = []

        def pump(stream: Any) -> None:
            for line in stream:
                self.log.append(line)
                if " ready: " in line:
                    said_ready.append(True)
                    ready.set()
            ready.set()  # the daemon exited: let start() see it

        self._pump = threading.Thread(target=pump, args=(self.proc.stderr,), daemon=True)
        self._pump.start()
        if expect_ready:
            assert ready.wait(READY_TIMEOUT), "phxqd did not become ready:\n" + self.logtext()
            # (its stderr can end a moment before poll() sees the exit: the log says it)
            assert said_ready and self.proc.poll() is None, (
                "phxqd exited at start:\n" + self.logtext()
            )
        return self

    def logtext(self) -> str:
        return "".join(self.log)

    def wait(self, timeout: float = 30.0) -> int:
        """phxqd's exit status, once it has exited and all it wrote is in `log`: a thread
        reads its stderr, and right after the exit its last lines (often the reason) may
        not be read yet."""
        assert self.proc is not None
        code = self.proc.wait(timeout)
        if self._pump is not None:
            self._pump.join(timeout)
        return code

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.wait(timeout)

    def kill9(self) -> None:
        self.stop(signal.SIGKILL)

    def ctl(
        self, *args: str, input: str | None = None, timeout: float = 60.0, cwd: Path | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "phxqctl", *args],
            cwd=cwd,
            env=self.env,
            capture_output=True,
            text=True,
            input=input,
            timeout=timeout,
        )

    def ok(self, *args: str, input: str | None = None) -> str:
        r = self.ctl(*args, input=input)
        assert r.returncode == 0, f"phxqctl {' '.join(args)} -> {r.returncode}\n{r.stderr}"
        return r.stdout

    def json(self, *args: str) -> Any:
        return json.loads(self.ok("--json", *args))

    def submit(self, *argv: str, opts: tuple[str, ...] = ()) -> int:
        return int(self.ok("submit", *opts, "--", *argv).strip())

    def job(self, job_id: int) -> dict[str, Any]:
        result: dict[str, Any] = self.json("show", str(job_id))
        return result


def until(predicate: Callable[[], Any], timeout: float = 30.0, what: str = "condition") -> Any:
    """Poll a condition the test cannot be told about (a process state, a file)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def gone(proc: psutil.Process) -> bool:
    """Has this process ended (exited, or a zombie not yet reaped)? Safe against the race
    of a process ending while it is looked at, and against its pid being reused (psutil
    tells a later process with the same pid by its start time)."""
    try:
        return not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@pytest.fixture(autouse=True)
def no_daemon_outlives_its_test() -> Iterator[None]:
    before = len(Daemon.started)
    yield
    for d in Daemon.started[before:]:
        if d.proc is not None and d.proc.poll() is None:
            # SIGTERM first: a graceful stop kills the jobs too, so none is left behind
            try:
                d.stop(signal.SIGTERM, timeout=15)
            except subprocess.TimeoutExpired:
                d.stop(signal.SIGKILL)
    del Daemon.started[before:]


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    yield Daemon(tmp_path).start()


@pytest.fixture(scope="module")
def shared_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """One daemon for many hypothesis examples (a fresh one per example would be slow)."""
    d = Daemon(tmp_path_factory.mktemp("shared")).start()
    Daemon.started.remove(d)  # it outlives the test that started it; stopped below
    d.ok("pause")  # fuzzed submits must not run anything
    yield d
    if d.proc is not None and d.proc.poll() is None:
        d.stop(signal.SIGKILL)


def need(tool: str) -> str:
    """The path of a program the test needs (zsh, fish, tmux, strace...): `make test`
    installs them as root with apt-get; without them the test skips, except under CI=1,
    where it fails."""
    path = shutil.which(tool)
    if path is None:
        unavailable(f"{tool} is not installed (make test installs it as root with apt-get)")
    return path


def settings_in(base: Path, **changes: object) -> Settings:
    """Settings as phxqd would make them from a config file, for a state dir `base`."""
    settings = Settings.from_config(
        config.Config(workers=2, kill_grace=5.0, snapshot_bytes=1 << 40, write_retry_interval=0.05),
        Options(
            config_path=base / "phxqd.toml",  # never read: the config is given
            config_required=False,
            state_dir=str(base),
            socket=str(base / "phxqd.sock"),
        ),
    )
    for d in (settings.journal_dir, settings.logs_dir):
        d.mkdir(parents=True, exist_ok=True)
    for key, value in changes.items():
        setattr(settings, key, value)
    return settings


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs of its own (root mounts it): a disk that really fills up."""
    mnt = tmp_path / "fs"
    mnt.mkdir()
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True, text=True
    )
    if r.returncode != 0:
        unavailable(f"cannot mount a tmpfs here (needs root): {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def read_payload(sock: socket.socket) -> bytes:
    """One frame's payload from a raw connection to phxqd (its length prefix read first)."""

    def exactly(n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = sock.recv(n - len(data))
            assert chunk, "phxqd closed the connection"
            data += chunk
        return data

    (n,) = protocol.HEADER.unpack(exactly(protocol.HEADER.size))
    return exactly(n)
