"""RQ's job functions (imported by the workers by dotted path)."""

from __future__ import annotations

import subprocess


def noop() -> None:
    pass


def run_true() -> None:
    subprocess.run(["true"], check=True)
