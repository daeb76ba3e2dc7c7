"""The unit files in systemd/, checked by systemd's own tools: `systemd-analyze verify`,
`systemd-analyze security --offline=true`, `systemd-sysusers`, and the system calls a
real phxqd makes (under strace) against the unit's SystemCallFilter=."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tests.conftest import Daemon, need, unavailable, until

REPO = Path(__file__).resolve().parent.parent
UNITS = REPO / "systemd"
#: the venv's phxqd, put in the units' ExecStart= for systemd-analyze (which checks it)
PHXQD = Path(sys.executable).with_name("phxqd")
UNIT_NAMES = ("phxqd.service", "phxqd.socket")


def tracee(d: Daemon) -> psutil.Process:
    """The phxqd process of a daemon started under a wrapper that does not exec it."""
    assert d.proc is not None
    return until(lambda: psutil.Process(d.proc.pid).children(), what="the wrapper's child")[0]


@pytest.fixture(scope="session")
def systemd_analyze() -> str:
    """systemd-analyze, installing Debian's systemd package if it is missing."""
    found = shutil.which("systemd-analyze")
    if found:
        return found
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        unavailable("systemd-analyze is missing and installing it needs root and apt-get")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "--no-install-recommends", "systemd"]
    r = subprocess.run(install, capture_output=True, text=True, env=env, timeout=900)
    if r.returncode != 0:  # a fresh image has no package lists yet
        subprocess.run(["apt-get", "update"], capture_output=True, env=env, timeout=900)
        r = subprocess.run(install, capture_output=True, text=True, env=env, timeout=900)
    found = shutil.which("systemd-analyze")
    if not found:
        unavailable(f"could not install systemd: {r.stderr.strip()[-500:]}")
    return found


def unit_dir(dest: Path, source: Path, binary: str) -> Path:
    """The units of `source` with phxqd's path made this venv's (systemd-analyze verify
    insists that ExecStart= exists); every other line is checked as shipped."""
    dest.mkdir(parents=True)
    for unit in sorted(source.glob("phxqd.*")):
        text = unit.read_text()
        assert binary in text or unit.suffix == ".socket", f"{unit} does not run {binary}"
        (dest / unit.name).write_text(text.replace(binary, str(PHXQD)))
    return dest


@pytest.fixture
def runtime_dir(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "xdg-runtime"
    path.mkdir(mode=0o700)
    yield path


def test_units_pass_systemd_analyze_verify(
    tmp_path: Path, systemd_analyze: str, runtime_dir: Path
) -> None:
    assert PHXQD.exists()
    system = unit_dir(tmp_path / "system", UNITS, "/usr/local/bin/phxqd")
    user = unit_dir(tmp_path / "user", UNITS / "user", "%h/.local/bin/phxqd")
    for scope, units in (([], system), (["--user"], user)):
        r = subprocess.run(
            [systemd_analyze, *scope, "verify", *(str(units / u) for u in UNIT_NAMES)],
            capture_output=True,
            text=True,
            env={**os.environ, "XDG_RUNTIME_DIR": str(runtime_dir)},
            timeout=120,
        )
        # verify exits 0 on mere warnings (an unknown key...): silence is the pass
        assert (r.returncode, r.stdout + r.stderr) == (0, ""), f"{units}:\n{r.stdout}{r.stderr}"
    sysusers = shutil.which("systemd-sysusers")
    if sysusers:
        root = tmp_path / "root"
        (root / "etc").mkdir(parents=True)
        for name in ("passwd", "group"):
            (root / "etc" / name).touch()
        r = subprocess.run(
            [sysusers, f"--root={root}", str(UNITS / "phxq.sysusers")],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert r.returncode == 0, r.stderr
        assert (root / "etc" / "passwd").read_text().startswith("phxq:x:")


def test_system_service_security_exposure_is_ok(
    tmp_path: Path, systemd_analyze: str, runtime_dir: Path
) -> None:
    system = unit_dir(tmp_path / "system", UNITS, "/usr/local/bin/phxqd")
    # --threshold is in tenths: exposure above 4.9 (MEDIUM and worse) fails
    security = ["security", "--offline=true", "--threshold=49", "--no-pager"]
    r = subprocess.run(
        [systemd_analyze, *security, str(system / "phxqd.service")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    m = re.search(r"Overall exposure level for phxqd\.service: (\d+\.\d) (\w+)", r.stdout)
    assert m is not None, r.stdout
    assert float(m.group(1)) <= 4.9 and m.group(2) in ("OK", "SAFE", "PERFECT"), m.group(0)


def _syscall_set(analyze: str, name: str, cache: dict[str, set[str]]) -> set[str]:
    if not name.startswith("@"):
        return {name}
    if name not in cache:
        out = subprocess.run(
            [analyze, "syscall-filter", name], capture_output=True, text=True, check=True
        ).stdout
        members: set[str] = set()
        for line in out.splitlines()[1:]:
            item = line.strip()
            if item and not item.startswith("#"):
                members |= _syscall_set(analyze, item, cache)
        cache[name] = members
    return cache[name]


def test_daemon_and_jobs_stay_within_the_system_units_syscall_filter(
    tmp_path: Path, systemd_analyze: str
) -> None:
    """Runs phxqd under strace through start, a command job, a callable job, a reload and
    a stop with a job running, and checks every system call made against the unit's
    SystemCallFilter= (a filtered call would fail with EPERM under systemd: a bug seen
    only in production)."""
    need("strace")
    cache: dict[str, set[str]] = {}
    allowed: set[str] = set()
    for line in (UNITS / "phxqd.service").read_text().splitlines():
        if line.startswith("SystemCallFilter="):
            value = line.split("=", 1)[1]
            deny = value.startswith("~")
            names = set().union(
                *(_syscall_set(systemd_analyze, w, cache) for w in value.lstrip("~").split())
            )
            allowed = allowed - names if deny else allowed | names
    assert "pidfd_open" in allowed

    trace = tmp_path / "trace"
    d = Daemon(tmp_path / "d")
    d.start(wrapper=["strace", "-f", "-qq", "-o", str(trace), "--"])
    daemon = tracee(d)
    job = d.submit("sh", "-c", "echo hi")
    d.ok("wait", str(job))
    # a Python callable job: it runs in a persistent worker process, sandboxed the same way
    call = d.ok("submit", "--cwd", str(REPO), "--call", "tests.jobs.sample:add", "--args", "[2, 3]")
    d.ok("wait", call.strip())
    long = d.submit("sleep", "60")
    until(lambda: d.job(long)["status"] == "running", what="the long job")
    daemon.send_signal(signal.SIGHUP)
    until(lambda: "configuration reloaded" in d.logtext(), what="the reload")
    daemon.send_signal(signal.SIGTERM)
    assert d.proc is not None and d.wait(30) == 0
    used = set(re.findall(r"^\d+\s+(\w+)\(", trace.read_text(), re.MULTILINE))
    assert "pidfd_open" in used or "waitid" in used
    assert "prctl" in used, "the stop's snapshot child (forked.py) went unchecked"
    assert used - allowed == set()
