"""phxqctl: the command line. Parses arguments, calls the Client, renders the answer.

Exit statuses (DESIGN.md): 0 success; 1 a job waited on did not complete; 2 usage error;
3 daemon unreachable; 4 no such job; 5 refused. Errors are one line on stderr.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time

from phxqctl import locate, render
from phxqctl.errors import PhxqError, UsageError
from phxqctl.report import progress
from phxqctl.wire import Session
from phxqd.contract import (
    DEFAULT_QUEUE,
    FINISHED,
    MAX_BATCH,
    STATUSES,
    request_problem,
    value_problem,
)

#: typing costs a few ms to import; the annotations are strings (PEP 563) anyway
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, NoReturn


EXIT_USAGE = 2
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}


def duration(text: str) -> float:
    """'30', '30s', '5m', '1.5h', '2d' -> seconds."""
    m = _DURATION.match(text)
    if not m:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (try 30s, 5m, 2h)")
    return float(m.group(1)) * _UNITS[m.group(2)]


def timestamp(text: str) -> float:
    """An ISO 8601 time; without an offset it is local time."""
    import datetime  # only --at pays for it

    try:
        return datetime.datetime.fromisoformat(text).timestamp()
    except (ValueError, OverflowError, OSError):
        raise argparse.ArgumentTypeError(
            f"not a time: {text!r} (try 2026-12-01T09:00 or 2026-12-01T09:00+01:00)"
        ) from None


def json_value(kind: type) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        import json

        try:
            value = json.loads(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(f"not JSON: {e}") from None
        except RecursionError:
            raise argparse.ArgumentTypeError("JSON nested too deep") from None
        if not isinstance(value, kind):
            raise argparse.ArgumentTypeError(f"wants a JSON {kind.__name__}")
        if why := value_problem("a value in it", value):
            raise argparse.ArgumentTypeError(why)
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


def one_line(text: str, limit: int = 400) -> str:
    """A message as one line of printable text, whatever a user put in it (newlines,
    escape sequences, bytes that were not UTF-8), and not a screenful."""
    if not text.isprintable():
        text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


class Parser(argparse.ArgumentParser):
    """argparse's, with its errors in one line (exit status 2, as before): the usage it
    prints first is one `--help` away, and a bad value is shown escaped and cut short."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{one_line(f'{self.prog}: {message}')} (see {self.prog} --help)\n")


class Formatter(argparse.HelpFormatter):
    """argparse's own, without its `import shutil` (5 ms with zlib, bz2 and lzma) just to
    read the terminal's width: argparse builds a formatter for every add_argument."""

    def __init__(
        self,
        prog: str,
        indent_increment: int = 2,
        max_help_position: int = 24,
        width: int | None = None,
    ) -> None:
        if width is None:
            width = terminal_width() - 2
        super().__init__(prog, indent_increment, max_help_position, width)


def terminal_width() -> int:
    """As shutil.get_terminal_size: $COLUMNS, else the terminal's, else 80."""
    try:
        return int(os.environ["COLUMNS"])
    except (KeyError, ValueError):
        pass
    try:
        return os.get_terminal_size(sys.__stdout__.fileno()).columns or 80  # type: ignore[union-attr]
    except (AttributeError, ValueError, OSError):
        return 80


# ------------------------------------------------------------------ parsing
#
# argparse builds a parser per subcommand with every option; building all 17 costs more
# than the rest of `phxqctl status`. So the top parser only takes the command name, and
# only that command's parser is built (`command_parser`). The completion scripts build
# them all from the same definitions.


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print JSON only")
    p.add_argument("--socket", metavar="PATH", default=argparse.SUPPRESS, help="phxqd's socket")


def _submit(s: argparse.ArgumentParser) -> None:
    s.add_argument("--queue", default=DEFAULT_QUEUE)
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


def _list(p: argparse.ArgumentParser) -> None:
    p.add_argument("--status", choices=STATUSES)
    p.add_argument("--queue")
    p.add_argument("--limit", type=int, default=50)


def _one_id(p: argparse.ArgumentParser) -> None:
    p.add_argument("id", type=int)


