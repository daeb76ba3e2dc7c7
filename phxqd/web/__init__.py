"""phxqd's HTTP front: the JSON API under /api/v1, the dashboard at /, and /metrics.

An optional extra (`pip install 'phxq[web]'`: Starlette, uvicorn, Jinja2). phxqd imports
this package only when `http_listen` is set, so a daemon that serves no HTTP loads none of
it. `tokens` and `listen` use the standard library only: `phxqd http-token` and the
binding at start-up need no framework.
"""
