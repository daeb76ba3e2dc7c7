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

# -------------------------------------------------------------------- ranges
#
# What each value of a request may be. msgpack carries integers from -2**63 to 2**64 - 1
# and any float, NaN and infinities included; phxq takes less: numbers every backend can
# store and every tool can show (a run_at past the year 9999 has no date), strings exec
# and the file system can take. phxqctl checks its arguments with these functions before
# anything is sent, phxqctl.Client its calls, and phxqd every request (phxqd.model's
# validate_spec, phxqd.protocol's field constraints): one message for one mistake,
# wherever it is caught. docs/protocol.md lists them ("Limits").

#: the largest integer of the wire: msgpack's signed 64-bit one (ids, counts, offsets)
INT64_MAX = 2**63 - 1
#: job ids are positive 64-bit integers
JOB_ID = (1, INT64_MAX)
#: a job's priority: a 32-bit signed integer, so every backend stores it as it is
PRIORITY = (-(2**31), 2**31 - 1)
#: retries after a failed attempt, and a queue's concurrency (`queue set`)
RETRIES = (0, 2**31 - 1)
CONCURRENCY = (1, 2**31 - 1)
#: how many jobs `list` returns; a job's own `--done` / `--total` progress counts
COUNT = (0, INT64_MAX)
#: durations (timeout, delay, backoff, wait --timeout): at most 100 years of seconds
MAX_SECONDS = 100 * 365 * 86400
#: times (run_at, --at): Unix seconds up to 9999-12-31T23:59:59Z, the last one with a date
MAX_TIME = 253402300799.0
#: most jobs one job can wait for (`--after`)
MAX_AFTER = 1000

#: longest names and notes, in characters
MAX_QUEUE_CHARS = 200
MAX_KEY_CHARS = 1000
MAX_LABEL_CHARS = 1000
MAX_STEP_CHARS = 500
MAX_FUNC_CHARS = 1000
#: longest working directory, in UTF-8 bytes (Linux's PATH_MAX, 4096, with its NUL)
MAX_CWD_BYTES = 4095
#: longest single argument or NAME=VALUE, in UTF-8 bytes (Linux's MAX_ARG_STRLEN, 32
#: pages, with its NUL)
MAX_ARG_BYTES = 131071
#: argv and env together, counted as exec counts them (each string's bytes, its NUL and
#: its 8-byte pointer): half of Linux's usual 2 MiB ARG_MAX, so phxqd's own environment
#: still fits beside them
MAX_COMMAND_BYTES = 1024 * 1024


def _shown(value: object) -> str:
    """A value in a message: short, whatever it is (an int of 5000 digits has no str)."""
    if isinstance(value, int) and value.bit_length() > 128:
        return f"an integer of {value.bit_length()} bits"
    text = repr(value)
    return text if len(text) <= 60 else text[:40] + f"... ({len(text)} characters)"


def int_problem(what: str, value: object, bounds: tuple[int, int]) -> str | None:
    """Why `value` is not an integer within `bounds` (inclusive), or None."""
    low, high = bounds
    if isinstance(value, int) and not isinstance(value, bool) and low <= value <= high:
        return None
    return f"{what} must be an integer from {low} to {high} (got {_shown(value)})"


def seconds_problem(
    what: str, value: object, high: float = MAX_SECONDS, positive: bool = False
) -> str | None:
    """Why `value` is not a number of seconds from 0 (or more than 0) to `high`, or None.
    NaN and infinities are never in range."""
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if number and (value > 0 if positive else value >= 0) and value <= high:  # type: ignore[operator]
        return None
    low = "more than 0" if positive else "from 0"
    return f"{what} must be {low} to {high:.0f} seconds (got {_shown(value)})"


def time_problem(what: str, value: object) -> str | None:
    """Why `value` is not a Unix time from 1970 to the end of 9999, or None."""
    if isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value <= MAX_TIME:
        return None
    return (
        f"{what} must be a time from 1970-01-01 to 9999-12-31T23:59:59Z, "
        f"0 to {MAX_TIME:.0f} in Unix seconds (got {_shown(value)})"
    )