def _ids(p: argparse.ArgumentParser) -> None:
    p.add_argument("ids", type=int, nargs="+", metavar="ID")


def _logs(p: argparse.ArgumentParser) -> None:
    p.add_argument("id", type=int)
    p.add_argument("--follow", "-f", action="store_true", help="keep printing until it ends")


def _wait(p: argparse.ArgumentParser) -> None:
    p.add_argument("ids", type=int, nargs="+", metavar="ID")
    p.add_argument("--timeout", type=duration)


def _queue_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--queue")


def _clear(p: argparse.ArgumentParser) -> None:
    p.add_argument("--status", choices=sorted(FINISHED))
    p.add_argument("--queue")


def _queue(p: argparse.ArgumentParser) -> None:
    qsub = p.add_subparsers(dest="queue_command", metavar="ACTION", required=True)
    ql = qsub.add_parser("list", help="queues with counts and limits", formatter_class=Formatter)
    _common(ql)
    qs = qsub.add_parser(
        "set", help="set a queue's concurrency or start rate", formatter_class=Formatter
    )
    _common(qs)
    qs.add_argument("queue")
    qs.add_argument(
        "--concurrency",
        metavar="N|default",
        help="most jobs of the queue running at once; 'default' for the config's",
    )
    qs.add_argument(
        "--rate",
        metavar="N/s|N/m|N/h|default",
        help="how often jobs of the queue may start (a token bucket); 'default' for the config's",
    )
    qs.add_argument(
        "--burst", type=int, default=1, metavar="N", help="starts allowed at once under --rate"
    )


def _schedule(p: argparse.ArgumentParser) -> None:
    ssub = p.add_subparsers(dest="schedule_command", metavar="ACTION", required=True)
    add = ssub.add_parser(
        "add",
        help="add (or replace) a schedule: NAME (--cron EXPR | --every DURATION) -- CMD...",
        formatter_class=Formatter,
    )
    _common(add)
    add.add_argument("name")
    when = add.add_mutually_exclusive_group(required=True)
    when.add_argument(
        "--cron",
        metavar="EXPR",
        help="5 fields (or 6, seconds first), names, ranges, steps, or @daily, @hourly...",
    )
    when.add_argument("--every", type=duration, metavar="DURATION", help="every 30s, 5m, 1h...")
    add.add_argument("--tz", metavar="ZONE", help="time zone of --cron (default: the machine's)")
    add.add_argument(
        "--catch-up",
        choices=("skip", "once", "all"),
        default="skip",
        help="fire times missed while phxqd was down: none, one run, or each (default: skip)",
    )
    add.add_argument(
        "--overlap",
        choices=("allow", "skip", "queue"),
        default="skip",
        help="when the previous run is still going: run anyway, skip this time, or run "
        "once it ends (default: skip)",
    )
    add.add_argument("--queue", default=DEFAULT_QUEUE)
    add.add_argument("--priority", type=int, default=0, help="higher runs first")
    add.add_argument("--retries", type=int, help="retries after a failure (default: the queue's)")
    add.add_argument("--backoff", type=backoff_policy, metavar="BASE[,MAX[,JITTER]]")
    add.add_argument("--timeout", type=duration, help="kill the job after this long (30s, 5m)")
    add.add_argument("--label", help="a note shown with each job")
    add.add_argument("--cwd", help="working directory of the jobs (default: here)")
    add.add_argument("--env", type=env_pair, action="append", default=[], metavar="NAME=VALUE")
    add.add_argument("--shell", metavar="COMMAND", help="run COMMAND with /bin/sh -c")
    add.add_argument("--call", metavar="MOD:FUNC", help="a Python callable instead of a command")
    add.add_argument("--args", type=json_value(list), default=[], metavar="JSON")
    add.add_argument("--kwargs", type=json_value(dict), default={}, metavar="JSON")
    ls = ssub.add_parser("list", help="schedules and their next fire", formatter_class=Formatter)
    _common(ls)
    for action, what in (
        ("show", "one schedule: next 5 fire times, last fire and its job"),
        ("remove", "remove a schedule (its jobs stay)"),
        ("pause", "stop firing a schedule (missed times are not caught up)"),
        ("resume", "fire a paused schedule again"),
        ("run", "fire a schedule now, once"),
    ):
        one = ssub.add_parser(action, help=what, formatter_class=Formatter)
        _common(one)
        one.add_argument("name")


