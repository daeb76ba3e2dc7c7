"""Live output from streams: progress bars for `phxqctl wait`, and `phxqctl watch`.

Both read JobEvent frames (dicts) as phxqd sends them, never polling. `watch` draws a
full-screen view with plain ANSI escapes on the alternate screen, the terminal in cbreak
mode through termios (q quits, Ctrl-C too), and puts the terminal back as it was however
it ends. On every event it asks `status` again on a second connection, at most
REDRAWS_PER_SECOND times a second, so the counts are exact even after dropped events.
"""

from __future__ import annotations

import os
import select
import sys
import time

from phxqctl import render
from phxqctl.wire import Session
from phxqd.contract import FINISHED

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, TextIO

REDRAWS_PER_SECOND = 10
RECENT_FAILURES = 5


class Progress:
    """The state of the jobs a stream has told about, and an ETA from how fast each
    one's progress moved since it was first seen."""

    def __init__(self) -> None:
        self.jobs: dict[int, dict[str, Any]] = {}
        self._first: dict[int, tuple[float, float]] = {}  # id -> (when, fraction)

    def apply(self, event: dict[str, Any]) -> None:
        if event["event"] == "dropped":
            return
        job = self.jobs.setdefault(event["id"], {"id": event["id"]})
        job.update(status=event["status"], queue=event["queue"], attempt=event["attempt"])
        if event["event"] == "started":
            job["started_at"] = event["at"]
            self._first.pop(event["id"], None)
        if event["progress"] is not None:
            job["progress"] = event["progress"]
            f = render.fraction(event["progress"])
            if f is not None and event["id"] not in self._first:
                self._first[event["id"]] = (time.time(), f)
        if event["error"]:
            job["error"] = event["error"]

    def eta(self, job_id: int, now: float) -> float | None:
        job = self.jobs.get(job_id, {})
        f = render.fraction(job.get("progress") or {})
        first = self._first.get(job_id)
        if f is None or first is None or job.get("status") != "running":
            return None
        t0, f0 = first
        if f <= f0 or now <= t0:
            return None
        return (1 - f) * (now - t0) / (f - f0)


def job_line(job: dict[str, Any], eta: float | None, width: int) -> str:
    """'    12  running    [#####.....]  45%  3/7  step     ~1m05s'"""
    status = job.get("status", "?")
    head = f"{job['id']:>6}  {render.paint(status.ljust(9), status)}  "
    progress = render.progress_text(job.get("progress"), width=20) if status == "running" else ""
    if status in ("failed", "cancelled") and job.get("error"):
        progress = render.clip(str(job["error"]), width - 20)
    tail = f"  ~{render.span(eta)}" if eta is not None else ""
    return head + progress + tail


# ---------------------------------------------------------------------- wait


def wait_with_bars(session: Session, ids: list[int], timeout: float | None) -> list[Any]:
    """`wait` with a line per job on stderr (a terminal), redrawn in place as events come
    (at most REDRAWS_PER_SECOND times a second, the latest state always drawn); the
    lines are erased at the end, so what stays is what plain `wait` prints."""
    out = sys.stderr
    progress = Progress()
    session.start("wait", ids=ids, timeout=timeout, stream=True)
    drawn, last, dirty = 0, 0.0, False
    try:
        while True:
            now = time.monotonic()
            if dirty and now - last >= 1 / REDRAWS_PER_SECOND:
                drawn = _draw_lines(out, drawn, _wait_lines(progress, ids, time.time()))
                dirty, last = False, now
            wait = max(1 / REDRAWS_PER_SECOND - (now - last), 0.0) if dirty else None
            if select.select([session.fileno()], [], [], wait)[0]:
                message = session.frame()
                if message["type"] == "ok":
                    jobs: list[Any] = message["result"]
                    return jobs
                progress.apply(message)
                dirty = True
    finally:
        if drawn:
            out.write(f"\033[{drawn}F\033[J")
            out.flush()