def storable_text(text: str) -> str:
    """`text` as a job's error can hold it: each NUL written `\\x00`, each lone surrogate
    `\\udcXX`. An error is what a job said of itself (a callable's exception message may
    hold anything), so it is made storable rather than refused: PostgreSQL's text cannot
    hold NUL, and an end it could not store was retried for ever."""
    if "\0" in text:
        text = text.replace("\0", "\\x00")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def text_problem(
    what: str, value: object, max_chars: int | None = None, empty: bool = True
) -> str | None:
    """Why `value` is not a string phxq can carry (UTF-8: no lone surrogates, which is
    what bytes that are not UTF-8 become in a command line; no NUL, which PostgreSQL's
    text cannot hold and a C string ends at), up to `max_chars`."""
    if not isinstance(value, str):
        return f"{what} must be a string (got {_shown(value)})"
    if not empty and not value:
        return f"{what} must not be empty"
    if max_chars is not None and len(value) > max_chars:
        return f"{what} is at most {max_chars} characters (got {len(value)})"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return f"{what} is not valid UTF-8 text (got {_shown(value)})"
    if "\0" in value:
        return f"{what} may not contain NUL bytes (got {_shown(value)})"
    return None


def queue_problem(queue: object) -> str | None:
    if text_problem("--queue", queue, MAX_QUEUE_CHARS, empty=False):
        return (
            f"queue names are 1 to {MAX_QUEUE_CHARS} characters of UTF-8 text without NUL "
            f"(got {_shown(queue)})"
        )
    return None


def progress_problem(
    percent: object = None, step: object = None, done: object = None, total: object = None
) -> str | None:
    """Why a progress report cannot be taken, or None (phxqd's handler says the same)."""
    number = isinstance(percent, int | float) and not isinstance(percent, bool)
    if percent is not None and not (number and 0 <= percent <= 100):  # type: ignore[operator]
        return f"--percent must be between 0 and 100 (got {_shown(percent)})"
    if step is not None and (why := text_problem("--step", step, MAX_STEP_CHARS)):
        return why
    for what, n in (("--done", done), ("--total", total)):
        if n is not None and (why := int_problem(what, n, COUNT)):
            return why
    return None


#: how deep the arguments of a callable may nest (lists and maps in lists and maps)
MAX_DEPTH = 100


def value_problem(what: str, value: object, depth: int = 0) -> str | None:
    """Why `value` cannot go on the wire as msgpack, or None: integers from -2**63 to
    2**64 - 1, UTF-8 strings, and nothing nested deeper than MAX_DEPTH."""
    if isinstance(value, bool) or value is None or isinstance(value, float | bytes):
        return None
    if isinstance(value, int):
        if -(2**63) <= value <= 2**64 - 1:
            return None
        return f"{what}: integers must be from -2**63 to 2**64-1 (got {_shown(value)})"
    if isinstance(value, str):
        return text_problem(what, value)
    if depth >= MAX_DEPTH:
        return f"{what}: nested more than {MAX_DEPTH} deep"
    if isinstance(value, list | tuple):
        for item in value:
            if why := value_problem(what, item, depth + 1):
                return why
        return None
    if isinstance(value, dict):
        for k, v in value.items():
            if (why := value_problem(what, k, depth + 1)) or (
                why := value_problem(what, v, depth + 1)
            ):
                return why
        return None
    return f"{what}: cannot send a {type(value).__name__}"


