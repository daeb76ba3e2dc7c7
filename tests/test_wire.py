"""phxqctl's own wire path (phxqctl.mpack, .wire, .locate) against the one definition of
the protocol: phxqd/protocol.py's msgspec Structs and phxqd/paths.py.

Byte for byte: what the pure-Python codec encodes is what msgspec encodes, and both
decode each other's bytes to the same values; random values and Structs (hypothesis),
and every size boundary of every msgpack type.
"""

from __future__ import annotations

import math
import os
import socket
import stat
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from phxqctl import locate, mpack
from phxqd import contract, model, paths, protocol
from tests.conftest import phxqctl_at, read_payload

INT64 = st.integers(min_value=-(2**63), max_value=2**64 - 1)
SCALARS = (
    st.none()
    | st.booleans()
    | INT64
    | st.floats(allow_nan=False)
    | st.text()
    | st.binary()
    # the edges of each form, which random draws rarely hit
    | st.sampled_from([0, 127, 128, 255, 256, 65535, 65536, 2**32 - 1, 2**32, 2**64 - 1])
    | st.sampled_from([-1, -32, -33, -128, -129, -32768, -32769, -(2**31), -(2**31) - 1])
    | st.sampled_from([-(2**63), math.inf, -math.inf, 0.0, -0.0, 5e-324])
)
KEYS = st.text() | INT64
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=20) | st.dictionaries(KEYS, inner, max_size=20),
    max_leaves=60,
)


@settings(max_examples=500, deadline=None)
@given(VALUES)
def test_random_values_encode_to_the_same_bytes_and_decode_both_ways(value: Any) -> None:
    ours = mpack.packb(value)
    assert ours == msgspec.msgpack.encode(value)
    assert mpack.unpackb(ours) == msgspec.msgpack.decode(ours) == value


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_decode_alike_or_fail_with_decode_error(data: bytes) -> None:
    try:
        expected = msgspec.msgpack.decode(data)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        expected = None
        with pytest.raises(mpack.DecodeError):
            mpack.unpackb(data)
    if expected is not None and not _has_ext(data):
        if isinstance(expected, float) and math.isnan(expected):
            assert math.isnan(mpack.unpackb(data))
        else:
            assert _same(mpack.unpackb(data), expected)


def _has_ext(data: bytes) -> bool:
    try:
        mpack.unpackb(data)
    except mpack.DecodeError as e:
        return "unsupported type byte" in str(e)
    return False


def _same(a: Any, b: Any) -> bool:
    """Equal, NaN included (a NaN never equals itself): the same type and encoding."""
    return type(a) is type(b) and mpack.packb(a) == mpack.packb(b)


SIZES = [0, 1, 15, 16, 31, 32, 255, 256, 65535, 65536, 70000]


