"""The socket must survive any bytes: a real daemon, raw frames, then a normal request."""

from __future__ import annotations

import socket
import struct

import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from phxqd import protocol
from tests.conftest import Daemon


def raw(d: Daemon, data: bytes, read: bool = True) -> bytes:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(30)
    s.connect(str(d.socket))
    s.sendall(data)
    s.shutdown(socket.SHUT_WR)
    out = b""
    while read and (chunk := s.recv(65536)):
        out += chunk
    s.close()
    return out


def replies(data: bytes) -> list[protocol.Ok | protocol.Err]:
    out = []
    while data:
        (n,) = struct.unpack(">I", data[:4])
        out.append(protocol.reply_decoder.decode(data[4 : 4 + n]))
        data = data[4 + n :]
    return out


HELLO = protocol.frame(protocol.Hello(protocol.PROTOCOL_VERSION))


def still_serves(d: Daemon) -> None:
    assert d.ctl("status").returncode == 0


def test_hello_first_and_version_mismatch(daemon: Daemon) -> None:
    [err] = replies(raw(daemon, protocol.frame(protocol.Status())))
    assert isinstance(err, protocol.Err) and err.code == "upgrade"
    [err] = replies(raw(daemon, protocol.frame(protocol.Hello(99))))
    assert isinstance(err, protocol.Err) and err.code == "upgrade" and "protocol" in err.message
    still_serves(daemon)


def test_malformed_payloads_get_errors_and_the_connection_goes_on(daemon: Daemon) -> None:
    bad = [
        b"\xc1",  # never valid msgpack
        msgspec.msgpack.encode({"op": "nonsense"}),
        msgspec.msgpack.encode({"op": "show", "id": "seven"}),
        msgspec.msgpack.encode({"op": "submit", "jobs": [{"argv": "not a list"}]}),
        msgspec.msgpack.encode([1, 2, 3]),
    ]
    data = HELLO + b"".join(struct.pack(">I", len(b)) + b for b in bad)
    data += protocol.frame(protocol.Status())
    got = replies(raw(daemon, data))
    assert isinstance(got[0], protocol.Ok)
    assert [r.code for r in got[1:-1] if isinstance(r, protocol.Err)] == ["usage"] * len(bad)
    assert isinstance(got[-1], protocol.Ok)


def test_strings_that_are_not_utf8_get_usage_errors(daemon: Daemon) -> None:
    # msgspec raises UnicodeDecodeError (not DecodeError) for these: it used to escape the
    # connection and end the daemon (found by fuzz/fuzz_requests.py)
    bad = [
        b"\x81\xa2op\xa4sh\xffw",  # in the op tag
        b"\x82\xa2op\xa4show\xa2i\xff\x01",  # in a field name
        b"\x82\xa2op\xa6submit\xa4jobs\x91\x81\xa4argv\x91\xa2\xff\xfe",  # in a value
    ]
    for first in (False, True):  # before hello, and after it
        data = b"" if first else HELLO
        data += b"".join(struct.pack(">I", len(b)) + b for b in bad) + HELLO
        data += protocol.frame(protocol.Status())
        got = replies(raw(daemon, data))
        assert [r.code for r in got if isinstance(r, protocol.Err)] == ["usage"] * 3
        assert all("malformed" in r.message for r in got if isinstance(r, protocol.Err))
        assert len(got) == (5 if first else 6) and isinstance(got[-1], protocol.Ok)
    still_serves(daemon)
    assert daemon.json("status")["total"] == 0


def test_huge_length_prefix_and_truncated_frames(daemon: Daemon) -> None:
    [err] = replies(raw(daemon, struct.pack(">I", 0xFFFFFFFF)))
    assert isinstance(err, protocol.Err) and "limit" in err.message
    assert raw(daemon, struct.pack(">I", 100) + b"short") == b""
    assert raw(daemon, b"\x00\x00") == b""
    still_serves(daemon)


def test_invalid_requests_are_refused_not_queued(daemon: Daemon) -> None:
    # with the words that name what is wrong: model.validate_spec passes the spec's fields
    # to contract.spec_problem by position, and a field in the wrong place would say so
    specs = [
        ({"argv": []}, "needs a command"),
        ({"argv": ["x"], "max_retries": -2}, "--retries"),
        ({"argv": ["a\0b"]}, "command argument"),
        ({"argv": ["x"], "cwd": "/tmp\0/etc"}, "--cwd"),
        ({"argv": ["x"], "env": {"A": "1\0B=2"}}, "--env"),
        ({"argv": ["x"], "env": {"A=B": "1"}}, "--env"),
        ({"argv": ["x"], "env": {"": "1"}}, "--env"),
        # PostgreSQL's text holds no NUL: refused on every backend alike
        ({"argv": ["x"], "queue": "a\0b"}, "queue names"),
        ({"argv": ["x"], "key": "k\0"}, "--key"),
        ({"argv": ["x"], "label": "\0"}, "--label"),
        ({"call": {"func": "os:get\0pid"}}, "--call"),
        ({"argv": ["x"], "backoff": [5, 1, 0]}, "backoff"),
        ({"argv": ["x"], "after": [0]}, "--after"),
        ({"argv": ["x"], "timeout": -1}, "--timeout"),
        ({"argv": ["x"], "delay": -1}, "--delay"),
        ({"argv": ["x"], "run_at": -1}, "--at"),
    ]
    for spec, named in specs:
        req = msgspec.msgpack.encode({"op": "submit", "jobs": [spec]})
        got = replies(raw(daemon, HELLO + struct.pack(">I", len(req)) + req))
        assert isinstance(got[1], protocol.Err) and got[1].code == "usage", spec
        assert named in got[1].message, (spec, got[1].message)
    assert daemon.json("status")["total"] == 0


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    payload=st.binary(max_size=200)
    | st.builds(
        msgspec.msgpack.encode,
        st.dictionaries(
            st.sampled_from(["op", "id", "ids", "jobs", "queue", "limit", "x"]),
            st.one_of(
                st.none(),
                st.integers(-(2**63), 2**64 - 1),
                st.text(max_size=5),
                st.sampled_from(["submit", "show", "wait", "cancel", "list"]),
                st.lists(st.integers(-2, 3), max_size=3),
            ),
            max_size=4,
        ),
    )
)
def test_fuzzed_frames_never_hurt_the_daemon(shared_daemon: Daemon, payload: bytes) -> None:
    # Not reading the reply: a fuzzed but valid `wait` would block until its job ends.
    raw(shared_daemon, HELLO + struct.pack(">I", len(payload)) + payload, read=False)
    still_serves_fast(shared_daemon)


def still_serves_fast(d: Daemon) -> None:
    from phxqctl import Client

    with Client(d.socket) as c:
        assert "counts" in c.status()


def test_an_error_text_is_made_storable_not_refused() -> None:
    """A job's error is what the job said (a callable's exception): NUL and lone
    surrogates are written out so that PostgreSQL's text and UTF-8 can hold it."""
    from phxqd.contract import storable_text

    assert storable_text("ValueError: plain") == "ValueError: plain"
    assert storable_text("a\0b\0") == "a\\x00b\\x00"
    assert storable_text("bad \udcff name") == "bad \\udcff name"
    assert storable_text("both\0\udc80") == "both\\x00\\udc80"