def request_problem(request: dict[str, object]) -> str | None:
    """Why phxqd would refuse this request (a map with its `op`, as it goes on the wire)
    for one of its values, or None. phxqctl runs it on every request it sends, and
    phxqctl.Client too, so a mistake is told with phxqctl's words (`--priority must
    be...`) before anything is sent."""
    op = request.get("op")
    for name, value in request.items():
        if name == "jobs" and isinstance(value, list | tuple):
            for i, spec in enumerate(value):
                why = _spec_dict_problem(spec)
                if why:
                    return f"job {i + 1}: {why}" if len(value) > 1 else why
        elif name == "ids" and value is not None:
            if not isinstance(value, list | tuple):
                return f"ids must be a list of job ids (got {_shown(value)})"
            for job_id in value:
                if why := int_problem("a job id", job_id, JOB_ID):
                    return why
        elif name == "id":
            if why := int_problem("a job id", value, JOB_ID):
                return why
        elif name in ("limit", "offset", "attempt") and value is not None:
            what = "--limit" if name == "limit" else name
            if why := int_problem(what, value, COUNT):
                return why
        elif name == "timeout" and op == "wait" and value is not None:
            if why := seconds_problem("--timeout", value):
                return why
        elif name == "queue" and (value is not None or op == "queue-set"):
            if why := queue_problem(value):
                return why
        elif name == "concurrency" and value is not None:
            if why := int_problem("--concurrency", value, CONCURRENCY):
                return why
        elif why := value_problem(name, value):
            return why
    if op == "progress":
        return progress_problem(
            request.get("percent"), request.get("step"), request.get("done"), request.get("total")
        )
    return None


def _spec_dict_problem(spec: object) -> str | None:
    if not isinstance(spec, dict):
        return f"a job spec must be a map (got {_shown(spec)})"
    call = spec.get("call")
    func = None
    if call is not None:
        if not isinstance(call, dict):
            return f"call must be a map (got {_shown(call)})"
        func = call.get("func")
        for what in ("args", "kwargs"):
            if why := value_problem(f"--{what}", call.get(what)):
                return why
        if func is None:
            return "--call wants package.module:function"
    argv = spec.get("argv") or []
    if not isinstance(argv, list | tuple):
        return f"argv must be a list of strings (got {_shown(argv)})"
    return spec_problem(
        argv,
        func,
        queue=spec.get("queue", DEFAULT_QUEUE),
        priority=spec.get("priority", 0),
        key=spec.get("key"),
        max_retries=spec.get("max_retries"),
        backoff=spec.get("backoff"),
        after=spec.get("after", ()),
        timeout=spec.get("timeout"),
        delay=spec.get("delay"),
        run_at=spec.get("run_at"),
        label=spec.get("label"),
        cwd=spec.get("cwd"),
        env=spec.get("env"),
    )


