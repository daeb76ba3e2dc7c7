"""phxqctl: the command line. Parses arguments, calls the daemon, renders the answer.

Exit statuses (DESIGN.md): 0 success; 1 a job waited on did not complete; 2 usage error;
3 daemon unreachable; 4 no such job; 5 refused. Errors are one line on stderr.
"""

from __future__ import annotations

import os
import sys
import time

from phxqctl import fast, locate, render
from phxqctl.args import Args
from phxqctl.errors import PhxqError, UsageError, one_line
from phxqctl.report import progress
from phxqctl.wire import Session
from phxqd.contract import MAX_BATCH, request_problem

#: typing costs a few ms to import; the annotations are strings (PEP 563) anyway
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any


def parse_args(argv: list[str] | None) -> Args:
    """The plain command lines by phxqctl.fast, the rest (help, errors, rare options,
    queue and schedule) by argparse (phxqctl.syntax), imported only then."""
    if argv is None:
        argv = sys.argv[1:]
    args = fast.parse(argv)
    if args is None:
        from phxqctl import syntax

        args = syntax.parse_args(argv)
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    as_json: bool = getattr(args, "json", False)
    render.set_colour(not as_json and render.wants_colour(sys.stdout))
    session = Session(locate.socket_path(getattr(args, "socket", None)))
    try:
        status = COMMANDS[args.command](session, args, as_json)
    except PhxqError as e:
        print(one_line(f"phxqctl: {e}"), file=sys.stderr)
        sys.exit(e.exit_status)
    except KeyboardInterrupt:
        sys.exit(130)
    except BrokenPipeError:
        # `phxqctl list | head` is not an error; stop Python complaining at exit
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(0)
    finally:
        session.close()
    sys.exit(status)


# ----------------------------------------------------------------- commands

if TYPE_CHECKING:
    Command = Callable[[Session, Args, bool], int]
    Job = dict[str, Any]


def do_submit(session: Session, args: Args, as_json: bool) -> int:
    argv = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
    if args.shell is not None:
        if argv:
            raise UsageError("give either --shell COMMAND or a command after --, not both")
        argv = ["/bin/sh", "-c", args.shell]
    if args.batch is not None:
        if argv or args.call:
            raise UsageError("give either --batch FILE or a job, not both")
        specs = read_batch(args.batch)
    else:
        if args.call and argv:
            raise UsageError("give either --call MOD:FUNC or a command, not both")
        if not argv and not args.call:
            raise UsageError("submit needs a command: phxqctl submit [options] -- CMD ARG...")
        spec = {
            "argv": argv,
            "call": {"func": args.call, "args": args.args, "kwargs": args.kwargs}
            if args.call
            else None,
            "queue": args.queue,
            "priority": args.priority,
            "key": args.key,
            "max_retries": args.retries,
            "backoff": args.backoff,
            "after": args.after,
            "timeout": args.timeout,
            "delay": args.delay,
            "run_at": args.at,
            "label": args.label,
            "cwd": args.cwd,
            "env": dict(args.env),
        }
        specs = [{k: v for k, v in spec.items() if v is not None}]
    try:
        here = os.getcwd()
    except FileNotFoundError:
        raise UsageError("the current directory was removed: cd somewhere that exists") from None
    for spec in specs:  # a job runs where it was submitted from (docs/protocol.md, JobSpec)
        spec["cwd"] = os.path.join(here, spec["cwd"]) if spec.get("cwd") else here
    results: list[dict[str, Any]] = []
    for start in range(0, len(specs), MAX_BATCH):
        results += session.call("submit", jobs=specs[start : start + MAX_BATCH])
    for res in results:
        if as_json:
            render.print_json({**res["job"], "deduplicated": res["deduplicated"]})
        else:
            print(res["job"]["id"])
    if args.wait:
        sys.stdout.flush()
        ids = [r["job"]["id"] for r in results]
        if not as_json and sys.stderr.isatty():
            from phxqctl import live

            jobs = live.wait_with_bars(session, ids, None)
        else:
            jobs = session.call("wait", ids=ids)
        if not as_json:
            for job in jobs:
                print(render.outcome_line(job), file=sys.stderr)
        return 0 if all(j["status"] == "completed" for j in jobs) else 1
    return 0


