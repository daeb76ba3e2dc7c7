"""What the nodes tell each other through LISTEN/NOTIFY on the channel `phxq`.

A payload is `KIND IDS`: one letter and the job ids as ranges (`12-40,45`), so a batch of
10,000 submitted jobs is a few bytes. PostgreSQL caps a payload at 8,000 bytes; longer
lists are cut into several notifications. The kinds:

    n  new or requeued jobs (may be claimed)     s  started
    c  completed     f  failed for good          r  failed, will retry
    x  cancelled     k  cleared (their logs go)  w  a queue setting changed (no ids)
    K  cancel asked of a node: `K NODE IDS`      (that node stops the jobs)
    S  a schedule was added, changed, paused or removed (no ids: every node's
       Scheduler reads the schedules again)

A notification is a hint: every node also polls, so one that missed some (its LISTEN
connection was down) loses only time, never a job.
"""

from __future__ import annotations

import msgspec

CHANNEL = "phxq"
#: kept under PostgreSQL's 8,000 bytes with room for the kind
MAX_PAYLOAD = 7_000

KINDS = {
    "n": "submitted",
    "s": "started",
    "c": "completed",
    "f": "failed",
    "r": "retrying",
    "x": "cancelled",
    "q": "requeued",
}
ENDED = frozenset("cfxk")


class Notice(msgspec.Struct, frozen=True):
    kind: str
    ids: list[int]
    node: int | None = None


def ranges(ids: list[int]) -> list[str]:
    out: list[str] = []
    if not ids:
        return out
    ordered = sorted(set(ids))
    start = prev = ordered[0]
    for i in ordered[1:]:
        if i == prev + 1:
            prev = i
            continue
        out.append(str(start) if start == prev else f"{start}-{prev}")
        start = prev = i
    out.append(str(start) if start == prev else f"{start}-{prev}")
    return out


def encode(kind: str, ids: list[int], node: int | None = None) -> list[str]:
    """The payloads that tell `kind` of `ids` (one, or several for a long list); none for
    no ids. (Each write told every kind, most of them empty: six notifications a
    transaction, and on every node an empty `n` or `f` set it to claim again for nothing.)
    The kinds without ids (`w`, `S`) are sent as they are, not through this."""
    head = kind if node is None else f"{kind} {node}"
    parts = ranges(ids)
    if not parts:
        return []
    payloads: list[str] = []
    current: list[str] = []
    size = 0
    for part in parts:
        if current and size + len(part) + 1 > MAX_PAYLOAD:
            payloads.append(f"{head} {','.join(current)}")
            current, size = [], 0
        current.append(part)
        size += len(part) + 1
    payloads.append(f"{head} {','.join(current)}")
    return payloads


def decode(payload: str) -> Notice | None:
    """The notice a payload says, or None for one this node does not understand (a newer
    node's): ignored, the polling covers it."""
    fields = payload.split(" ")
    kind = fields[0]
    node = None
    try:
        if kind == "K":
            node = int(fields[1])
            fields = fields[1:]
        ids: list[int] = []
        if len(fields) > 1:
            for part in fields[1].split(","):
                a, sep, b = part.partition("-")
                ids.extend(range(int(a), int(b) + 1) if sep else (int(a),))
    except (ValueError, IndexError):
        return None
    if kind not in KINDS and kind not in ("k", "w", "K", "S"):
        return None
    return Notice(kind, ids, node)
