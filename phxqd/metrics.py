"""The Prometheus text exposition of what the daemon knows, built when asked.

prometheus_client does the format (escaping, histogram series, HELP/TYPE lines), which is
easy to get subtly wrong by hand; it is imported here only, on the first scrape, so it
costs nothing to a daemon nobody scrapes. Everything is read from the state and the
`Stats` counters at scrape time: no metric objects live between scrapes.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import anyio

from phxqd.model import STATUSES

if TYPE_CHECKING:
    from phxqd.backend import Summary
    from phxqd.schedules_model import Schedule
    from phxqd.stats import Histogram
    from phxqd.views import Views


async def load_library() -> None:
    """Import prometheus_client in a thread: its first import takes ~0.1 s, which the
    event loop must not wait for. Rendering itself reads the live state, so it runs on
    the loop."""
    await anyio.to_thread.run_sync(importlib.import_module, "prometheus_client")


async def render(views: Views) -> bytes:
    from prometheus_client import CollectorRegistry, generate_latest

    registry = CollectorRegistry(auto_describe=False)
    registry.register(
        _Collector(views, await views.backend.summary(), await views.backend.schedules())
    )
    data: bytes = generate_latest(registry)
    return data


class _Collector:
    """prometheus_client collects synchronously: what needs the backend is asked first."""

    def __init__(self, views: Views, summary: Summary, schedules: list[Schedule]) -> None:
        self.views = views
        self.summary = summary
        self.schedules = sorted(schedules, key=lambda s: s.spec.name)

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )

        views = self.views
        backend, dispatcher, stats = views.backend, views.dispatcher, views.backend.stats
        health = backend.health(count_files=True)
        jobs = CounterMetricFamily(
            "phxq_jobs",
            "Jobs by what happened to them, since phxqd started",
            labels=["event", "queue"],
        )
        for (kind, queue), n in sorted(stats.jobs.items()):
            jobs.add_metric([kind, queue], n)
        yield jobs

        depth = GaugeMetricFamily(
            "phxq_queue_jobs", "Jobs in the state by queue and status", labels=["queue", "status"]
        )
        for queue, by_status in sorted(self.summary.queues.items()):
            for status in STATUSES:
                depth.add_metric([queue, status], by_status.get(status, 0))
        yield depth
        yield GaugeMetricFamily(
            "phxq_running_jobs", "Jobs running now", value=len(dispatcher.running())
        )
        yield GaugeMetricFamily(
            "phxq_workers", "Most jobs running at once", value=views.settings.workers
        )

        for name, table, doc in (
            ("phxq_job_duration_seconds", stats.duration, "Run time of ended attempts"),
            ("phxq_job_wait_seconds", stats.wait, "From ready to started"),
        ):
            family = HistogramMetricFamily(name, doc, labels=["queue"])
            for queue, h in sorted(table.items()):
                family.add_metric([queue], _buckets(h), h.total)
            yield family

        fsync = HistogramMetricFamily(
            "phxq_journal_fsync_seconds", "Duration of each journal write+fdatasync"
        )
        fsync.add_metric([], _buckets(stats.fsync), stats.fsync.total)
        yield fsync
        snap = HistogramMetricFamily("phxq_snapshot_seconds", "Duration of snapshots")
        snap.add_metric([], _buckets(stats.snapshot), stats.snapshot.total)
        yield snap
        yield CounterMetricFamily(
            "phxq_journal_written_bytes",
            "Bytes appended to the journal",
            value=health.written_bytes,
        )
        yield GaugeMetricFamily(
            "phxq_journal_segments", "Journal segment files on disk", value=health.segments or 0
        )
        yield GaugeMetricFamily(
            "phxq_journal_writable",
            "1 if the journal takes writes",
            value=1 if health.writable else 0,
        )
        workers = GaugeMetricFamily(
            "phxq_python_workers", "Python worker processes", labels=["state"]
        )
        workers.add_metric(["idle"], len(dispatcher.workers.idle))
        workers.add_metric(["busy"], dispatcher.workers.busy)
        yield workers
        yield CounterMetricFamily(
            "phxq_python_worker_starts", "Python workers started", value=dispatcher.workers.started
        )
        hooks = CounterMetricFamily(
            "phxq_hooks", "Event hooks run, by hook and outcome", labels=["hook", "outcome"]
        )
        for (hook, outcome), n in sorted(stats.hooks.items()):
            hooks.add_metric([hook, outcome], n)
        yield hooks
        yield GaugeMetricFamily(
            "phxq_event_listeners",
            "Listeners of the live job feed (watch and streaming wait clients, hooks, "
            "the status file)",
            value=backend.feed.listeners,
        )
        yield from self._schedules()
        rates = GaugeMetricFamily(
            "phxq_queue_rate_per_second", "Start rate of rate-limited queues", labels=["queue"]
        )
        for queue, (per_second, _) in sorted(self.summary.rates.items()):
            rates.add_metric([queue], per_second)
        yield rates

    def _schedules(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        scheduler = self.views.scheduler
        last = GaugeMetricFamily(
            "phxq_schedule_last_fire_timestamp",
            "The newest fire time recorded of each schedule (Unix time)",
            labels=["schedule"],
        )
        upcoming = GaugeMetricFamily(
            "phxq_schedule_next_fire_timestamp",
            "The next fire time of each schedule that is not paused (Unix time)",
            labels=["schedule"],
        )
        fired = CounterMetricFamily(
            "phxq_schedule_fired", "Jobs submitted by each schedule", labels=["schedule"]
        )
        missed = CounterMetricFamily(
            "phxq_schedule_missed",
            "Fire times of each schedule that got no run of their own (downtime, overlap)",
            labels=["schedule"],
        )
        for s in self.schedules:
            name = s.spec.name
            if s.last_fire is not None:
                last.add_metric([name], s.last_fire)
            at = None if scheduler is None else scheduler.next_fire_of(name)
            if at is not None and not s.paused:
                upcoming.add_metric([name], at)
            fired.add_metric([name], s.fired)
            missed.add_metric([name], s.missed)
        yield from (last, upcoming, fired, missed)


def _buckets(h: Histogram) -> list[tuple[str, float]]:
    return [(bound, float(n)) for bound, n in h.cumulative()]
