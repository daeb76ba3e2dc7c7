"""A throwaway PostgreSQL for the benchmarks: `initdb` in a temp dir, a Unix socket there,
`fsync = on` and `synchronous_commit = on` (the durability phxq promises), always stopped.

As root (initdb refuses root) the cluster belongs to the `postgres` user, or `nobody`, and
its tools run through runuser. `make test` (or `apt-get install postgresql`) installs it.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path
from types import TracebackType
from typing import Any

import psycopg

USER = "postgres"


def bindir() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    if initdb is None:
        raise SystemExit("PostgreSQL is not installed: apt-get install postgresql")
    return Path(initdb).parent


class PgServer:
    def __init__(self, parent: str | None = None) -> None:
        self.bin = bindir()
        self.base = Path(tempfile.mkdtemp(prefix="phxq-bench-pg-", dir=parent))
        self.owner: str | None = None
        if os.geteuid() == 0:
            for name in ("postgres", "nobody"):
                try:
                    pw = pwd.getpwnam(name)
                except KeyError:
                    continue
                os.chown(self.base, pw.pw_uid, pw.pw_gid)
                self.owner = name
                break

    def _run(self, tool: str, *args: str) -> None:
        cmd = [str(self.bin / tool), *args]
        if self.owner is not None:
            cmd = ["runuser", "-u", self.owner, "--", *cmd]
        subprocess.run(cmd, check=True, capture_output=True, cwd=self.base, timeout=120)

    def __enter__(self) -> PgServer:
        data = self.base / "data"
        self._run("initdb", "-D", str(data), "-U", USER, "--auth=trust", "-E", "UTF8")
        with open(data / "postgresql.conf", "a") as f:
            f.write(
                f"listen_addresses = ''\nunix_socket_directories = '{self.base}'\n"
                "fsync = on\nsynchronous_commit = on\nmax_connections = 300\n"
                "shared_buffers = 128MB\n"
            )
        self._run("pg_ctl", "-D", str(data), "-l", str(self.base / "log"), "-w", "start")
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            self._run("pg_ctl", "-D", str(self.base / "data"), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.base, ignore_errors=True)

    def uri(self, db: str = "postgres") -> str:
        return f"postgresql:///{db}?host={self.base}&user={USER}"

    def sql(self, statement: str, db: str = "postgres") -> list[tuple[Any, ...]]:
        with psycopg.connect(self.uri(db), autocommit=True) as conn:
            cur = conn.execute(statement.encode())
            return list(cur.fetchall()) if cur.description else []

    def database(self, name: str) -> str:
        self.sql(f"DROP DATABASE IF EXISTS {name}")
        self.sql(f"CREATE DATABASE {name}")
        return self.uri(name)

    def work(self, db: str) -> tuple[int, int]:
        """(transactions committed in `db`, WAL bytes written by the whole server) so far."""
        xacts, wal, _, _ = self.work_more(db)
        return xacts, wal

    def work_more(self, db: str) -> tuple[int, int, int, float]:
        """`work`, and the WAL flushes (pg_stat_wal.wal_sync: fsyncs of the WAL, one per
        group of commits) and the CPU seconds of the server's processes alive now (the
        postmaster's children: a pooled connection's backend lives through a run)."""
        [(xacts,)] = self.sql(f"SELECT xact_commit FROM pg_stat_database WHERE datname = '{db}'")
        [(wal, syncs)] = self.sql("SELECT wal_bytes, wal_sync FROM pg_stat_wal")
        return int(xacts), int(wal), int(syncs), self.cpu()

    def cpu(self) -> float:
        """CPU seconds (user + system) of the server's live processes."""
        try:
            head = (self.base / "data" / "postmaster.pid").read_text().split("\n", 1)[0]
            children = Path(f"/proc/{int(head)}/task/{int(head)}/children").read_text().split()
        except (OSError, ValueError):
            return 0.0
        return sum(cpu_seconds(int(pid)) for pid in [head, *children])


def cpu_seconds(pid: int | str) -> float:
    """CPU seconds (user + system) a live process has used; 0 once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
