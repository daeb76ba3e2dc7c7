"""Event hooks: run the operator's commands when jobs complete, fail or are retried.

A hook is the operator's program, so it gets the same distrust as a job: it runs in its own
session, at most `concurrency` at a time, killed (its whole group) after `timeout`, and
whatever it does (fail, hang, flood its output) is logged and never touches the job or the
queue. Hooks hear of jobs through the live feed: if hooks fall more than the feed's backlog
behind, the surplus is dropped with a warning rather than held without bound.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import anyio
import msgspec

from phxqd.feed import Feed, Listener
from phxqd.model import Job
from phxqd.protocol import JobEvent

log = logging.getLogger("phxqd.hooks")

#: the bytes of a hook's output kept for the log line when it fails
OUTPUT_TAIL = 2048

Command = str | list[str]


@dataclass(frozen=True)
class HookSettings:
    on_complete: Command | None = None
    on_failure: Command | None = None
    on_retry: Command | None = None
    timeout: float = 30.0
    concurrency: int = 4

    def command_for(self, event: str) -> tuple[str, Command] | None:
        """(config key, command) of the hook an event calls, if one is set."""
        key = {"completed": "on_complete", "failed": "on_failure", "retrying": "on_retry"}.get(
            event
        )
        command = getattr(self, key) if key else None
        return None if command is None or key is None else (key, command)

    @property
    def any(self) -> bool:
        return any((self.on_complete, self.on_failure, self.on_retry))


def argv_of(command: Command) -> list[str]:
    """A string is a shell command line; a list is an argv, run as is."""
    return ["/bin/sh", "-c", command] if isinstance(command, str) else list(command)


class Hooks:
    """Owns the hook runner; `configure` swaps the settings (at start and on reload)."""

    def __init__(
        self,
        feed: Feed,
        job: Callable[[int], Awaitable[Job | None]],
        outcomes: Counter[tuple[str, str]] | None = None,
    ) -> None:
        self.feed = feed
        self.job = job
        #: (hook key, outcome) -> count, for the metrics
        self.outcomes: Counter[tuple[str, str]] = Counter() if outcomes is None else outcomes
        self.settings = HookSettings()
        #: listening only while some hook is set: without hooks the feed costs nothing
        self._listener: Listener | None = None
        self._slots = anyio.Semaphore(1)
        self._configured = anyio.Event()

    def configure(self, settings: HookSettings) -> None:
        """Take new settings; events from now on are hooked by them (hooks already
        running finish under the old ones)."""
        if settings == self.settings:
            return
        self.settings = settings
        self._slots = anyio.Semaphore(settings.concurrency)
        if settings.any and self._listener is None:
            self._listener = self.feed.attach()
        elif not settings.any and self._listener is not None:
            self.feed.detach(self._listener)
            self._listener = None
        self._configured.set()

    async def run(self) -> None:
        """Run hooks for what the feed says, for as long as the daemon runs."""
        async with anyio.create_task_group() as running:
            while True:
                listener = self._listener
                if listener is None:
                    self._configured = anyio.Event()
                    await self._configured.wait()
                    continue
                events: list[JobEvent] = []
                with anyio.move_on_after(1.0):  # to notice hooks being switched off
                    events = await listener.take()
                for event in events:
                    await self._start(event, self.settings, self._slots, running)

    async def _start(
        self,
        event: JobEvent,
        settings: HookSettings,
        slots: anyio.Semaphore,
        running: anyio.abc.TaskGroup,
    ) -> None:
        if event.event == "dropped":
            log.warning("hooks fell behind: %d job events were dropped unhooked", event.count)
            self.outcomes["any", "dropped"] += event.count
            return
        hook = settings.command_for(event.event)
        if hook is None:
            return
        job = await self.job(event.id)
        if job is None:
            return  # cleared meanwhile
        payload = msgspec.json.encode(job)
        await slots.acquire()  # waits here while `concurrency` hooks run: the feed buffers
        running.start_soon(self._run_one, hook, event, payload, settings.timeout, slots)

    async def _run_one(
        self,
        hook: tuple[str, Command],
        event: JobEvent,
        payload: bytes,
        timeout: float,
        slots: anyio.Semaphore,
    ) -> None:
        key, command = hook
        what = f"{key} hook for job {event.id}"
        env = {
            **os.environ,
            "PHXQ_EVENT": event.event,
            "PHXQ_JOB_ID": str(event.id),
            "PHXQ_JOB_STATUS": event.status,
            "PHXQ_JOB_QUEUE": event.queue,
        }
        try:
            try:
                process = await anyio.open_process(
                    argv_of(command),
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    env=env,
                    start_new_session=True,
                )
            except OSError as e:
                log.warning("%s could not start: %s", what, e)
                self.outcomes[key, "unstartable"] += 1
                return
            output = b""
            async with process:
                try:
                    with anyio.move_on_after(timeout) as scope:
                        assert process.stdin is not None and process.stdout is not None
                        with contextlib.suppress(
                            anyio.BrokenResourceError, anyio.ClosedResourceError
                        ):
                            await process.stdin.send(payload)
                        await process.stdin.aclose()
                        async for data in process.stdout:  # drained, or a chatty hook blocks
                            output = (output + data)[-OUTPUT_TAIL:]
                        await process.wait()
                except BaseException:
                    # Cancelled (phxqd stops): asyncio would kill the leader alone, and
                    # what the hook spawned in its session would outlive phxqd.
                    await _kill_group(process)
                    raise
                if scope.cancelled_caught:
                    await _kill_group(process)
                    log.warning("%s timed out after %gs; killed", what, timeout)
                    self.outcomes[key, "timeout"] += 1
                    return
            if process.returncode != 0:
                tail = output.decode(errors="replace").strip().replace("\n", " | ")
                log.warning(
                    "%s exited with %s: %s", what, process.returncode, tail or "(no output)"
                )
                self.outcomes[key, "failed"] += 1
            else:
                log.debug("%s done", what)
                self.outcomes[key, "ok"] += 1
        finally:
            slots.release()


async def _kill_group(process: anyio.abc.Process) -> None:
    """SIGKILL the hook's whole process group (its own session), then reap its leader.
    Sent before the leader is reaped: until then its pid cannot name another group."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    with anyio.CancelScope(shield=True):
        await process.wait()
