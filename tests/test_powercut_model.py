"""The power-cut model: what a directory tree holds after a cut, from a log of what a process
did to it (tests/powercut_shim.c records the log; test_powercut.py runs phxqd under it).

kill -9 cannot show what a power cut loses: the kernel keeps every written byte. Here the
shim logs each creation, write, truncation, rename, unlink and fsync of the followed
directories, and `rebuild` replays the log into the tree a cut at its end leaves, in one of
two models:

- `strict` (POSIX as LazyFS and ALICE take it): a file holds what it held at its last
  fsync/fdatasync (nothing if it never had one), a directory the entries it had at its last
  fsync (none if it never had one). Creations, renames and unlinks not followed by an fsync
  of their directory are undone; a file created whose directory was fsync'd but never the
  file itself is empty.
- `ext4` (data=ordered, without auto_da_alloc): metadata changes reach the disk in order,
  and every fsync commits all of them made before it: the namespace is the one at a random
  point between the last fsync and the cut. A file's data is what it held at its last fsync
  plus a random prefix of what was appended after it (delayed allocation writes appended
  data lazily), or, if it was truncated since, a random prefix of what it held at that point.
  What was written over bytes it held at its last fsync (a preallocated journal segment's
  zeros) reaches the disk block by block in any order: each 4 KiB block changed since then
  holds its old or its new content, at random.

The tree the process started with counts as durable. The tests below check the model itself
on small scripted runs, so that a phxqd test passing means what it says.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

from tests.conftest import need

SHIM_SOURCE = Path(__file__).with_name("powercut_shim.c")

Model = Literal["strict", "ext4"]
#: inode number and generation (bumped at each creation: inode numbers are reused)
Key = tuple[int, int]


def build_shim(directory: Path) -> Path:
    """The shim compiled into `directory`; `make test` installs gcc when it is missing
    (as root with apt-get); without it the tests skip, except under CI=1, where they fail."""
    cc = need("gcc")
    lib = directory / "powercut_shim.so"
    subprocess.run(
        [cc, "-O1", "-shared", "-fPIC", "-o", str(lib), str(SHIM_SOURCE), "-ldl"], check=True
    )
    return lib


def shim_env(
    shim: Path, log: Path, dirs: list[Path], kill: str | None = None, sync_delay_us: int = 0
) -> dict[str, str]:
    env = {"LD_PRELOAD": str(shim), "POWERCUT_LOG": str(log)}
    env["POWERCUT_SYNC_DELAY_US"] = str(sync_delay_us)
    env["POWERCUT_DIRS"] = ":".join(str(d) for d in dirs)
    if kill is not None:
        env["POWERCUT_KILL"] = kill
    return env


@dataclass
class Op:
    op: str
    ino: int
    a: int
    path: str
    data: bytes


def read_log(path: Path) -> tuple[list[Op], bool]:
    """The records of a log up to the cut marker; whether a marker was found. A record cut
    short by the kill (the last one) is dropped: the call it describes had returned, but
    nothing that depended on it had been done."""
    ops: list[Op] = []
    raw = path.read_bytes() if path.exists() else b""
    pos = 0
    while pos < len(raw):
        nl = raw.find(b"\n", pos)
        if nl < 0:
            break
        fields = raw[pos:nl].split(b" ")
        if len(fields) != 6:
            break
        op, ino, a, _, plen, dlen = fields
        start = nl + 1
        end = start + int(plen) + int(dlen)
        if end > len(raw):
            break
        p = raw[start : start + int(plen)].decode()
        if op == b"K":
            return ops, True
        ops.append(Op(op.decode(), int(ino), int(a), p, raw[start + int(plen) : end]))
        pos = end
    return ops, False


@dataclass
class Node:
    """One file or directory as it started: its content (a dict of names for directories)."""

    key: Key
    content: bytes | dict[str, Key]


@dataclass
class Start:
    """The followed tree as the process found it (all of it durable)."""

    root: Path
    nodes: dict[Key, Node] = field(default_factory=dict)
    #: relative path -> key
    paths: dict[str, Key] = field(default_factory=dict)


def capture(root: Path) -> Start:
    """The tree under `root` now, to replay a log over (regular files and directories)."""
    start = Start(root)

    def walk(d: Path, rel: str) -> Key:
        key = (os.lstat(d).st_ino, 0)
        entries: dict[str, Key] = {}
        for child in sorted(d.iterdir()):
            crel = f"{rel}/{child.name}" if rel else child.name
            if child.is_dir() and not child.is_symlink():
                entries[child.name] = walk(child, crel)
            elif child.is_file():
                ckey = (os.lstat(child).st_ino, 0)
                start.nodes[ckey] = Node(ckey, child.read_bytes())
                entries[child.name] = ckey
            if child.name in entries:
                start.paths[crel] = entries[child.name]
        start.nodes[key] = Node(key, entries)
        return key

    start.paths[""] = walk(root, "")
    return start


Tree = dict[str, bytes | None]  # relative path -> file content, None for a directory


def rebuild(start: Start, ops: list[Op], model: Model, rng: random.Random) -> Tree:
    """The tree a power cut after `ops` leaves, by `model` (see the module docstring)."""
    gen: dict[int, int] = {}
    kinds: dict[Key, bool] = {k: isinstance(n.content, dict) for k, n in start.nodes.items()}
    now: dict[Key, bytearray] = {
        k: bytearray(n.content) for k, n in start.nodes.items() if isinstance(n.content, bytes)
    }
    synced: dict[Key, bytes] = {k: bytes(v) for k, v in now.items()}
    listed: dict[Key, dict[str, Key]] = {
        k: dict(n.content) for k, n in start.nodes.items() if isinstance(n.content, dict)
    }
    truncated_since_sync: set[Key] = set()
    names = dict(start.paths)  # the namespace as the process changed it (ext4 model)
    last_sync = 0
    for i, op in enumerate(ops):
        if op.op in "SD":
            last_sync = i + 1
    cut_meta = rng.randint(last_sync, len(ops)) if model == "ext4" else len(ops)
    at_meta: dict[Key, bytes] = {}
    names_at_meta = dict(names)
    truncated_at_meta: set[Key] = set()

    def key(ino: int) -> Key:
        return (ino, gen.get(ino, 0))

    for i, op in enumerate(ops):
        if i == cut_meta:
            at_meta = {k: bytes(v) for k, v in now.items()}
            names_at_meta = dict(names)
            truncated_at_meta = set(truncated_since_sync)
        rel = _relative(start.root, op.path.split("\n")[-1])
        if op.op in "NM":
            gen[op.ino] = gen.get(op.ino, 0) + 1
            k = key(op.ino)
            kinds[k] = op.op == "M"
            if op.op == "N":
                now[k] = bytearray()
            if rel is not None:
                names[rel] = k
        elif op.op == "O":
            now[key(op.ino)] = bytearray()
            truncated_since_sync.add(key(op.ino))
        elif op.op == "W":
            buf = now.setdefault(key(op.ino), bytearray())
            if len(buf) < op.a:
                buf.extend(bytes(op.a - len(buf)))
            buf[op.a : op.a + len(op.data)] = op.data
        elif op.op == "A":  # preallocated: the file grows with zeros, if it must
            buf = now.setdefault(key(op.ino), bytearray())
            buf.extend(bytes(max(op.a - len(buf), 0)))
        elif op.op == "T":
            buf = now.setdefault(key(op.ino), bytearray())
            del buf[op.a :]
            buf.extend(bytes(max(op.a - len(buf), 0)))
            truncated_since_sync.add(key(op.ino))
        elif op.op == "S":
            synced[key(op.ino)] = bytes(now.get(key(op.ino), b""))
            truncated_since_sync.discard(key(op.ino))
        elif op.op == "D":
            entries = {}
            for line in op.data.decode().splitlines():
                ino, kind, name = line.split(" ", 2)
                k = key(int(ino))
                kinds.setdefault(k, kind == "d")
                entries[name] = k
            listed[key(op.ino)] = entries
        elif op.op == "R":
            old, new = (_relative(start.root, p) for p in op.path.split("\n"))
            if old is not None and old in names:
                moved = {p: k for p, k in names.items() if p == old or p.startswith(old + "/")}
                for p in moved:
                    del names[p]
                if new is not None:
                    for p, k in moved.items():
                        names[new + p[len(old) :]] = k
        elif op.op == "U" and rel is not None:
            names.pop(rel, None)
    if cut_meta == len(ops):
        at_meta = {k: bytes(v) for k, v in now.items()}
        names_at_meta = dict(names)
        truncated_at_meta = set(truncated_since_sync)

    if model == "strict":
        tree: Tree = {}

        def place(k: Key, rel: str) -> None:
            if kinds.get(k, False):
                if rel:
                    tree[rel] = None
                for name, child in listed.get(k, {}).items():
                    place(child, f"{rel}/{name}" if rel else name)
            else:
                tree[rel] = synced.get(k, b"")

        place(start.paths[""], "")
        return tree

    tree = {}
    for rel, k in sorted(names_at_meta.items()):
        if not rel or (rel.rpartition("/")[0] and rel.rpartition("/")[0] not in names_at_meta):
            continue
        if kinds.get(k, False):
            tree[rel] = None
            continue
        durable, latest = synced.get(k, b""), at_meta.get(k, b"")
        if k not in truncated_at_meta and latest.startswith(durable):
            tree[rel] = latest[: rng.randint(len(durable), len(latest))]
        elif k not in truncated_at_meta and len(latest) >= len(durable):
            tree[rel] = _overwritten(durable, latest, rng)
        else:
            tree[rel] = latest[: rng.randint(0, len(latest))]
    return tree


#: the filesystem block: the unit in which unsynced overwrites reach the disk
BLOCK = 4096


def _overwritten(durable: bytes, latest: bytes, rng: random.Random) -> bytes:
    """A file written over in place since its last fsync: each changed block old or new,
    then a random prefix of what was appended beyond the durable size."""
    out = bytearray(latest[: rng.randint(len(durable), len(latest))])
    for b in range(0, len(durable), BLOCK):
        if durable[b : b + BLOCK] != latest[b : b + BLOCK] and rng.random() < 0.5:
            out[b : b + BLOCK] = durable[b : b + BLOCK]
    return bytes(out)


def _relative(root: Path, path: str) -> str | None:
    prefix = str(root)
    if path == prefix:
        return ""
    if path.startswith(prefix + "/"):
        return path[len(prefix) + 1 :]
    return None


def lay_out(root: Path, tree: Tree) -> None:
    """Replace what is under `root` with `tree`."""
    for child in root.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()
    for rel in sorted(tree):
        content = tree[rel]
        path = root / rel
        if content is None:
            path.mkdir(mode=0o700)
        else:
            path.write_bytes(content)
            path.chmod(0o600)


# ----------------------------------------------------------------- the model's own tests


@pytest.fixture(scope="module")
def shim(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_shim(tmp_path_factory.mktemp("shim"))


SCRIPT = r"""
import os, sys
root = sys.argv[1]
def fsync_dir(p):
    fd = os.open(p, os.O_RDONLY | os.O_DIRECTORY)
    os.fsync(fd)
    os.close(fd)
