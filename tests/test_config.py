"""phxqd's config file as an operator meets it: `phxqd check-config`, the messages that
name the bad key, and the documentation of every key."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from phxqd.config import Config
from phxqd.model import QueueConfig

REPO = Path(__file__).resolve().parent.parent


def phxqd(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "phxqd", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("wrkers = 4\n", "unknown key `wrkers`; did you mean `workers`?"),
        ('workers = "4"\n', '`workers` must be an integer, not "4"'),
        ("workers = 0\n", "`workers` must be an integer of at least 1, not 0"),
        (
            'fsync = "sometimes"\n',
            '`fsync` must be one of "always", "batch", "off", not "sometimes"',
        ),
        ("kill_grace = -1\n", "`kill_grace` must be a number of at least 0, not -1"),
        ("[queues.img]\nconcurency = 2\n", "unknown key `concurency` in [queues.img]; did"),
        ("[queues.img]\nconcurrency = 0\n", "`queues.img.concurrency` must be an integer of"),
        ("workers = 4\nworkers = 5\n", "not valid TOML: "),
        ('on_complete = ""\n', '`on_complete` must be a command, not ""'),
        ("on_failure = []\n", "`on_failure` must be a command, not an array"),
        ("on_retry = 3\n", "`on_retry` must be a string or an array, not 3"),
    ],
)
def test_check_config_names_the_bad_key_and_why(tmp_path: Path, text: str, why: str) -> None:
    config = tmp_path / "phxqd.toml"
    config.write_text(text)
    r = phxqd("check-config", "--config", str(config))
    assert r.returncode == 1
    assert r.stderr.startswith(f"phxqd: {config}: {why}"), r.stderr
    # and the daemon refuses to start with the same words
    r = phxqd("--config", str(config), "--state-dir", str(tmp_path / "state"))
    assert r.returncode == 1 and f"{config}: {why}" in r.stderr


def test_check_config_accepts_valid_and_absent_files(tmp_path: Path) -> None:
    config = tmp_path / "phxqd.toml"
    config.write_text('workers = 4\nfsync = "batch"\n[queues.img]\nconcurrency = 2\n')
    r = phxqd("check-config", "--config", str(config))
    assert (r.returncode, r.stdout) == (
        0,
        f'{config}: ok (workers = 4, fsync = "batch", [queues.img]; the rest default)\n',
    )
    env = {
        k: v for k, v in os.environ.items() if k not in ("PHXQ_CONFIG", "CONFIGURATION_DIRECTORY")
    }
    env["XDG_CONFIG_HOME"] = str(tmp_path / "xdg")
    r = phxqd("check-config", env=env)
    default = tmp_path / "xdg" / "phxq" / "phxqd.toml"
    assert (r.returncode, r.stdout) == (
        0,
        f"{default}: no such file; phxqd would use the defaults\n",
    )
    r = phxqd("check-config", "--config", str(tmp_path / "missing.toml"))
    assert r.returncode == 1 and "does not exist" in r.stderr
    r = phxqd("--version")
    assert (r.returncode, r.stdout) == (0, "phxqd 0.1.0\n")


def test_every_config_key_is_documented() -> None:
    doc = (REPO / "docs" / "configuration.md").read_text()
    for key in (*Config.__struct_fields__, *QueueConfig.__struct_fields__):
        assert f"| `{key}` |" in doc or f"| `[{key}.NAME]` |" in doc, key


def test_journal_verify_with_a_state_dir_needs_no_config_file(tmp_path: Path) -> None:
    """What operations.md tells operators to run as the service's user after a restore."""
    env = {**os.environ, "PHXQ_CONFIG": str(tmp_path / "unreadable" / "phxqd.toml")}
    r = phxqd("journal", "verify", "--state-dir", str(tmp_path / "state"), env=env)
    assert r.returncode == 0, r.stderr
    assert "no journal here" in r.stdout
