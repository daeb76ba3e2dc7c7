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
    note: str = ""  # shown after the system's name, e.g. the command measured
    group: str = ""  # rows are compared only within a group (e.g. "16 producers")
    compare: bool = True  # False: shown, but no ratio (not the same thing measured)

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
    group_title: str = "case"  # header of the group column, when rows have groups

    def add(self, row: Row) -> Row:
        self.rows.append(row)
        return row


def reference(table: Table, row: Row) -> Row | None:
    """The phxq row a peer row is compared with (see the module docstring)."""
    phxq = [r for r in table.rows if r.is_phxq and r.median is not None and r.group == row.group]
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
    grouped = any(r.group for r in table.rows)
    head = f"| system | durability | {table.measure} (median) | runs (min-max) | phxq is |"
    rule = "|---|---|---:|---|---|"
    if grouped:
        head, rule = f"| {table.group_title} " + head, "|---" + rule
    lines = [head, rule]
    shown: set[tuple[str, str]] = set()
    measured = [r for r in table.rows if r.median is not None]
    for row in measured + [r for r in table.rows if r.median is None]:
        if row.median is None:  # one n/a row per system and reason, after the figures
            if (row.system, row.na or "") in shown:
                continue
            shown.add((row.system, row.na or ""))
            if grouped:
                row = msgspec.structs.replace(row, group=na_group(table, row, measured))
        med = row.median
        if med is None:
            figure, runs, vs = f"n/a: {row.na or 'not measured'}", "", ""
        else:
            figure = fmt_number(med, table.digits)
            runs = f"{len(row.samples)}: {spread(row, table.digits)}".rstrip(": ")
            ref = None if row.is_phxq or not row.compare else reference(table, row)
            vs = "—" if row.compare else "not comparable"
            if ref is not None and ref.median is not None:
                r = ratio(ref.median, med, table.higher_is_better)
                vs = fmt_ratio(r)
                if ref.durability != FSYNC or row.durability != FSYNC:
                    vs += f" (vs {ref.setting})"
        name = f"{row.system} ({row.note})" if row.note else row.system
        line = f"| {name} | {row.setting} | {figure} | {runs} | {vs} |"
        lines.append(f"| {row.group} {line}" if grouped else line)
    return "\n".join(lines)


def na_group(table: Table, row: Row, measured: list[Row]) -> str:
    """The group an n/a row shown once stands for: "all" when the system has no figure in
    the table, else what its n/a groups have in common ("command" of "1,000, command")."""
    if not any(r.system == row.system for r in measured):
        return "all"
    groups = {r.group for r in table.rows if r.system == row.system and r.na == row.na}
    if len(groups) == 1:
        return row.group
    tails = {g.rsplit(", ", 1)[-1] for g in groups}
    return tails.pop() if len(tails) == 1 else "several"


def render_section(table: Table) -> str:
    parts = [f"### {table.title}", ""]
    if table.text:
        parts += [table.text.strip(), ""]
    parts += [render_table(table), ""]
    return "\n".join(parts)


def comparisons(tables: list[Table]) -> list[tuple[float, str]]:
    """(ratio, "table, case: vs peer (setting)") for every peer row with a ratio."""
    out = []
    for t in tables:
        for row in t.rows:
            med = row.median
            if row.is_phxq or med is None or not row.compare:
                continue
            ref = reference(t, row)
            if ref is None or ref.median is None:
                continue
            r = ratio(ref.median, med, t.higher_is_better)
            if r is None:
                continue
            case = f", {row.group}" if row.group else ""
            vs = f" vs phxq {ref.setting}" if ref.durability != FSYNC else ""
            out.append((r, f"{t.title}{case}: {row.system} ({row.setting}){vs}"))
    return out
