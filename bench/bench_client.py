"""Client start-up: median wall time of `phxqctl status` and `phxqctl submit -- true`
against `python -c pass` of the same interpreter, the floor (issue #19: submit within 2x).

    .venv/bin/python -m bench.bench_client [--runs N] [--fsync always|batch|off] [--editable]

phxqctl is measured as users install it: the bench builds a wheel of this tree (`pip wheel
--no-deps .`), installs it with its dependencies in a venv of its own in the temp dir, and
runs that venv's `phxqctl` script and `python`. `--editable` measures this checkout's
.venv instead, whose editable install adds an import hook to every start of its
interpreter (the floor included), which users of a wheel never pay. The installed
`phxqctl` must be bin/phxqctl (pyproject.toml, script-files), not the wrapper pip writes
for a [project.scripts] entry point, which imports `re` first: the bench checks it.

A real phxqd (2 workers, paused so submitted jobs do not run and take the CPU) in a temp
dir; each round runs every command once, in turn, so load from elsewhere on the machine
falls on all of them alike. Commands run through the venv's script, as a user runs them,
with PHXQ_SOCKET set. Bytecode is written first (PYTHONDONTWRITEBYTECODE is dropped): an
installed package has its .pyc files.

Rows for context (not targets): the floor without `site` (python -S: no site-packages, so
no editable-install path hook either), `import socket` (what the socket module alone
would cost; phxqctl uses _socket), `import phxqctl.cli` (the client's imports, without
parsing or connecting), `import re` (what pip's wrapper of an entry point would cost
before phxqctl's own code) and `import re, argparse` (what any argparse command line
pays: phxqctl's fast path parses the common ones without either), `phxqctl --help`
(argparse, no connection), and the same status request through the typed Python API
(`phxqctl.Client`, msgspec). With `--editable`, the cost of the editable install's path
hook, part of the floor, is printed from -X importtime. The daemon is this checkout's,
the same in both cases.
Prints a JSON summary on the last line.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.bench_journal import Daemon


def commands(python: str, ctl: str) -> dict[str, list[str]]:
    return {
        "python -c pass (floor)": [python, "-c", "pass"],
        "phxqctl status": [ctl, "status"],
        "phxqctl submit -- true": [ctl, "submit", "--", "true"],
        "python -S -c pass": [python, "-S", "-c", "pass"],
        "python -c 'import socket'": [python, "-c", "import socket"],
        "python -c 'import phxqctl.cli'": [python, "-c", "import phxqctl.cli"],
        "python -c 'import re'": [python, "-c", "import re"],
        "python -c 'import re, argparse'": [python, "-c", "import re, argparse"],
        "phxqctl --help": [ctl, "--help"],
        "Client().status() (msgspec)": [
            python,
            "-c",
            "from phxqctl import Client; Client().status()",
        ],
    }


HERE = Path(__file__).resolve().parent.parent


def wheel_venv(root: Path) -> Path:
    """The python of a new venv under `root` holding phxq as built into a wheel from this
    tree and installed with its dependencies, the way users install it."""
    dist, venv = root / "dist", root / "venv"
    pip_wheel = [
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "--no-deps",
        "--quiet",
        "-w",
        str(dist),
        str(HERE),
    ]
    subprocess.run(pip_wheel, check=True, stdout=subprocess.DEVNULL)
    subprocess.run([sys.executable, "-m", "venv", venv], check=True)
    python = venv / "bin" / "python"
    (wheel,) = dist.glob("phxq-*.whl")
    subprocess.run([python, "-m", "pip", "install", "--quiet", wheel], check=True)
    return python


def plain_script(path: Path) -> bool:
    """Whether `phxqctl` is bin/phxqctl as installed (its interpreter line rewritten), not
    the wrapper of an entry point (which imports `re` before anything else)."""
    text = path.read_text()
    here = (HERE / "bin" / "phxqctl").read_text()
    return text.partition("\n")[2] == here.partition("\n")[2] and "import re" not in text


def editable_hook_ms(python: str, env: dict[str, str]) -> float | None:
    """Cumulative import time of the editable install's finder, as -X importtime says."""
    r = subprocess.run(
        [python, "-X", "importtime", "-c", "pass"], env=env, capture_output=True, text=True
    )
    hooks = [
        int(line.split("|")[1]) / 1000
        for line in r.stderr.splitlines()
        if line.startswith("import time:") and line.split("|")[2].strip().startswith("__editable__")
    ]
    return max(hooks) if hooks else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=40)
    ap.add_argument("--fsync", default="always", choices=["always", "batch", "off"])
    ap.add_argument(
        "--editable", action="store_true", help="this checkout's .venv instead of a wheel"
    )
    opts = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="phxq-bench-client-") as tmp:
        python = sys.executable if opts.editable else str(wheel_venv(Path(tmp)))
        ctl = str(Path(python).parent / "phxqctl")
        script = plain_script(Path(ctl))
        d = Daemon(Path(tmp), opts.fsync)
        d.start()
        env = {k: v for k, v in d.env.items() if k != "PYTHONDONTWRITEBYTECODE"}
        try:
            subprocess.run([ctl, "pause"], env=env, check=True, stdout=subprocess.DEVNULL)
            cmds = commands(python, ctl)
            # run from the temp dir: `python -c` puts the working directory first on the
            # path, and from this checkout it would import phxqctl from here, not the wheel
            for argv in cmds.values():  # warm up: .pyc files, page cache
                subprocess.run(argv, env=env, check=True, stdout=subprocess.DEVNULL, cwd=tmp)
            times: dict[str, list[float]] = {name: [] for name in cmds}
            for _ in range(opts.runs):
                for name, argv in cmds.items():
                    t0 = time.perf_counter()
                    subprocess.run(argv, env=env, check=True, stdout=subprocess.DEVNULL, cwd=tmp)
                    times[name].append(time.perf_counter() - t0)
            hook = editable_hook_ms(python, env) if opts.editable else None
        finally:
            d.kill()
    medians = {name: statistics.median(t) * 1000 for name, t in times.items()}
    floor = medians["python -c pass (floor)"]
    install = "editable install (.venv)" if opts.editable else "wheel installed in its own venv"
    kind = "bin/phxqctl" if script else "NOT bin/phxqctl (an entry point's wrapper?)"
    print(
        f"client start-up, {install}, median of {opts.runs} runs each "
        f"(fsync={opts.fsync}, {os.cpu_count()} CPUs); phxqctl installed as {kind}"
    )
    print(f"{'command':32} {'median ms':>10} {'p90 ms':>8} {'x floor':>8}")
    for name, t in times.items():
        p90 = statistics.quantiles(t, n=10)[-1] * 1000
        print(f"{name:32} {medians[name]:10.1f} {p90:8.1f} {medians[name] / floor:8.2f}")
    if hook is not None:
        print(f"editable-install path hook (in the floor): {hook:.1f} ms by -X importtime")
    target = 2.0
    summary = {
        "install": "editable" if opts.editable else "wheel",
        "runs": opts.runs,
        "plain_script": script,
        "fsync": opts.fsync,
        "floor_ms": round(floor, 1),
        "status_ratio": round(medians["phxqctl status"] / floor, 2),
        "submit_ratio": round(medians["phxqctl submit -- true"] / floor, 2),
        "target_ratio": target,
        "medians_ms": {k: round(v, 1) for k, v in medians.items()},
        "editable_hook_ms": hook,
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
