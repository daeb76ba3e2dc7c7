"""phxqctl's fast path (phxqctl.fast) against argparse (phxqctl.syntax), on generated
command lines: whatever the fast path parses, argparse parses to the same Args; what it is
not sure of, it leaves to argparse. And the standard-library stand-ins on phxqctl's
start-up path (shell quoting, durations) give what the modules they replace give, and the
installed `phxqctl` script imports none of the modules they avoid.

No daemon: parsing only (tests/test_cli_fuzz.py runs the same command lines through
`phxqctl.cli.main` against a real phxqd).
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from phxqctl import args as definitions
from phxqctl import fast, render, syntax
from phxqctl.args import Args, OneOf
from tests.conftest import Daemon
from tests.test_cli_fuzz import DURATION_TEXT, TEXT, invocations

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = int(os.environ.get("CLI_FUZZ_EXAMPLES", "400"))


def argparse_args(argv: list[str]) -> Args | None:
    """argparse's Args for argv, or None where argparse refuses it (or prints help)."""
    with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
        try:
            return syntax.parse_args(argv)
        except SystemExit:
            return None


def check(argv: list[str]) -> Args | None:
    """The fast path's Args for argv, checked to be argparse's."""
    quick = fast.parse(list(argv))
    if quick is not None:
        slow = argparse_args(list(argv))
        # by their repr too: `--percent nan` parses to NaN both ways, and NaN != NaN
        assert quick == slow or repr(quick) == repr(slow), argv
    return quick


def every_flag() -> list[str]:
    flags = []
    for _, spec in definitions.SYNTAX.values():
        for item in () if isinstance(spec, str) else spec:
            for opt in item.opts if isinstance(item, OneOf) else (item,):
                flags += [f for f in opt.flags if f.startswith("-")]
    return sorted({*flags, "--json", "--socket", "-h", "--help", "--pri", "--js", "-f"})


FLAGS = every_flag()
WORDS = st.one_of(
    st.sampled_from(sorted(definitions.SYNTAX)),
    st.sampled_from(FLAGS),
    st.sampled_from(FLAGS).map(lambda f: f + "="),
    st.tuples(st.sampled_from(FLAGS), TEXT).map("=".join),
    st.sampled_from(["--", "-", "-5", "5", "0", "12", "1,2", "5m", "1.5h", "a b", "-x y", ""]),
    st.sampled_from(["pending", "failed", "bash", "q", "true", "[]", "{}", "[1]", "A=b"]),
    st.sampled_from(["2026-12-01T09:00", "1s,5m,0.1", "٣", " 7 ", "1_000", "nan"]),
    TEXT,
)


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(st.lists(WORDS, max_size=8))
def test_the_fast_path_parses_as_argparse_does_or_leaves_it(argv: list[str]) -> None:
    check(argv)


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(invocations([1, 2, 3]))
def test_the_cli_fuzz_command_lines_parse_as_argparse_does(
    invocation: tuple[list[str], bytes],
) -> None:
    check(invocation[0])


#: what the fast path must take itself (else it saves nothing): the common command lines
TAKEN = [
    ["progress", "--percent", "nan"],  # NaN both ways (phxqd refuses it: not in 0..100)
    ["submit", "--", "true"],
    ["submit", "true"],
    ["submit", "--", "sh", "-c", "echo hi -- there"],
    ["submit", "--queue", "q", "--priority", "-0", "--", "true"],  # -0: left to argparse
    ["submit", "--queue=q", "--priority", "5", "--key", "k", "--retries", "2", "--", "x"],
    ["submit", "--timeout", "5m", "--delay", "30s", "--label", "a b", "--cwd", "/", "--", "x"],
    ["submit", "--env", "A=1", "--env", "B=", "--after", "1,2", "--wait", "--", "x"],
    ["submit", "--shell", "echo hi | wc -c"],
    ["submit", "--call", "os:getcwd", "--args", "[1]", "--kwargs", "{}"],
    ["submit", "--backoff", "2s,5m,0.1", "--at", "2026-12-01T09:00", "--", "x"],
    ["--json", "submit", "--", "true"],
    ["--socket", "/tmp/s", "--json", "status"],
    ["status"],
    ["status", "--json"],
    ["list"],
    ["list", "--status", "failed", "--queue", "q", "--limit", "5"],
    ["show", "7"],
    ["logs", "7", "-f"],
    ["logs", "--follow", "7"],
    ["wait", "1", "2", "--timeout", "10s"],
    ["cancel", "1", "2", "3"],
    ["retry", "4"],
    ["retry-failed", "--queue", "q"],
    ["clear", "--status", "completed"],
    ["pause"],
    ["resume", "q"],
    ["progress", "--percent", "50", "--step", "copying", "--done", "1", "--total", "2"],
    ["metrics"],
    ["watch"],
    ["watch", "1", "2"],
    ["completion", "bash"],
]
#: what it must leave to argparse: help, errors, abbreviations, actions of their own
LEFT = [
    [],
    ["--help"],
    ["submit", "--help"],
    ["submit", "-h"],
    ["submit", "--pri", "5", "--", "x"],
    ["submit", "--priority", "-5", "--", "x"],
    ["submit", "--priority", "x", "--", "x"],
    ["submit", "--delay", "1s", "--at", "2026-12-01T09:00", "--", "x"],
    ["submit", "--wait=yes", "--", "x"],
    ["submit", "--label"],
    ["status", "extra"],
    ["show"],
    ["show", "1", "2"],
    ["cancel"],
    ["wait", "1", "--timeout", "5s", "2"],
    ["list", "--status", "nope"],
    ["frobnicate"],
    ["--", "status"],
    ["queue", "list"],
    ["schedule", "add", "n", "--every", "5m", "--", "true"],
    ["completion", "tcsh"],
]


