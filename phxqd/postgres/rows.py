"""Jobs as rows of `phxq_jobs` and back, and the decisions a job's end needs (pure).

What SQL looks at (queue, priority, status, times, key, dependencies, the claim) are
columns; what only the runner needs is one msgpack value, `spec`, written once.
"""

from __future__ import annotations

import random
from typing import Any

import msgspec

from phxqd.model import (
    DEFAULT_BACKOFF,
    DEFAULT_RETRIES,
    NO_RETRY_EXIT,
    Call,
    Job,
    JobSpec,
    Progress,
    QueueConfig,
)


class Spec(msgspec.Struct, array_like=True, omit_defaults=False, gc=False):
    """The part of a job nothing but its runner reads."""

    argv: tuple[str, ...]
    label: str | None = None
    cwd: str | None = None
    env: dict[str, str] | None = None
    timeout: float | None = None
    backoff: tuple[float, float, float] | None = None
    call: Call | None = None


_spec_encoder = msgspec.msgpack.Encoder()
_spec_decoder = msgspec.msgpack.Decoder(Spec)
_progress_decoder = msgspec.msgpack.Decoder(Progress)
_any_decoder = msgspec.msgpack.Decoder()

#: the columns `job_from_row` reads, in its order
JOB_COLUMNS = (
    "id, queue, priority, status, created_at, run_at, key, max_retries, after, spec, attempts,"
    " started_at, finished_at, exit_code, error, pid, pid_started, progress, result"
)


def job_from_row(row: tuple[Any, ...]) -> Job:
    (
        job_id,
        queue,
        priority,
        status,
        created_at,
        run_at,
        key,
        max_retries,
        after,
        spec,
        attempts,
        started_at,
        finished_at,
        exit_code,
        error,
        pid,
        pid_started,
        progress,
        result,
    ) = row
    s = _spec_decoder.decode(spec)
    return Job(
        job_id,
        s.argv,
        queue,
        priority,
        status,
        created_at,
        run_at,
        key,
        s.label,
        s.cwd,
        s.env,
        s.timeout,
        max_retries,
        s.backoff,
        tuple(after) if after else None,
        attempts,
        started_at,
        finished_at,
        exit_code,
        error,
        pid,
        pid_started,
        None if progress is None else _progress_decoder.decode(progress),
        s.call,
        None if result is None else _any_decoder.decode(result),
    )


def encode(value: Any) -> bytes:
    return _spec_encoder.encode(value)


def spec_bytes(spec: JobSpec, backoff: tuple[float, float, float] | None) -> bytes:
    return _spec_encoder.encode(
        Spec(
            tuple(spec.argv),
            spec.label,
            spec.cwd,
            dict(spec.env) if spec.env else None,
            spec.timeout,
            backoff,
            spec.call,
        )
    )


def defaults(
    spec: JobSpec, queues: dict[str, QueueConfig]
) -> tuple[int, tuple[float, float, float] | None]:
    """The retries and backoff a spec gets: its own, else its queue's (config), else the
    defaults, as the local backend gives them."""
    cfg = queues.get(spec.queue)
    retries = spec.max_retries
    if retries is None:
        retries = cfg.retries if cfg is not None and cfg.retries is not None else DEFAULT_RETRIES
    backoff = spec.backoff if spec.backoff is not None else (cfg.backoff() if cfg else None)
    return retries, backoff


def backoff_delay(
    attempts: int, rng: random.Random, policy: tuple[float, float, float] = DEFAULT_BACKOFF
) -> float:
    """Seconds before attempt `attempts + 1`: exponential, capped, with jitter."""
    base, cap, jitter = policy
    delay: float = min(base * 2.0 ** max(attempts - 1, 0), cap)
    return delay * (1 + jitter * rng.random())


def outcome(
    job: Job,
    exit_code: int | None,
    error: str | None,
    now: float,
    rng: random.Random,
    retryable: bool = True,
) -> tuple[str, str | None, float | None]:
    """How an attempt that ran ends: (status, error, retry_at). `job.attempts` counts it."""
    if exit_code == 0 and error is None:
        return "completed", None, None
    reason = error or f"exited with status {exit_code}"
    if exit_code == NO_RETRY_EXIT:
        retryable = False
        reason += " (no retries: the job asked to fail for good)"
    if retryable and job.attempts <= job.max_retries:
        return (
            "retrying",
            reason,
            now + backoff_delay(job.attempts, rng, job.backoff or DEFAULT_BACKOFF),
        )
    return "failed", reason, None
