"""phxqctl: the command line. Parses arguments, calls the Client, renders the answer.

Exit statuses (DESIGN.md): 0 success; 1 a job waited on did not complete; 2 usage error;
3 daemon unreachable; 4 no such job; 5 refused. Errors are one line on stderr.
"""

from __future__ import annotations

import argparse
import datetime as dt
import re
import sys
import time
from collections.abc import Callable
from typing import Any

import msgspec

from phxqctl import render
from phxqctl.client import Client, PhxqError, progress
from phxqd.model import FINISHED, STATUSES, Call, Job, JobSpec

EXIT_USAGE = 2
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}


class UsageError(PhxqError):
    exit_status = EXIT_USAGE


def duration(text: str) -> float:
    """'30', '30s', '5m', '1.5h', '2d' -> seconds."""
    m = _DURATION.match(text)
    if not m:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (try 30s, 5m, 2h)")
    return float(m.group(1)) * _UNITS[m.group(2)]


def timestamp(text: str) -> float:
    """An ISO 8601 time; without an offset it is local time."""
    try:
        return dt.datetime.fromisoformat(text).timestamp()
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a time: {text!r} (try 2026-12-01T09:00 or 2026-12-01T09:00+01:00)"
        ) from None


def json_value(kind: type) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            value = msgspec.json.decode(text)
        except msgspec.DecodeError as e:
            raise argparse.ArgumentTypeError(f"not JSON: {e}") from None
        if not isinstance(value, kind):
            raise argparse.ArgumentTypeError(f"wants a JSON {kind.__name__}")
        return value

    return parse