def test_the_common_command_lines_take_the_fast_path() -> None:
    for argv in TAKEN:
        quick = check(argv)
        assert (quick is not None) == ("-0" not in argv), argv
    for argv in LEFT:
        assert fast.parse(argv) is None, argv


@given(st.lists(st.one_of(TEXT, st.sampled_from(["", "'", "a'b", "~x", "a b", "-x", "é"]))))
def test_shell_join_quotes_as_shlex_does(argv: list[str]) -> None:
    assert render.shell_join(argv) == shlex.join(argv)


def regex_duration(text: str) -> float | None:
    """The duration parser as it was, by its regular expression alone."""
    m = re.match(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$", text)
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}
    return float(m.group(1)) * units[m.group(2)] if m else None


@given(
    st.one_of(
        DURATION_TEXT,
        st.from_regex(r"\A[0-9]{1,4}(\.[0-9]{0,3})?(ms|s|m|h|d|x)?\Z"),
        st.sampled_from(["5ms", "ms", "s", ".5s", "5.s", "5\n", " 5 m ", "٣s", "1.5.2h"]),
    )
)
def test_durations_read_as_the_regular_expression_reads_them(text: str) -> None:
    try:
        got: float | None = definitions.duration(text)
    except Exception as e:
        assert type(e).__name__ == "ArgumentTypeError", e
        got = None
    want = regex_duration(text)
    assert got == want or (got != got and want != want), text  # NaN is not equal to NaN


def imported_modules(importtime: str) -> set[str]:
    return {
        line.split("|")[2].strip()
        for line in importtime.splitlines()
        if line.startswith("import time:") and "|" in line
    }


def test_the_phxqctl_script_imports_neither_argparse_nor_re(daemon: Daemon) -> None:
    """bin/phxqctl, the script installed as `phxqctl` (pyproject.toml, script-files), on
    the hot commands: nothing beyond the standard library's cheapest modules. Run without
    site (-S), with this checkout on the path: site-packages' .pth files (an editable
    install's finder) import `re` for every Python start, which a wheel install does not."""
    env = {**daemon.env, "PYTHONPATH": str(ROOT)}
    subprocess.run([sys.executable, "-m", "phxqctl", "pause"], env=env, check=True)
    for argv in (["submit", "--", "true"], ["status"], ["list"]):
        r = subprocess.run(
            [sys.executable, "-S", "-X", "importtime", str(ROOT / "bin" / "phxqctl"), *argv],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert r.returncode == 0, r.stderr
        modules = imported_modules(r.stderr)
        assert "phxqctl.cli" in modules, r.stderr
        costly = {"re", "argparse", "typing", "contextlib", "collections", "msgspec", "socket"}
        assert not modules & costly, (argv, modules & costly)


def test_phxqctl_is_installed_as_the_plain_script() -> None:
    """Not a [project.scripts] entry point (pip's wrapper imports `re` first): setuptools
    installs bin/phxqctl itself. Building a wheel to see it takes ~10 s with build
    isolation; bench/bench_client.py builds one and checks the script it installs."""
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "phxqctl" not in project["project"].get("scripts", {})
    assert "bin/phxqctl" in project["tool"]["setuptools"]["script-files"]
    script = ROOT / "bin" / "phxqctl"
    assert os.access(script, os.X_OK)
    first, _, body = script.read_text().partition("\n")
    assert first.startswith("#!") and "python" in first  # setuptools rewrites it so
    assert "import re" not in body and "from phxqctl.cli import main" in body
