"""phxqctl's commands and options, written once as data: argparse's parsers are built from
them (phxqctl.syntax) and so is the fast path that parses common command lines without
argparse (phxqctl.fast).

Standard library only, and not argparse, re or typing: every `phxqctl` start imports this.
A value that does not convert raises argparse's ArgumentTypeError (imported then), whose
message argparse shows.
"""

from __future__ import annotations

from phxqd.contract import DEFAULT_QUEUE, FINISHED, STATUSES, value_problem

#: typing costs a few ms to import; the annotations are strings (PEP 563) anyway
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

#: argparse's own constants (the values of argparse.SUPPRESS and argparse.REMAINDER)
SUPPRESS = "==SUPPRESS=="
REMAINDER = "..."


class Args:
    """The parsed command line, as argparse's Namespace (argparse fills one of these)."""

    def __init__(self, **fields: Any) -> None:
        self.__dict__.update(fields)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Args) and vars(self) == vars(other)

    def __repr__(self) -> str:
        return f"Args({', '.join(f'{k}={v!r}' for k, v in vars(self).items())})"

    if TYPE_CHECKING:

        def __getattr__(self, name: str) -> Any: ...
        def __setattr__(self, name: str, value: Any) -> None: ...


# -------------------------------------------------------------------- values


def bad_value(message: str) -> Exception:
    """argparse's error for a value its type refuses (argparse shows its message)."""
    import argparse

    return argparse.ArgumentTypeError(message)


_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}


