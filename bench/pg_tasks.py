"""procrastinate's side of bench/bench_postgres.py: an app on a database of the benchmark's
PostgreSQL, with a no-op task."""

from __future__ import annotations

from typing import Any

import procrastinate


def _noop() -> None:
    """Nothing: what is measured is the queue."""


def build(uri: str) -> tuple[Any, Any]:
    """An app on `uri` and its task `noop`."""
    app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=uri))
    return app, app.task(name="noop")(_noop)