def _progress(p: argparse.ArgumentParser) -> None:
    p.add_argument("--percent", type=float)
    p.add_argument("--step", help="what the job is doing now")
    p.add_argument("--done", type=int)
    p.add_argument("--total", type=int)


def _optional_queue(p: argparse.ArgumentParser) -> None:
    p.add_argument("queue", nargs="?")


def _nothing(p: argparse.ArgumentParser) -> None:
    pass


def _watch(p: argparse.ArgumentParser) -> None:
    p.add_argument("ids", type=int, nargs="*", metavar="ID", help="only these jobs")


def _completion(p: argparse.ArgumentParser) -> None:
    p.add_argument("shell", choices=("bash", "zsh", "fish"))


#: name -> (what it does, how to add its arguments)
SYNTAX: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None]]] = {
    "submit": ("queue a command job: phxqctl submit [options] -- CMD ARG...", _submit),
    "status": ("counts per status and queue, running jobs", _nothing),
    "list": ("jobs, newest first", _list),
    "show": ("one job, whole", _one_id),
    "logs": ("the job's output", _logs),
    "wait": ("block until the jobs finish; exit 1 unless all completed", _wait),
    "cancel": ("cancel pending or running jobs (kills the process tree)", _ids),
    "retry": ("requeue failed or cancelled jobs", _ids),
    "retry-failed": ("requeue every failed job", _queue_option),
    "clear": ("forget finished jobs (never pending or running ones)", _clear),
    "pause": ("stop starting jobs from a queue, or from all queues", _optional_queue),
    "resume": ("start jobs again from a queue, or from all queues", _optional_queue),
    "queue": ("show queues, or set a queue's concurrency or rate at run time", _queue),
    "schedule": (
        "cron and interval schedules: add, list, show, remove, pause, resume, run",
        _schedule,
    ),
    "progress": ("from inside a job: report its progress (shown by show and status)", _progress),
    "metrics": ("the daemon's metrics, in the Prometheus text format", _nothing),
    "watch": ("live view: counts, running jobs with progress and ETA, failures", _watch),
    "completion": ("print the shell completion script for bash, zsh or fish", _completion),
}


class TopFormatter(Formatter, argparse.RawDescriptionHelpFormatter):
    """Keeps the command list of the top-level help as written."""


def top_parser() -> argparse.ArgumentParser:
    width = max(map(len, SYNTAX))
    commands = "\n".join(f"  {name.ljust(width)}  {what}" for name, (what, _) in SYNTAX.items())
    p = Parser(
        prog="phxqctl",
        usage="phxqctl [--socket PATH] [--json] COMMAND ...",
        description="Talk to phxqd, the phxq job queue daemon.",
        epilog=f"commands:\n{commands}\n\n`phxqctl COMMAND --help` for a command's options.",
        formatter_class=TopFormatter,
    )
    _common(p)
    p.add_argument("command", metavar="COMMAND", choices=SYNTAX, help="one of the commands below")
    p.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    return p


def command_parser(name: str) -> argparse.ArgumentParser:
    what, add_arguments = SYNTAX[name]
    p = Parser(prog=f"phxqctl {name}", description=what, formatter_class=Formatter)
    _common(p)
    add_arguments(p)
    return p


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    # argparse looks up a translation of its few words ("usage:", "options") a dozen times
    # per start: each look-up imports `locale`, normalises the language variables and
    # probes for .mo files that Python does not ship (a large part of what parsing cost in
    # a wheel install, bench/bench_client.py); phxqctl's own messages are English anyway.
    translate = argparse._  # type: ignore[attr-defined]
    argparse._ = _untranslated  # type: ignore[attr-defined]
    try:
        args = top_parser().parse_args(argv)
        rest = args.rest
        del args.rest
        if args.command == "schedule" and "--" in rest:
            # `schedule add NAME [options] -- CMD...`: argparse cannot put a positional
            # NAME before options and a command after them, so the command is cut off first
            cut = rest.index("--")
            rest, args.argv = rest[:cut], rest[cut + 1 :]
        return command_parser(args.command).parse_args(rest, namespace=args)
    finally:
        argparse._ = translate  # type: ignore[attr-defined]