def duration(text: str) -> float:
    """'30', '30s', '5m', '1.5h', '2d' -> seconds. Plain ASCII numbers are read here;
    anything else (spaces, other digits) by the regular expression, imported only then."""
    number, unit = text, None
    if text.endswith("ms"):
        number, unit = text[:-2], "ms"
    elif text[-1:] in ("s", "m", "h", "d"):
        number, unit = text[:-1], text[-1]
    whole, dot, fraction = number.partition(".")
    if _digits(whole) and (not dot or _digits(fraction)):
        return float(number) * _UNITS[unit]
    import re

    m = re.match(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$", text)
    if not m:
        raise bad_value(f"not a duration: {text!r} (try 30s, 5m, 2h)")
    return float(m.group(1)) * _UNITS[m.group(2)]


def _digits(text: str) -> bool:
    return text.isascii() and text.isdigit()


def timestamp(text: str) -> float:
    """An ISO 8601 time; without an offset it is local time."""
    import datetime  # only --at pays for it

    try:
        return datetime.datetime.fromisoformat(text).timestamp()
    except (ValueError, OverflowError, OSError):
        raise bad_value(
            f"not a time: {text!r} (try 2026-12-01T09:00 or 2026-12-01T09:00+01:00)"
        ) from None


def json_value(kind: type) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        import json

        try:
            value = json.loads(text)
        except ValueError as e:
            raise bad_value(f"not JSON: {e}") from None
        except RecursionError:
            raise bad_value("JSON nested too deep") from None
        if not isinstance(value, kind):
            raise bad_value(f"wants a JSON {kind.__name__}")
        if why := value_problem("a value in it", value):
            raise bad_value(why)
        return value

    return parse


def id_list(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise bad_value(f"not a list of job ids: {text!r}") from None


def backoff_policy(text: str) -> tuple[float, float, float]:
    """'2s', '2s,5m' or '2s,5m,0.1' -> (base, max, jitter)."""
    parts = text.split(",")
    if not 1 <= len(parts) <= 3:
        raise bad_value(f"--backoff wants BASE[,MAX[,JITTER]], got {text!r}")
    base = duration(parts[0])
    cap = duration(parts[1]) if len(parts) > 1 else max(60.0, base)
    try:
        jitter = float(parts[2]) if len(parts) > 2 else 0.5
    except ValueError:
        raise bad_value(f"not a jitter: {parts[2]!r}") from None
    return base, cap, jitter


def env_pair(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise bad_value(f"--env wants NAME=VALUE, got {text!r}")
    return name, value


# ------------------------------------------------------------ the definitions


class Opt:
    """One option or positional argument: argparse's add_argument arguments, kept."""

    def __init__(self, *flags: str, **kw: Any) -> None:
        self.flags = flags
        self.kw = kw
        self.positional = not flags[0].startswith("-")
        long = next((f for f in flags if f.startswith("--")), flags[0])
        self.dest: str = kw.get("dest") or long.lstrip("-").replace("-", "_")

    def but(self, **kw: Any) -> Opt:
        """The same, with other add_argument arguments (another help, default...)."""
        return Opt(*self.flags, **{**self.kw, **kw})


class OneOf:
    """Options of which one at most may be given (or exactly one, `required`)."""

    def __init__(self, *opts: Opt, required: bool = False) -> None:
        self.opts = opts
        self.required = required


if TYPE_CHECKING:
    Spec = tuple[Opt | OneOf, ...]
    #: how a command with actions of its own (queue, schedule) adds them to its parser
    Build = Callable[[Any], None]


#: --json and --socket, taken before the command and after it
COMMON = (
    Opt("--json", action="store_true", default=SUPPRESS, help="print JSON only"),
    Opt("--socket", metavar="PATH", default=SUPPRESS, help="phxqd's socket"),
)

ID = Opt("id", type=int)
IDS = Opt("ids", type=int, nargs="+", metavar="ID")
QUEUE = Opt("--queue")
JOB_QUEUE = QUEUE.but(default=DEFAULT_QUEUE)
PRIORITY = Opt("--priority", type=int, default=0, help="higher runs first")
RETRIES = Opt("--retries", type=int, help="retries after a failure (default: the queue's)")
BACKOFF = Opt("--backoff", type=backoff_policy, metavar="BASE[,MAX[,JITTER]]")
TIMEOUT = Opt("--timeout", type=duration, help="kill the job after this long (30s, 5m)")
LABEL = Opt("--label", help="a note shown with each job")
CWD = Opt("--cwd")
ENV = Opt("--env", type=env_pair, action="append", default=[], metavar="NAME=VALUE")
SHELL = Opt("--shell", metavar="COMMAND", help="run COMMAND with /bin/sh -c")
CALL = Opt("--call", metavar="MOD:FUNC")
CALL_ARGS = Opt("--args", type=json_value(list), default=[], metavar="JSON")
CALL_KWARGS = Opt("--kwargs", type=json_value(dict), default={}, metavar="JSON")

SUBMIT: Spec = (
    JOB_QUEUE,
    PRIORITY,
    Opt("--key", help="idempotency key: a live job with this key is returned instead"),
    RETRIES.but(help="retries after a failure (default: the queue's, 3)"),
    BACKOFF.but(
        help="retry delay: min(BASE*2^(attempt-1), MAX)*(1+JITTER*random); default 1s,60s,0.5"
    ),
    Opt(
        "--after",
        type=id_list,
        default=[],
        metavar="ID[,ID...]",
        help="run only after these jobs completed (cancelled if one fails)",
    ),
    TIMEOUT,
    OneOf(
        Opt("--delay", type=duration, help="run no sooner than this from now"),
        Opt("--at", type=timestamp, help="run no sooner than this time (ISO 8601)"),
    ),
    LABEL.but(help="a note shown with the job"),
    CWD.but(help="working directory of the job"),
    ENV,
    Opt("--wait", action="store_true", help="wait for the job to finish"),
    Opt("--batch", metavar="FILE", help="JSON Lines of job specs ('-' for stdin)"),
    SHELL.but(help="run COMMAND with /bin/sh -c (pipes, globs...) instead of an argv"),
    CALL.but(help="queue a Python callable instead"),
    CALL_ARGS.but(help="positional arguments of --call, a JSON array"),
    CALL_KWARGS.but(help="keyword arguments of --call, a JSON object"),
    Opt("argv", nargs=REMAINDER, help="the command, after --"),
)

#: `schedule add NAME`'s options (its command comes after `--`, cut off before parsing)
SCHEDULE_ADD: Spec = (
    Opt("name"),
    OneOf(
        Opt(
            "--cron",
            metavar="EXPR",
            help="5 fields (or 6, seconds first), names, ranges, steps, or @daily, @hourly...",
        ),
        Opt("--every", type=duration, metavar="DURATION", help="every 30s, 5m, 1h..."),
        required=True,
    ),
    Opt("--tz", metavar="ZONE", help="time zone of --cron (default: the machine's)"),
    Opt(
        "--catch-up",
        choices=("skip", "once", "all"),
        default="skip",
        help="fire times missed while phxqd was down: none, one run, or each (default: skip)",
    ),
    Opt(
        "--overlap",
        choices=("allow", "skip", "queue"),
        default="skip",
        help="when the previous run is still going: run anyway, skip this time, or run "
        "once it ends (default: skip)",
    ),
    JOB_QUEUE,
    PRIORITY,
    RETRIES,
    BACKOFF,
    TIMEOUT,
    LABEL,
    CWD.but(help="working directory of the jobs (default: here)"),
    ENV,
    SHELL,
    CALL.but(help="a Python callable instead of a command"),
    CALL_ARGS,
    CALL_KWARGS,
)

#: `schedule ACTION NAME`: the actions that take a name only, and what each does
SCHEDULE_BY_NAME = (
    ("show", "one schedule: next 5 fire times, last fire and its job"),
    ("remove", "remove a schedule (its jobs stay)"),
    ("pause", "stop firing a schedule (missed times are not caught up)"),
    ("resume", "fire a paused schedule again"),
    ("run", "fire a schedule now, once"),
)

QUEUE_SET: Spec = (
    Opt("queue"),
    Opt(
        "--concurrency",
        metavar="N|default",
        help="most jobs of the queue running at once; 'default' for the config's",
    ),
    Opt(
        "--rate",
        metavar="N/s|N/m|N/h|default",
        help="how often jobs of the queue may start (a token bucket); 'default' for the config's",
    ),
    Opt("--burst", type=int, default=1, metavar="N", help="starts allowed at once under --rate"),
)

#: name -> (what it does, its arguments: a Spec, or for a command with actions of its
#: own the name of its builder in phxqctl.syntax)
SYNTAX: dict[str, tuple[str, Spec | str]] = {
    "submit": ("queue a command job: phxqctl submit [options] -- CMD ARG...", SUBMIT),
    "status": ("counts per status and queue, running jobs", ()),
    "list": (
        "jobs, newest first",
        (Opt("--status", choices=STATUSES), QUEUE, Opt("--limit", type=int, default=50)),
    ),
    "show": ("one job, whole", (ID,)),
    "logs": (
        "the job's output",
        (ID, Opt("--follow", "-f", action="store_true", help="keep printing until it ends")),
    ),
    "wait": (
        "block until the jobs finish; exit 1 unless all completed",
        (IDS, TIMEOUT.but(help=None)),
    ),
    "cancel": ("cancel pending or running jobs (kills the process tree)", (IDS,)),
    "retry": ("requeue failed or cancelled jobs", (IDS,)),
    "retry-failed": ("requeue every failed job", (QUEUE,)),
    "clear": (
        "forget finished jobs (never pending or running ones)",
        (Opt("--status", choices=sorted(FINISHED)), QUEUE),
    ),
    "pause": ("stop starting jobs from a queue, or from all queues", (Opt("queue", nargs="?"),)),
    "resume": ("start jobs again from a queue, or from all queues", (Opt("queue", nargs="?"),)),
    "queue": ("show queues, or set a queue's concurrency or rate at run time", "queue"),
    "schedule": (
        "cron and interval schedules: add, list, show, remove, pause, resume, run",
        "schedule",
    ),
    "progress": (
        "from inside a job: report its progress (shown by show and status)",
        (
            Opt("--percent", type=float),
            Opt("--step", help="what the job is doing now"),
            Opt("--done", type=int),
            Opt("--total", type=int),
        ),
    ),
    "metrics": ("the daemon's metrics, in the Prometheus text format", ()),
    "watch": (
        "live view: counts, running jobs with progress and ETA, failures",
        (Opt("ids", type=int, nargs="*", metavar="ID", help="only these jobs"),),
    ),
    "completion": (
        "print the shell completion script for bash, zsh or fish",
        (Opt("shell", choices=("bash", "zsh", "fish")),),
    ),
}
