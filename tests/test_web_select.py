"""`State.select` with the HTTP API's filters: keyset pages (`before`), label and key.

Pure state, no daemon: the pages must be the same as slicing the whole filtered list,
whatever the page size, with gaps in the ids (cleared jobs)."""

from __future__ import annotations

from phxqd.events import Cancelled, Cleared, Retried
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


def test_a_rare_status_is_paged_from_its_index() -> None:
    """Cancelled jobs are few among many: their pages come from the status index, and say
    the same as the walk would."""
    state = make(3000)
    for job_id in range(7, 3000, 97):
        state.apply(Cancelled(id=job_id, at=2.0, reason="test"))
    state.apply(Cleared(ids=[7]))
    cancelled = [i for i in sorted(state.jobs, reverse=True) if state.jobs[i].status == "cancelled"]
    assert len(cancelled) * 8 < len(state.jobs)  # the index is used
    for limit in (1, 4, 100):
        assert pages(state, limit, status="cancelled") == cancelled
        assert pages(state, limit, status="cancelled", queue="q1") == [
            i for i in cancelled if state.jobs[i].queue == "q1"
        ]
    assert pages(state, 10, status="running") == []
    # a retried job leaves the index
    state.apply(Retried(ids=[cancelled[0]], at=3.0))
    assert pages(state, 100, status="cancelled") == cancelled[1:]
    # and a state restored from a snapshot has the same index
    restored = State.from_snapshot(state.snapshot(1))
    assert pages(restored, 7, status="cancelled") == cancelled[1:]
