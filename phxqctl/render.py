"""Human and JSON output of phxqctl, for an 80-column terminal.

Everything here works on the plain dicts of the wire (a job is the contract's job JSON),
and uses the standard library only: `phxqctl status` imports this on start.

Colour (https://no-color.org): only when the output is a terminal and NO_COLOR is unset or
empty. `set_colour` decides once per process; tables are padded before they are painted so
escape codes never upset the alignment.
"""

from __future__ import annotations

import os
import sys
import time

from phxqd.contract import STATUSES

#: typing costs a few ms to import; the annotations are strings (PEP 563) anyway
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Any, TextIO


WIDTH = 80
#: the least room a table leaves its last column (the command, usually)
LAST_MIN = 12

_RESET = "\033[0m"
STYLES = {
    "bold": "1",
    "dim": "2",
    "pending": "",
    "running": "36",
    "retrying": "33",
    "completed": "32",
    "failed": "31",
    "cancelled": "35",
    "bar": "36",
}
_colour = False


def wants_colour(stream: TextIO) -> bool:
    return stream.isatty() and not os.environ.get("NO_COLOR")


def set_colour(enabled: bool) -> None:
    global _colour
    _colour = enabled


def paint(text: str, style: str) -> str:
    code = STYLES.get(style, "")
    if not _colour or not code or not text:
        return text
    return f"\033[{code}m{text}{_RESET}"


# ---------------------------------------------------------------------- JSON


def _json_default(obj: Any) -> Any:
    if isinstance(obj, bytes | bytearray):
        import base64

        return base64.b64encode(obj).decode()  # as msgspec.json does
    raise TypeError(f"cannot print {type(obj).__name__} as JSON")


def print_json(obj: Any) -> None:
    import json  # only --json pays for it

    text = json.dumps(obj, separators=(",", ":"), ensure_ascii=False, default=_json_default)
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


# ------------------------------------------------------------ times, sizes


def ago(t: float | None, now: float) -> str:
    """'3m ago', 'in 2h05m', '-'."""
    if t is None:
        return "-"
    d = now - t
    return f"in {span(-d)}" if d < 0 else f"{span(d)} ago"


