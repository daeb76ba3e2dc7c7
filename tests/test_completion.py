"""`phxqctl completion SHELL`: each script loaded in its real shell and asked to complete.

bash: COMP_WORDS/COMP_CWORD set and the function called, COMPREPLY read back. fish:
`complete -C` (fish completes non-interactively). zsh: the function called with `words`
and `CURRENT` set; compadd and friends only exist inside zsh's completion widgets, so they
are replaced by functions that print what they were given. `make test` installs zsh and
fish when it can; without them these tests skip, except under CI=1, where they fail.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

from tests.conftest import Daemon, clean_environment, need

BIN = str(Path(sys.executable).parent)


def script(name: str, env: dict[str, str] | None = None) -> str:
    r = subprocess.run(
        [sys.executable, "-m", "phxqctl", "completion", name],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    return r.stdout


def env_with(daemon: Daemon | None = None) -> dict[str, str]:
    base = daemon.env if daemon is not None else clean_environment(Path(os.environ["HOME"]))
    return {**base, "PATH": BIN + os.pathsep + base.get("PATH", "")}


def bash_complete(line: str, env: dict[str, str]) -> list[str]:
    """Complete the last word of `line` (a trailing space: a new, empty word)."""
    words = shlex.split(line) + ([""] if line.endswith(" ") else [])
    code = (
        f"{script('bash')}\n"
        f"COMP_WORDS=({' '.join(shlex.quote(w) for w in words)})\n"
        f"COMP_CWORD={len(words) - 1}\n"
        "_phxqctl\n"
        'printf "%s\\n" "${COMPREPLY[@]}"\n'
    )
    r = subprocess.run(
        [need("bash"), "--norc", "-c", code], capture_output=True, text=True, env=env
    )
    assert r.returncode == 0, r.stderr
    return [w for w in r.stdout.splitlines() if w]


def test_bash_completes_commands_options_statuses_and_queues(daemon: Daemon) -> None:
    env = env_with(daemon)
    assert bash_complete("phxqctl st", env) == ["status"]
    assert set(bash_complete("phxqctl ", env)) >= {"submit", "watch", "completion", "--json"}
    assert "--follow" in bash_complete("phxqctl logs --", env)
    assert bash_complete("phxqctl list --status f", env) == ["failed"]
    assert set(bash_complete("phxqctl clear --status ", env)) == {
        "completed",
        "failed",
        "cancelled",
    }
    assert bash_complete("phxqctl completion z", env) == ["zsh"]
    assert set(bash_complete("phxqctl queue ", env)) >= {"list", "set"}
    assert "--queue" in bash_complete("phxqctl --socket /x.sock submit --q", env)
    # queue names come from the daemon
    daemon.ok("pause")
    daemon.submit("true", opts=("--queue", "images"))
    assert set(bash_complete("phxqctl submit --queue ", env)) == {"images", "default"}
    assert bash_complete("phxqctl pause im", env) == ["images"]
    # after --, a command, then files
    assert "true" in bash_complete("phxqctl submit -- tru", env)


def test_zsh_script_parses_and_completes() -> None:
    zsh = need("zsh")
    text = script("zsh")
    assert text.startswith("#compdef phxqctl\n")
    path_ok = subprocess.run([zsh, "-n", "-c", text], capture_output=True, text=True)
    assert path_ok.returncode == 0, path_ok.stderr

    def complete(*words: str) -> list[str]:
        stubs = (
            'compadd() { while [[ "$1" == -* && "$1" != -- ]]; do shift; done; '
            '[[ "$1" == -- ]] && shift; print -l -- "$@"; }\n'
            '_describe() { local -a list; list=("${(@P)2}"); print -l -- "${list[@]%%:*}"; }\n'
            "_files() { print FILES; }\n_command_names() { print COMMANDS; }\n"
            "compdef() { :; }\n"
        )
        quoted = " ".join(shlex.quote(w) for w in words)
        code = (
            f"{stubs}{text}\nwords=({quoted})\nCURRENT={len(words)}\n"
            f"PREFIX={shlex.quote(words[-1])}\n_phxqctl\n"
        )
        r = subprocess.run([zsh, "-f", "-c", code], capture_output=True, text=True, env=env_with())
        assert r.returncode == 0, r.stderr
        return [w for w in r.stdout.splitlines() if w.startswith(words[-1])]

    assert complete("phxqctl", "st") == ["status"]
    assert "--follow" in complete("phxqctl", "logs", "--")
    assert complete("phxqctl", "list", "--status", "f") == ["failed"]
    assert complete("phxqctl", "submit", "--batch", "") == ["FILES"]
    assert complete("phxqctl", "submit", "--", "") == ["COMMANDS"]


def test_fish_script_parses_and_completes(daemon: Daemon) -> None:
    fish = need("fish")
    text = script("fish")
    parsed = subprocess.run([fish, "-n", "-c", text], capture_output=True, text=True)
    assert parsed.returncode == 0, parsed.stderr

    def complete(line: str) -> list[str]:
        code = f"{text}\ncomplete -C {shlex.quote(line)}\n"
        r = subprocess.run([fish, "-c", code], capture_output=True, text=True, env=env_with(daemon))
        assert r.returncode == 0, r.stderr
        return [w.split("\t")[0] for w in r.stdout.splitlines()]

    assert complete("phxqctl st") == ["status"]
    assert "--follow" in complete("phxqctl logs --")
    assert complete("phxqctl list --status f") == ["failed"]
    daemon.ok("pause")
    daemon.submit("true", opts=("--queue", "images"))
    assert set(complete("phxqctl submit --queue ")) == {"images", "default"}