def _untranslated(message: str) -> str:
    return message


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
    Command = Callable[[Session, argparse.Namespace, bool], int]
    Job = dict[str, Any]


def do_submit(session: Session, args: argparse.Namespace, as_json: bool) -> int:
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


def do_status(session: Session, args: argparse.Namespace, as_json: bool) -> int:
    status = session.call("status")
    if as_json:
        render.print_json(status)
    else:
        print(render.status_text(status, time.time()))
    return 0


def do_list(session: Session, args: argparse.Namespace, as_json: bool) -> int:
    jobs = session.call("list", status=args.status, queue=args.queue, limit=args.limit)
    if as_json:
        for job in jobs:
            render.print_json(job)
    else:
        print(render.job_table(jobs, time.time()))
    return 0


def do_show(session: Session, args: argparse.Namespace, as_json: bool) -> int:
    job = session.call("show", id=args.id)
    if as_json:
        render.print_json(job)
    else:
        print(render.job_detail(job, time.time()))
    return 0


def do_logs(session: Session, args: argparse.Namespace, as_json: bool) -> int:
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


def do_wait(session: Session, args: argparse.Namespace, as_json: bool) -> int:
    """On a terminal (stderr), a progress bar per job from the stream's events."""
    if not as_json and sys.stderr.isatty():
        from phxqctl import live

        jobs = live.wait_with_bars(session, args.ids, args.timeout)
    else:
        jobs = session.call("wait", ids=args.ids, timeout=args.timeout)
    return report_waited(args.ids, jobs, as_json)


def do_watch(session: Session, args: argparse.Namespace, as_json: bool) -> int:
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
    def run(session: Session, args: argparse.Namespace, as_json: bool) -> int:
        for job in session.call(op, ids=args.ids):
            if as_json:
                render.print_json(job)
            else:
                status = job["status"]
                print(f"job {job['id']} {render.paint(verb if status == verb else status, status)}")
        return 0

    return run


def do_retry_failed(session: Session, args: argparse.Namespace, as_json: bool) -> int:
    n = session.call("retry-failed", queue=args.queue)["retried"]
    if as_json:
        render.print_json({"retried": n})
    else:
        print(f"requeued {n} failed job{'s' * (n != 1)}")
    return 0


def do_clear(session: Session, args: argparse.Namespace, as_json: bool) -> int:
    n = session.call("clear", status=args.status, queue=args.queue)["cleared"]
    if as_json:
        render.print_json({"cleared": n})
    else:
        print(f"cleared {n} finished job{'s' * (n != 1)}")
    return 0


def _pause_resume(op: str, verb: str) -> Command:
    def run(session: Session, args: argparse.Namespace, as_json: bool) -> int:
        status = session.call(op, queue=args.queue)
        if as_json:
            render.print_json(status)
        else:
            print(f"{verb} {'queue ' + args.queue if args.queue else 'all queues'}")
        return 0

    return run


def do_queue(session: Session, args: argparse.Namespace, as_json: bool) -> int:
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


def do_schedule(session: Session, args: argparse.Namespace, as_json: bool) -> int:
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


def schedule_job(args: argparse.Namespace) -> dict[str, Any]:
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


def do_metrics(session: Session, args: argparse.Namespace, as_json: bool) -> int:
    text = bytes(session.call("metrics")).decode()
    if as_json:
        render.print_json({"exposition": text})
    else:
        sys.stdout.write(text)
    return 0


def do_progress(session: Session, args: argparse.Namespace, as_json: bool) -> int:
    if all(getattr(args, k) is None for k in ("percent", "step", "done", "total")):
        raise UsageError("progress needs at least one of --percent, --step, --done, --total")
    accepted = progress(args.percent, args.step, args.done, args.total)
    if as_json:
        render.print_json({"accepted": accepted})
    return 0


def do_completion(session: Session, args: argparse.Namespace, as_json: bool) -> int:
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
