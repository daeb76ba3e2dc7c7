"""The running queue: `Core` owns the pure state, the journal, and the parts that work on
them, each in its own module:

- `Recorder` (recorder.py): every change applied and made durable, waiters told once a
  job's end is on disk, snapshots, and resuming after a journal failure;
- `Handlers` (handlers.py): the answer to each request, and the status views;
- `Streams` (streams.py): the requests answered by a stream of frames (watch, streaming
  wait, `logs --follow`);
- `Dispatcher` (dispatcher.py): starting jobs on free workers, recording their ends,
  retention, and reaping jobs left running by a previous daemon;
- `JobLogs` (joblogs.py) and `ProgressReports` (progress.py), which several of those share.

daemon.py, server.py and metrics.py use `Core` alone; the collaborators hold references to
what they need, never to `Core`.
"""

from __future__ import annotations

import random

from phxqd import metrics
from phxqd.dispatcher import Dispatcher
from phxqd.feed import Feed
from phxqd.handlers import Handlers
from phxqd.joblogs import JobLogs
from phxqd.journal import Journal
from phxqd.progress import ProgressReports
from phxqd.recorder import Recorder
from phxqd.run import attempt
from phxqd.settings import Settings
from phxqd.state import State
from phxqd.stats import Stats
from phxqd.streams import Streams


class Core:
    def __init__(
        self, state: State, journal: Journal, settings: Settings, rng: random.Random | None = None
    ) -> None:
        self.state = state
        self.journal = journal
        self.settings = settings
        self.stats = Stats()
        journal.on_sync = self.stats.fsync.observe
        #: job events for whoever listens (watch, streaming wait, hooks, the status file)
        self.feed = Feed()
        #: jobs claimed by the dispatcher and not yet ended, with the handle that stops them
        active: dict[int, attempt.Stop] = {}
        self.recorder = Recorder(state, journal, settings, self.stats, self.feed, active)
        self.logs = JobLogs(state, settings)
        self.progress = ProgressReports(state, journal, self.feed)
        self.dispatcher = Dispatcher(
            state,
            journal,
            settings,
            rng or random.Random(),
            self.recorder,
            self.progress,
            self.logs,
            active,
        )
        self.recorder.on_change = self.dispatcher.wake
        self.streams = Streams(state, self.feed, self.recorder, self.logs)
        self.handlers = Handlers(
            state,
            journal,
            settings,
            self.recorder,
            self.dispatcher,
            self.streams,
            self.logs,
            self.progress,
            self._render_metrics,
        )
        self.workers = self.dispatcher.workers

        # What daemon.py, server.py and metrics.py call.
        self.handle = self.handlers.handle
        self.status = self.handlers.status
        self.status_export = self.handlers.status_export
        self.status_line = self.handlers.status_line
        self.journal_segments = self.handlers.journal_segments
        self.dispatch = self.dispatcher.dispatch
        self.reap = self.dispatcher.reap
        self.set_workers = self.dispatcher.set_workers
        self.stop = self.dispatcher.stop
        self.snapshot = self.recorder.snapshot
        self.snapshotter = self.recorder.snapshotter
        self.heal = self.recorder.heal

    def _render_metrics(self) -> bytes:
        return metrics.render(self)
