"""`phxqctl.progress()`: a job reports its own progress (standard library only, so a job
that calls it in a loop, or `phxqctl progress` from a shell job, stays cheap)."""

from __future__ import annotations

import os

from phxqctl import locate
from phxqctl.errors import NotInAJob, UsageError
from phxqctl.wire import Session
from phxqd.contract import progress_problem


def progress(
    percent: float | None = None,
    step: str | None = None,
    done: int | None = None,
    total: int | None = None,
) -> bool:
    """Report the progress of the job this code runs in (fields not given keep their value).

        for i, path in enumerate(paths):
            phxqctl.progress(done=i, total=len(paths), step=path.name)

    Uses PHXQ_JOB_ID, PHXQ_ATTEMPT and PHXQ_SOCKET, which phxqd sets for every job; outside
    a job it raises NotInAJob. Each call is one short request: report a few times a second
    at most. Returns False if the daemon no longer counts this attempt as running.
    """
    env = os.environ
    if "PHXQ_JOB_ID" not in env or "PHXQ_ATTEMPT" not in env:
        raise NotInAJob("not inside a phxq job (PHXQ_JOB_ID and PHXQ_ATTEMPT are not set)")
    if why := progress_problem(percent, step, done, total):
        raise UsageError(why)
    try:
        job_id, attempt = int(env["PHXQ_JOB_ID"]), int(env["PHXQ_ATTEMPT"])
    except ValueError:
        raise NotInAJob(
            f"PHXQ_JOB_ID and PHXQ_ATTEMPT are not numbers ({env['PHXQ_JOB_ID']!r:.40}, "
            f"{env['PHXQ_ATTEMPT']!r:.40}): not set by phxqd"
        ) from None
    session = Session(locate.socket_path(env.get("PHXQ_SOCKET")))
    try:
        fields = {"percent": percent, "step": step, "done": done, "total": total}
        result = session.call(
            "progress",
            id=job_id,
            attempt=attempt,
            **{k: v for k, v in fields.items() if v is not None},
        )
    finally:
        session.close()
    return bool(result["accepted"])
