"""Human and JSON output of phxqctl, for an 80-column terminal."""

from __future__ import annotations

import shlex
import sys
import time
from typing import Any

import msgspec

from phxqd.model import STATUSES, Job, Progress

_json = msgspec.json.Encoder()


def print_json(obj: Any) -> None:
    sys.stdout.buffer.write(_json.encode(obj) + b"\n")
    sys.stdout.buffer.flush()


def ago(t: float | None, now: float) -> str:
    if t is None:
        return "-"
    d = now - t
    return f"in {span(-d)}" if d < 0 else f"{span(d)} ago"


def span(seconds: float) -> str:
    s = round(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s" if s < 600 else f"{s // 60}m"
    if s < 86400:
        return f"{s // 3600}h{(s % 3600) // 60:02d}m"
    return f"{s // 86400}d{(s % 86400) // 3600:02d}h"


def command(job: Job) -> str:
    if job.call is not None:
        parts = [*map(repr, job.call.args), *(f"{k}={v!r}" for k, v in job.call.kwargs.items())]
        return f"{job.call.func}({', '.join(parts)})"
    return shlex.join(job.argv)


def job_table(jobs: list[Job], now: float) -> str:
    if not jobs:
        return "no jobs"
    rows = [("ID", "STATUS", "QUEUE", "PRI", "TRIES", "CREATED", "COMMAND")]
    for j in jobs:
        status = j.status
        if status in ("pending", "retrying") and j.run_at > now + 0.5:
            status += f" ({ago(j.run_at, now)})"  # waiting for its time, not for a worker
        rows.append(
            (
                str(j.id),
                status,
                j.queue,
                str(j.priority),
                str(j.attempts),
                ago(j.created_at, now),
                command(j),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(6)]
    lines = []
    for r in rows:
        head = "  ".join(
            c.ljust(w) if i != 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(r[:6], widths, strict=True))
        )
        room = max(80 - len(head) - 2, 10)
        cmd = r[6] if len(r[6]) <= room else r[6][: room - 1] + "…"
        lines.append(f"{head}  {cmd}")
    return "\n".join(lines)


def job_detail(job: Job, now: float) -> str:
    fields: list[tuple[str, str]] = [
        ("id", str(job.id)),
        ("status", job.status),
        ("command", command(job)),
        ("queue", job.queue),
        ("priority", str(job.priority)),
        ("attempts", f"{job.attempts} of {job.max_retries + 1}"),
        ("created", ago(job.created_at, now)),
    ]
    if job.run_at > job.created_at + 0.5 and job.status in ("pending", "retrying"):
        fields.append(("runs", ago(job.run_at, now)))
    for name, t in (("started", job.started_at), ("finished", job.finished_at)):
        if t is not None:
            fields.append((name, ago(t, now)))
    if job.progress is not None:
        fields.append(
            ("progress", f"{progress_text(job.progress)} ({ago(job.progress.updated_at, now)})")
        )
    if job.started_at and job.finished_at and job.finished_at >= job.started_at:
        fields.append(("took", span(job.finished_at - job.started_at)))
    if job.after:
        fields.append(("after", ", ".join(map(str, job.after))))
    if job.result is not None:
        fields.append(("result", repr(job.result)[:200]))
    optional = {
        "key": job.key,
        "label": job.label,
        "cwd": job.cwd,
        "exit code": job.exit_code,
        "error": job.error,
        "pid": job.pid,
        "timeout": None if job.timeout is None else f"{job.timeout:g}s",
    }
    fields += [(k, str(v)) for k, v in optional.items() if v is not None]
    fields += [(f"env {k}", v) for k, v in (job.env or {}).items()]
    width = max(len(k) for k, _ in fields)
    return "\n".join(f"{k.rjust(width)}  {v}" for k, v in fields)


def progress_text(p: Progress | None, width: int = 20) -> str:
    """'[#####.....]  45%  450/1000  resizing' (only the parts the job reported)."""
    if p is None:
        return ""
    parts = []
    fraction = p.fraction()
    if fraction is not None:
        filled = round(fraction * width)
        parts.append(f"[{'#' * filled}{'.' * (width - filled)}] {fraction * 100:3.0f}%")
    if p.done is not None:
        parts.append(f"{p.done}/{p.total}" if p.total is not None else str(p.done))
    if p.step:
        parts.append(p.step)
    return "  ".join(parts)


def outcome_line(job: Job) -> str:
    if job.status == "completed":
        return f"job {job.id} completed"
    if job.status in ("failed", "cancelled"):
        return f"job {job.id} {job.status}: {job.error}"
    return f"job {job.id} still {job.status} (wait timed out)"


def queue_table(queues: list[dict[str, Any]]) -> str:
    if not queues:
        return "no queues"
    rows = [("QUEUE", "LIMIT", "ACTIVE", "PENDING", "RETRY", "FAILED", "")]
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
    widths = [max(len(r[i]) for r in rows) for i in range(7)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    if any(q["concurrency_from"] == "runtime" for q in queues):
        lines.append("* set at run time (phxqctl queue set), kept across restarts")
    return "\n".join(lines)


def status_text(s: dict[str, Any]) -> str:
    counts: dict[str, int] = s["counts"]
    state = "writable" if s["writable"] else f"NOT WRITABLE: {s['journal_error']}"
    lines = [
        f"phxqd: {s['workers']} workers, fsync={s['fsync']}, up {span(s['uptime'])}, "
        f"journal {state}"
    ]
    if s["paused_all"]:
        lines.append("all queues paused")
    elif s["paused"]:
        lines.append("paused: " + ", ".join(s["paused"]))
    short = {"completed": "done", "cancelled": "cancel", "retrying": "retry"}
    heads = [short.get(st, st) for st in STATUSES]
    queues: dict[str, dict[str, int]] = s["queues"]
    names = [*sorted(queues), "total"]
    qw = max(len(n) for n in [*names, "QUEUE"])
    lines.append("QUEUE".ljust(qw) + "".join(f"{h.upper():>9}" for h in heads))
    for name in names:
        row = counts if name == "total" else queues[name]
        lines.append(name.ljust(qw) + "".join(f"{row.get(st, 0):>9}" for st in STATUSES))
    rate = s["throughput_per_minute"]
    if rate or s["eta_seconds"]:
        line = f"last minute: {rate} jobs finished"
        if s["average_seconds"] is not None:
            line += f", {span(s['average_seconds'])} on average"
        if s["eta_seconds"] is not None:
            line += f"; backlog done in about {span(s['eta_seconds'])}"
        lines.append(line)
    running = s["running_jobs"]
    if running:
        lines.append("")
        lines.append(f"running ({len(running)} of {s['workers']}):")
        now = time.time()
        for r in running:
            what = r.get("call") or shlex.join(r["argv"])
            line = f"{r['id']:>6}  {span(now - r['started_at']):>7}  {what}"
            lines.append(line if len(line) <= 80 else line[:79] + "…")
            if r["progress"]:
                bar = progress_text(msgspec.convert(r["progress"], Progress))
                lines.append(" " * 16 + (bar if len(bar) <= 64 else bar[:63] + "…"))
    return "\n".join(lines)