def spec_problem(
    argv: list[str] | tuple[str, ...],
    func: object = None,
    queue: object = DEFAULT_QUEUE,
    priority: object = 0,
    key: object = None,
    max_retries: object = None,
    backoff: object = None,
    after: object = (),
    timeout: object = None,
    delay: object = None,
    run_at: object = None,
    label: object = None,
    cwd: object = None,
    env: object = None,
) -> str | None:
    """Why a job spec cannot be queued, or None: the checks of phxqd.model.validate_spec,
    on plain values, so that phxqctl makes them without msgspec. The names in the
    messages are phxqctl's options, as a user of any of the three most likely knows them."""
    if func is not None:
        if argv:
            return "a job is a command or a callable, not both"
        if why := text_problem("--call", func, MAX_FUNC_CHARS):
            return why
        assert isinstance(func, str)
        module, sep, name = func.partition(":")
        if not sep or not module or not name:
            return f"--call wants package.module:function, got {func!r}"
    elif not argv:
        return "a command job needs a command: phxqctl submit -- CMD ARG..."
    command_bytes = 0
    for arg in argv:
        try:  # the common case in one pass: a str, UTF-8, no NUL, not too long
            size = len(arg.encode())
            fine = size <= MAX_ARG_BYTES and "\0" not in arg
        except (AttributeError, UnicodeEncodeError):
            fine = False
        if not fine:
            return _exec_string_problem("a command argument", arg)
        command_bytes += size + 9
    # exec takes C strings: a NUL would cut a value short, and a name with "=" would set
    # another variable than the one asked for
    if cwd is not None and not (type(cwd) is str and 0 < len(cwd) <= MAX_CWD_BYTES // 4):
        # (the common case, a short path, is only checked for NUL and UTF-8 below)
        if why := text_problem("--cwd", cwd, empty=False):
            return why
        assert isinstance(cwd, str)
        if "\0" in cwd or len(cwd.encode()) > MAX_CWD_BYTES:
            return (
                f"--cwd must be a directory path without NUL bytes, at most {MAX_CWD_BYTES} bytes"
            )
    elif cwd is not None:
        try:
            fine = "\0" not in cwd and bool(cwd.encode())
        except UnicodeEncodeError:
            fine = False
        if not fine:
            return text_problem("--cwd", cwd) or "--cwd must be a directory path without NUL bytes"
    if env and not isinstance(env, dict):
        return f"--env must be a map of names to values (got {_shown(env)})"
    for name, value in env.items() if isinstance(env, dict) else ():
        if (
            text_problem("--env", name, empty=False)
            or text_problem("--env", value)
            or "=" in name
            or "\0" in name
            or "\0" in value
        ):
            return (
                f"--env {_shown(name)}: names are non-empty without '=', "
                "and nothing has NUL bytes or text that is not UTF-8"
            )
        if why := _exec_string_problem(f"--env {_shown(name)}", f"{name}={value}"):
            return why
        command_bytes += len(name.encode()) + len(value.encode()) + 10
    if command_bytes > MAX_COMMAND_BYTES:
        return (
            f"the command and its --env are at most {MAX_COMMAND_BYTES} bytes together "
            f"(got {command_bytes}, counting a NUL and an 8-byte pointer per string)"
        )
    if queue != DEFAULT_QUEUE and (why := queue_problem(queue)):
        return why
    if not (type(priority) is int and PRIORITY[0] <= priority <= PRIORITY[1]):
        return int_problem("--priority", priority, PRIORITY)
    if key is not None and (why := text_problem("--key", key, MAX_KEY_CHARS, empty=False)):
        return why
    if label is not None and (why := text_problem("--label", label, MAX_LABEL_CHARS)):
        return why
    if max_retries is not None and (why := int_problem("--retries", max_retries, RETRIES)):
        return why
    if backoff is not None:
        if not isinstance(backoff, list | tuple) or len(backoff) != 3:
            return f"--backoff must be [base, max, jitter] (got {_shown(backoff)})"
        base, cap, jitter = backoff
        if (
            seconds_problem("", base)
            or seconds_problem("", cap)
            or not isinstance(jitter, int | float)
            or base > cap
            or not 0 <= jitter <= 10
        ):
            return (
                f"backoff needs 0 <= base <= max <= {MAX_SECONDS} seconds and a jitter "
                f"between 0 and 10 (got {_shown(backoff)})"
            )
    if not after:
        pass
    elif not isinstance(after, list | tuple):
        return f"--after must be a list of job ids (got {_shown(after)})"
    elif len(after) > MAX_AFTER:
        return f"--after takes at most {MAX_AFTER} jobs (got {len(after)})"
    for job_id in after if isinstance(after, list | tuple) else ():
        if why := int_problem("--after", job_id, JOB_ID):
            return why
    if timeout is not None and (why := seconds_problem("--timeout", timeout, positive=True)):
        return why
    if delay is not None and (why := seconds_problem("--delay", delay)):
        return why
    if run_at is not None and (why := time_problem("--at", run_at)):
        return why
    return None


def _exec_string_problem(what: str, value: object) -> str | None:
    if why := text_problem(what, value):
        return why
    assert isinstance(value, str)
    if "\0" in value:
        return (
            "command arguments may not contain NUL bytes"
            if what == "a command argument"
            else f"{what}: no NUL bytes"
        )
    size = len(value.encode())
    if size > MAX_ARG_BYTES:
        return f"{what} is at most {MAX_ARG_BYTES} bytes (got {size})"
    return None
