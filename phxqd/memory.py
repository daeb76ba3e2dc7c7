"""Giving memory back to the system once many jobs have been forgotten.

glibc's malloc returns freed memory to the system only from the top of its heap: a burst
of jobs (a batch's request, its list of jobs, the journal's buffers) leaves free holes
below whatever was allocated after it, and the daemon's RSS stays at the burst's peak for
as long as it runs. `malloc_trim(0)` hands those free pages back (madvise), so after a
`clear` or a retention sweep of many jobs the RSS follows what phxqd still holds. Where
the C library has no `malloc_trim` (musl), this does nothing.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable


def _malloc_trim() -> Callable[[int], int] | None:
    """The C library's malloc_trim, found among the symbols the interpreter already has
    loaded (no `ldconfig` run, as `ctypes.util.find_library` would make)."""
    try:
        trim: Callable[[int], int] = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError, TypeError):
        return None
    return trim


#: glibc's malloc_trim, or None (a constant: looked up once, at import)
MALLOC_TRIM = _malloc_trim()


def give_back() -> bool:
    """Return the C heap's free pages to the system; whether anything was given back.

    Blocking (it walks the heap under malloc's lock, a few milliseconds for a large
    heap): call it in a worker thread."""
    return bool(MALLOC_TRIM(0)) if MALLOC_TRIM is not None else False
