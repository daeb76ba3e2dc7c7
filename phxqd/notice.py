"""`Notice`: "look again", given by anyone, waited for by one owner."""

from __future__ import annotations

import math

import anyio


class Notice:
    """A wake-up for one waiting task that many others may give, any number of times.

    The backend gives it when something that may let a job start has changed (a submit, a
    resume, an end), the dispatcher when a slot frees or it is told to stop; the dispatcher
    waits for it between rounds. Made once by whoever builds both and handed to each, so
    neither reaches into the other to wake it.
    """

    def __init__(self) -> None:
        self._event = anyio.Event()

    def set(self) -> None:
        self._event.set()

    async def wait(self, timeout: float = math.inf) -> None:
        """Until given (or `timeout` seconds pass); then ready to be given again."""
        with anyio.move_on_after(timeout):
            await self._event.wait()
        self._event = anyio.Event()
