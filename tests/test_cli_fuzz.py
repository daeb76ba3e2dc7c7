"""The command line never shows a traceback: phxqctl's arguments, fuzzed (issue #24).

hypothesis builds argument lists for every command and option with hostile values (huge
and negative numbers, NaN and infinities, empty strings, control characters, bytes that
are not UTF-8 as Python hands them over, very long values, `=` and `:` where they do not
belong) and runs phxqctl's real entry point (`phxqctl.cli.main`) in this process against
a real phxqd: every run must end with a documented exit status, an error must be one
line, and the daemon must still answer afterwards. In-process because a subprocess per
example costs ~50 ms of interpreter start-up; `main` is the console script's function,
so nothing is skipped but the interpreter's start. A few real subprocesses check the
same at the edge (bytes argv, exit statuses), and the Python API and the daemon are
checked to refuse the same values with the same words.

`make fuzz-cli` runs many more examples (CLI_FUZZ_EXAMPLES, default 5000).
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import phxqctl
from phxqctl import cli, mpack
from phxqctl.wire import Connection
from phxqd import contract
from tests.conftest import Daemon

EXAMPLES = int(os.environ.get("CLI_FUZZ_EXAMPLES", "400"))
#: phxqctl's documented exit statuses (DESIGN.md): 3 only with a --socket of the fuzz's
DOCUMENTED = {0, 1, 2, 3, 4, 5}
#: a run that takes longer is a hang (nothing in the fuzz waits on a running job)
HANG_SECONDS = 30
#: ids no job will have: the fuzz's daemon gets a few thousand jobs at most
UNKNOWN_IDS = st.integers(10**12, contract.INT64_MAX)


# ---------------------------------------------------------------- values


def not_utf8(data: bytes) -> str:
    """What Python makes of a command-line argument that is not UTF-8 (os.fsdecode, as
    for sys.argv): lone surrogates, which no encoder takes."""
    return os.fsdecode(data)


HOSTILE_TEXT = st.sampled_from(
    [
        "",
        " ",
        "\0",
        "a\0b",
        "\n",
        "line\nbreak",
        "\x1b[31mred\x1b[0m",
        "\r",
        "\t",
        "=",
        "a=b",
        "=x",
        "x=",
        "a=b=c",
        ":",
        "a:",
        ":b",
        "a:b:c",
        "a:b",
        "os:getcwd",
        "-",
        "--",
        "-1",
        "--json",
        "x" * 201,
        "x" * 1001,
        "y" * 5000,
        "z" * 140_000,
        "\u202e",
        "\udcff",
        "é",
        "😀" * 300,
    ]
)
TEXT = st.one_of(
    HOSTILE_TEXT,
    st.text(max_size=40),
    st.binary(max_size=20).map(not_utf8),
    st.text(alphabet=st.characters(codec="utf-8"), max_size=20),
)
INTEGER_TEXT = st.one_of(
    st.sampled_from(
        [
            "99999999999999999999",
            "-99999999999999999999",
            str(2**63),
            str(2**63 - 1),
            str(-(2**63)),
            str(-(2**63) - 1),
            str(2**64),
            str(2**64 - 1),
            str(2**31),
            str(-(2**31) - 1),
            "0",
            "-1",
            "1e3",
            "0x10",
            "1_000",
            " 7 ",
            "٣",
            "nan",
            "",
            "9" * 5000,
        ]
    ),
    st.integers().map(str),
    st.integers(-(2**80), 2**80).map(str),
    TEXT,
)
DURATION_TEXT = st.one_of(
    st.sampled_from(
        [
            "nan",
            "NaN",
            "inf",
            "-inf",
            "1e308",
            "1e400",
            "-0",
            "0",
            "0.0000001",
            "3s",
            "5m",
            "1.5h",
            "2d",
            "999999999999d",
            "9" * 400,
            "",
            " ",
            "1 s",
            "-5s",
            "3153600000",
            "3153600001",
        ]
    ),
    st.floats().map(repr),
    st.integers(-(2**70), 2**70).map(str),
    TEXT,
)
TIME_TEXT = st.one_of(
    st.sampled_from(
        [
            "2026-12-01T09:00",
            "9999-12-31T23:59:59",
            "9999-12-31T23:59:59-14:00",
            "0001-01-01T00:00",
            "0001-01-01T00:00+14:00",
            "1969-12-31T23:59:59+00:00",
            "1970-01-01",
            "2026-13-01",
            "2026-12-01T25:00",
            "2026-12-01T09:00+99:00",
            "T",
            "",
        ]
    ),
    st.datetimes().map(lambda d: d.isoformat()),
    TEXT,
)
JSON_TEXT = st.one_of(
    st.sampled_from(
        [
            "[99999999999999999999]",
            '{"a": -99999999999999999999}',
            "[NaN, Infinity, -Infinity]",
            '["\\ud800"]',
            '{"\\udcff": 1}',
            "[" * 5000 + "]" * 5000,
            "[" * 150 + "]" * 150,
            "{}",
            "[]",
            "null",
            "1",
            '"x"',
            "",
            "[1,",
        ]
    ),
    st.recursive(
        st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
        max_leaves=8,
    ).map(json.dumps),
    TEXT,
)
ID_LIST_TEXT = st.one_of(
    st.lists(INTEGER_TEXT, min_size=1, max_size=4).map(",".join),
    st.lists(UNKNOWN_IDS.map(str), max_size=2000).map(",".join),
    TEXT,
)
BACKOFF_TEXT = st.one_of(
    st.lists(DURATION_TEXT, min_size=1, max_size=4).map(",".join),
    st.tuples(DURATION_TEXT, DURATION_TEXT, st.sampled_from(["nan", "inf", "-1", "11", "0.5"])).map(
        ",".join
    ),
)
ENV_TEXT = st.one_of(st.tuples(TEXT, TEXT).map("=".join), TEXT)
STATUS_TEXT = st.one_of(st.sampled_from([*contract.STATUSES, "RUNNING", "pend"]), TEXT)
FUNC_TEXT = st.one_of(st.sampled_from(["os:getcwd", "a:b", ":", "a:", ":b", "a:b:c"]), TEXT)
#: the values of --batch: a file of the fuzz's bytes, stdin, or paths that are not files
BATCH_SOURCES = st.sampled_from(["FILE", "-", "missing.jsonl", "", "/", "\0"])
BATCH_LINES = st.one_of(
    st.sampled_from(
        [
            b'{"argv": ["true"], "priority": 99999999999999999999}\n',
            b'{"argv": ["true"], "run_at": 1e999}\n',
            b'{"argv": ["true"], "delay": -1}\n',
            b'{"argv": ["\\ud800"]}\n',
            b'{"argv": ["true"], "label": "' + b"x" * 2000 + b'"}\n',
            b'{"argv": ["true"], "after": [0]}\n',
            b'{"call": {"func": "a:b", "args": [99999999999999999999]}}\n',
            b"\xff\xfe not utf-8\n",
            b"[" * 5000 + b"\n",
            b"\n\n",
            b'{"argv": ["true"]}\n' * 3,
        ]
    ),
    st.binary(max_size=200),
)

# which value each option takes; `None`: a flag
SUBMIT_OPTIONS: dict[str, Any] = {
    "--queue": TEXT,
    "--priority": INTEGER_TEXT,
    "--key": TEXT,
    "--retries": INTEGER_TEXT,
    "--backoff": BACKOFF_TEXT,
    "--after": ID_LIST_TEXT,
    "--timeout": DURATION_TEXT,
    "--delay": DURATION_TEXT,
    "--at": TIME_TEXT,
    "--label": TEXT,
    "--cwd": TEXT,
    "--env": ENV_TEXT,
    "--batch": BATCH_SOURCES,
    "--shell": TEXT,
    "--call": FUNC_TEXT,
    "--args": JSON_TEXT,
    "--kwargs": JSON_TEXT,
    "--json": None,
}


#: the submit options `schedule add` takes too
SCHEDULE_JOB_OPTIONS = (
    "--queue", "--priority", "--retries", "--backoff", "--timeout", "--label", "--cwd",
    "--env", "--shell", "--call", "--args", "--kwargs",
)  # fmt: skip


def harmless(word: str) -> bool:
    """Not a word that could make phxqctl wait for ever on the paused daemon: the id of a
    job the fuzz submitted (pending for good: `wait`, `logs -f`, `watch` would wait on
    it), or `--wait` (or an abbreviation of it) for `submit`."""
    if word.startswith("--w"):
        return False
    try:
        return not 1 <= int(word) < 10**12
    except ValueError:
        return True


HOSTILE_IDS = INTEGER_TEXT.filter(harmless)


def not_an_option(word: str) -> bool:
    """A word argparse takes as a positional: for `watch`, whose ids are optional, an id
    like `--json` would leave it none, and it would watch every job for ever."""
    return not word.startswith("-") or word[1:].strip().isdigit()


def job_ids(finished: list[int]) -> st.SearchStrategy[str]:
    """Ids for the commands that wait on a job or stream from it: the cancelled jobs made
    at the start (finished: nothing waits), ids no job has, and hostile ones."""
    return st.one_of(st.sampled_from(finished).map(str), UNKNOWN_IDS.map(str), HOSTILE_IDS)


def command_options(finished: list[int]) -> dict[str, tuple[dict[str, Any], Any]]:
    """command -> (its options and their values, a strategy for its positionals)."""
    ids = job_ids(finished)
    none: st.SearchStrategy[list[str]] = st.just([])
    queue_arg = st.one_of(none, TEXT.map(lambda q: [q]))
    # `resume` with a good queue name would let the fuzz's jobs run: only bad names
    bad_queue = st.one_of(
        st.sampled_from(["", "x" * 201, "\udcff"]),
        st.binary(min_size=1, max_size=10).map(lambda b: "\udcff" + not_utf8(b)),
    )
    return {
        "submit": (SUBMIT_OPTIONS, st.lists(TEXT, max_size=3)),
        "status": ({"--json": None}, none),
        "list": (
            {"--status": STATUS_TEXT, "--queue": TEXT, "--limit": INTEGER_TEXT, "--json": None},
            none,
        ),
        "show": ({"--json": None}, ids.map(lambda i: [i])),
        "logs": ({"--follow": None, "-f": None, "--json": None}, ids.map(lambda i: [i])),
        "wait": ({"--timeout": DURATION_TEXT, "--json": None}, st.lists(ids, max_size=3)),
        "cancel": ({"--json": None}, st.lists(ids, max_size=3)),
        # retry would make a cancelled job pending again, and a later wait would wait
        "retry": ({"--json": None}, st.lists(st.one_of(UNKNOWN_IDS.map(str), HOSTILE_IDS))),
        "retry-failed": ({"--queue": TEXT, "--json": None}, none),
        "clear": ({"--status": STATUS_TEXT, "--queue": TEXT, "--json": None}, none),
        "pause": ({"--json": None}, queue_arg),
        "resume": ({"--json": None}, bad_queue.map(lambda q: [q])),
        "queue": (
            {
                "--concurrency": st.one_of(INTEGER_TEXT, st.just("default")),
                "--rate": st.one_of(TEXT, st.sampled_from(["10/s", "1.5/m", "0/h", "default"])),
                "--burst": INTEGER_TEXT,
                "--json": None,
            },
            st.one_of(
                st.just(["list"]),
                TEXT.map(lambda q: ["set", q]),
                st.lists(TEXT, max_size=2),
            ),
        ),
        "schedule": (
            {
                "--cron": st.one_of(
                    TEXT, st.sampled_from(["* * * * *", "*/5 * * * * *", "@daily"])
                ),
                "--every": DURATION_TEXT,
                "--tz": st.one_of(TEXT, st.sampled_from(["UTC", "Europe/Riga"])),
                "--catch-up": TEXT,
                "--overlap": TEXT,
                **{o: SUBMIT_OPTIONS[o] for o in SCHEDULE_JOB_OPTIONS},
                "--json": None,
            },
            st.one_of(
                st.just(["list"]),
                st.tuples(st.sampled_from(["show", "remove", "pause", "resume", "run"]), TEXT).map(
                    list
                ),
                st.tuples(TEXT, st.lists(TEXT, max_size=3)).map(
                    lambda nw: ["add", nw[0], "--", *nw[1]]
                ),
                st.lists(TEXT, max_size=2),
            ),
        ),
        "progress": (
            {
                "--percent": DURATION_TEXT,
                "--step": TEXT,
                "--done": INTEGER_TEXT,
                "--total": INTEGER_TEXT,
                "--json": None,
            },
            none,
        ),
        "metrics": ({"--json": None}, none),
        # watch streams until the client hangs up: only ids that end it at once
        "watch": (
            {"--json": None},
            st.lists(
                st.one_of(UNKNOWN_IDS.map(str), HOSTILE_IDS.filter(not_an_option)),
                min_size=1,
                max_size=3,
            ),
        ),
        "completion": ({"--json": None}, st.lists(st.sampled_from(["bash", "zsh", "fish", ""]))),
    }


@st.composite
def invocations(draw: st.DrawFn, finished: list[int]) -> tuple[list[str], bytes]:
    """(argv after `phxqctl`, the bytes of a --batch file or stdin)."""
    table = command_options(finished)
    command = draw(st.sampled_from(sorted(table)))
    options, positionals = table[command]
    argv: list[str] = []
    if draw(st.booleans()):
        argv.append("--json")  # before the command, as the top parser takes it
    argv.append(command)
    chosen = draw(st.lists(st.sampled_from(sorted(options)), max_size=5))
    for name in chosen:
        values = options[name]
        if values is None:
            argv.append(name)
            continue
        value = draw(values)
        form = draw(st.sampled_from(["apart", "apart", "joined", "missing"]))
        if form == "apart":
            argv += [name, value]
        elif form == "joined":
            argv.append(f"{name}={value}")
        else:
            argv.append(name)  # the value forgotten: the next word, or nothing
    words = draw(positionals)
    if command == "submit" and words:
        argv += [*draw(st.sampled_from([["--"], []])), *words]
    else:
        argv += words
    if draw(st.integers(0, 20)) == 0:
        stray = draw(TEXT.filter(harmless))
        argv.insert(draw(st.integers(0, len(argv))), stray)  # a stray word anywhere
    if command == "submit":
        argv = [a for a in argv if not a.startswith("--w")]
    return argv, draw(BATCH_LINES)


# ---------------------------------------------------------------- running


class Hung(BaseException):
    """A run went over HANG_SECONDS (raised from SIGALRM, so nothing in phxqctl can catch
    it as an Exception)."""


@contextlib.contextmanager
def watchdog(argv: list[str]) -> Iterator[None]:
    def fire(signum: int, frame: object) -> None:
        raise Hung(f"phxqctl {argv!r} still running after {HANG_SECONDS}s")

    old = signal.signal(signal.SIGALRM, fire)
    signal.alarm(HANG_SECONDS)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def run_main(argv: list[str], stdin: bytes) -> tuple[int, str, str]:
    """phxqctl's console-script function in this process: (exit status, stdout, stderr).
    Any exception other than SystemExit escapes: that is the traceback the test is for."""
    out = io.TextIOWrapper(io.BytesIO(), encoding="utf-8", errors="strict")
    err = io.TextIOWrapper(io.BytesIO(), encoding="utf-8", errors="backslashreplace")
    inp = io.TextIOWrapper(io.BytesIO(stdin), encoding="utf-8", errors="strict")
    saved = sys.stdout, sys.stderr, sys.stdin
    sys.stdout, sys.stderr, sys.stdin = out, err, inp
    try:
        with watchdog(argv):
            cli.main(argv)
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        sys.stdout, sys.stderr, sys.stdin = saved
    out.flush()
    err.flush()
    return code, _text(out), _text(err)


def _text(stream: io.TextIOWrapper) -> str:
    buffer = stream.buffer
    assert isinstance(buffer, io.BytesIO)
    return buffer.getvalue().decode("utf-8", "replace")


def check_outcome(argv: list[str], code: int, err: str) -> None:
    assert code in DOCUMENTED, (argv, code, err)
    assert "Traceback" not in err, (argv, err)
    if code in (2, 3, 4, 5):
        assert err.endswith("\n") and err.count("\n") == 1, (argv, code, err)
        assert len(err) < 1000, (argv, err)


# ---------------------------------------------------------------- the daemon


@pytest.fixture(scope="module")
def fuzz_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Daemon, list[int]]]:
    """A paused daemon (nothing the fuzz submits ever runs) with a few cancelled jobs:
    finished, so `wait` and `logs --follow` on them return at once."""
    d = Daemon(tmp_path_factory.mktemp("clifuzz")).start()
    Daemon.started.remove(d)  # outlives the test that started it; stopped below
    try:
        d.ok("pause")
        finished = [d.submit("true") for _ in range(3)]
        d.ok("cancel", *map(str, finished))
        yield d, finished
    finally:
        if d.proc is not None and d.proc.poll() is None:
            d.stop(signal.SIGKILL)


@pytest.fixture
def in_daemon_env(
    fuzz_daemon: tuple[Daemon, list[int]], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> Daemon:
    """This process set up as phxqctl would be under the fuzz's daemon: its socket, and
    (for `progress`) the variables of a job that is not running."""
    d, _ = fuzz_daemon
    for name, value in d.env.items():
        if name.startswith("PHXQ_"):
            monkeypatch.setenv(name, value)
    monkeypatch.setenv("PHXQ_JOB_ID", "1")
    monkeypatch.setenv("PHXQ_ATTEMPT", "1")
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.chdir(tmp_path)
    return d


def assert_daemon_answers(d: Daemon) -> dict[str, Any]:
    assert d.proc is not None and d.proc.poll() is None, d.logtext()
    status: dict[str, Any] = d.json("status")
    assert "Traceback" not in d.logtext() and "internal error" not in d.logtext(), d.logtext()
    # nothing the fuzz submitted ran: the daemon stayed paused
    assert status["paused_all"] and status["counts"]["running"] == 0, status
    return status


# ---------------------------------------------------------------- the tests


def test_fuzzed_arguments_never_end_in_a_traceback(
    fuzz_daemon: tuple[Daemon, list[int]], in_daemon_env: Daemon, tmp_path: Path
) -> None:
    d, finished = fuzz_daemon
    batch = tmp_path / "batch.jsonl"
    seen: dict[int, int] = {}

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(invocations(finished))
    def run(invocation: tuple[list[str], bytes]) -> None:
        argv, data = invocation
        batch.write_bytes(data)
        argv = [a.replace("FILE", str(batch)) if a in ("FILE", "--batch=FILE") else a for a in argv]
        code, _, err = run_main(argv, data)
        check_outcome(argv, code, err)
        seen[code] = seen.get(code, 0) + 1

    run()
    print("exit statuses of the fuzzed runs:", dict(sorted(seen.items())))
    assert_daemon_answers(d)
    # the fuzz reached the daemon, not only argparse: some runs succeeded, some were
    # refused by argument checks
    assert seen.get(0, 0) > 0 and seen.get(2, 0) > 0, seen


#: the issue's cases, and others at the edge, as real subprocesses (argv as bytes, as a
#: shell hands them over): (argv, exit status, what the one line must say)
EDGE_CASES: list[tuple[list[bytes], int, str]] = [
    ([b"logs", b"99999999999999999999"], 2, "a job id must be an integer from 1 to"),
    ([b"wait", b"-99999999999999999999"], 2, "a job id must be an integer from 1 to"),
    ([b"retry", b"99999999999999999999"], 2, "a job id"),
    ([b"cancel", b"99999999999999999999"], 2, "a job id"),
    (
        [b"submit", b"--priority", b"99999999999999999999", b"--", b"true"],
        2,
        "--priority must be an integer from -2147483648 to 2147483647",
    ),
    ([b"submit", b"--label", b"\xff\xfe", b"--", b"true"], 2, "--label is not valid UTF-8"),
    ([b"submit", b"--", b"caf\xe9"], 2, "a command argument is not valid UTF-8"),
    ([b"submit", b"--delay", b"9" * 400, b"--", b"true"], 2, "--delay must be from 0 to"),
    ([b"list", b"--limit", b"-1"], 2, "--limit must be an integer from 0 to"),
    ([b"queue", b"set", b"q", b"--concurrency", b"0"], 2, "--concurrency must be"),
    ([b"submit", b"--label", b"x" * 1001, b"--", b"true"], 2, "--label is at most 1000"),
    ([b"--socket", b"/" + b"x" * 200, b"status"], 2, "1 to 107 bytes"),
    ([b"show", b"\x1b[31m\n"], 2, "invalid int value"),
    ([b"show", b"999999"], 4, "no job 999999"),
]


@pytest.mark.parametrize(("argv", "code", "says"), EDGE_CASES, ids=lambda v: repr(v)[:40])
def test_edge_cases_in_a_real_process(
    fuzz_daemon: tuple[Daemon, list[int]], argv: list[bytes], code: int, says: str
) -> None:
    d, _ = fuzz_daemon
    r = subprocess.run(
        [os.fsencode(sys.executable), b"-m", b"phxqctl", *argv],
        env=d.env,
        capture_output=True,
        timeout=60,
    )
    err = r.stderr.decode("utf-8", "replace")
    assert r.returncode == code, (argv, r.returncode, err)
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert says in err, err
    assert_daemon_answers(d)


def test_the_python_api_raises_usage_error_with_the_same_words(
    fuzz_daemon: tuple[Daemon, list[int]], monkeypatch: pytest.MonkeyPatch
) -> None:
    d, _ = fuzz_daemon
    cli_line = subprocess.run(
        [sys.executable, "-m", "phxqctl", "submit", "--priority", str(2**70), "--", "true"],
        env=d.env,
        capture_output=True,
        text=True,
        timeout=60,
    ).stderr.strip()
    with phxqctl.Client(d.socket) as c:
        pending = c.submit(["true"]).id  # never runs: the daemon is paused
        with pytest.raises(phxqctl.UsageError) as caught:
            c.submit(["true"], priority=2**70)
        assert cli_line == f"phxqctl: {caught.value}"
        assert caught.value.exit_status == 2
        calls: list[Any] = [
            lambda: c.get(2**70),
            lambda: c.wait([0]),
            lambda: c.wait([1], timeout=math.inf),
            lambda: c.list(limit=-1),
            lambda: c.cancel([-(2**70)]),
            lambda: c.logs(1, offset=2**64),
            lambda: c.set_queue("q", 2**40),
            lambda: c.pause("x" * 201),
            lambda: c.submit(["true"], delay=math.nan),
            lambda: c.submit(["true"], run_at=math.inf),
            lambda: c.submit(["true"], timeout=1e300),
            lambda: c.submit(["true"], label="\udcff"),
            lambda: c.submit(["x" * (contract.MAX_ARG_BYTES + 1)]),
            lambda: c.submit(["true"] * 100_000),
            lambda: c.submit_call("os:getcwd", [2**70]),
            lambda: list(c.watch([0])),
        ]
        for call in calls:
            with pytest.raises(phxqctl.UsageError):
                call()
        assert c.status()["paused_all"]  # the connection is still good
    monkeypatch.setenv("PHXQ_SOCKET", str(d.socket))
    monkeypatch.setenv("PHXQ_JOB_ID", str(pending))
    monkeypatch.setenv("PHXQ_ATTEMPT", "1")
    for bad in ({"percent": math.nan}, {"done": 2**70}, {"step": "s" * 501}, {"total": -1}):
        with pytest.raises(phxqctl.UsageError):
            phxqctl.progress(**bad)
    assert phxqctl.progress(percent=50) is False  # the job is not running: nothing changes


def raw_request(path: Path, request: dict[str, Any]) -> Any:
    """One request as bytes straight on the socket (no client-side checks)."""
    conn = Connection(str(path), timeout=60)
    try:
        conn.request(mpack.packb(request))
        return mpack.unpackb(conn.recv())
    finally:
        conn.close()


#: what a client without phxqctl's checks could send, and phxqd must refuse
RAW_REQUESTS: list[dict[str, Any]] = [
    {"op": "submit", "jobs": [{"argv": ["true"], "priority": 2**64 - 1}]},
    {"op": "submit", "jobs": [{"argv": ["true"], "priority": -(2**63)}]},
    {"op": "submit", "jobs": [{"argv": ["true"], "run_at": math.inf}]},
    {"op": "submit", "jobs": [{"argv": ["true"], "run_at": math.nan}]},
    {"op": "submit", "jobs": [{"argv": ["true"], "delay": math.inf}]},
    {"op": "submit", "jobs": [{"argv": ["true"], "timeout": 1e300}]},
    {"op": "submit", "jobs": [{"argv": ["true"], "max_retries": 2**64 - 1}]},
    {"op": "submit", "jobs": [{"argv": ["true"], "after": [0]}]},
    {"op": "submit", "jobs": [{"argv": ["true"], "label": "x" * 1001}]},
    {"op": "submit", "jobs": [{"argv": ["true"], "key": "k" * 1001}]},
    {"op": "submit", "jobs": [{"argv": ["true"], "backoff": [1.0, math.inf, 0.5]}]},
    {"op": "submit", "jobs": [{"argv": ["x" * (contract.MAX_ARG_BYTES + 1)]}]},
    {"op": "submit", "jobs": [{"argv": ["true"], "env": {"A": "x" * 600_000, "B": "y" * 600_000}}]},
    {"op": "show", "id": 0},
    {"op": "show", "id": 2**64 - 1},
    {"op": "wait", "ids": [1], "timeout": math.nan},
    {"op": "list", "limit": -1},
    {"op": "logs", "id": 1, "offset": -5},
    {"op": "queue-set", "queue": "q", "concurrency": 2**40},
    {"op": "queue-set", "queue": "", "concurrency": 1},
    {"op": "pause", "queue": "x" * 201},
    {"op": "progress", "id": 1, "attempt": 1, "done": -1},
]


@pytest.mark.parametrize("request_", RAW_REQUESTS, ids=lambda r: repr(r)[:60])
def test_the_daemon_refuses_out_of_range_values(
    fuzz_daemon: tuple[Daemon, list[int]], request_: dict[str, Any]
) -> None:
    d, _ = fuzz_daemon
    reply = raw_request(d.socket, request_)
    assert reply["type"] == "err" and reply["code"] == "usage", reply
    assert "\n" not in reply["message"] and len(reply["message"]) < 1000, reply
    assert_daemon_answers(d)


def test_a_request_over_the_frame_limit_is_refused_with_its_numbers(
    fuzz_daemon: tuple[Daemon, list[int]], tmp_path: Path
) -> None:
    d, _ = fuzz_daemon
    specs = "".join(
        f'{{"argv": ["true", "{"x" * 100_000}"], "label": "{i}"}}\n' for i in range(200)
    )
    r = d.ctl("submit", "--batch", "-", input=specs)
    assert r.returncode == 2, r.stderr
    assert str(contract.MAX_FRAME) in r.stderr and r.stderr.count("\n") == 1, r.stderr
    # and the daemon's own answer to a client that sends one anyway
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(str(d.socket))
        s.sendall((contract.MAX_FRAME + 1).to_bytes(4, "big"))
        reply = s.recv(4096)
    assert str(contract.MAX_FRAME).encode() in reply
    assert_daemon_answers(d)
