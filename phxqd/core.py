"""The running queue, put together: `Core` takes a backend (daemon.py opens the one the
settings name) and builds the parts that work on it, each in its own module, and hands each
what it needs:

- the backend (backend.py; the embedded one in local/): what the queue is, kept durably;
- `Scheduler` (schedules_runner.py): firing schedules at their times through the backend;
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

from phxqd import metrics
from phxqd.backend import Backend
from phxqd.dispatcher import Dispatcher
from phxqd.handlers import Handlers
from phxqd.joblogs import JobLogs
from phxqd.schedules_runner import Scheduler
from phxqd.settings import Settings
from phxqd.streams import Streams
from phxqd.views import Views


class Core:
    def __init__(self, backend: Backend, settings: Settings) -> None:
        self.settings = settings
        self.backend = backend
        self.logs = JobLogs(backend.find, settings, backend.log_elsewhere)
        self.dispatcher = Dispatcher(backend, settings, self.logs, backend.wake)
        self.scheduler = Scheduler(backend)
        self.views = Views(backend, self.dispatcher, settings, self.scheduler)
        self.streams = Streams(backend, self.logs)
        self.handlers = Handlers(
            backend,
            self.dispatcher,
            self.streams,
            self.logs,
            self.views,
            lambda: metrics.render(self.views),
            self.scheduler,
        )
        self.handle = self.handlers.handle
        self.handle_then = self.handlers.handle_then
