"""The tables of docs/benchmarks.md: results in, Markdown out. Pure (no I/O), so tested.

A `Row` is one system (phxq or a peer, at one durability setting) on one measure: either
the samples of its repeated runs (the table shows their median) or the reason it was not
measured (n/a). The ratio column compares phxq with each peer row, oriented so that a
number above 1 always means phxq is ahead, whatever the unit: for rates phxq / peer, for
times and bytes peer / phxq. The phxq row it compares with is the one of the same
durability class when there is one (phxq `batch` against Redis `everysec`), else phxq's
default, `fsync = "always"`.
"""

from __future__ import annotations

import statistics

import msgspec

#: durability classes: every acknowledged job fsync'd / fsync'd within an interval / never
FSYNC, INTERVAL, NONE = "fsync", "interval", "none"


class Row(msgspec.Struct):
    system: str  # "phxq", "huey", "RQ"...
    setting: str  # the durability setting it ran with, as the table shows it
    durability: str = FSYNC
    samples: list[float] = msgspec.field(default_factory=list)
    na: str | None = None  # why there is no figure
    note: str = ""

    @property
    def is_phxq(self) -> bool:
        return self.system == "phxq"

    @property
    def median(self) -> float | None:
        return statistics.median(self.samples) if self.samples and self.na is None else None


class Table(msgspec.Struct):
    title: str
    measure: str  # the column header of the figure, e.g. "jobs/s"
    higher_is_better: bool
    rows: list[Row] = msgspec.field(default_factory=list)
    text: str = ""  # what was measured and how, shown above the table
    digits: int = 0  # decimals shown

    def add(self, row: Row) -> Row:
        self.rows.append(row)
        return row


def reference(table: Table, row: Row) -> Row | None:
    """The phxq row a peer row is compared with (see the module docstring)."""
    phxq = [r for r in table.rows if r.is_phxq and r.median is not None]
    for r in phxq:
        if r.durability == row.durability:
            return r
    for r in phxq:
        if r.durability == FSYNC:
            return r
    return phxq[0] if phxq else None


def ratio(phxq: float, peer: float, higher_is_better: bool) -> float | None:
    """How many times phxq is ahead of the peer (> 1 ahead, < 1 behind)."""
    if phxq <= 0 or peer <= 0:
        return None
    return phxq / peer if higher_is_better else peer / phxq


def fmt_number(x: float, digits: int = 0) -> str:
    """Thousands separators; small figures keep enough digits to mean something."""
    if digits == 0 and abs(x) < 10 and x != int(x):
        digits = 2 if abs(x) >= 1 else 3
    return f"{x:,.{digits}f}"


def fmt_ratio(r: float | None) -> str:
    if r is None:
        return "—"
    word = "ahead" if r >= 1.05 else "behind" if r <= 0.95 else "even"
    return f"{r:.2f}x {word}"


def spread(row: Row, digits: int) -> str:
    """min-max of the runs, when there were several."""
    if len(row.samples) < 2:
        return ""
    return f"{fmt_number(min(row.samples), digits)}-{fmt_number(max(row.samples), digits)}"


def render_table(table: Table) -> str:
    head = f"| system | durability | {table.measure} (median) | runs (min-max) | phxq is |"
    lines = [head, "|---|---|---:|---|---|"]
    for row in table.rows:
        med = row.median
        if med is None:
            figure, runs, vs = f"n/a: {row.na or 'not measured'}", "", ""
        else:
            figure = fmt_number(med, table.digits)
            runs = f"{len(row.samples)}: {spread(row, table.digits)}".rstrip(": ")
            ref = None if row.is_phxq else reference(table, row)
            vs = "—"
            if ref is not None and ref.median is not None:
                r = ratio(ref.median, med, table.higher_is_better)
                vs = fmt_ratio(r)
                if ref.durability != FSYNC or row.durability != FSYNC:
                    vs += f" (vs {ref.setting})"
        note = f" {row.note}" if row.note else ""
        lines.append(f"| {row.system} | {row.setting}{note} | {figure} | {runs} | {vs} |")
    return "\n".join(lines)


def render_section(table: Table) -> str:
    parts = [f"### {table.title}", ""]
    if table.text:
        parts += [table.text.strip(), ""]
    parts += [render_table(table), ""]
    return "\n".join(parts)


def summary_lines(tables: list[Table]) -> list[str]:
    """One line per (table, peer row): where phxq is ahead and where it is behind."""
    out = []
    for t in tables:
        for row in t.rows:
            med = row.median
            if row.is_phxq or med is None:
                continue
            ref = reference(t, row)
            if ref is None or ref.median is None:
                continue
            r = ratio(ref.median, med, t.higher_is_better)
            out.append(f"{t.title}: vs {row.system} ({row.setting}): {fmt_ratio(r)}")
    return out
