"""phxq as users get it: a wheel built from this tree, installed into a venv of its own.

Every other test runs the editable install, which reads the source tree: a module, a
template or a script that the wheel leaves out (pyproject.toml lists its packages and
package data by hand) would pass them all and break every user's install. This builds the
wheel (pip, with build isolation, as users' installers do), checks that it holds every
module and data file of the tree, installs it with pip, and runs its `phxqd` console
script and its plain `phxqctl` script against each other, with the dashboard served from
the installed templates.

The installed venv borrows its dependencies from the test's own environment through a
.pth path (not its .pth files, so the editable install's finder stays out): installing
them again from the registry would test pip, not phxq. bench/bench_client.py installs
the wheel with its dependencies, the whole way.
"""

from __future__ import annotations

import http.client
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from tests.conftest import Daemon
from tests.web_helpers import free_port

HERE = Path(__file__).resolve().parent.parent
#: what a build leaves or reads beside the sources; none of it belongs in the copy
NOT_SOURCE = shutil.ignore_patterns(
    ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".*_cache", "*.pyc"
)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel pip builds from a copy of this tree (a build writes into its source)."""
    root = tmp_path_factory.mktemp("wheel")
    tree = root / "tree"
    shutil.copytree(HERE, tree, ignore=NOT_SOURCE)
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", root / "dist", tree],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert built.returncode == 0, f"pip wheel failed:\n{built.stdout}\n{built.stderr}"
    (path,) = (root / "dist").glob("phxq-*.whl")
    return path


def source_files() -> set[str]:
    """Every file the wheel must carry: modules and data of phxqd and phxqctl."""
    found = set()
    for package in ("phxqd", "phxqctl"):
        for f in (HERE / package).rglob("*"):
            if f.is_file() and "__pycache__" not in f.parts and f.suffix != ".pyc":
                found.add(f.relative_to(HERE).as_posix())
    return found


def test_the_wheel_holds_every_module_template_and_script(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    missing = sorted(source_files() - names)
    assert not missing, f"the wheel lacks {missing}: list them in pyproject.toml"
    scripts = {n.rsplit("/", 1)[1] for n in names if ".data/scripts/" in n}
    assert scripts == {"phxqctl"}, scripts
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "phxqd = phxqd.daemon:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


def test_an_installed_wheel_runs_the_daemon_the_client_and_the_dashboard(
    wheel: Path, tmp_path: Path
) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True)
    python = venv / "bin" / "python"
    installed = subprocess.run(
        [sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "-q", wheel],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert installed.returncode == 0, installed.stderr
    site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    # the dependencies: this environment's site-packages as a plain path, after the venv's
    Path(site, "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    where = subprocess.run(
        [python, "-c", "import phxqd, phxqctl; print(phxqd.__file__); print(phxqctl.__file__)"],
        cwd=tmp_path,  # not this tree, whose packages `-c` would find first
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert all(p.startswith(site) for p in where), where

    ctl = venv / "bin" / "phxqctl"
    assert ctl.read_text().startswith(f"#!{python}"), ctl.read_text()[:80]
    port = free_port()
    d = Daemon(tmp_path / "d", workers=1)
    d.program = [str(venv / "bin" / "phxqd")]
    del d.env["PYTHONPATH"]  # the tests' processes import this tree; these, the install
    d.config.write_text(f'http_listen = "127.0.0.1:{port}"\n')
    d.start()

    def run(*args: str) -> str:
        r = subprocess.run([ctl, *args], env=d.env, capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, f"phxqctl {args} -> {r.returncode}: {r.stderr}"
        return r.stdout

    job = run("submit", "--", "sh", "-c", "echo from the wheel").strip()
    run("wait", job)
    assert run("logs", job) == "from the wheel\n"
    for path, expect in (("/", b"/static/app.js"), ("/static/app.js", b"EventSource")):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.request("GET", path)
        answer = conn.getresponse()
        body = answer.read()
        conn.close()
        assert answer.status == 200 and expect in body, (path, answer.status, body[:200])
    assert d.stop() == 0
