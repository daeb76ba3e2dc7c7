"""The constants phxqctl and phxqd must agree on, defined once for both.

The command line imports this on every start (`phxqctl status` must not pay for msgspec,
typing or the daemon's code), so it uses the standard library only, and only `struct`,
which phxqctl's framing needs anyway. phxqd.protocol, phxqd.model and phxqd.paths take
their values from here, and so do phxqctl.wire, .errors, .render and .locate: there is
no copy to keep equal.
"""

from __future__ import annotations

import struct

# ------------------------------------------------------------------- the wire
#: the version a `hello` must name; another gets an `upgrade` error
PROTOCOL_VERSION = 1
#: Largest frame either side accepts; a bigger length prefix closes the connection.
MAX_FRAME = 16 * 1024 * 1024
#: Most job specs in one submit request: its reply (the jobs) must fit in a frame.
MAX_BATCH = 10_000
#: the length prefix of every frame: u32, big-endian
HEADER = struct.Struct(">I")

#: Error codes and the phxqctl exit status each maps to (DESIGN.md, "Exit statuses").
ERROR_EXIT = {
    "usage": 2,  # the request itself is wrong
    "upgrade": 2,  # client and daemon speak different protocol versions
    "not_found": 4,  # no such job
    "refused": 5,  # cannot be done now: disk full, journal failed, illegal transition
    "internal": 1,  # a bug in phxqd; the daemon logs it and carries on
}

# ------------------------------------------------------------------- statuses
#: Every status a job can have, in the order tables show them. `retrying` is a failed
#: attempt waiting out its backoff. phxqd.model.Status spells the same names as a Literal
#: (and checks at import that they are these).
STATUSES = ("pending", "running", "retrying", "completed", "failed", "cancelled")
#: Statuses after which nothing happens to a job unless someone asks (retry, clear).
FINISHED = frozenset({"completed", "failed", "cancelled"})
#: Statuses a job is waiting in before it runs.
WAITING = frozenset({"pending", "retrying"})

#: the queue of a job that names none
DEFAULT_QUEUE = "default"

# -------------------------------------------------------------------- the socket
#: the socket's file name in its runtime directory
SOCKET_NAME = "phxqd.sock"
#: the system service's socket (systemd's RuntimeDirectory=phxq)
SYSTEM_SOCKET = "/run/phxq/" + SOCKET_NAME