def span(seconds: float) -> str:
    """A duration in at most two units: '45s', '3m07s', '12m', '2h05m', '3d04h'."""
    if not -1e15 < seconds < 1e15:  # NaN, infinities: a job from before phxqd refused them
        return "forever"
    s = round(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s" if s < 600 else f"{s // 60}m"
    if s < 86400:
        return f"{s // 3600}h{(s % 3600) // 60:02d}m"
    return f"{s // 86400}d{(s % 86400) // 3600:02d}h"


def clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: max(width - 1, 0)] + "…"


# ------------------------------------------------------------------ tables


def table(rows: Sequence[Sequence[str]], right: Sequence[int] = (), styles: Any = None) -> str:
    """Columns aligned two spaces apart; the last column is clipped to fit WIDTH.
    `styles(row_index, column_index, text)` names a style for a cell (row 0 is the
    header, always bold)."""
    n = len(rows[0])
    widths = [max(len(r[i]) for r in rows) for i in range(n - 1)]
    # too wide even for a short last column: narrow the widest text columns, clipping them
    excess = sum(widths) + 2 * (n - 1) + LAST_MIN - WIDTH
    while excess > 0:
        widest = max((i for i in range(n - 1) if i not in right), key=lambda i: widths[i])
        cut = min(excess, widths[widest] - 6)
        if cut <= 0:
            break
        widths[widest] -= cut
        excess -= cut
    lines = []
    for ri, row in enumerate(rows):
        cells = []
        for ci, (text, w) in enumerate(zip(row[:-1], widths, strict=True)):
            cell = clip(text, w)
            padded = cell.rjust(w) if ci in right else cell.ljust(w)
            style = "bold" if ri == 0 else (styles(ri, ci, text) if styles else "")
            cells.append(paint(padded, style) if style else padded)
        head = "  ".join(cells)
        room = WIDTH - sum(widths) - 2 * (n - 1)
        last = clip(row[-1], max(room, LAST_MIN))
        lines.append((head + "  " + (paint(last, "bold") if ri == 0 else last)).rstrip())
    return "\n".join(lines)


def status_style(_row: int, _col: int, cell: str) -> str:
    return cell.split(" ")[0]


# -------------------------------------------------------------------- jobs


#: what shlex.quote leaves unquoted (its `[^\w@%+=:,./-]` with re.ASCII)
_SHELL_SAFE = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_@%+=:,./-")


def shell_join(argv: Sequence[str]) -> str:
    """shlex.join, without importing shlex, which imports `re` (a part of `phxqctl
    status`'s start the size of its request): the same quoting (tests/test_cli_fast.py)."""
    return " ".join(_shell_quote(a) for a in argv)


def _shell_quote(arg: str) -> str:
    if not arg:
        return "''"
    if _SHELL_SAFE.issuperset(arg):
        return arg
    return "'" + arg.replace("'", "'\"'\"'") + "'"


def command(job: dict[str, Any]) -> str:
    call = job.get("call")
    if call is not None:
        parts = [
            *map(repr, call.get("args", [])),
            *(f"{k}={v!r}" for k, v in call.get("kwargs", {}).items()),
        ]
        return f"{call['func']}({', '.join(parts)})"
    return shell_join(job["argv"])


def job_table(jobs: list[dict[str, Any]], now: float) -> str:
    if not jobs:
        return "no jobs"
    rows = [("ID", "STATUS", "QUEUE", "PRI", "TRIES", "CREATED", "COMMAND")]
    for j in jobs:
        status = j["status"]
        if status in ("pending", "retrying") and j["run_at"] > now + 0.5:
            status += f" ({ago(j['run_at'], now)})"  # waiting for its time, not for a worker
        rows.append(
            (
                str(j["id"]),
                status,
                j["queue"],
                str(j["priority"]),
                str(j["attempts"]),
                ago(j["created_at"], now),
                command(j),
            )
        )
    return table(
        rows, right=(0, 3, 4), styles=lambda r, c, t: status_style(r, c, t) if c == 1 else ""
    )


def job_detail(job: dict[str, Any], now: float) -> str:
    fields: list[tuple[str, str]] = [
        ("id", str(job["id"])),
        ("status", paint(job["status"], job["status"])),
        ("command", command(job)),
        ("queue", job["queue"]),
        ("priority", str(job["priority"])),
        ("attempts", f"{job['attempts']} of {job['max_retries'] + 1}"),
        ("created", ago(job["created_at"], now)),
    ]
    if job["run_at"] > job["created_at"] + 0.5 and job["status"] in ("pending", "retrying"):
        fields.append(("runs", ago(job["run_at"], now)))
    for name in ("started", "finished"):
        t = job.get(f"{name}_at")
        if t is not None:
            fields.append((name, ago(t, now)))
    progress = job.get("progress")
    if progress is not None:
        fields.append(
            ("progress", f"{progress_text(progress)} ({ago(progress['updated_at'], now)})")
        )
    started, finished = job.get("started_at"), job.get("finished_at")
    if started and finished and finished >= started:
        fields.append(("took", span(finished - started)))
    elif started and job["status"] == "running":
        fields.append(("running for", span(now - started)))
    if job.get("after"):
        fields.append(("after", ", ".join(map(str, job["after"]))))
    if job.get("result") is not None:
        fields.append(("result", clip(repr(job["result"]), 200)))
    optional = {
        "key": job.get("key"),
        "label": job.get("label"),
        "cwd": job.get("cwd"),
        "exit code": job.get("exit_code"),
        "error": job.get("error"),
        "pid": job.get("pid"),
        "timeout": None if job.get("timeout") is None else f"{job['timeout']:g}s",
    }
    fields += [(k, str(v)) for k, v in optional.items() if v is not None]
    fields += [(f"env {k}", v) for k, v in (job.get("env") or {}).items()]
    width = max(len(k) for k, _ in fields)
    return "\n".join(f"{paint(k.rjust(width), 'bold')}  {v}" for k, v in fields)


def fraction(p: dict[str, Any]) -> float | None:
    """0..1 when the job said enough to know, else None (as phxqd.model.Progress)."""
    if p.get("percent") is not None:
        return float(max(0.0, min(p["percent"] / 100, 1.0)))
    if p.get("done") is not None and p.get("total"):
        return float(max(0.0, min(p["done"] / p["total"], 1.0)))
    return None


def bar(f: float, width: int = 20) -> str:
    filled = round(f * width)
    return "[" + paint("#" * filled, "bar") + "." * (width - filled) + "]"


def progress_text(p: dict[str, Any] | None, width: int = 20) -> str:
    """'[#####.....]  45%  450/1000  resizing' (only the parts the job reported)."""
    if p is None:
        return ""
    parts = []
    f = fraction(p)
    if f is not None:
        parts.append(f"{bar(f, width)} {f * 100:3.0f}%")
    if p.get("done") is not None:
        parts.append(f"{p['done']}/{p['total']}" if p.get("total") is not None else str(p["done"]))
    if p.get("step"):
        parts.append(clip(p["step"], 30))
    return "  ".join(parts)


def outcome_line(job: dict[str, Any]) -> str:
    status = job["status"]
    if status == "completed":
        return f"job {job['id']} {paint('completed', status)}"
    if status in ("failed", "cancelled"):
        return f"job {job['id']} {paint(status, status)}: {job['error']}"
    return f"job {job['id']} still {paint(status, status)} (wait timed out)"


def queue_table(queues: list[dict[str, Any]]) -> str:
    if not queues:
        return "no queues"
    rows: list[tuple[str, ...]] = [("QUEUE", "LIMIT", "ACTIVE", "PENDING", "RETRY", "FAILED", "")]
    for q in queues:
        limit = "-" if q["concurrency"] is None else str(q["concurrency"])
        if q["concurrency_from"] == "runtime":
            limit += "*"
        c = q["counts"]
        rows.append(
            (
                q["queue"],
                limit,
                str(q["active"]),
                str(c["pending"]),
                str(c["retrying"]),
                str(c["failed"]),
                "paused" if q["paused"] else "",
            )
        )
    rated = [q for q in queues if q.get("rate") is not None]
    if rated:
        rows[0] = (*rows[0][:-1], "RATE", "NEXT START", "")
        now = time.time()
        for i, q in enumerate(queues, 1):
            rate = "-"
            if q.get("rate") is not None:
                rate = rate_text(q["rate"]) + (f" burst {q['burst']}" if q["burst"] > 1 else "")
                rate += "*" if q["rate_from"] == "runtime" else ""
            start = q.get("next_start")
            rows[i] = (
                *rows[i][:-1],
                rate,
                "now" if start is None else ago(start, now),
                rows[i][-1],
            )
    text = table(rows, right=(1, 2, 3, 4, 5))
    if any("runtime" in (q["concurrency_from"], q.get("rate_from")) for q in queues):
        text += "\n* set at run time (phxqctl queue set), kept across restarts"
    return text


def rate_text(per_second: float) -> str:
    """10/s, 30/m, 2/h: the shortest with a whole N (as phxqd.rates.rate_text)."""
    for unit, seconds in (("s", 1.0), ("m", 60.0), ("h", 3600.0)):
        n = per_second * seconds
        if n >= 1 and abs(n - round(n)) < 1e-9:
            return f"{round(n)}/{unit}"
    return f"{per_second * 3600:g}/h"


def when(t: float | None, now: float) -> str:
    """A time as local 'YYYY-MM-DD HH:MM:SS' with how far it is: '... (in 3m07s)'."""
    if t is None:
        return "-"
    stamp = time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(t))
    return f"{stamp} ({ago(t, now)})"


