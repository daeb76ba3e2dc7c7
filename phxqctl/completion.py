"""`phxqctl completion bash|zsh|fish`: shell completion scripts, made from the parsers.

The commands, their options and the values of options with fixed choices (`--status`)
are read from phxqctl's own argparse parsers (phxqctl.syntax), so the scripts cannot drift from
the command line. Queue names (`--queue`, `pause`, `resume`, `queue set`) are asked of
phxqd when completing (`phxqctl --json queue list`), with `default` if it does not answer.
"""

from __future__ import annotations

import argparse

from phxqctl import syntax
from phxqctl.args import SYNTAX

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator

SHELLS = ("bash", "zsh", "fish")
#: options whose value is a path
FILES = {"--socket", "--batch", "--cwd"}
#: what completes a queue name, in a POSIX shell (bash, zsh)
QUEUES_SH = (
    "phxqctl --json queue list 2>/dev/null "
    '| sed -n \'s/^{"queue":"\\([^"]*\\)".*/\\1/p\'; echo default'
)


class Option:
    def __init__(self, action: argparse.Action) -> None:
        self.flags = [f for f in action.option_strings if f.startswith("--")]
        self.takes_value = action.nargs != 0
        self.choices = [str(c) for c in action.choices] if action.choices else []
        self.help = (action.help or "").replace("%(default)s", str(action.default))
        self.flag = self.flags[0]
        self.kind = (
            "choices"
            if self.choices
            else "file"
            if self.flag in FILES
            else "queue"
            if self.flag == "--queue"
            else "value"
            if self.takes_value
            else "flag"
        )


class Command:
    def __init__(self, name: str, help: str, parser: argparse.ArgumentParser) -> None:
        self.name = name
        self.help = help
        self.options = [
            Option(a) for a in parser._actions if a.option_strings and a.help != argparse.SUPPRESS
        ]
        #: words a command takes first: `queue list|set`, `completion bash|zsh|fish`
        self.actions: list[str] = []
        for a in parser._actions:
            if not a.option_strings and a.choices and not isinstance(a, argparse._SubParsersAction):
                self.actions += [str(c) for c in a.choices]
            if isinstance(a, argparse._SubParsersAction):
                self.actions = list(a.choices)
                for sub in a.choices.values():
                    seen = {o.flag for o in self.options}
                    self.options += [
                        o
                        for o in (Option(x) for x in sub._actions if x.option_strings)
                        if o.flag not in seen
                    ]
        self.queue_argument = name in ("pause", "resume") or name == "queue"


def commands() -> list[Command]:
    return [Command(name, what, syntax.command_parser(name)) for name, (what, _) in SYNTAX.items()]


def script(shell: str) -> str:
    return {"bash": bash, "zsh": zsh, "fish": fish}[shell](commands())


def _words(items: Iterator[str] | list[str]) -> str:
    return " ".join(items)


# --------------------------------------------------------------------- bash


def bash(cmds: list[Command]) -> str:
    value_cases = []
    option_cases = []
    for c in cmds:
        for o in c.options:
            if o.kind == "choices":
                value_cases.append(f'        {c.name}:{o.flag}) words="{_words(o.choices)}" ;;')
        flags = [f for o in c.options for f in o.flags]
        option_cases.append(f'            {c.name}) words="{_words([*c.actions, *flags])}" ;;')
    queue_commands = "|".join(c.name for c in cmds if c.queue_argument and c.name != "queue")
    return f"""# bash completion for phxqctl: `source <(phxqctl completion bash)`, or save it as
# /usr/share/bash-completion/completions/phxqctl
_phxqctl() {{
    local cur="${{COMP_WORDS[COMP_CWORD]}}" prev="${{COMP_WORDS[COMP_CWORD-1]}}"
    local cmd="" i words="" dashdash=""
    for ((i = 1; i < COMP_CWORD; i++)); do
        case "${{COMP_WORDS[i]}}" in
            --socket) ((i++)) ;;
            -*) ;;
            *) cmd="${{COMP_WORDS[i]}}"; break ;;
        esac
    done
    for ((i = i + 1; i < COMP_CWORD; i++)); do
        [[ "${{COMP_WORDS[i]}}" == "--" ]] && dashdash=$i
    done
    COMPREPLY=()
    if [[ -n "$dashdash" ]]; then  # submit -- CMD ARG...
        if ((COMP_CWORD == dashdash + 1)); then
            COMPREPLY=($(compgen -c -- "$cur"))
        else
            COMPREPLY=($(compgen -f -- "$cur"))
        fi
        return
    fi
    case "$prev" in
        {"|".join(sorted(FILES))}) COMPREPLY=($(compgen -f -- "$cur")); return ;;
        --queue) COMPREPLY=($(compgen -W "$({QUEUES_SH})" -- "$cur")); return ;;
    esac
    if [[ -z "$cmd" ]]; then
        COMPREPLY=($(compgen -W "{_words(c.name for c in cmds)} --json --socket --help" -- "$cur"))
        return
    fi
    case "$cmd:$prev" in
{chr(10).join(value_cases)}
        queue:set) words="$({QUEUES_SH})" ;;
    esac
    if [[ -z "$words" && "$cur" != -* ]]; then
        case "$cmd" in
            {queue_commands}) words="$({QUEUES_SH})" ;;
        esac
    fi
    if [[ -z "$words" ]]; then
        case "$cmd" in
{chr(10).join(option_cases)}
        esac
    fi
    COMPREPLY=($(compgen -W "$words" -- "$cur"))
}}
complete -F _phxqctl phxqctl
"""


