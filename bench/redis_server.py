"""A private redis-server for RQ and Celery: loopback only, its own temp dir, AOF on.

Started by the bench itself on a free port of 127.0.0.1 with `appendonly yes` and no RDB
snapshots, so the append-only file is its only durability and `appendfsync` (always or
everysec, switched with CONFIG SET between runs) is the setting the tables name. Stopped
by `close()`, which run.py calls in a `finally` (so also on an error or Ctrl-C).
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from bench.common import dir_bytes, proc_status_kib


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class RedisServer:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.dir = root / "redis"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None
        self.appendfsync = "always"

    def argv(self) -> list[str]:
        exe = shutil.which("redis-server")
        if exe is None:
            raise RuntimeError("redis-server not found")
        return [
            exe,
            "--bind", "127.0.0.1",
            "--port", str(self.port),
            "--dir", str(self.dir),
            "--appendonly", "yes",
            "--appendfsync", self.appendfsync,
            "--save", "",
            "--protected-mode", "yes",
            "--daemonize", "no",
            "--logfile", str(self.dir / "redis.log"),
        ]  # fmt: skip

    def start(self) -> float:
        """Start and return seconds until a command (not just PING) is answered: while
        Redis loads its AOF it answers LOADING errors, so that is the recovery time."""
        t0 = time.perf_counter()
        self.proc = subprocess.Popen(self.argv(), stdout=subprocess.DEVNULL)
        r = self.client()
        while True:
            try:
                r.dbsize()
                return time.perf_counter() - t0
            except Exception:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"redis-server exited, see {self.dir}/redis.log") from None
                time.sleep(0.002)

    def client(self) -> Any:
        import redis

        return redis.Redis.from_url(self.url)

    def set_appendfsync(self, mode: str) -> None:
        self.appendfsync = mode
        self.client().config_set("appendfsync", mode)

    def reset(self) -> None:
        """Empty the data set and rewrite the AOF so disk use starts from nothing."""
        r = self.client()
        r.flushall()
        r.bgrewriteaof()
        while r.info("persistence")["aof_rewrite_in_progress"]:
            time.sleep(0.01)

    def disk_bytes(self) -> tuple[int, int]:
        """(apparent, allocated) bytes of the AOF directory and any dump."""
        return dir_bytes(self.dir, skip={"redis.log"})

    def peak_rss_kib(self) -> int:
        assert self.proc is not None
        return proc_status_kib(self.proc.pid, "VmHWM:")

    def kill(self) -> None:
        """SIGKILL: the crash case (the AOF is all that is left)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop_clean(self) -> None:
        """SHUTDOWN: Redis fsyncs its AOF and exits."""
        self.client().shutdown()
        if self.proc is not None:
            self.proc.wait()

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()
        self.proc = None


def resp(*args: bytes) -> bytes:
    """One command in the Redis protocol (for redis-cli --pipe)."""
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        out.append(b"$%d\r\n%s\r\n" % (len(a), a))
    return b"".join(out)


def pipe(server: RedisServer, commands: Iterable[bytes]) -> None:
    """Send many RESP-encoded commands fast through `redis-cli --pipe` (used to fill a
    queue with copies of a real job; the fill is not what is measured)."""
    proc = subprocess.Popen(
        ["redis-cli", "-p", str(server.port), "--pipe"],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
    )
    assert proc.stdin is not None
    buf: list[bytes] = []
    for c in commands:
        buf.append(c)
        if len(buf) >= 10_000:
            proc.stdin.write(b"".join(buf))
            buf.clear()
    proc.stdin.write(b"".join(buf))
    proc.stdin.close()
    if proc.wait() != 0:
        raise RuntimeError("redis-cli --pipe failed")
