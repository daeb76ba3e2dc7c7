"""`Notice`: "look again", given by anyone, waited for by one owner."""

from __future__ import annotations

import asyncio
import math


class Notice:
    """A wake-up for one waiting task that many others may give, any number of times.

    The backend gives it when something that may let a job start has changed (a submit, a
    resume, an end), the dispatcher when a slot frees or it is told to stop; the dispatcher
    waits for it between rounds. Made once by whoever builds both and handed to each, so
    neither reaches into the other to wake it.

    A bare asyncio future and timer, not an anyio Event in a `move_on_after` scope: the
    dispatcher waits here once or twice per job, and the scope cost more than the rest
    of its round (cProfile of 3,000 `true` jobs). Cancelling the waiting task (anyio's
    task-group cancellation included) ends the wait as before.
    """

    def __init__(self) -> None:
        self._given = False
        self._waiter: asyncio.Future[None] | None = None

    def set(self) -> None:
        self._given = True
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def wait(self, timeout: float = math.inf) -> None:
        """Until given (or `timeout` seconds pass); then ready to be given again. Always
        lets other tasks run first, as a checkpoint does, even if given already."""
        if self._given:
            await asyncio.sleep(0)
        else:
            loop = asyncio.get_running_loop()
            self._waiter = waiter = loop.create_future()
            timer = loop.call_later(max(timeout, 0), _wake, waiter) if timeout < math.inf else None
            try:
                await waiter
            finally:
                self._waiter = None
                if timer is not None:
                    timer.cancel()
        self._given = False


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)
