"""The HTTP API's bearer tokens: one read-only, one for control, in a 0600 file of the
state dir (`http-tokens`), made on first use and rotated by `phxqd http-token --rotate`.

The daemon re-reads the file when it changes, so a rotation takes effect without a
restart. Tokens are compared in constant time (`hmac.compare_digest`).
"""

from __future__ import annotations

import contextlib
import hmac
import json
import os
import secrets
from pathlib import Path
from typing import Literal

Kind = Literal["read", "control"]
KINDS: tuple[Kind, ...] = ("read", "control")
FILE = "http-tokens"


class Tokens:
    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / FILE
        self._seen: tuple[int, int] | None = None
        self._tokens: dict[str, str] = {}

    def ensure(self) -> dict[str, str]:
        """The tokens, made (and saved) if there are none yet."""
        tokens = self._read()
        if all(tokens.get(k) for k in KINDS):
            return tokens
        tokens = {k: tokens.get(k) or new_token() for k in KINDS}
        self._write(tokens)
        return tokens

    def rotate(self, kind: Kind) -> str:
        tokens = self.ensure()
        tokens[kind] = new_token()
        self._write(tokens)
        return tokens[kind]

    def check(self, presented: str) -> Kind | None:
        """The kind of a presented token, or None. Every token is compared, each in
        constant time, so the time taken says nothing of which one nearly matched."""
        tokens = self._current()
        found: Kind | None = None
        for kind in KINDS:
            token = tokens.get(kind, "")
            if hmac.compare_digest(token.encode(), presented.encode()) and token:
                found = kind
        return found

    def _current(self) -> dict[str, str]:
        try:
            st = os.stat(self.path)
        except OSError:
            return {}
        seen = (st.st_mtime_ns, st.st_ino)
        if seen != self._seen:
            self._tokens, self._seen = self._read(), seen
        return self._tokens

    def _read(self) -> dict[str, str]:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        return {k: v for k, v in data.items() if k in KINDS and isinstance(v, str)}

    def _write(self, tokens: dict[str, str]) -> None:
        """Atomically, mode 0600 from the start (never readable by others, not even for a
        moment), fsync'd, then renamed over the old file."""
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = self.path.with_name(FILE + ".tmp")
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(tokens, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        dir_fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def new_token() -> str:
    return secrets.token_urlsafe(32)