def schedule_timing(info: dict[str, Any]) -> str:
    if info["cron"] is not None:
        return f"cron {info['cron']}" + (f" ({info['tz']})" if info["tz"] else "")
    return f"every {span(info['every'])}"


def schedule_table(schedules: list[dict[str, Any]]) -> str:
    if not schedules:
        return "no schedules"
    now = time.time()
    rows = [("NAME", "WHEN", "NEXT", "LAST JOB", "FIRED", "MISSED", "COMMAND")]
    for info in schedules:
        nxt = info["next_fires"][0] if info["next_fires"] else None
        last = "-" if info["last_job"] is None else f"{info['last_job']} {info['last_status']}"
        rows.append(
            (
                info["name"] + (" (config)" if info["source"] == "config" else ""),
                schedule_timing(info),
                "paused" if info["paused"] else ago(nxt, now),
                last,
                str(info["fired"]),
                str(info["missed"]),
                clip(command(info["job"]), 40),
            )
        )
    return table(rows, right=(4, 5))


def schedule_detail(info: dict[str, Any]) -> str:
    now = time.time()
    fields: list[tuple[str, str]] = [
        ("name", info["name"]),
        ("when", schedule_timing(info)),
        ("zone", info["zone"]),
        ("catch-up", info["catch_up"]),
        ("overlap", info["overlap"]),
        ("command", command(info["job"])),
        ("queue", info["job"].get("queue", "default")),
        ("from", "phxqd.toml" if info["source"] == "config" else "phxqctl schedule add"),
    ]
    if info["paused"]:
        fields.append(("state", paint("paused", "retrying")))
    for i, t in enumerate(info["next_fires"]):
        fields.append(("next" if i == 0 else "", when(t, now)))
    fields.append(("last fire", when(info["last_fire"], now)))
    if info["last_job"] is not None:
        fields.append(("last job", f"{info['last_job']} ({info['last_status'] or 'cleared'})"))
    fields.append(("fired", f"{info['fired']} jobs, {info['missed']} fire times missed"))
    width = max(len(k) for k, _ in fields)
    return "\n".join(f"{paint(k.rjust(width), 'bold')}  {v}" for k, v in fields)


