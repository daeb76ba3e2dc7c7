"""A stop (SIGTERM) while clients are sending requests: every request is answered, refused
saying nothing was done, or its client is told that it may or may not have been done.

Never a job made while its client heard only "connection closed": a script that submits
again then makes a duplicate without any warning.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
from pathlib import Path

from phxqd import protocol
from tests.conftest import clean_environment, read_payload


def test_phxqctl_says_a_request_unanswered_may_have_been_done(tmp_path: Path) -> None:
    """phxqd (here the test in its place) reads the submit and hangs up without a reply:
    phxqctl cannot know whether the job was made, and says so, with exit status 3."""
    path = tmp_path / "phxqd.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(1)
    listener.settimeout(60)

    def answer_hello_only() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.settimeout(60)
            read_payload(conn)  # hello
            conn.sendall(protocol.frame(protocol.Ok(protocol.HelloReply(1))))
            read_payload(conn)  # the submit, never answered

    thread = threading.Thread(target=answer_hello_only, daemon=True)
    thread.start()
    r = subprocess.run(
        [sys.executable, "-m", "phxqctl", "submit", "--", "true"],
        cwd=tmp_path,
        env={**clean_environment(tmp_path / "home"), "PHXQ_SOCKET": str(path)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    thread.join(60)
    listener.close()
    assert (r.returncode, r.stdout) == (3, "")
    assert r.stderr == (
        "phxqctl: phxqd closed the connection before answering (did it stop?); "
        "the request may or may not have been carried out\n"
    )
