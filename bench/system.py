"""The Debian packages the peers need: installed with apt-get when missing and root.

`make bench` calls this before measuring. Without root (or without apt-get) it only says
what is missing; the peers that need it are then shown as n/a, with that reason.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

#: Debian package -> the programs it provides (task-spooler's is `tsp` on Debian, `ts`
#: upstream)
PACKAGES = {
    "redis-server": ("redis-server", "redis-cli"),
    "task-spooler": ("tsp", "ts"),
    "nq": ("nq",),
}


def missing() -> list[str]:
    return [pkg for pkg, exes in PACKAGES.items() if not any(shutil.which(e) for e in exes)]


def install() -> list[str]:
    """Install what is missing; return what is still missing afterwards."""
    todo = missing()
    if not todo:
        return []
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        print(f"bench: not installed (needs root and apt-get): {' '.join(todo)}", file=sys.stderr)
        return todo
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    cmd = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *todo]
    print(f"bench: {' '.join(cmd)}", file=sys.stderr)
    if subprocess.run(cmd, env=env).returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], env=env)
        subprocess.run(cmd, env=env)
    return missing()


if __name__ == "__main__":
    sys.exit(1 if install() else 0)
