"""A throwaway PostgreSQL for the tests of the PostgreSQL backend (a pytest plugin,
registered in conftest.py's `pytest_plugins`).

One cluster per test session: `initdb` into a temp dir and `pg_ctl start` on a Unix socket
in that dir (no TCP port), with `fsync` and `synchronous_commit` on, as in production. One
database per test, made by `CREATE DATABASE ... TEMPLATE` from a template that the phxq
schema was migrated into once (a copy of a few MB, well under a second).

initdb refuses to run as root, and CI runs as root: the cluster then belongs to an
unprivileged system user (`postgres` if the Debian package made it, else `nobody`) and
its commands run through `runuser`. `make test` installs Debian's `postgresql` when it is
missing; without it these tests skip, except under CI=1, where they fail.
"""

from __future__ import annotations

import contextlib
import glob
import itertools
import os
import pwd
import random
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
import pytest

if TYPE_CHECKING:
    from phxqd.postgres.backend import PostgresBackend
    from phxqd.settings import Settings

#: the superuser initdb makes; phxqd and the tests connect as it
SUPERUSER = "postgres"
TEMPLATE = "phxq_template"


def bindir() -> Path | None:
    """Where initdb and pg_ctl are: `pg_config --bindir`, else the newest Debian one."""
    pg_config = shutil.which("pg_config")
    if pg_config:
        with contextlib.suppress(OSError, subprocess.CalledProcessError):
            out = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, check=True
            ).stdout.strip()
            if (Path(out) / "initdb").exists():
                return Path(out)
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: (
            int(Path(p).parent.parent.name) if Path(p).parent.parent.name.isdigit() else 0
        ),
    )
    on_path = shutil.which("initdb")
    if found:
        return Path(found[-1]).parent
    return Path(on_path).parent if on_path else None


class Cluster:
    """A running PostgreSQL cluster in `base`, reached on the Unix socket in `base`."""

    def __init__(self, bin_dir: Path, base: Path, user: str | None) -> None:
        self.bin = bin_dir
        self.base = base
        self.data = base / "data"
        self.user = user
        self._names = itertools.count(1)

    def run(self, tool: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """A PostgreSQL tool as the cluster's owner (through runuser when we are root)."""
        cmd = [str(self.bin / tool), *args]
        if self.user is not None:
            cmd = ["runuser", "-u", self.user, "--", *cmd]
        return subprocess.run(
            cmd, capture_output=True, text=True, check=check, cwd=self.base, timeout=120
        )

    def init(self) -> None:
        self.run(
            "initdb",
            "-D",
            str(self.data),
            "-U",
            SUPERUSER,
            "--auth=trust",
            "--no-instructions",
            "-E",
            "UTF8",
            "--locale=C",
        )
        conf = self.data / "postgresql.conf"
        with open(conf, "a") as f:
            f.write(
                "\n".join(
                    [
                        "listen_addresses = ''",
                        f"unix_socket_directories = '{self.base}'",
                        "fsync = on",
                        "synchronous_commit = on",
                        "max_connections = 200",
                        "shared_buffers = 64MB",
                        "log_min_messages = warning",
                        "",
                    ]
                )
            )

    def start(self) -> None:
        self.run("pg_ctl", "-D", str(self.data), "-l", str(self.base / "log"), "-w", "start")

    def stop(self, mode: str = "fast") -> None:
        self.run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop", check=False)

    def restart(self) -> None:
        """Stop (fast: connections are cut, as in a real restart) and start again."""
        self.stop("fast")
        self.start()

    def uri(self, db: str = "postgres") -> str:
        return f"postgresql:///{db}?host={self.base}&user={SUPERUSER}"

    def sql(self, statement: str, db: str = "postgres") -> str:
        """Run one statement as a client; its rows, `|` between values (as psql -At)."""
        import psycopg

        with psycopg.connect(self.uri(db), autocommit=True) as conn:
            cur = conn.execute(statement.encode())
            found = cur.fetchall() if cur.description else []
        return "\n".join("|".join("" if v is None else str(v) for v in row) for row in found)

    def new_database(self) -> str:
        """A fresh database with the phxq schema in it; its URI."""
        name = f"t{os.getpid()}_{next(self._names)}"
        self.sql(f"CREATE DATABASE {name} TEMPLATE {TEMPLATE}")
        return self.uri(name)

    def log(self) -> str:
        try:
            return (self.base / "log").read_text()
        except OSError:
            return ""


def _owner() -> str | None:
    """The unprivileged user the cluster runs as when we are root (None: ourselves)."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            pwd.getpwnam(name)
            return name
    raise RuntimeError("root, and no postgres or nobody user to run PostgreSQL as")


def _migrate(uri: str) -> None:
    import anyio

    from phxqd.postgres import schema

    anyio.run(schema.migrate_uri, uri)


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[Cluster]:
    found = bindir()
    if found is None:
        why = "PostgreSQL is not installed (make test installs it as root with apt-get)"
        if os.environ.get("CI"):
            pytest.fail(why)
        pytest.skip(why)
    user = _owner()
    # Not under pytest's tmp dir: that is private to us, and the owner must reach it.
    base = Path(tempfile.mkdtemp(prefix="phxq-pg-"))
    if user is not None:
        pw = pwd.getpwnam(user)
        os.chown(base, pw.pw_uid, pw.pw_gid)
    cluster = Cluster(found, base, user)
    try:
        cluster.init()
        cluster.start()
        cluster.sql(f"CREATE DATABASE {TEMPLATE}")
        _migrate(cluster.uri(TEMPLATE))
        yield cluster
    finally:
        cluster.stop("immediate")
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def pg_uri(pg_cluster: Cluster) -> str:
    """A database of its own for this test, the schema in it."""
    return pg_cluster.new_database()


@contextlib.asynccontextmanager
async def running_backend(
    uri: str, settings: Settings, hang: float = 30.0
) -> AsyncIterator[PostgresBackend]:
    """A PostgresBackend on `uri` with its background work running (a fixed jitter seed),
    closed after; a test that hangs fails after `hang` seconds instead."""
    from phxqd.postgres.backend import PostgresBackend

    backend = PostgresBackend(uri, settings, lease=30.0, rng=random.Random(7))
    with anyio.fail_after(hang):
        async with anyio.create_task_group() as tg:
            await tg.start(backend.run)
            try:
                yield backend
                await backend.close()
            finally:
                tg.cancel_scope.cancel()
                # a test that failed left the pool open: its tasks then kept asyncio.run
                # from returning, and the failure hung instead of being told
                with anyio.CancelScope(shield=True), anyio.move_on_after(5):
                    await backend._pool.close()
