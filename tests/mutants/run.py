"""`make mutants`: apply each change of mutants.toml to a copy of the tree, run the tests
named with it, and report which changes no test noticed (the survivors).

Usage: python -m tests.mutants.run [--only SUBSTRING] [--timeout SECONDS]
Exit status: 0 when every mutant was killed, 1 when one survived, 2 on a broken list.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
LIST = Path(__file__).with_name("mutants.toml")


def copy_tree(dest: Path) -> None:
    """The tracked and new (not ignored) files of the work tree, as they are now."""
    files = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    for name in filter(None, files):
        src = ROOT / os.fsdecode(name)
        if src.is_file():
            (dest / src.relative_to(ROOT)).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / src.relative_to(ROOT))


def apply(tree: Path, mutant: dict[str, Any]) -> str:
    """Write the mutant into `tree`; the original text of the file, to put back."""
    path = tree / mutant["file"]
    text = path.read_text()
    found = text.count(mutant["old"])
    if found != 1:
        raise SystemExit(f"mutant {mutant['name']!r}: `old` found {found} times in {path}")
    path.write_text(text.replace(mutant["old"], mutant["new"]))
    return text


def run(tree: Path, tests: list[str], timeout: float) -> tuple[str, float, str]:
    """'killed', 'survived' or 'error'; the seconds the tests took; the test that failed."""
    env = {**os.environ, "PYTHONPATH": str(tree), "PYTHONDONTWRITEBYTECODE": "1"}
    began = time.monotonic()
    try:
        r = subprocess.run(
            [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests],
            cwd=tree,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        return "killed (timed out)", time.monotonic() - began, ""
    took = time.monotonic() - began
    if r.returncode == 0:
        return "survived", took, ""
    if r.returncode == 1:
        failed = [ln.split(" - ")[0] for ln in r.stdout.splitlines() if ln.startswith("FAILED")]
        return "killed", took, (failed[0].removeprefix("FAILED ") if failed else "")
    sys.stderr.write(r.stdout[-2000:] + r.stderr[-2000:])
    return f"error (pytest exit {r.returncode})", took, ""


def main() -> int:
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[attr-defined]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help="run the mutants whose name contains this")
    parser.add_argument("--timeout", type=float, default=600.0, help="per mutant (seconds)")
    args = parser.parse_args()
    mutants = tomllib.loads(LIST.read_text())["mutant"]
    if args.only:
        mutants = [m for m in mutants if args.only in m["name"]]
    survivors: list[str] = []
    with tempfile.TemporaryDirectory(prefix="phxq-mutants-") as tmp:
        tree = Path(tmp)
        copy_tree(tree)
        for m in mutants:  # every `old` is checked before anything runs
            (tree / m["file"]).write_text(apply(tree, m))
        baseline = sorted({t for m in mutants for t in m["tests"]})
        verdict, took, _ = run(tree, baseline, args.timeout)
        shown = "pass" if verdict == "survived" else verdict
        print(f"unchanged tree: {len(baseline)} test files {shown} ({took:.0f}s)")
        if verdict != "survived":
            print("the tests fail without any mutant: fix them first")
            return 2
        for m in mutants:
            original = apply(tree, m)
            try:
                verdict, took, by = run(tree, m["tests"], args.timeout)
            finally:
                (tree / m["file"]).write_text(original)
            print(f"{verdict:>20}  {m['name']}  ({took:.0f}s, {by or ' '.join(m['tests'])})")
            if verdict == "survived":
                survivors.append(m["name"])
    print(
        f"{len(mutants)} mutants, {len(survivors)} survived"
        + "".join(f"\n  {s}" for s in survivors)
    )
    return 1 if survivors else 0


if __name__ == "__main__":
    sys.exit(main())
