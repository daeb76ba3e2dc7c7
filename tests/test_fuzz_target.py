"""The fuzz target's harness (fuzz/harness.py), driven without atheris: every seed and every
input that once broke phxqd (fuzz/regressions/) must pass its checks, hypothesis mutates
the seeds a little further, and the checks themselves are shown to catch what they name.

`make fuzz` runs the same harness under libFuzzer's coverage guidance; this keeps its seeds
and regressions honest in every `make test`."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fuzz import harness, seeds
from phxqd import protocol

FUZZ = Path(__file__).resolve().parent.parent / "fuzz"
REGRESSIONS = sorted((FUZZ / "regressions").iterdir())


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> harness.Target:
    return harness.Target(tmp_path_factory.mktemp("fuzz"))


def test_corpus_and_dictionary_on_disk_are_what_seeds_write(tmp_path: Path) -> None:
    seeds.write(tmp_path)
    made = {p.name: p.read_bytes() for p in (tmp_path / "corpus").iterdir()}
    on_disk = {p.name: p.read_bytes() for p in (FUZZ / "corpus").iterdir()}
    assert on_disk == made, "run `python fuzz/fuzz_requests.py --write-seeds`"
    assert (FUZZ / "requests.dict").read_text() == (tmp_path / "requests.dict").read_text()


@pytest.mark.parametrize("name", sorted(seeds.SEEDS))
def test_every_seed_passes(target: harness.Target, name: str) -> None:
    target.run(seeds.SEEDS[name])


def test_seeds_reach_the_handlers_not_just_the_door(target: harness.Target) -> None:
    # A harness that never got past hello would pass every input: these get real answers.
    got = target.run(seeds.SEEDS["submit-list-show"]).frames
    assert [type(f) for f in got] == [protocol.Ok] * 4 + [protocol.Err]
    assert got[3].result["id"] == 2 and got[4].code == "not_found"
    # a stream begins with the job's state, and ends when the client hangs up
    streamed = target.run(seeds.SEEDS["wait-stream"]).frames[-1]
    assert isinstance(streamed, protocol.JobEvent) and streamed.event == "state"


@pytest.mark.parametrize("path", REGRESSIONS, ids=[p.name for p in REGRESSIONS])
def test_inputs_that_once_broke_phxqd_pass(target: harness.Target, path: Path) -> None:
    target.run(path.read_bytes())


def test_the_checks_catch_what_they_name() -> None:
    ok = protocol.frame(protocol.Ok({"a": 1}))
    assert len(harness.decode_frames(ok + ok)) == 2
    for bad, why in [
        (ok + b"\x00\x00", "stray bytes"),
        (ok[:-1], "truncated"),
        (protocol.HEADER.pack(protocol.MAX_FRAME + 1), "over MAX_FRAME"),
        (protocol.HEADER.pack(1) + b"\xc1", "does not decode"),
    ]:
        with pytest.raises(harness.Finding, match=why):
            harness.decode_frames(bad)


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    seed=st.sampled_from(sorted(seeds.SEEDS)),
    flips=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=4),
    cut=st.integers(0, 10_000),
)
def test_mutated_seeds_pass(
    target: harness.Target, seed: str, flips: list[tuple[int, int]], cut: int
) -> None:
    data = bytearray(seeds.SEEDS[seed])
    for at, byte in flips:
        data[at % len(data)] = byte
    target.run(bytes(data[: max(1, len(data) - cut % 8)]))
