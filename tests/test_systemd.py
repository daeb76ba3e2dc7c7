"""systemd integration against a real phxqd, with the test playing systemd's part.

sd_notify messages arrive on a real AF_UNIX datagram socket; socket activation hands
phxqd a real listening socket as fd 3; the watchdog is starved by really stopping the
daemon or really blocking its event loop; log lines go to a file posing as journald's
stream. (The unit files themselves: test_units.py.)
Nothing is mocked. The test waits on messages and conditions, not on sleeps, except
where a sleep *is* the stimulus (how long the daemon is kept stopped or blocked).
"""

from __future__ import annotations

import contextlib
import io
import itertools
import os
import re
import signal
import socket
import statistics
import struct
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from phxqd import logsetup, systemd
from tests.conftest import Daemon, until

CTL = [sys.executable, "-m", "phxqctl"]

#: plays systemd between fork and exec: moves an inherited socket to fd 3 and sets
#: LISTEN_PID / WATCHDOG_PID to its own pid, which exec keeps for phxqd.
#: argv: PID_VARS (comma-separated) FD_OR_DASH COMMAND...
AS_SYSTEMD = r"""
import os, sys
pid_vars, fd = sys.argv[1], sys.argv[2]
if fd != "-" and int(fd) != 3:
    os.dup2(int(fd), 3)
    os.close(int(fd))
for name in filter(None, pid_vars.split(",")):
    os.environ[name] = str(os.getpid())
os.execv(sys.argv[3], sys.argv[3:])
"""


def as_systemd(pid_vars: tuple[str, ...] = (), fd: int | None = None) -> list[str]:
    return [sys.executable, "-c", AS_SYSTEMD, ",".join(pid_vars), "-" if fd is None else str(fd)]


#: SO_TIMESTAMPNS (asm-generic/socket.h; the socket module does not name it)
SO_TIMESTAMPNS = 35


def all_stopped(pid: int) -> bool:
    """Has every thread of `pid` stopped (a SIGSTOP takes effect asynchronously)?"""
    states = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            stat = (task / "stat").read_text()
            states.append(stat[stat.rindex(")") + 2])
    return bool(states) and all(st in "tT" for st in states)


class Notifications:
    """systemd's end of $NOTIFY_SOCKET: every datagram, parsed, with its arrival time.

    With `probe`, the moment READY=1 arrives the receiving thread connects to that
    socket path: READY=1 must mean a client can connect now.
    """

    def __init__(self, tmp: Path, abstract: bool = False, probe: Path | None = None) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        if abstract:
            name = f"phxq-test-{uuid.uuid4().hex}"
            self.sock.bind("\0" + name)
            self.address = "@" + name
        else:
            path = tmp / "notify.sock"
            self.sock.bind(str(path))
            self.address = str(path)
        self.messages: list[tuple[float, dict[str, str]]] = []
        self.cond = threading.Condition()
        self.probe = probe
        self.probe_result: str | None = None
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        # the kernel's arrival time of each datagram, not the moment this thread got to
        # it: on a loaded machine the thread may read a ping long after it was sent
        self.sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        while True:
            try:
                data, ancdata, _, _ = self.sock.recvmsg(65536, socket.CMSG_SPACE(16))
            except OSError:
                return
            at = time.monotonic()
            for level, kind, value in ancdata:
                if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
                    sec, nsec = struct.unpack("qq", value[:16])
                    at -= time.time() - (sec + nsec / 1e9)  # that long ago
            fields = dict(line.split("=", 1) for line in data.decode().split("\n") if line)
            if "READY" in fields and self.probe is not None and self.probe_result is None:
                self.probe_result = self._connect(self.probe)
            with self.cond:
                self.messages.append((at, fields))
                self.cond.notify_all()

    @staticmethod
    def _connect(path: Path) -> str:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            try:
                s.connect(str(path))
            except OSError as e:
                return f"refused: {e}"
        return "connected"

    def count(self) -> int:
        with self.cond:
            return len(self.messages)

    def fields(self, index: int) -> dict[str, str]:
        with self.cond:
            return self.messages[index][1]

    def wait_for(
        self, match: Callable[[dict[str, str]], bool], after: int = 0, timeout: float = 30.0
    ) -> int:
        """The index of the first message from `after` on that matches."""

        def found() -> int | None:
            for i in range(after, len(self.messages)):
                if match(self.messages[i][1]):
                    return i
            return None

        with self.cond:
            assert self.cond.wait_for(lambda: found() is not None, timeout), (
                f"no such notification; got {[m for _, m in self.messages]}"
            )
            index = found()
            assert index is not None
            return index

    def pings(self) -> list[float]:
        with self.cond:
            return [at for at, m in self.messages if m.get("WATCHDOG") == "1"]

    def wait_pings(self, n: int, since: float = 0.0) -> None:
        with self.cond:
            assert self.cond.wait_for(
                lambda: sum(1 for at, m in self.messages if "WATCHDOG" in m and at > since) >= n,
                30.0,
            ), "the watchdog pings stopped"