@pytest.mark.parametrize("n", SIZES)
def test_every_size_of_str_bin_array_and_map(n: int) -> None:
    values = [
        "x" * n,
        "é" * (n // 2),  # two bytes each: the length is in bytes
        b"\x00" * n,
        list(range(n)),
        {f"k{i}": i for i in range(n)},
        {i: None for i in range(n)},
    ]
    for value in values:
        ours = mpack.packb(value)
        assert ours == msgspec.msgpack.encode(value), (type(value), n)
        assert mpack.unpackb(ours) == value


def test_ints_outside_64_bits_are_refused_like_msgspec() -> None:
    for n in (2**64, -(2**63) - 1):
        with pytest.raises(OverflowError):
            msgspec.msgpack.encode(n)
        with pytest.raises(OverflowError):
            mpack.packb(n)


def test_float32_arrays_as_keys_and_bad_input() -> None:
    assert mpack.unpackb(b"\xca\x3f\xc0\x00\x00") == 1.5
    keyed = msgspec.msgpack.encode({((1, 2), 3): 1})
    assert mpack.unpackb(keyed) == msgspec.msgpack.decode(keyed) == {((1, 2), 3): 1}
    for bad in (b"", b"\xc1", b"\xd9\x05ab", b"\x92\x01", b"\x01\x02", b"\xdd\xff\xff\xff\xff"):
        with pytest.raises(mpack.DecodeError):
            mpack.unpackb(bad)
    with pytest.raises(TypeError):
        mpack.packb(object())


# ----------------------------------------------------------- the Structs


PROGRESS = st.none() | st.builds(
    model.Progress,
    updated_at=st.floats(allow_nan=False),
    percent=st.none() | st.floats(0, 100),
    step=st.none() | st.text(),
    done=st.none() | st.integers(0, 2**40),
    total=st.none() | st.integers(0, 2**40),
)
CALLS = st.none() | st.builds(
    model.Call,
    func=st.text(),
    args=st.lists(VALUES, max_size=3),
    kwargs=st.dictionaries(st.text(), VALUES, max_size=3),
)
SMALL = st.integers(-(2**63), 2**63 - 1)
#: what a request's ids and counts may be (phxqd.contract's ranges: phxqd refuses others)
JOB_IDS = st.integers(*contract.JOB_ID)
COUNTS = st.integers(*contract.COUNT)
JOBS = st.builds(
    model.Job,
    id=SMALL,
    argv=st.lists(st.text(), max_size=4).map(tuple),
    priority=SMALL,
    attempts=SMALL,
    max_retries=SMALL,
    exit_code=st.none() | SMALL,
    pid=st.none() | SMALL,
    after=st.none() | st.lists(SMALL, max_size=3).map(tuple),
    progress=PROGRESS,
    call=CALLS,
    result=VALUES,
)
SPECS = st.builds(
    model.JobSpec,
    argv=st.lists(st.text(), max_size=4),
    call=CALLS,
    priority=SMALL,
    max_retries=st.none() | SMALL,
    after=st.lists(SMALL, max_size=3),
    env=st.dictionaries(st.text(), st.text(), max_size=3),
)
EVENTS = st.builds(
    protocol.JobEvent,
    event=st.sampled_from(protocol.EVENT_KINDS),
    id=SMALL,
    attempt=SMALL,
    exit_code=st.none() | SMALL,
    progress=PROGRESS,
    count=SMALL,
)
MESSAGES = st.one_of(
    EVENTS,
    st.builds(protocol.Chunk, data=st.binary(), offset=SMALL),
    st.builds(protocol.Ok, result=JOBS),
    st.builds(protocol.Ok, result=st.lists(JOBS, max_size=3)),
    st.builds(protocol.Err, code=st.sampled_from(list(protocol.ERROR_EXIT)), message=st.text()),
    st.builds(protocol.Submit, jobs=st.lists(SPECS, max_size=3)),
    st.builds(protocol.Wait, ids=st.lists(JOB_IDS, max_size=3), stream=st.booleans()),
    st.builds(protocol.Logs, id=JOB_IDS, offset=COUNTS, limit=COUNTS, follow=st.booleans()),
    st.builds(protocol.Watch, ids=st.none() | st.lists(JOB_IDS, max_size=3)),
    st.builds(protocol.Hello, proto=SMALL, client=st.text()),
)


@settings(max_examples=300, deadline=None)
@given(MESSAGES)
def test_structs_and_their_dicts_are_the_same_bytes(message: msgspec.Struct) -> None:
    as_dict = _lists(msgspec.to_builtins(message, builtin_types=(bytes,)))
    encoded = msgspec.msgpack.encode(message)
    assert mpack.packb(as_dict) == encoded  # what the CLI sends is what the Struct is
    assert _same(mpack.unpackb(encoded), as_dict)  # what the CLI reads is what was sent
    kind: Any = type(message)
    if isinstance(message, protocol.Ok):
        kind = protocol.Ok[list[model.Job] if isinstance(message.result, list) else model.Job]
    decoder: msgspec.msgpack.Decoder[Any] = msgspec.msgpack.Decoder(kind)
    assert msgspec.msgpack.encode(decoder.decode(mpack.packb(as_dict))) == encoded


def _lists(value: Any) -> Any:
    """Tuples as lists, as msgpack has only arrays (to_builtins keeps some tuples)."""
    if isinstance(value, list | tuple):
        return [_lists(v) for v in value]
    if isinstance(value, dict):
        return {k: _lists(v) for k, v in value.items()}
    return value


def test_the_cli_submit_request_decodes_as_the_daemon_does(tmp_path: Path) -> None:
    """The real phxqctl builds and sends its submit to a socket the test answers in
    phxqd's place: the bytes it sent decode, with phxqd's decoder, to the job asked for."""
    sock_path = tmp_path / "phxqd.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(sock_path))
    server.listen(1)
    server.settimeout(60)
    received: list[bytes] = []

    def serve() -> None:
        conn, _ = server.accept()
        with conn:
            conn.settimeout(60)
            for reply in (
                {"proto": contract.PROTOCOL_VERSION},
                [{"job": {"id": 7}, "deduplicated": False}],
            ):
                received.append(read_payload(conn))
                payload = mpack.packb({"type": "ok", "result": reply})
                conn.sendall(protocol.HEADER.pack(len(payload)) + payload)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    argv = ["submit", "--queue", "q", "--retries", "2", "--env", "A=1", "--", "echo", "hi"]
    r = phxqctl_at(sock_path, tmp_path, *argv)
    thread.join(60)
    server.close()
    assert (r.returncode, r.stdout, r.stderr) == (0, "7\n", "")
    hello, sent = (protocol.request_decoder.decode(m) for m in received)
    assert hello == protocol.Hello(contract.PROTOCOL_VERSION, "phxqctl")
    assert sent == protocol.Submit(
        [
            model.JobSpec(
                argv=["echo", "hi"], queue="q", max_retries=2, env={"A": "1"}, cwd=str(tmp_path)
            )
        ]
    )


# ------------------------------------------------------------ the socket


@pytest.fixture
def private_dir() -> Iterator[Path]:
    """A directory that is private all the way up (not below /tmp, whose sticky 1777
    sends phxqctl.locate to platformdirs): the fast path's case."""
    for base in (Path.home(), Path("/run"), Path.cwd()):
        try:
            made = Path(tempfile.mkdtemp(dir=base, prefix=".phxq-test-"))
        except OSError:
            continue
        made.chmod(0o700)
        if locate._surely_private(str(made)):
            yield made
            made.joinpath("phxq", "phxqd.sock").unlink(missing_ok=True)
            for d in (made / "phxq", made):
                if d.exists():
                    d.rmdir()
            return
        made.rmdir()
    raise AssertionError("no private directory to test the fast path in (home, /run, cwd)")


def _scenarios(private: Path, tmp: Path) -> Iterator[dict[str, str | None]]:
    loose = tmp / "loose"
    loose.mkdir(mode=0o755)
    loose.chmod(0o755)
    yield {"PHXQ_SOCKET": "/x/y.sock"}
    yield {"RUNTIME_DIRECTORY": "/run/a:/run/b"}
    yield {"XDG_RUNTIME_DIR": str(private)}
    yield {"XDG_RUNTIME_DIR": str(loose)}  # mode 0755: platformdirs refuses it
    yield {"XDG_RUNTIME_DIR": str(tmp)}  # below /tmp
    yield {"XDG_RUNTIME_DIR": "relative/dir"}
    yield {"XDG_RUNTIME_DIR": str(tmp / "missing")}
    yield {}


def test_socket_path_agrees_with_phxqd_paths(
    private_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    system = tmp_path / "system" / "phxqd.sock"
    monkeypatch.setattr(paths, "SYSTEM_SOCKET", system)
    monkeypatch.setattr(locate, "SYSTEM_SOCKET", str(system))
    for scenario in _scenarios(private_dir, tmp_path):
        for var in ("PHXQ_SOCKET", "RUNTIME_DIRECTORY", "XDG_RUNTIME_DIR"):
            monkeypatch.delenv(var, raising=False)
        for var, value in scenario.items():
            monkeypatch.setenv(var, value or "")
        for system_exists in (False, True):
            if system_exists:
                system.parent.mkdir(exist_ok=True)
                system.touch()
            ours = os.path.normpath(locate.socket_path())
            assert ours == str(paths.client_socket_path()), (scenario, system_exists)
            assert locate.socket_path("/flag.sock") == "/flag.sock"
        system.unlink()
    # the fast path was taken for the private directory, and is right when its socket exists
    assert locate._surely_private(str(private_dir))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(private_dir))
    (private_dir / "phxq").mkdir()
    (private_dir / "phxq" / "phxqd.sock").touch()
    assert locate.socket_path() == str(paths.client_socket_path())
    assert stat.S_IMODE(private_dir.stat().st_mode) == 0o700


def test_no_msgspec_no_daemon_code_on_the_fast_commands(daemon: Any) -> None:
    """`phxqctl status` and `submit` import neither msgspec, anyio, platformdirs nor
    phxqd's code other than its standard-library constants, phxqd.contract (checked with
    -X importtime, through `-m phxqctl` and the console script, which imports
    phxqctl.cli directly)."""

    script = Path(sys.executable).parent / "phxqctl"
    entries = [[sys.executable, "-X", "importtime", "-m", "phxqctl"]]
    if script.exists():
        entries.append([sys.executable, "-X", "importtime", str(script)])
    for entry in entries:
        for command in (["status"], ["submit", "--", "true"], ["--json", "status"]):
            r = subprocess.run(
                [*entry, *command], env=daemon.env, capture_output=True, text=True, timeout=60
            )
            assert r.returncode == 0, r.stderr
            imported = {
                line.split("|")[-1].strip()
                for line in r.stderr.splitlines()
                if line.startswith("import time:")
            }
            assert "phxqctl.cli" in imported, r.stderr[-500:]
            heavy = {
                m
                for m in imported
                if m.split(".")[0]
                in ("msgspec", "anyio", "platformdirs", "typing", "shutil", "phxqd")
                or m == "phxqctl.client"
            }
            # the package (its __init__ is empty) and the shared constants, nothing else
            assert heavy == {"phxqd", "phxqd.contract"}, (command, sorted(heavy))


def test_a_connect_with_a_timeout_waits_for_room_in_a_full_backlog(tmp_path: Path) -> None:
    """A burst of clients can fill phxqd's listen backlog for a moment: a client with a
    timeout waits for room (up to its timeout), as one without waits, instead of failing
    at once with EAGAIN (what a Unix connect on a non-blocking socket does)."""
    from phxqctl.errors import DaemonUnreachable
    from phxqctl.wire import Connection

    path = str(tmp_path / "sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(0)
    queued = []
    try:
        while True:  # fill the backlog: nobody accepts
            waiting = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            waiting.setblocking(False)
            queued.append(waiting)
            waiting.connect(path)
    except BlockingIOError:
        queued.pop().close()
    try:
        with pytest.raises(DaemonUnreachable, match=r"did not take the connection within 0\.2s"):
            Connection(path, timeout=0.2).connect()

        patient = Connection(path, timeout=60)
        outcome: list[BaseException | None] = []
        started = threading.Event()

        def connect() -> None:
            started.set()
            try:
                patient.connect()
                outcome.append(None)
            except BaseException as e:  # reported to the test below
                outcome.append(e)

        thread = threading.Thread(target=connect)
        thread.start()
        started.wait()
        server.accept()[0].close()  # room for one more
        thread.join(60)
        assert outcome == [None], outcome
        patient.close()
    finally:
        for s in queued:
            s.close()
        server.close()
