"""Coverage-guided fuzzing of phxqd's request path with atheris (libFuzzer for Python).

    python fuzz/fuzz_requests.py [libFuzzer flags] [CORPUS_DIR...]
    python fuzz/fuzz_requests.py --write-seeds     # regenerate fuzz/corpus and the dict

Bytes go into a real `server.Connection` in front of a real `Core` (see fuzz/harness.py for
the path and the checks every input must pass). phxqd is imported under
`atheris.instrument_imports`, so libFuzzer sees which of its branches each input reaches.

An input is one flags byte, then the bytes to send (see `harness.parse`): with FRAMED set
the rest is msgpack payloads separated by `harness.SEP`, each given its length prefix, so
mutations explore requests rather than break framing; with FRAMED clear the bytes go to
the socket as they are, so framing itself is fuzzed too.

`make fuzz` runs this for a minute (FUZZ_SECONDS, or FUZZ_RUNS); a crash or hang is written
to .fuzz/artifacts/ and `python fuzz/fuzz_requests.py FILE` replays it.
"""

from __future__ import annotations

import sys
from pathlib import Path

import atheris

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

with atheris.instrument_imports(include=["phxqd"]):
    from fuzz import harness, seeds

target: harness.Target | None = None


def test_one_input(data: bytes) -> None:
    assert target is not None
    target.run(data)


def main() -> None:
    global target
    if sys.argv[1:] == ["--write-seeds"]:
        seeds.write(ROOT / "fuzz")
        return
    target = harness.Target()
    try:
        atheris.Setup(sys.argv, test_one_input)
        atheris.Fuzz()
    finally:  # libFuzzer exits from inside Fuzz(); this runs when Python unwinds first
        target.close()


if __name__ == "__main__":
    main()
