"""The seed corpus (fuzz/corpus/) and the libFuzzer dictionary (fuzz/requests.dict).

Seeds are valid conversations, one per request kind and a few of the framing rules, made
from the protocol's own Structs so they stay in step with it; `write` regenerates them
(`python fuzz/fuzz_requests.py --write-seeds`). tests/test_fuzz_target.py checks the
files on disk are what `write` would make.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import msgspec

from fuzz.harness import CHUNKED, HELLO_FRAME, SEP, build
from phxqd import protocol as p
from phxqd.model import Call, JobSpec
from phxqd.schedules_model import ScheduleSpec


def _enc(*requests: msgspec.Struct) -> list[bytes]:
    return [msgspec.msgpack.encode(r) for r in requests]


def _raw(data: bytes) -> bytes:
    """An input sent as it is (no flags set): framing is the input's own."""
    return b"\x00" + data


CMD = JobSpec(argv=["true"])
FULL = JobSpec(
    argv=["sh", "-c", "echo hi"],
    queue="q",
    priority=3,
    key="k",
    max_retries=2,
    backoff=(1.0, 8.0, 0.5),
    timeout=5.0,
    delay=0.5,
    label="l",
    cwd="/tmp",
    env={"A": "B"},
)
CALL = JobSpec(call=Call("pkg.mod:func", [1, "x"], {"a": 2}), queue="py")

SEEDS: dict[str, bytes] = {
    "hello-status": build(_enc(p.Status())),
    "raw-hello-status": _raw(HELLO_FRAME + p.frame(p.Status())),
    "raw-status-first": _raw(p.frame(p.Status())),
    "raw-hello-wrong-proto": _raw(p.frame(p.Hello(99))),
    "raw-oversized": _raw(p.HEADER.pack(p.MAX_FRAME + 1)),
    "raw-truncated": _raw(HELLO_FRAME + p.HEADER.pack(100) + b"short"),
    "chunked-submit": build(_enc(p.Submit([CMD]), p.Show(1)), chunk=3),
    "submit-list-show": build(_enc(p.Submit([CMD, FULL]), p.List(), p.Show(2), p.Show(9))),
    "submit-call": build(_enc(p.Submit([CALL]), p.List("pending", "py", 1))),
    "submit-key-dedup": build(_enc(p.Submit([FULL]), p.Submit([FULL]))),
    "submit-after-cancel": build(
        _enc(p.Submit([CMD]), p.Submit([JobSpec(argv=["b"], after=[1])]), p.Cancel([1]))
    ),
    "cancel-retry-clear": build(
        _enc(
            p.Submit([CMD, CMD]),
            p.Cancel([1]),
            p.Retry([1]),
            p.Cancel([1, 2]),
            p.RetryFailed(None),
            p.Cancel([1, 2]),
            p.Clear("cancelled", None),
            p.List(),
        )
    ),
    "wait": build(_enc(p.Submit([CMD]), p.Wait([1], 0.01), p.Wait([1]), p.Status())),
    "wait-stream": build(_enc(p.Submit([CMD]), p.Wait([1], None, True))),
    "logs": build(_enc(p.Submit([CMD]), p.Logs(1), p.Logs(1, 10, 5))),
    "logs-follow": build(_enc(p.Submit([CMD]), p.Logs(1, 0, 100, True))),
    "watch": build(_enc(p.Submit([CMD]), p.Watch())),
    "watch-ids": build(_enc(p.Submit([CMD]), p.Watch([1]))),
    "progress": build(_enc(p.Submit([CMD]), p.ReportProgress(1, 1, 50.0, "s", 1, 2))),
    "queues": build(_enc(p.SetQueue("q", 2), p.SetQueue("q", None), p.Queues())),
    "pause-resume": build(_enc(p.Pause("q"), p.Resume("q"), p.Resume(None), p.Pause(None))),
    "metrics": build(_enc(p.Submit([CMD]), p.Metrics())),
    "rates": build(_enc(p.SetRate("q", 2.0, 3), p.SetRate("q", None), p.Queues())),
    "schedules": build(
        _enc(
            p.ScheduleAdd(ScheduleSpec("s", CMD, every=60.0)),
            p.ScheduleAdd(ScheduleSpec("c", CMD, cron="*/5 * * * * *", tz="UTC")),
            p.Schedules(),
            p.ScheduleShow("s"),
            p.ScheduleRun("s"),
            p.SchedulePause("s"),
            p.ScheduleResume("s"),
            p.ScheduleRemove("c"),
            p.ScheduleShow("c"),
        )
    ),
    "malformed": build([b"\xc1", msgspec.msgpack.encode({"op": "nonsense"}), b""]),
}

#: msgpack strings the fuzzer may splice in: every op and field name, and a few values
WORDS = sorted(
    {
        *(cls.__struct_config__.tag for cls in p.AnyRequest.__args__),
        *(f for cls in p.AnyRequest.__args__ for f in cls.__struct_fields__),
        *JobSpec.__struct_fields__,
        *Call.__struct_fields__,
        *ScheduleSpec.__struct_fields__,
        "op",
        "pending",
        "running",
        "retrying",
        "completed",
        "failed",
        "cancelled",
        "default",
    }
)


def _dict_entry(data: bytes) -> str:
    return '"' + "".join(f"\\x{b:02x}" for b in data) + '"'


def dictionary() -> str:
    entries = [msgspec.msgpack.encode(w) for w in WORDS]
    entries += [SEP, HELLO_FRAME, bytes([CHUNKED])]
    head = "# libFuzzer dictionary: the protocol's msgpack strings (made by fuzz/seeds.py)\n"
    return head + "".join(_dict_entry(e) + "\n" for e in entries)


def write(fuzz_dir: Path) -> None:
    corpus = fuzz_dir / "corpus"
    shutil.rmtree(corpus, ignore_errors=True)
    corpus.mkdir()
    for name, data in SEEDS.items():
        (corpus / name).write_bytes(data)
    (fuzz_dir / "requests.dict").write_text(dictionary())
