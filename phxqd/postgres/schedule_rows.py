"""Schedules as rows of `phxq_schedules` and back, and the decisions of a change (pure).

The decisions are those of the local store (phxqd/local/state.py: `set_schedule`,
`remove_schedule`, `fire`), made here against the row the transaction has locked, so both
stores answer alike.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import msgspec

from phxqd.protocol import Refused
from phxqd.schedules_model import Schedule, ScheduleSpec

#: the columns `schedule_from_row` reads, in its order
COLUMNS = "spec, anchor, source, paused, last_fire, last_job, last_fired_at, fired, missed"

_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(ScheduleSpec)


def spec_bytes(spec: ScheduleSpec) -> bytes:
    return _encoder.encode(spec)


def schedule_from_row(row: tuple[Any, ...]) -> Schedule:
    spec, anchor, source, paused, last_fire, last_job, last_fired_at, fired, missed = row
    return Schedule(
        _decoder.decode(bytes(spec)),
        anchor,
        "config" if source == "config" else "runtime",
        paused,
        last_fire,
        last_job,
        last_fired_at,
        fired,
        missed,
    )


def replaced(old: Schedule | None, spec: ScheduleSpec, now: float, source: str) -> Schedule | None:
    """The schedule `set_schedule` makes of `old` (None: nothing to write). Replacing
    keeps the record; a new timing counts fire times from now (a whole second); a
    runtime change of a schedule the config file declares is refused."""
    if old is not None and old.source == "config" and source == "runtime":
        raise Refused(
            "refused",
            f"schedule {spec.name!r} is declared in phxqd.toml: change it there and reload",
        )
    anchor = float(math.floor(now))
    kind: Literal["runtime", "config"] = "config" if source == "config" else "runtime"
    if old is None:
        return Schedule(spec, anchor, kind)
    if old.spec == spec and old.source == source:
        return None
    new = msgspec.structs.replace(old, spec=spec, source=kind)
    if old.spec.timing() != spec.timing():
        new.anchor = anchor
    return new


def check_remove(s: Schedule | None, name: str, source: str) -> None:
    if s is None:
        raise Refused("not_found", f"no schedule {name!r}")
    if s.source == "config" and source == "runtime":
        raise Refused(
            "refused",
            f"schedule {name!r} is declared in phxqd.toml: remove it there and reload",
        )
