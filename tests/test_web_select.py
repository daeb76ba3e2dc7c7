"""`State.select` with the HTTP API's filters: keyset pages (`before`), label and key.

Pure state, no daemon: the pages must be the same as slicing the whole filtered list,
whatever the page size, with gaps in the ids (cleared jobs)."""

from __future__ import annotations

from phxqd.events import Cleared
from phxqd.local.state import State
from phxqd.model import JobSpec


def make(n: int) -> State:
    state = State()
    specs = [
        JobSpec(
            argv=("true",),
            queue="q" + str(i % 3),
            label="even" if i % 2 == 0 else None,
            key=f"k{i}" if i % 5 == 0 else None,
        )
        for i in range(n)
    ]
    events, _ = state.submit(specs, 1.0)
    for event in events:
        state.apply(event)
    return state


def pages(state: State, limit: int, **filters: object) -> list[int]:
    seen: list[int] = []
    before = None
    while True:
        page = state.select(
            filters.get("status"),  # type: ignore[arg-type]
            filters.get("queue"),  # type: ignore[arg-type]
            limit,
            before=before,
            label=filters.get("label"),  # type: ignore[arg-type]
            key=filters.get("key"),  # type: ignore[arg-type]
        )
        seen += [j.id for j in page]
        if len(page) < limit:
            return seen
        before = page[-1].id


def test_pages_are_the_whole_filtered_list_newest_first() -> None:
    state = make(200)
    state.apply(Cleared(ids=list(range(50, 90))))  # a gap in the ids
    everything = sorted(state.jobs, reverse=True)
    for limit in (1, 7, 100, 500):
        assert pages(state, limit) == everything
        assert pages(state, limit, queue="q1") == [
            i for i in everything if state.jobs[i].queue == "q1"
        ]
        assert pages(state, limit, label="even") == [
            i for i in everything if state.jobs[i].label == "even"
        ]
    assert pages(state, 10, key="k5") == [6]  # the sixth job (id 6) has key k5
    assert pages(state, 10, status="failed") == []
    assert state.select(None, None, 10, before=1) == []
    assert [j.id for j in state.select(None, None, 2, before=10**9)] == everything[:2]