def id_list(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of job ids: {text!r}") from None


def backoff_policy(text: str) -> tuple[float, float, float]:
    """'2s', '2s,5m' or '2s,5m,0.1' -> (base, max, jitter)."""
    parts = text.split(",")
    if not 1 <= len(parts) <= 3:
        raise argparse.ArgumentTypeError(f"--backoff wants BASE[,MAX[,JITTER]], got {text!r}")
    base = duration(parts[0])
    cap = duration(parts[1]) if len(parts) > 1 else max(60.0, base)
    try:
        jitter = float(parts[2]) if len(parts) > 2 else 0.5
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a jitter: {parts[2]!r}") from None
    return base, cap, jitter


def env_pair(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"--env wants NAME=VALUE, got {text!r}")
    return name, value


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--json", action="store_true", default=argparse.SUPPRESS, help="print JSON only"
    )
    common.add_argument("--socket", default=argparse.SUPPRESS, help="phxqd's socket")

    p = argparse.ArgumentParser(
        prog="phxqctl", parents=[common], description="Talk to phxqd, the phxq job queue daemon."
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def cmd(name: str, help: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, parents=[common], help=help, description=help)

    s = cmd("submit", "queue a command job: phxqctl submit [options] -- CMD ARG...")
    s.add_argument("--queue", default="default")
    s.add_argument("--priority", type=int, default=0, help="higher runs first")
    s.add_argument("--key", help="idempotency key: a live job with this key is returned instead")
    s.add_argument("--retries", type=int, help="retries after a failure (default: the queue's, 3)")
    s.add_argument(
        "--backoff",
        type=backoff_policy,
        metavar="BASE[,MAX[,JITTER]]",
        help="retry delay: min(BASE*2^(attempt-1), MAX)*(1+JITTER*random); default 1s,60s,0.5",
    )
    s.add_argument(
        "--after",
        type=id_list,
        default=[],
        metavar="ID[,ID...]",
        help="run only after these jobs completed (cancelled if one fails)",
    )
    s.add_argument("--timeout", type=duration, help="kill the job after this long (30s, 5m)")
    when = s.add_mutually_exclusive_group()
    when.add_argument("--delay", type=duration, help="run no sooner than this from now")
    when.add_argument("--at", type=timestamp, help="run no sooner than this time (ISO 8601)")
    s.add_argument("--label", help="a note shown with the job")
    s.add_argument("--cwd", help="working directory of the job")
    s.add_argument("--env", type=env_pair, action="append", default=[], metavar="NAME=VALUE")
    s.add_argument("--wait", action="store_true", help="wait for the job to finish")
    s.add_argument("--batch", metavar="FILE", help="JSON Lines of job specs ('-' for stdin)")
    s.add_argument(
        "--shell",
        metavar="COMMAND",
        help="run COMMAND with /bin/sh -c (pipes, globs...) instead of an argv",
    )
    s.add_argument("--call", metavar="MOD:FUNC", help="queue a Python callable instead")
    s.add_argument(
        "--args",
        type=json_value(list),
        default=[],
        metavar="JSON",
        help="positional arguments of --call, a JSON array",
    )
    s.add_argument(
        "--kwargs",
        type=json_value(dict),
        default={},
        metavar="JSON",
        help="keyword arguments of --call, a JSON object",
    )
    s.add_argument("argv", nargs=argparse.REMAINDER, help="the command, after --")

    cmd("status", "counts per status and queue, running jobs")
    ls = cmd("list", "jobs, newest first")
    ls.add_argument("--status", choices=STATUSES)
    ls.add_argument("--queue")
    ls.add_argument("--limit", type=int, default=50)
    sh = cmd("show", "one job, whole")
    sh.add_argument("id", type=int)
    lg = cmd("logs", "the job's output")
    lg.add_argument("id", type=int)
    lg.add_argument("--follow", "-f", action="store_true", help="keep printing until it ends")
    w = cmd("wait", "block until the jobs finish; exit 1 unless all completed")
    w.add_argument("ids", type=int, nargs="+", metavar="ID")
    w.add_argument("--timeout", type=duration)
    c = cmd("cancel", "cancel pending or running jobs (kills the process tree)")
    c.add_argument("ids", type=int, nargs="+", metavar="ID")
    r = cmd("retry", "requeue failed or cancelled jobs")
    r.add_argument("ids", type=int, nargs="+", metavar="ID")
    rf = cmd("retry-failed", "requeue every failed job")
    rf.add_argument("--queue")
    cl = cmd("clear", "forget finished jobs (never pending or running ones)")
    cl.add_argument("--status", choices=sorted(FINISHED))
    cl.add_argument("--queue")
    cmd("metrics", "the daemon's metrics, in the Prometheus text format")
    q = cmd("queue", "show queues, or set a queue's concurrency at run time")
    qsub = q.add_subparsers(dest="queue_command", metavar="ACTION", required=True)
    qsub.add_parser("list", parents=[common], help="queues with counts and limits")
    qs = qsub.add_parser("set", parents=[common], help="set a queue's concurrency")
    qs.add_argument("queue")
    qs.add_argument(
        "--concurrency",
        required=True,
        metavar="N|default",
        help="most jobs of the queue running at once; 'default' for the config's",
    )
    pr = cmd("progress", "from inside a job: report its progress (shown by show and status)")
    pr.add_argument("--percent", type=float)
    pr.add_argument("--step", help="what the job is doing now")
    pr.add_argument("--done", type=int)
    pr.add_argument("--total", type=int)
    for name, what in (("pause", "stop starting jobs"), ("resume", "start jobs again")):
        q = cmd(name, f"{what} from a queue, or from all queues")
        q.add_argument("queue", nargs="?")
    return p


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    as_json: bool = getattr(args, "json", False)
    client = Client(getattr(args, "socket", None))
    try:
        status = COMMANDS[args.command](client, args, as_json)
    except PhxqError as e:
        print(f"phxqctl: {e}", file=sys.stderr)
        sys.exit(e.exit_status)
    except KeyboardInterrupt:
        sys.exit(130)
    except BrokenPipeError:
        sys.exit(0)  # `phxqctl list | head` is not an error
    finally:
        client.close()
    sys.exit(status)


# ----------------------------------------------------------------- commands

Command = Callable[[Client, argparse.Namespace, bool], int]


def do_submit(client: Client, args: argparse.Namespace, as_json: bool) -> int:
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
        specs = [
            JobSpec(
                argv=argv,
                call=Call(args.call, args.args, args.kwargs) if args.call else None,
                queue=args.queue,
                priority=args.priority,
                key=args.key,
                max_retries=args.retries,
                backoff=args.backoff,
                after=args.after,
                timeout=args.timeout,
                delay=args.delay,
                run_at=args.at,
                label=args.label,
                cwd=args.cwd,
                env=dict(args.env),
            )
        ]
    results = client.submit_batch(specs)
    for res in results:
        if as_json:
            render.print_json({**msgspec.to_builtins(res.job), "deduplicated": res.deduplicated})
        else:
            print(res.job.id)
    if args.wait:
        jobs = client.wait([r.job.id for r in results])
        if not as_json:
            for job in jobs:
                print(render.outcome_line(job), file=sys.stderr)
        return 0 if all(j.status == "completed" for j in jobs) else 1
    return 0


def read_batch(source: str) -> list[JobSpec]:
    """One JSON object per line, each a job spec (argv, queue, priority, key, ...)."""
    try:
        if source == "-":
            text = sys.stdin.read()
        else:
            with open(source, encoding="utf-8") as f:
                text = f.read()
    except OSError as e:
        raise UsageError(f"cannot read {source}: {e.strerror}") from None
    specs = []
    decoder = msgspec.json.Decoder(JobSpec)
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                specs.append(decoder.decode(line))
            except msgspec.DecodeError as e:
                raise UsageError(f"{source}:{n}: {e}") from None
    if not specs:
        raise UsageError(f"{source}: no job specs in it")
    return specs


def do_status(client: Client, args: argparse.Namespace, as_json: bool) -> int:
    status = client.status()
    if as_json:
        render.print_json(status)
    else:
        print(render.status_text(status))
    return 0


def do_list(client: Client, args: argparse.Namespace, as_json: bool) -> int:
    jobs = client.list(args.status, args.queue, args.limit)
    if as_json:
        for job in jobs:
            render.print_json(job)
    else:
        print(render.job_table(jobs, time.time()))
    return 0


def do_show(client: Client, args: argparse.Namespace, as_json: bool) -> int:
    job = client.get(args.id)
    if as_json:
        render.print_json(job)
    else:
        print(render.job_detail(job, time.time()))
    return 0


def do_logs(client: Client, args: argparse.Namespace, as_json: bool) -> int:
    offset, out = 0, sys.stdout.buffer
    while True:
        data, offset, finished = client.logs(args.id, offset)
        if data:
            if as_json:
                render.print_json({"id": args.id, "data": data.decode("utf-8", "replace")})
            else:
                out.write(data)
                out.flush()
            continue
        if not args.follow or finished:
            return 0
        time.sleep(0.2)  # the job writes its log file directly; nothing to be told of


def do_wait(client: Client, args: argparse.Namespace, as_json: bool) -> int:
    jobs = client.wait(args.ids, args.timeout)
    found = {j.id for j in jobs}
    for job in jobs:
        if as_json:
            render.print_json(job)
        else:
            print(render.outcome_line(job))
    for gone in (i for i in args.ids if i not in found):
        print(f"phxqctl: job {gone} was cleared while waiting", file=sys.stderr)
    ok = len(jobs) == len(args.ids) and all(j.status == "completed" for j in jobs)
    return 0 if ok else 1


def _each(verb: str, call: Callable[[Client, list[int]], list[Job]]) -> Command:
    def run(client: Client, args: argparse.Namespace, as_json: bool) -> int:
        for job in call(client, args.ids):
            if as_json:
                render.print_json(job)
            else:
                print(
                    f"job {job.id} {verb}" if job.status == verb else f"job {job.id} {job.status}"
                )
        return 0

    return run


def do_retry_failed(client: Client, args: argparse.Namespace, as_json: bool) -> int:
    n = client.retry_failed(args.queue)
    if as_json:
        render.print_json({"retried": n})
    else:
        print(f"requeued {n} failed job{'s' * (n != 1)}")
    return 0


def do_clear(client: Client, args: argparse.Namespace, as_json: bool) -> int:
    n = client.clear(args.status, args.queue)
    if as_json:
        render.print_json({"cleared": n})
    else:
        print(f"cleared {n} finished job{'s' * (n != 1)}")
    return 0


def _pause_resume(verb: str) -> Command:
    def run(client: Client, args: argparse.Namespace, as_json: bool) -> int:
        status = (client.pause if verb == "paused" else client.resume)(args.queue)
        if as_json:
            render.print_json(status)
        else:
            print(f"{verb} {'queue ' + args.queue if args.queue else 'all queues'}")
        return 0

    return run


def do_queue(client: Client, args: argparse.Namespace, as_json: bool) -> int:
    if args.queue_command == "set":
        if args.concurrency == "default":
            limit = None
        else:
            try:
                limit = int(args.concurrency)
            except ValueError:
                raise UsageError("--concurrency wants a number or 'default'") from None
        queues = client.set_queue(args.queue, limit)
    else:
        queues = client.queues()
    if as_json:
        for q in queues:
            render.print_json(q)
    else:
        print(render.queue_table(queues))
    return 0


def do_metrics(client: Client, args: argparse.Namespace, as_json: bool) -> int:
    text = client.metrics()
    if as_json:
        render.print_json({"exposition": text})
    else:
        sys.stdout.write(text)
    return 0


def do_progress(client: Client, args: argparse.Namespace, as_json: bool) -> int:
    if all(getattr(args, k) is None for k in ("percent", "step", "done", "total")):
        raise UsageError("progress needs at least one of --percent, --step, --done, --total")
    accepted = progress(args.percent, args.step, args.done, args.total)
    if as_json:
        render.print_json({"accepted": accepted})
    return 0


COMMANDS: dict[str, Command] = {
    "submit": do_submit,
    "status": do_status,
    "list": do_list,
    "show": do_show,
    "logs": do_logs,
    "wait": do_wait,
    "cancel": _each("cancelled", Client.cancel),
    "retry": _each("requeued", Client.retry),
    "retry-failed": do_retry_failed,
    "clear": do_clear,
    "progress": do_progress,
    "queue": do_queue,
    "metrics": do_metrics,
    "pause": _pause_resume("paused"),
    "resume": _pause_resume("resumed"),
}

if __name__ == "__main__":
    main()
