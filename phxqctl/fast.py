"""The command lines phxqctl sees most, parsed without argparse.

argparse costs `phxqctl submit -- true` about as much as connecting, submitting and
printing the id (its import, `re`'s, and building the parser; docs/benchmarks.md, client
start-up). So `parse` reads the plain cases itself, from the same definitions as
argparse's parsers (phxqctl.args), and gives the same Args argparse would. Anything it is
not sure of (an unknown or abbreviated option, `--help`, a value that does not convert or
starts with `-`, a missing or extra argument, `queue` and `schedule`) it leaves to
argparse, returning None: argparse then parses it, prints its help or its error.
tests/test_cli_fast.py checks, on generated command lines, that every Args given here is
argparse's.
"""

from __future__ import annotations

from phxqctl.args import COMMON, REMAINDER, SUPPRESS, SYNTAX, Args, OneOf, Opt

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from phxqctl.args import Spec


class Refused(Exception):
    """Not a case for the fast path: argparse decides."""


def parse(argv: list[str]) -> Args | None:
    """argparse's Args for `argv` (phxqctl's arguments, without the program), or None."""
    try:
        return _parse(argv)
    except Refused:
        return None


def _parse(argv: list[str]) -> Args:
    values: dict[str, Any] = {}
    common = Options(COMMON)
    i = 0
    while i < len(argv) and argv[i].startswith("-"):  # --json, --socket before the command
        i = common.take(argv, i, values)
    if i == len(argv) or argv[i] not in SYNTAX:
        raise Refused
    name = argv[i]
    spec = SYNTAX[name][1]
    if isinstance(spec, str):  # queue, schedule: actions of their own
        raise Refused
    options = Options(COMMON + spec)
    for opt in options.all:
        store_true = opt.kw.get("action") == "store_true"
        default = opt.kw.get("default", False if store_true else None)
        if default != SUPPRESS and opt.dest not in values:
            values[opt.dest] = type(default)(default) if isinstance(default, list) else default
    positionals = [o for o in options.all if o.positional]
    rest = positionals[-1] if positionals and positionals[-1].kw.get("nargs") == REMAINDER else None
    words: list[str] = []
    words_end = -1  # the index after the last positional word
    i += 1
    if argv[i : i + 1] == ["--"]:
        # `submit -- CMD`: argparse's top parser takes the `--` with the command name,
        # then the command's parser reads the rest as if no `--` had been there: from a
        # first word that is not an option, all of it is the command
        if rest is None or (argv[i + 1 : i + 2] and argv[i + 1].startswith("-")):
            raise Refused
        values[rest.dest] = argv[i + 1 :]
        i = len(argv) + 1  # the loop below has nothing to do, nor its `else`
    while i < len(argv):
        arg = argv[i]
        if rest is not None and (arg == "--" or not arg.startswith("-")):
            values[rest.dest] = argv[i:]  # the command: as it is, a `--` before it kept
            break
        if arg.startswith("-"):
            i = options.take(argv, i, values)
            continue
        if words and i != words_end:
            raise Refused  # positionals on both sides of an option
        words.append(arg)
        i = words_end = i + 1
    else:
        if rest is not None and i == len(argv):
            values[rest.dest] = []
    if rest is not None:
        positionals.pop()
    _positionals(positionals, words, values)
    return Args(command=name, **values)


def _positionals(positionals: list[Opt], words: list[str], values: dict[str, Any]) -> None:
    if not positionals:
        if words:
            raise Refused
        return
    (opt,) = positionals
    nargs = opt.kw.get("nargs")
    if nargs is None:
        if len(words) != 1:
            raise Refused
        values[opt.dest] = _value(opt, words[0])
    elif nargs == "?":
        if len(words) > 1:
            raise Refused
        values[opt.dest] = _value(opt, words[0]) if words else opt.kw.get("default")
    elif nargs in ("*", "+"):
        if nargs == "+" and not words:
            raise Refused
        values[opt.dest] = [_value(opt, w) for w in words]
    else:
        raise Refused


def _value(opt: Opt, text: str) -> Any:
    """The value as argparse makes it: `type` applied, `choices` checked."""
    kind = opt.kw.get("type")
    try:
        value = kind(text) if kind is not None else text
    except Exception:  # argparse's message for it
        raise Refused from None
    choices = opt.kw.get("choices")
    if choices is not None and value not in choices:
        raise Refused
    return value


class Options:
    """A command's options by flag, and which of them exclude each other."""

    def __init__(self, spec: Spec) -> None:
        self.all: list[Opt] = []
        self.by_flag: dict[str, Opt] = {}
        #: option -> the others of its OneOf group
        self.excludes: dict[str, list[str]] = {}
        for item in spec:
            group = item.opts if isinstance(item, OneOf) else (item,)
            if isinstance(item, OneOf) and item.required:
                raise Refused
            for opt in group:
                self.all.append(opt)
                for flag in opt.flags if not opt.positional else ():
                    self.by_flag[flag] = opt
                if isinstance(item, OneOf):
                    self.excludes[opt.dest] = [o.dest for o in group if o is not opt]
        self.given: set[str] = set()

    def take(self, argv: list[str], i: int, values: dict[str, Any]) -> int:
        """The option at argv[i] (and its value) into `values`; the index after them."""
        flag, eq, explicit = argv[i].partition("=")
        opt = self.by_flag.get(argv[i])
        if opt is not None:
            eq = ""
        elif eq and flag.startswith("--"):
            opt = self.by_flag.get(flag)
        if opt is None:
            raise Refused  # unknown, abbreviated, --help, -- or a negative number
        if any(other in self.given for other in self.excludes.get(opt.dest, ())):
            raise Refused
        self.given.add(opt.dest)
        action = opt.kw.get("action", "store")
        if action == "store_true":
            if eq:
                raise Refused
            values[opt.dest] = True
            return i + 1
        if eq:
            text, after = explicit, i + 1
        elif i + 1 < len(argv) and not argv[i + 1].startswith("-"):
            text, after = argv[i + 1], i + 2
        else:
            raise Refused  # no value, or one argparse may take for an option
        if opt.kw.get("nargs") is not None:
            raise Refused
        value = _value(opt, text)
        if action == "store":
            values[opt.dest] = value
        elif action == "append":
            values[opt.dest] = [*values[opt.dest], value]
        else:
            raise Refused
        return after
