"""phxqctl's argparse parsers, built from phxqctl.args: for `--help`, for errors, and for
the command lines phxqctl.fast leaves to argparse; the completion scripts read them too.

argparse builds a parser per subcommand with every option; building all 18 costs more
than the rest of `phxqctl status`. So the top parser only takes the command name, and
only that command's parser is built (`command_parser`).
"""

from __future__ import annotations

import argparse
import os
import sys

from phxqctl.args import (
    COMMON,
    QUEUE_SET,
    REMAINDER,
    SCHEDULE_ADD,
    SCHEDULE_BY_NAME,
    SUPPRESS,
    SYNTAX,
    Args,
    OneOf,
    Opt,
)
from phxqctl.errors import one_line

#: typing costs a few ms to import; the annotations are strings (PEP 563) anyway
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import NoReturn

    from phxqctl.args import Spec

EXIT_USAGE = 2


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


class TopFormatter(Formatter, argparse.RawDescriptionHelpFormatter):
    """Keeps the command list of the top-level help as written."""


def add(p: argparse.ArgumentParser, spec: Spec) -> None:
    """A command's arguments (phxqctl.args), added to its parser in their order."""
    for item in spec:
        if isinstance(item, OneOf):
            group = p.add_mutually_exclusive_group(required=item.required)
            for opt in item.opts:
                _add_one(group, opt)
        else:
            _add_one(p, item)


def _add_one(p: argparse._ActionsContainer, opt: Opt) -> None:
    kw = dict(opt.kw)
    if isinstance(kw.get("default"), list | dict):  # each parser its own, never shared
        kw["default"] = type(kw["default"])(kw["default"])
    for key, value in kw.items():  # argparse looks for its own objects (`is SUPPRESS`)
        if value == SUPPRESS:
            kw[key] = argparse.SUPPRESS
        elif value == REMAINDER:
            kw[key] = argparse.REMAINDER
    p.add_argument(*opt.flags, **kw)


def _action_parser(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], name: str, what: str, spec: Spec
) -> None:
    """`queue ACTION`, `schedule ACTION`: a sub-parser with --json, --socket and `spec`."""
    p = sub.add_parser(name, help=what, formatter_class=Formatter)
    add(p, COMMON + spec)


def _queue(p: argparse.ArgumentParser) -> None:
    qsub = p.add_subparsers(dest="queue_command", metavar="ACTION", required=True)
    _action_parser(qsub, "list", "queues with counts and limits", ())
    _action_parser(qsub, "set", "set a queue's concurrency or start rate", QUEUE_SET)


def _schedule(p: argparse.ArgumentParser) -> None:
    ssub = p.add_subparsers(dest="schedule_command", metavar="ACTION", required=True)
    _action_parser(
        ssub,
        "add",
        "add (or replace) a schedule: NAME (--cron EXPR | --every DURATION) -- CMD...",
        SCHEDULE_ADD,
    )
    _action_parser(ssub, "list", "schedules and their next fire", ())
    for action, what in SCHEDULE_BY_NAME:
        _action_parser(ssub, action, what, (Opt("name"),))


BUILDERS = {"queue": _queue, "schedule": _schedule}


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
    add(p, COMMON)
    p.add_argument("command", metavar="COMMAND", choices=SYNTAX, help="one of the commands below")
    p.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    return p


def command_parser(name: str) -> argparse.ArgumentParser:
    what, spec = SYNTAX[name]
    p = Parser(prog=f"phxqctl {name}", description=what, formatter_class=Formatter)
    add(p, COMMON)
    if isinstance(spec, str):
        BUILDERS[spec](p)
    else:
        add(p, spec)
    return p


def parse_args(argv: list[str] | None) -> Args:
    # argparse looks up a translation of its few words ("usage:", "options") a dozen times
    # per start: each look-up imports `locale`, normalises the language variables and
    # probes for .mo files that Python does not ship (a large part of what parsing cost in
    # a wheel install, bench/bench_client.py); phxqctl's own messages are English anyway.
    translate = argparse._  # type: ignore[attr-defined]
    argparse._ = _untranslated  # type: ignore[attr-defined]
    try:
        args = top_parser().parse_args(argv, namespace=Args())
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