def ready(fields: dict[str, str]) -> bool:
    return fields.get("READY") == "1"


# ----------------------------------------------------------------------------- sd_notify


@pytest.mark.parametrize("abstract", [False, True], ids=["path", "abstract"])
def test_notify_ready_after_the_socket_accepts_status_then_stopping(
    tmp_path: Path, abstract: bool
) -> None:
    d = Daemon(tmp_path)
    n = Notifications(tmp_path, abstract, probe=d.socket)
    d.env["NOTIFY_SOCKET"] = n.address
    d.start()

    first_ready = n.wait_for(ready)
    assert n.probe_result == "connected", "READY=1 came before the socket accepted"
    before = [n.fields(i) for i in range(first_ready)]
    assert before == [{"STATUS": "recovering the journal"}]
    assert n.fields(first_ready)["STATUS"] == (
        "0 pending, 0 running, 0 retrying, 0 failed; 2 workers; journal ok"
    )

    go = tmp_path / "go"
    job = d.submit("sh", "-c", f"env; while [ ! -e {go} ]; do sleep 0.05; done")
    n.wait_for(lambda m: m.get("STATUS", "").startswith("0 pending, 1 running,"), first_ready)

    d.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
    assert d.wait(30) == 0
    stopping = n.wait_for(lambda m: "STOPPING" in m, first_ready)
    assert n.fields(stopping) == {
        "STOPPING": "1",
        "STATUS": "stopping: requeueing 1 running jobs",
        # kill_grace for the jobs, kill_grace for the requests in flight, the margin
        "EXTEND_TIMEOUT_USEC": str((5 + 5 + 30) * 1_000_000),
    }
    assert sum(1 for i in range(n.count()) if ready(n.fields(i))) == 1
    assert "STOPPING" not in str([n.fields(i) for i in range(first_ready)])
    # The job ran with none of systemd's variables: it cannot speak for phxqd.
    log = (d.state_dir / "logs" / f"{job}.log").read_text()
    assert "NOTIFY_SOCKET" not in log and "WATCHDOG_USEC" not in log


# --------------------------------------------------------------------- socket activation


