"""The OpenAPI 3.1 document of /api/v1, built from the same Structs the API answers with
(msgspec writes their JSON Schemas), so the schemas cannot drift from the replies."""

from __future__ import annotations

from functools import cache
from typing import Any

import msgspec

from phxqd import protocol
from phxqd.model import Job, SubmitResult
from phxqd.web.api import (
    ClearBody,
    Concurrency,
    Health,
    Ids,
    LogText,
    Page,
    QueueBody,
    QueueRates,
    SubmitBody,
)

REF = "#/components/schemas/{name}"

# (method, path, summary, request body, reply, extra parameters)
OPERATIONS: list[tuple[str, str, str, Any, Any, list[str]]] = [
    (
        "get",
        "/api/v1/health",
        "Health for load balancers (503 if the journal refuses writes)",
        None,
        Health,
        [],
    ),
    (
        "get",
        "/api/v1/status",
        "Counts, running jobs, throughput, ETA, journal health",
        None,
        protocol.StatusReply,
        [],
    ),
    (
        "get",
        "/api/v1/queues",
        "Queues: counts, limits, pause state, throughput and ETA",
        None,
        list[QueueRates],
        [],
    ),
    (
        "post",
        "/api/v1/queues/{queue}/pause",
        "Stop dispatching a queue",
        None,
        protocol.StatusReply,
        ["queue"],
    ),
    (
        "post",
        "/api/v1/queues/{queue}/resume",
        "Dispatch a queue again",
        None,
        protocol.StatusReply,
        ["queue"],
    ),
    (
        "put",
        "/api/v1/queues/{queue}/concurrency",
        "Set (null: unset) a queue's limit",
        Concurrency,
        list[QueueRates],
        ["queue"],
    ),
    ("post", "/api/v1/pause", "Stop dispatching every queue", None, protocol.StatusReply, []),
    ("post", "/api/v1/resume", "Dispatch every queue again", None, protocol.StatusReply, []),
    (
        "get",
        "/api/v1/jobs",
        "Jobs newest first, one page (keyset: next page with before=next)",
        None,
        Page,
        ["status", "queue", "label", "key", "before", "limit"],
    ),
    (
        "post",
        "/api/v1/jobs",
        "Submit jobs (only with http_submit = true and the control token)",
        SubmitBody,
        list[SubmitResult],
        [],
    ),
    ("get", "/api/v1/jobs/{id}", "One job, whole", None, Job, ["id"]),
    (
        "get",
        "/api/v1/jobs/{id}/log",
        "Part of a job's log (offset+limit, or tail)",
        None,
        LogText,
        ["id", "offset", "limit", "tail"],
    ),
    (
        "get",
        "/api/v1/jobs/{id}/log/follow",
        "The log as it grows (text/event-stream: chunk events, then end)",
        None,
        None,
        ["id", "offset"],
    ),
    (
        "post",
        "/api/v1/jobs/{id}/cancel",
        "Cancel a job (stops its process tree)",
        None,
        Job,
        ["id"],
    ),
    ("post", "/api/v1/jobs/{id}/retry", "Requeue a failed or cancelled job", None, Job, ["id"]),
    ("post", "/api/v1/cancel", "Cancel jobs", Ids, list[Job], []),
    ("post", "/api/v1/retry", "Requeue jobs", Ids, list[Job], []),
    (
        "post",
        "/api/v1/retry-failed",
        "Requeue every failed job (of a queue)",
        QueueBody,
        protocol.RetriedCount,
        [],
    ),
    ("post", "/api/v1/clear", "Forget finished jobs", ClearBody, protocol.ClearedCount, []),
    (
        "get",
        "/api/v1/events",
        "Job events (text/event-stream), as phxqctl watch --json",
        None,
        None,
        ["ids"],
    ),
]

PARAMETERS = {
    "id": ("path", "integer", "the job's id"),
    "queue": ("path", "string", "the queue's name"),
    "status": ("query", "string", "only jobs of this status"),
    "label": ("query", "string", "only jobs with this label"),
    "key": ("query", "string", "only jobs with this key"),
    "before": ("query", "integer", "only jobs with a smaller id: the `next` of the previous page"),
    "limit": ("query", "integer", "jobs (1-1000, default 50), or bytes of log"),
    "offset": ("query", "integer", "where in the log to start (bytes)"),
    "tail": ("query", "integer", "the last N bytes of the log"),
    "ids": ("query", "string", "job ids separated by commas"),
}


class Error(msgspec.Struct):
    code: str
    message: str


class ErrorReply(msgspec.Struct):
    error: Error


@cache
def document(submit: bool) -> dict[str, Any]:
    types = [t for op in OPERATIONS for t in (op[3], op[4]) if t is not None] + [ErrorReply]
    schemas, components = msgspec.json.schema_components(types, ref_template=REF)
    by_type = dict(zip(types, schemas, strict=True))
    paths: dict[str, dict[str, Any]] = {}
    for method, path, summary, request, reply, params in OPERATIONS:
        if method == "post" and path == "/api/v1/jobs" and not submit:
            summary += " [off on this daemon]"
        op: dict[str, Any] = {
            "summary": summary,
            "operationId": f"{method}_{path.removeprefix('/api/v1/')}".replace("/", "_"),
            "parameters": [
                {
                    "name": name,
                    "in": PARAMETERS[name][0],
                    "required": PARAMETERS[name][0] == "path",
                    "schema": {"type": PARAMETERS[name][1]},
                    "description": PARAMETERS[name][2],
                }
                for name in params
            ],
            "responses": {
                "200": {
                    "description": "OK",
                    "content": {"text/event-stream": {}}
                    if reply is None
                    else {"application/json": {"schema": by_type[reply]}},
                },
                "default": {
                    "description": "an error: code usage (400), unauthorized (401), "
                    "forbidden (403), not_found (404), refused (409; 503 while phxqd is "
                    "stopping: nothing was done), internal (500)",
                    "content": {"application/json": {"schema": by_type[ErrorReply]}},
                },
            },
        }
        if request is not None:
            op["requestBody"] = {
                "required": False,
                "content": {"application/json": {"schema": by_type[request]}},
            }
        paths.setdefault(path, {})[method] = op
    return {
        "openapi": "3.1.0",
        "info": {"title": "phxq", "version": "1", "description": "phxqd's HTTP API"},
        "components": {
            "schemas": components,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}, {}],
        "paths": paths,
    }