def put(p, data, sync):
    fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.write(fd, data)
    if sync:
        os.fdatasync(fd)
    os.close(fd)
os.mkdir(f"{root}/j")
fsync_dir(root)                             # j is durable, empty
os.mkdir(f"{root}/d")                       # never made durable
put(f"{root}/d/lost", b"x", True)
put(f"{root}/j/a", b"synced", True)
fsync_dir(f"{root}/j")                      # a: durable, "synced"
put(f"{root}/j/a", b"+unsynced", False)
put(f"{root}/j/b", b"unlisted", True)       # b: fsync'd, its entry never
os.replace(f"{root}/j/a", f"{root}/j/c")    # not durable: a stays a
put(f"{root}/old", b"+more", True)          # old: was there at the start
os.unlink(f"{root}/old")                    # not durable
os.unlink(f"{root}/j/b")
"""


def run_script(tmp_path: Path, shim: Path, kill: str | None = None) -> tuple[Start, list[Op]]:
    root = tmp_path / "root"
    root.mkdir()
    (root / "old").write_bytes(b"at start")
    start = capture(root)
    log = tmp_path / "ops.log"
    env = {**os.environ, **shim_env(shim, log, [root, root / "d", root / "j"], kill)}
    subprocess.run([sys.executable, "-c", SCRIPT, str(root)], env=env, check=kill is None)
    ops, _ = read_log(log)
    return start, ops


def test_strict_keeps_only_what_was_fsynced_files_and_directory_entries(
    tmp_path: Path, shim: Path
) -> None:
    start, ops = run_script(tmp_path, shim)
    tree = rebuild(start, ops, "strict", random.Random(0))
    assert tree == {"j": None, "j/a": b"synced", "old": b"at start+more"}


def test_ext4_keeps_metadata_in_order_and_a_prefix_of_unsynced_appends(
    tmp_path: Path, shim: Path
) -> None:
    start, ops = run_script(tmp_path, shim)
    seen = set()
    for seed in range(40):
        tree = rebuild(start, ops, "ext4", random.Random(seed))
        # every metadata change up to the last fsync is in: d, d/lost and j exist
        assert tree["d"] is None and tree["d/lost"] == b"x" and tree["j"] is None
        content = tree.get("j/a", tree.get("j/c"))
        assert content is not None and b"synced+unsynced".startswith(content)
        assert content.startswith(b"synced")
        seen.add((content, "j/c" in tree, "old" in tree))
    assert len(seen) > 3, "the cut point and the kept prefix are drawn at random"


def test_the_kill_trigger_cuts_right_after_the_named_call(tmp_path: Path, shim: Path) -> None:
    start, ops = run_script(tmp_path, shim, kill="R:/j/c:1")
    assert ops[-1].op == "R" and ops[-1].path.endswith("/j/c")
    tree = rebuild(start, ops, "strict", random.Random(0))
    assert tree == {"j": None, "j/a": b"synced", "old": b"at start"}


def test_lay_out_writes_the_tree(tmp_path: Path) -> None:
    root = tmp_path / "r"
    root.mkdir()
    (root / "stale").write_text("x")
    lay_out(root, {"a": None, "a/b": b"1", "c": b""})
    assert capture(root).paths.keys() == {"", "a", "a/b", "c"}
    assert (root / "a" / "b").read_bytes() == b"1"


PREALLOCATED = r"""
import os, sys
root = sys.argv[1]
fd = os.open(f"{root}/j/seg", os.O_WRONLY | os.O_CREAT, 0o600)
d = os.open(f"{root}/j", os.O_RDONLY | os.O_DIRECTORY)
os.fsync(d)
os.pwrite(fd, b"head", 0)
os.posix_fallocate(fd, 0, 12288)
os.fdatasync(fd)                            # "head", then zeros to 12 KiB
os.pwrite(fd, b"a" * 100, 100)              # written over the zeros, never synced
os.pwrite(fd, b"b" * 100, 4096 + 100)
os.pwrite(fd, b"c" * 100, 8192 + 100)
"""


def test_ext4_keeps_each_block_written_over_in_place_old_or_new(tmp_path: Path, shim: Path) -> None:
    # A preallocated journal segment is written over in place: after a cut, a later
    # block's new content can be on disk while an earlier one's is not.
    root = tmp_path / "root"
    (root / "j").mkdir(parents=True)
    start = capture(root)
    log = tmp_path / "ops.log"
    env = {**os.environ, **shim_env(shim, log, [root, root / "j"])}
    subprocess.run([sys.executable, "-c", PREALLOCATED, str(root)], env=env, check=True)
    ops, _ = read_log(log)
    assert [o.op for o in ops if o.op in "AS"] == ["A", "S"], "posix_fallocate is recorded"
    synced = b"head" + bytes(12288 - 4)
    assert rebuild(start, ops, "strict", random.Random(0))["j/seg"] == synced
    seen = set()
    for seed in range(40):
        content = rebuild(start, ops, "ext4", random.Random(seed))["j/seg"]
        assert content is not None and len(content) == 12288 and content.startswith(b"head")
        seen.add(tuple(content[b * 4096 + 100] for b in range(3)))
    assert (0, ord("b"), 0) in seen and (ord("a"), 0, ord("c")) in seen, seen