def test_socket_activation_serves_the_inherited_socket(tmp_path: Path) -> None:
    path = tmp_path / "activated" / "phxqd.sock"
    path.parent.mkdir()
    listening = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)  # systemd's copy
    listening.bind(str(path))
    listening.listen()
    d = Daemon(tmp_path)
    d.env.update(LISTEN_FDS="1", LISTEN_FDNAMES="phxqd.socket")

    # A client that connects before phxqd runs waits in the backlog and gets its answer.
    early = subprocess.Popen(
        [*CTL, "--socket", str(path), "submit", "--", "sh", "-c", 'echo "$PHXQ_SOCKET"; env'],
        env=d.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    fd = listening.fileno()
    d.start(wrapper=as_systemd(("LISTEN_PID",), fd), pass_fds=(fd,))
    out, err = early.communicate(timeout=30)
    assert early.returncode == 0, err
    job = int(out)

    assert f"socket {path} (socket-activated)" in d.logtext()
    assert not d.socket.exists(), "phxqd bound a socket of its own"
    d.env["PHXQ_SOCKET"] = str(path)
    d.ok("wait", str(job))
    log = d.ok("logs", str(job)).splitlines()
    assert log[0] == str(path)  # jobs are told the socket phxqd really serves
    assert not [line for line in log if line.startswith(("LISTEN_", "NOTIFY_SOCKET"))]

    assert d.stop() == 0
    assert path.exists(), "phxqd removed systemd's socket"
    # A restart on the same socket (what systemd does): the queue is all there.
    d.start(wrapper=as_systemd(("LISTEN_PID",), fd), pass_fds=(fd,))
    assert d.job(job)["status"] == "completed"
    assert d.stop() == 0
    listening.close()


def test_activation_without_a_usable_socket_refuses_to_start(tmp_path: Path) -> None:
    dgram = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    dgram.bind(str(tmp_path / "dgram.sock"))
    d = Daemon(tmp_path)
    d.env["LISTEN_FDS"] = "1"
    fd = dgram.fileno()
    d.start(expect_ready=False, wrapper=as_systemd(("LISTEN_PID",), fd), pass_fds=(fd,))
    assert d.proc is not None and d.wait(30) == 1
    until(lambda: "none is a listening Unix stream socket" in d.logtext(), what="the reason")
    dgram.close()


def test_listen_fds_follow_sd_listen_fds_rules() -> None:
    assert systemd.listen_fds("2", "42", "a:b", 42) == [(3, "a"), (4, "b")]
    assert systemd.listen_fds("1", "42", None, 42) == [(3, "unknown")]
    assert systemd.listen_fds("1", "41", None, 42) == []  # for another process
    assert systemd.listen_fds(None, None, None, 42) == []
    env = {"LISTEN_FDS": "1", "LISTEN_PID": "1", "NOTIFY_SOCKET": "@x", "PATH": "/bin"}
    taken = systemd.take_environment(env, pid=42)
    assert env == {"PATH": "/bin"}  # jobs inherit none of systemd's variables
    assert taken.listen_fds == [] and taken.notify_socket == "@x"


def test_notify_address_and_watchdog_interval() -> None:
    assert systemd.notify_address("/run/systemd/notify") == "/run/systemd/notify"
    assert systemd.notify_address("@abstract") == b"\0abstract"
    assert systemd.notify_address("vsock:2:1") is None
    assert systemd.watchdog_interval("30000000", None, 7) == 15.0
    assert systemd.watchdog_interval("30000000", "7", 7) == 15.0
    assert systemd.watchdog_interval("30000000", "8", 7) is None  # meant for another pid
    assert systemd.watchdog_interval(None, None, 7) is None


# -------------------------------------------------------------------------- directories


def test_systemds_directory_variables_place_everything(tmp_path: Path) -> None:
    """What the units' StateDirectory= etc. hand phxqd (and phxqctl): with no flag and no
    PHXQ_* variable, the journal, the socket, the job logs and the config file go there
    (the first entry when systemd lists several)."""
    dirs = {name: tmp_path / name for name in ("state", "other", "run", "log", "etc")}
    for path in dirs.values():
        path.mkdir(mode=0o700)
    (dirs["etc"] / "phxqd.toml").write_text("workers = 3\n")
    d = Daemon(tmp_path, workers=None)
    for name in ("PHXQ_SOCKET", "PHXQ_STATE_DIR", "PHXQ_CONFIG"):
        del d.env[name]
    d.env.update(
        STATE_DIRECTORY=f"{dirs['state']}:{dirs['other']}",
        RUNTIME_DIRECTORY=str(dirs["run"]),
        LOGS_DIRECTORY=str(dirs["log"]),
        CONFIGURATION_DIRECTORY=str(dirs["etc"]),
    )
    d.socket = dirs["run"] / "phxqd.sock"
    d.start()
    assert d.socket.is_socket()
    assert d.json("status")["workers"] == 3  # read from $CONFIGURATION_DIRECTORY/phxqd.toml
    job = d.submit("echo", "hi")  # phxqctl finds the socket through $RUNTIME_DIRECTORY
    d.ok("wait", str(job))
    assert (dirs["log"] / f"{job}.log").read_text() == "hi\n"
    assert (dirs["state"] / "journal").is_dir() and (dirs["state"] / "lock").exists()
    assert list(dirs["other"].iterdir()) == []
    assert d.stop() == 0


# ------------------------------------------------------------------------------- reload


@pytest.mark.parametrize(
    ("before", "after", "queue"),
    [
        ("workers = 1\n", "workers = 3\n", "default"),
        (
            "workers = 3\n[queues.img]\nconcurrency = 1\n",
            "workers = 3\n[queues.img]\nconcurrency = 3\n",
            "img",
        ),
    ],
    ids=["workers", "queue-concurrency"],
)
def test_sighup_raises_limits_without_losing_jobs(
    tmp_path: Path, before: str, after: str, queue: str
) -> None:
    d = Daemon(tmp_path, workers=None)  # no --workers: the file decides
    d.config.write_text(before)
    n = Notifications(tmp_path)
    d.env["NOTIFY_SOCKET"] = n.address
    d.start()
    go, started = tmp_path / "go", tmp_path / "started"
    started.mkdir()
    script = f"touch {started}/$PHXQ_JOB_ID; while [ ! -e {go} ]; do sleep 0.05; done"
    ids = [d.submit("sh", "-c", script, opts=("--queue", queue)) for _ in range(3)]
    until(lambda: len(list(started.iterdir())) == 1, what="the first job")
    counts = d.json("status")["counts"]
    assert (counts["running"], counts["pending"]) == (1, 2)  # the limit holds

    d.config.write_text('log_level = "debug"\n' + after)  # before any [table]
    mark = n.count()
    d.proc.send_signal(signal.SIGHUP)  # type: ignore[union-attr]
    reloading = n.wait_for(lambda m: "RELOADING" in m, mark)
    assert int(n.fields(reloading)["MONOTONIC_USEC"]) > 0
    n.wait_for(ready, reloading)
    until(lambda: len(list(started.iterdir())) == 3, what="all three jobs running at once")
    status = d.json("status")
    assert (status["workers"], status["counts"]["running"]) == (3, 3)
    assert "configuration now: " in d.logtext()  # a debug line: the new level applies

    # A file phxqd cannot accept changes nothing, and says why.
    d.config.write_text("workers = 0\n")
    mark = n.count()
    d.proc.send_signal(signal.SIGHUP)  # type: ignore[union-attr]
    failed = n.wait_for(ready, mark)
    assert n.fields(failed)["STATUS"].startswith("reload failed (")
    until(lambda: "the running configuration stays" in d.logtext(), what="the error")
    assert "`workers` must be an integer of at least 1, not 0" in d.logtext()
    assert d.json("status")["workers"] == 3

    go.touch()
    for job_id in ids:
        d.ok("wait", str(job_id))
    assert [(d.job(i)["status"], d.job(i)["attempts"]) for i in ids] == [("completed", 1)] * 3
    assert d.stop() == 0


# ----------------------------------------------------------------------------- watchdog


def test_watchdog_pings_stop_while_the_daemon_is_stopped(tmp_path: Path) -> None:
    n = Notifications(tmp_path)
    d = Daemon(tmp_path)
    d.env.update(NOTIFY_SOCKET=n.address, WATCHDOG_USEC="200000")  # a ping every 0.1 s
    d.start(wrapper=as_systemd(("WATCHDOG_PID",)))
    n.wait_pings(5)
    assert d.proc is not None
    os.kill(d.proc.pid, signal.SIGSTOP)
    pid = d.proc.pid
    until(lambda: all_stopped(pid), what="every thread of phxqd to stop")
    stopped = time.monotonic()  # from here on phxqd cannot send anything
    time.sleep(1.0)  # the stimulus: a daemon that does not run for a second
    resumed = time.monotonic()
    os.kill(d.proc.pid, signal.SIGCONT)
    n.wait_pings(3, since=resumed)

    pings = n.pings()  # kernel arrival times: exact, whatever the load
    gaps = [b - a for a, b in itertools.pairwise(pings)]
    assert max(gaps) >= resumed - stopped
    assert not [t for t in pings if stopped < t < resumed]
    # Otherwise the pings come at half of WATCHDOG_USEC: well before systemd's deadline.
    assert statistics.median(gaps) < 0.2
    assert d.stop() == 0


def test_watchdog_is_fed_by_the_event_loop_not_a_thread(tmp_path: Path) -> None:
    """phxqd reads its config file on the event loop at SIGHUP; here that file is a FIFO
    the test writes only after a while, so the loop really blocks (no hook in phxqd).
    phxqd's threads keep running meanwhile; a thread-driven watchdog would keep pinging."""
    fifo = tmp_path / "phxqd.toml.fifo"
    os.mkfifo(fifo)

    def write_config() -> None:
        with open(fifo, "w") as f:  # blocks until phxqd opens the FIFO to read it
            f.write("workers = 2\n")

    n = Notifications(tmp_path)
    d = Daemon(tmp_path)
    d.env.update(PHXQ_CONFIG=str(fifo), NOTIFY_SOCKET=n.address, WATCHDOG_USEC="200000")
    threading.Thread(target=write_config, daemon=True).start()  # read once at start-up
    d.start()
    n.wait_pings(5)

    mark = n.count()
    assert d.proc is not None
    d.proc.send_signal(signal.SIGHUP)
    n.wait_for(lambda m: "RELOADING" in m, mark)  # then it opens the FIFO, and blocks
    blocked = time.monotonic()
    time.sleep(2.0)  # the stimulus: a loop blocked for 2 s (20 ping periods)
    write_config()
    n.wait_for(ready, mark)
    n.wait_pings(3, since=time.monotonic())

    # The loop blocks a moment after RELOADING (when it opens the FIFO): a ping may come
    # in between, so the window checked starts 5 periods later. Kernel arrival times.
    pings = n.pings()
    assert not [t for t in pings if blocked + 0.5 < t < blocked + 1.95]
    gaps = [b - a for a, b in itertools.pairwise(pings)]
    assert max(gaps) >= 1.45
    assert d.stop() == 0


# ------------------------------------------------------------------------------ logging


def test_log_lines_carry_syslog_priorities_under_journald(tmp_path: Path) -> None:
    stderr = tmp_path / "stderr"
    config = tmp_path / "phxqd.toml"
    config.write_text("")
    n = Notifications(tmp_path)
    with open(stderr, "w") as err:
        st = os.fstat(err.fileno())
        env = {
            **os.environ,
            "PHXQ_SOCKET": str(tmp_path / "run" / "phxqd.sock"),
            "PHXQ_STATE_DIR": str(tmp_path / "state"),
            "PHXQ_CONFIG": str(config),
            "NOTIFY_SOCKET": n.address,
            "JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}",
        }
        proc = subprocess.Popen(
            [sys.executable, "-m", "phxqd", "--workers", "1"],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    try:
        n.wait_for(ready)
        config.write_text('fsync = "batch"\n')  # a warning: needs a restart
        mark = n.count()
        proc.send_signal(signal.SIGHUP)
        n.wait_for(ready, mark)
        config.write_text("workers = -1\n")  # an error: refused
        mark = n.count()
        proc.send_signal(signal.SIGHUP)
        n.wait_for(ready, mark)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    lines = stderr.read_text().splitlines()
    assert lines and all(re.match(r"<[2-7]>phxqd(\.\w+)?: ", line) for line in lines), lines
    assert [line for line in lines if line.startswith("<6>phxqd: phxqd ") and " ready: " in line]
    assert [line for line in lines if line.startswith("<4>") and "`fsync` changed" in line]
    assert [line for line in lines if line.startswith("<3>phxqd: reload failed")]


def test_without_journald_lines_keep_their_timestamp(tmp_path: Path) -> None:
    with open(tmp_path / "err", "w") as f:
        assert not logsetup.under_journald(f, {"JOURNAL_STREAM": "1:1"})  # not this stream
        st = os.fstat(f.fileno())
        assert logsetup.under_journald(f, {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"})
    assert not logsetup.under_journald(io.StringIO(), {"JOURNAL_STREAM": "1:1"})
    d = Daemon(tmp_path / "d")
    d.env["JOURNAL_STREAM"] = "1:1"  # inherited from a parent, about another stream
    d.start()
    assert re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ INFO phxqd: ", d.log[0]), d.log[0]