def _wait_lines(progress: Progress, ids: list[int], now: float) -> list[str]:
    width = min(render.WIDTH, _columns())
    rows = _rows()
    jobs = [progress.jobs[i] for i in ids if i in progress.jobs]
    done = sum(j.get("status") in FINISHED for j in jobs)
    shown = [j for j in jobs if j.get("status") not in FINISHED][: max(rows - 2, 1)]
    lines = [render.clip(job_line(j, progress.eta(j["id"], now), width), width) for j in shown]
    lines.append(f"waiting: {done} of {len(ids)} finished")
    return lines


def _draw_lines(out: TextIO, drawn: int, lines: list[str]) -> int:
    up = f"\033[{drawn}F" if drawn else ""
    out.write(up + "".join(f"\033[2K{line}\n" for line in lines) + "\033[J")
    out.flush()
    return len(lines)


def _columns() -> int:
    try:
        return os.get_terminal_size(sys.stderr.fileno()).columns or render.WIDTH
    except OSError:
        return render.WIDTH


def _rows() -> int:
    try:
        return os.get_terminal_size(sys.stderr.fileno()).lines or 24
    except OSError:
        return 24


# --------------------------------------------------------------------- watch


def watch_lines(session: Session, ids: list[int] | None, as_json: bool) -> int:
    """Each event as one line: JSON Lines with --json, else a readable line."""
    for event in session.stream("watch", ids=ids):
        if as_json:
            render.print_json({k: v for k, v in event.items() if k != "type"})
        else:
            print(event_line(event), flush=True)
    return 0


def event_line(e: dict[str, Any]) -> str:
    when = time.strftime("%H:%M:%S", time.localtime(e["at"]))
    if e["event"] == "dropped":
        return f"{when}  {e['count']} events dropped (this reader fell behind)"
    kind = e["event"]
    line = f"{when}  job {e['id']} {render.paint(kind, e['status'])}  ({e['queue']})"
    if kind == "submitted" and (e.get("key") or "").startswith("schedule:"):
        line += f"  by schedule {e['key'][9:].partition('@')[0].partition('!')[0]}"
    if kind == "progress" and e["progress"]:
        line += "  " + render.progress_text(e["progress"], width=10)
    if kind == "retrying" and e["run_at"]:
        line += f"  runs {render.ago(e['run_at'], e['at'])}"
    if e["error"] and kind in ("failed", "cancelled", "retrying"):
        line += f"  {e['error']}"
    return line


class Screen:
    """The full-screen view: alternate screen, no cursor, keys read one by one."""

    def __init__(self) -> None:
        self.fd = sys.stdin.fileno()
        self.saved: list[Any] | None = None

    def __enter__(self) -> Screen:
        import termios

        self.saved = termios.tcgetattr(self.fd)
        mode = termios.tcgetattr(self.fd)
        mode[3] &= ~(termios.ICANON | termios.ECHO)  # lflags: cbreak, Ctrl-C still signals
        mode[6][termios.VMIN], mode[6][termios.VTIME] = 1, 0
        termios.tcsetattr(self.fd, termios.TCSANOW, mode)
        sys.stdout.write("\033[?1049h\033[?25l")
        sys.stdout.flush()
        return self

    def __exit__(self, *exc: object) -> None:
        import termios

        sys.stdout.write("\033[?25h\033[?1049l")
        sys.stdout.flush()
        if self.saved is not None:
            termios.tcsetattr(self.fd, termios.TCSADRAIN, self.saved)

    def show(self, lines: list[str]) -> None:
        sys.stdout.write("\033[H" + "".join(f"{line}\033[K\r\n" for line in lines) + "\033[J")
        sys.stdout.flush()