def read_batch(source: str) -> list[dict[str, Any]]:
    """One JSON object per line, each a job spec (argv, queue, priority, key, ...),
    checked here against phxqd.model.JobSpec so a mistake is named with its line."""
    import msgspec  # a batch is worth the import: exact errors, line by line

    from phxqd.model import JobSpec, validate_spec

    try:
        if source == "-":
            text = sys.stdin.read()
        else:
            with open(source, encoding="utf-8") as f:
                text = f.read()
    except OSError as e:
        raise UsageError(f"cannot read {source}: {e.strerror}") from None
    except UnicodeDecodeError as e:
        raise UsageError(f"{source}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    specs = []
    decoder = msgspec.json.Decoder(JobSpec)
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                spec = decoder.decode(line)
            except msgspec.DecodeError as e:
                raise UsageError(f"{source}:{n}: {e}") from None
            if why := validate_spec(spec):
                raise UsageError(f"{source}:{n}: {why}")
            specs.append(msgspec.to_builtins(spec))
    if not specs:
        raise UsageError(f"{source}: no job specs in it")
    return specs


def do_status(session: Session, args: Args, as_json: bool) -> int:
    status = session.call("status")
    if as_json:
        render.print_json(status)
    else:
        print(render.status_text(status, time.time()))
    return 0


def do_list(session: Session, args: Args, as_json: bool) -> int:
    jobs = session.call("list", status=args.status, queue=args.queue, limit=args.limit)
    if as_json:
        for job in jobs:
            render.print_json(job)
    else:
        print(render.job_table(jobs, time.time()))
    return 0


def do_show(session: Session, args: Args, as_json: bool) -> int:
    job = session.call("show", id=args.id)
    if as_json:
        render.print_json(job)
    else:
        print(render.job_detail(job, time.time()))
    return 0


def do_logs(session: Session, args: Args, as_json: bool) -> int:
    """Without --follow, the log as it is now (in parts of up to 1 MiB); with --follow,
    one streaming request whose chunks come as the job writes."""

    def emit(data: bytes) -> None:
        if as_json:
            render.print_json({"id": args.id, "data": data.decode("utf-8", "replace")})
        else:
            sys.stdout.buffer.write(data)
            sys.stdout.buffer.flush()

    if args.follow:
        stream = session.stream("logs", id=args.id, follow=True)
        while True:
            try:
                frame = next(stream)
            except StopIteration as end:
                if end.value and end.value.get("data"):
                    emit(end.value["data"])
                return 0
            if frame["type"] == "chunk" and frame["data"]:
                emit(frame["data"])
    offset = 0
    while True:
        r = session.call("logs", id=args.id, offset=offset)
        if not r["data"]:
            return 0
        emit(r["data"])
        offset = r["offset"]


def do_wait(session: Session, args: Args, as_json: bool) -> int:
    """On a terminal (stderr), a progress bar per job from the stream's events."""
    if not as_json and sys.stderr.isatty():
        from phxqctl import live

        jobs = live.wait_with_bars(session, args.ids, args.timeout)
    else:
        jobs = session.call("wait", ids=args.ids, timeout=args.timeout)
    return report_waited(args.ids, jobs, as_json)


def do_watch(session: Session, args: Args, as_json: bool) -> int:
    """Full screen on a terminal; otherwise (or with --json) one line per event."""
    from phxqctl import live

    ids = args.ids or None
    if not as_json and sys.stdout.isatty() and sys.stdin.isatty():
        second = Session(session.conn.path)
        try:
            return live.watch_screen(session, second, ids)
        finally:
            second.close()
    return live.watch_lines(session, ids, as_json)


def report_waited(ids: list[int], jobs: list[Job], as_json: bool) -> int:
    found = {j["id"] for j in jobs}
    for job in jobs:
        if as_json:
            render.print_json(job)
        else:
            print(render.outcome_line(job))
    for gone in (i for i in ids if i not in found):
        print(f"phxqctl: job {gone} was cleared while waiting", file=sys.stderr)
    ok = len(jobs) == len(ids) and all(j["status"] == "completed" for j in jobs)
    return 0 if ok else 1


def _each(op: str, verb: str) -> Command:
    def run(session: Session, args: Args, as_json: bool) -> int:
        for job in session.call(op, ids=args.ids):
            if as_json:
                render.print_json(job)
            else:
                status = job["status"]
                print(f"job {job['id']} {render.paint(verb if status == verb else status, status)}")
        return 0

    return run


def do_retry_failed(session: Session, args: Args, as_json: bool) -> int:
    n = session.call("retry-failed", queue=args.queue)["retried"]
    if as_json:
        render.print_json({"retried": n})
    else:
        print(f"requeued {n} failed job{'s' * (n != 1)}")
    return 0


def do_clear(session: Session, args: Args, as_json: bool) -> int:
    n = session.call("clear", status=args.status, queue=args.queue)["cleared"]
    if as_json:
        render.print_json({"cleared": n})
    else:
        print(f"cleared {n} finished job{'s' * (n != 1)}")
    return 0


def _pause_resume(op: str, verb: str) -> Command:
    def run(session: Session, args: Args, as_json: bool) -> int:
        status = session.call(op, queue=args.queue)
        if as_json:
            render.print_json(status)
        else:
            print(f"{verb} {'queue ' + args.queue if args.queue else 'all queues'}")
        return 0

    return run


def do_queue(session: Session, args: Args, as_json: bool) -> int:
    if args.queue_command == "set":
        if args.concurrency is None and args.rate is None:
            raise UsageError("queue set needs --concurrency N, --rate N/s, or both")
        per_second = None
        if args.rate is not None and args.rate != "default":
            from phxqd.rates import parse_rate

            try:
                per_second = parse_rate(args.rate)
            except ValueError as e:
                raise UsageError(f"--rate: {e}") from None
        if not 1 <= args.burst <= 1_000_000:
            raise UsageError("--burst must be 1 to 1000000")
        if args.concurrency is not None:
            if args.concurrency == "default":
                limit = None
            else:
                try:
                    limit = int(args.concurrency)
                except ValueError:
                    raise UsageError("--concurrency wants a number or 'default'") from None
            queues = session.call("queue-set", queue=args.queue, concurrency=limit)
        if args.rate is not None:
            queues = session.call(
                "queue-rate", queue=args.queue, per_second=per_second, burst=args.burst
            )
    else:
        queues = session.call("queues")
    if as_json:
        for q in queues:
            render.print_json(q)
    else:
        print(render.queue_table(queues))
    return 0


def do_schedule(session: Session, args: Args, as_json: bool) -> int:
    action = args.schedule_command
    if action == "add":
        job = schedule_job(args)
        # the job's values checked as a submit's, with submit's words
        if why := request_problem({"op": "submit", "jobs": [job]}):
            raise UsageError(why)
        schedule = {
            "name": args.name,
            "job": job,
            "cron": args.cron,
            "tz": args.tz,
            "every": args.every,
            "catch_up": args.catch_up,
            "overlap": args.overlap,
        }
        info = session.call(
            "schedule-add", schedule={k: v for k, v in schedule.items() if v is not None}
        )
        _print_schedule(info, as_json)
    elif action == "list":
        schedules = session.call("schedules")
        if as_json:
            for info in schedules:
                render.print_json(info)
        else:
            print(render.schedule_table(schedules))
    elif action == "run":
        res = session.call("schedule-run", name=args.name)
        if as_json:
            render.print_json({**res["job"], "deduplicated": res["deduplicated"]})
        else:
            print(res["job"]["id"])
    else:
        info = session.call(f"schedule-{action}", name=args.name)
        if action in ("show", "add") or as_json:
            _print_schedule(info, as_json)
        else:
            past = {"remove": "removed", "pause": "paused", "resume": "resumed"}[action]
            print(f"{past} schedule {args.name}")
    return 0


def _print_schedule(info: dict[str, Any], as_json: bool) -> None:
    if as_json:
        render.print_json(info)
    else:
        print(render.schedule_detail(info))


def schedule_job(args: Args) -> dict[str, Any]:
    """The job spec each firing of `schedule add` submits (as `submit` would make it)."""
    argv = list(getattr(args, "argv", []))
    if args.shell is not None:
        if argv:
            raise UsageError("give either --shell COMMAND or a command after --, not both")
        argv = ["/bin/sh", "-c", args.shell]
    if args.call and argv:
        raise UsageError("give either --call MOD:FUNC or a command, not both")
    if not argv and not args.call:
        raise UsageError("schedule add needs a command: phxqctl schedule add NAME ... -- CMD")
    here = os.getcwd()
    spec = {
        "argv": argv,
        "call": {"func": args.call, "args": args.args, "kwargs": args.kwargs}
        if args.call
        else None,
        "queue": args.queue,
        "priority": args.priority,
        "max_retries": args.retries,
        "backoff": args.backoff,
        "timeout": args.timeout,
        "label": args.label,
        "cwd": os.path.join(here, args.cwd) if args.cwd else here,
        "env": dict(args.env),
    }
    return {k: v for k, v in spec.items() if v is not None}


def do_metrics(session: Session, args: Args, as_json: bool) -> int:
    text = bytes(session.call("metrics")).decode()
    if as_json:
        render.print_json({"exposition": text})
    else:
        sys.stdout.write(text)
    return 0


def do_progress(session: Session, args: Args, as_json: bool) -> int:
    if all(getattr(args, k) is None for k in ("percent", "step", "done", "total")):
        raise UsageError("progress needs at least one of --percent, --step, --done, --total")
    accepted = progress(args.percent, args.step, args.done, args.total)
    if as_json:
        render.print_json({"accepted": accepted})
    return 0


def do_completion(session: Session, args: Args, as_json: bool) -> int:
    from phxqctl import completion

    text = completion.script(args.shell)
    if as_json:
        render.print_json({"shell": args.shell, "script": text})
    else:
        sys.stdout.write(text)
    return 0


COMMANDS: dict[str, Command] = {
    "submit": do_submit,
    "status": do_status,
    "list": do_list,
    "show": do_show,
    "logs": do_logs,
    "wait": do_wait,
    "cancel": _each("cancel", "cancelled"),
    "retry": _each("retry", "requeued"),
    "retry-failed": do_retry_failed,
    "clear": do_clear,
    "progress": do_progress,
    "queue": do_queue,
    "schedule": do_schedule,
    "metrics": do_metrics,
    "pause": _pause_resume("pause", "paused"),
    "resume": _pause_resume("resume", "resumed"),
    "watch": do_watch,
    "completion": do_completion,
}

if __name__ == "__main__":
    main()
