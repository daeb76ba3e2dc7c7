"""The running queue, put together: `Core` builds the backend and the parts that work on it,
each in its own module, and hands each what it needs:

- the backend (backend.py; the embedded one in local/): what the queue is, kept durably;
- `Dispatcher` (dispatcher.py): starting the jobs the backend hands out, telling it of their
  starts and ends, retention, and reaping jobs left running by a previous daemon;
- `Views` (views.py): status, queues, the status line and the status file's content;
- `Streams` (streams.py): the requests answered by a stream of frames;
- `Handlers` (handlers.py): the answer to each request;
- `JobLogs` (joblogs.py): where a job's log is, reading and removing it.

daemon.py, server.py and the fuzz harness use `Core`; the parts hold references to what
they need, never to `Core`, and none reaches into another's state.
"""

from __future__ import annotations

import random

from phxqd import metrics
from phxqd.dispatcher import Dispatcher
from phxqd.handlers import Handlers
from phxqd.joblogs import JobLogs
from phxqd.local.backend import LocalBackend
from phxqd.local.journal import Journal
from phxqd.local.state import State
from phxqd.notice import Notice
from phxqd.settings import Settings
from phxqd.stats import Stats
from phxqd.streams import Streams
from phxqd.views import Views


class Core:
    def __init__(
        self,
        state: State,
        journal: Journal,
        settings: Settings,
        rng: random.Random | None = None,
        stats: Stats | None = None,
    ) -> None:
        self.settings = settings
        #: given when a job may have become startable or a slot freed: the dispatcher waits on it
        wake = Notice()
        self.backend = LocalBackend(state, journal, settings, wake, rng, stats)
        self.logs = JobLogs(self.backend.find, settings)
        self.dispatcher = Dispatcher(self.backend, settings, self.logs, wake)
        self.views = Views(self.backend, self.dispatcher, settings)
        self.streams = Streams(self.backend, self.logs)
        self.handlers = Handlers(
            self.backend,
            self.dispatcher,
            self.streams,
            self.logs,
            self.views,
            lambda: metrics.render(self.views),
        )
        self.handle = self.handlers.handle