def watch_screen(session: Session, status_session: Session, ids: list[int] | None) -> int:
    progress = Progress()
    failures: list[dict[str, Any]] = [
        {"id": j["id"], "at": j["finished_at"] or j["created_at"], "error": j["error"]}
        for j in status_session.call("list", status="failed", limit=RECENT_FAILURES)
    ]
    session.start("watch", ids=ids)
    try:
        with Screen() as screen:
            dirty, last = True, 0.0
            while True:
                now = time.monotonic()
                if dirty and now - last >= 1 / REDRAWS_PER_SECOND:
                    screen.show(screen_lines(status_session.call("status"), progress, failures))
                    dirty, last = False, now
                timeout = max(1 / REDRAWS_PER_SECOND - (now - last), 0.0) if dirty else 1.0
                readable, _, _ = select.select([session.fileno(), screen.fd], [], [], timeout)
                if screen.fd in readable and os.read(screen.fd, 32).lower().startswith(b"q"):
                    return 0
                if session.fileno() in readable:
                    dirty |= _take(session.frame(), progress, failures)
                if not readable:
                    dirty = True  # once a second at least: times and ETAs move on
    except KeyboardInterrupt:
        return 0


def _take(event: dict[str, Any], progress: Progress, failures: list[dict[str, Any]]) -> bool:
    if event.get("type") != "event":
        return False
    progress.apply(event)
    if event["event"] == "failed":
        failures.insert(0, {"id": event["id"], "at": event["at"], "error": event["error"]})
        del failures[RECENT_FAILURES:]
    return True


def screen_lines(
    s: dict[str, Any], progress: Progress, failures: list[dict[str, Any]]
) -> list[str]:
    cols, rows = _screen_size()
    width = min(cols, 200)
    now = time.time()
    head = f"phxq watch  {s['workers']} workers, up {render.span(s['uptime'])}"
    if s["throughput_per_minute"]:
        head += f", {s['throughput_per_minute']} jobs/min"
    if s["eta_seconds"] is not None:
        head += f", backlog done in ~{render.span(s['eta_seconds'])}"
    if s["paused_all"]:
        head += ", ALL PAUSED"
    lines = [render.paint(render.clip(head, width - 8), "bold") + "  q: quit", ""]
    lines += render.counts_table(s)
    lines += render.schedule_lines(s, now)
    lines += ["", render.paint(f"RUNNING ({len(s['running_jobs'])} of {s['workers']})", "bold")]
    room = max(rows - len(lines) - 3 - min(len(failures), RECENT_FAILURES) - 2, 1)
    for r in s["running_jobs"][:room]:
        what = r.get("call") or " ".join(r["argv"])
        bar = render.progress_text(r["progress"], width=20) if r["progress"] else ""
        eta = _running_eta(r, progress, now)
        line = f"{r['id']:>6}  {render.span(now - r['started_at']):>6}  "
        line += f"{bar}  ~{render.span(eta)}  " if eta is not None else (f"{bar}  " if bar else "")
        lines.append(render.clip(line + what, width))
    if len(s["running_jobs"]) > room:
        lines.append(f"   ... and {len(s['running_jobs']) - room} more")
    if failures:
        lines += ["", render.paint("RECENT FAILURES", "bold")]
        for f in failures[:RECENT_FAILURES]:
            line = f"{f['id']:>6}  {render.ago(f['at'], now):>9}  {f['error'] or ''}"
            lines.append(render.paint(render.clip(line, width), "failed"))
    return lines[:rows]


def _running_eta(r: dict[str, Any], progress: Progress, now: float) -> float | None:
    """From the stream's view when it saw the progress move, else from the start time."""
    eta = progress.eta(r["id"], now)
    f = render.fraction(r["progress"] or {})
    if eta is None and f and r["started_at"]:
        eta = (now - r["started_at"]) * (1 - f) / f
    return eta


def _screen_size() -> tuple[int, int]:
    try:
        size = os.get_terminal_size(sys.stdout.fileno())
        return size.columns or render.WIDTH, size.lines or 24
    except OSError:
        return render.WIDTH, 24