# ---------------------------------------------------------------------- zsh


def _zq(text: str) -> str:
    """A zsh single-quoted word."""
    return "'" + text.replace("'", "'\\''") + "'"


def zsh(cmds: list[Command]) -> str:
    described = "\n".join(f"        {_zq(c.name + ':' + c.help)}" for c in cmds)
    value_cases = []
    option_cases = []
    for c in cmds:
        for o in c.options:
            if o.kind == "choices":
                value_cases.append(
                    f"        {c.name}:{o.flag}) compadd -- {_words(o.choices)}; return ;;"
                )
        flags = [f for o in c.options for f in o.flags]
        option_cases.append(f"        {c.name}) compadd -- {_words([*c.actions, *flags])} ;;")
    queue_names = " ".join(c.name for c in cmds if c.queue_argument and c.name != "queue")
    return f"""#compdef phxqctl
# zsh completion for phxqctl: save it as _phxqctl in a directory of $fpath, or, after
# compinit, `source <(phxqctl completion zsh)`
_phxqctl() {{
    local cmd="" i dashdash=0 prev="${{words[CURRENT-1]}}"
    for ((i = 2; i < CURRENT; i++)); do
        case "${{words[i]}}" in
            --socket) ((i++)) ;;
            -*) ;;
            *) cmd="${{words[i]}}"; break ;;
        esac
    done
    for ((i = i + 1; i < CURRENT; i++)); do
        [[ "${{words[i]}}" == "--" ]] && dashdash=$i
    done
    if ((dashdash)); then
        if ((CURRENT == dashdash + 1)); then _command_names; else _files; fi
        return
    fi
    case "$prev" in
        {"|".join(sorted(FILES))}) _files; return ;;
        --queue) compadd -- ${{(f)"$({QUEUES_SH})"}}; return ;;
    esac
    if [[ -z "$cmd" ]]; then
        local -a commands=(
{described}
        )
        _describe command commands
        compadd -- --json --socket --help
        return
    fi
    case "$cmd:$prev" in
{chr(10).join(value_cases)}
        queue:set) compadd -- ${{(f)"$({QUEUES_SH})"}}; return ;;
    esac
    if [[ "$PREFIX" != -* && " {queue_names} " == *" $cmd "* ]]; then
        compadd -- ${{(f)"$({QUEUES_SH})"}}
        return
    fi
    case "$cmd" in
{chr(10).join(option_cases)}
    esac
}}
if [[ "${{funcstack[1]}}" == _phxqctl ]]; then
    _phxqctl "$@"
else
    compdef _phxqctl phxqctl
fi
"""


# --------------------------------------------------------------------- fish


def _fq(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def fish(cmds: list[Command]) -> str:
    names = _words(c.name for c in cmds)
    queues = (
        "(command -q phxqctl; and phxqctl --json queue list 2>/dev/null "
        '| string replace -rf \'^\\{"queue":"([^"]*)".*\' \'$1\'; echo default)'
    )
    lines = [
        "# fish completion for phxqctl: `phxqctl completion fish | source`, or save it as",
        "# ~/.config/fish/completions/phxqctl.fish",
        "complete -c phxqctl -f",
        "complete -c phxqctl -l json -d 'print JSON only'",
        'complete -c phxqctl -l socket -r -F -d "phxqd\'s socket"',
    ]
    for c in cmds:
        lines.append(
            f"complete -c phxqctl -n 'not __fish_seen_subcommand_from {names}' "
            f"-a {c.name} -d {_fq(c.help)}"
        )
    for c in cmds:
        seen = f"__fish_seen_subcommand_from {c.name}"
        for action in c.actions:
            lines.append(f"complete -c phxqctl -n '{seen}' -a {action}")
        for o in c.options:
            if o.flag in ("--json", "--socket"):
                continue
            what = f"complete -c phxqctl -n '{seen}' -l {o.flag[2:]}"
            if o.kind == "choices":
                what += f" -x -a {_fq(_words(o.choices))}"
            elif o.kind == "file":
                what += " -r -F"
            elif o.kind == "queue":
                what += f" -x -a {_fq(queues)}"
            elif o.kind == "value":
                what += " -x"
            lines.append(what + (f" -d {_fq(o.help)}" if o.help else ""))
        if c.queue_argument and c.name != "queue":
            lines.append(f"complete -c phxqctl -n '{seen}' -a {_fq(queues)}")
    return "\n".join(lines) + "\n"
