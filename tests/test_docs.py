"""The examples of docs/python-api.md, run as written against a real daemon."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import Daemon

DOC = Path(__file__).resolve().parent.parent / "docs" / "python-api.md"
BLOCKS = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)


def test_the_doc_has_examples() -> None:
    assert len(BLOCKS) >= 5


@pytest.mark.parametrize("code", BLOCKS, ids=[f"block{i}" for i in range(len(BLOCKS))])
def test_python_api_example(code: str, daemon: Daemon, tmp_path: Path) -> None:
    """Each example runs to its last line (its asserts are the doc's claims), says nothing
    on stderr, and prints what it says it prints."""
    r = subprocess.run(
        [sys.executable, "-X", "dev", "-c", code + f"\nprint({END!r})\n"],
        env=daemon.env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert (r.returncode, r.stderr) == (0, ""), r.stderr
    *printed, end = r.stdout.splitlines()
    assert end == END, r.stdout
    if "wait_events" in code:  # prints each event: "state" first, the completion last
        assert printed[0].startswith("state "), printed
        assert printed[-1].startswith("completed completed "), printed
        assert sum(line.startswith("progress running ") for line in printed) >= 1, printed
    else:
        assert printed == [], r.stdout


END = "-- the example ran to its end --"