def counts_table(s: dict[str, Any]) -> list[str]:
    """Jobs per queue and status, and the totals (shared by `status` and `watch`)."""
    counts: dict[str, int] = s["counts"]
    short = {"completed": "done", "cancelled": "cancel", "retrying": "retry"}
    queues: dict[str, dict[str, int]] = s["queues"]
    names = [*sorted(queues), "total"]
    qw = min(max(len(n) for n in [*names, "QUEUE"]), WIDTH - 6 * 9)
    lines = [
        paint(
            "QUEUE".ljust(qw) + "".join(f"{short.get(st, st).upper():>9}" for st in STATUSES),
            "bold",
        )
    ]
    for name in names:
        row = counts if name == "total" else queues[name]
        cells = []
        for st in STATUSES:
            n = row.get(st, 0)
            cells.append(paint(f"{n:>9}", st) if n and st != "pending" else f"{n:>9}")
        label = clip(name, qw).ljust(qw)
        lines.append((paint(label, "bold") if name == "total" else label) + "".join(cells))
    return lines


def schedule_lines(s: dict[str, Any], now: float) -> list[str]:
    """Schedules with their next fires, and queues a rate holds back (status, watch)."""
    lines = []
    if s.get("schedules"):
        soon = ", ".join(f"{n['schedule']} {ago(n['at'], now)}" for n in s["next_fires"])
        lines.append(f"schedules: {s['schedules']}" + (f"; next: {soon}" if soon else ""))
    held = s.get("next_start") or {}
    if held:
        lines.append(
            "rate-limited: " + ", ".join(f"{q} next start {ago(t, now)}" for q, t in held.items())
        )
    return lines


def status_text(s: dict[str, Any], now: float) -> str:
    state = "writable" if s["writable"] else paint(f"NOT WRITABLE: {s['journal_error']}", "failed")
    up = span(s["uptime"])
    lines = [f"phxqd: {s['workers']} workers, fsync={s['fsync']}, up {up}, journal {state}"]
    if s["paused_all"]:
        lines.append(paint("all queues paused", "retrying"))
    elif s["paused"]:
        lines.append(paint("paused: " + ", ".join(s["paused"]), "retrying"))
    lines += counts_table(s)
    rate = s["throughput_per_minute"]
    if rate or s["eta_seconds"]:
        line = f"last minute: {rate} jobs finished"
        if s["average_seconds"] is not None:
            line += f", {span(s['average_seconds'])} on average"
        if s["eta_seconds"] is not None:
            line += f"; backlog done in about {span(s['eta_seconds'])}"
        lines.append(line)
    lines += schedule_lines(s, now)
    running = s["running_jobs"]
    if running:
        lines.append("")
        lines.append(f"running ({len(running)} of {s['workers']}):")
        for r in running:
            what = r.get("call") or shell_join(r["argv"])
            lines.append(clip(f"{r['id']:>6}  {span(now - r['started_at']):>7}  {what}", WIDTH))
            if r["progress"]:
                lines.append(" " * 16 + progress_text(r["progress"]))
    return "\n".join(lines)
