"""
The agent's HTTP server (aiohttp): the sources' webhooks plus
``/healthz`` (the process answers and none of its background tasks died for
good: a pod that acknowledges alerts but no longer acts must be restarted, so
the liveness probe fails then), ``/readyz`` (the Kubernetes API and the ledger
both answer) and ``/metrics`` (prometheus-client text format).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from agent.ledger import Ledger
from agent.metrics import Metrics

READY_TIMEOUT = 3.0


def build_app(
    *,
    routes: list[web.RouteDef],
    ledger: Ledger,
    ping_kubernetes: Callable[[], Awaitable[None]],
    dead_tasks: Callable[[], Mapping[str, str]],
    metrics: Metrics,
    max_body_bytes: int,
) -> web.Application:
    # client_max_size makes aiohttp refuse a larger body while reading it (413), even without Content-Length.
    app = web.Application(client_max_size=max_body_bytes)

    async def healthz(request: web.Request) -> web.Response:
        dead = dict(dead_tasks())
        if dead:
            return web.json_response({"status": "unhealthy", "dead_tasks": dead}, status=503)
        return web.json_response({"status": "ok"})

    async def readyz(request: web.Request) -> web.Response:
        problems = {}
        try:
            await asyncio.wait_for(ledger.ping(), READY_TIMEOUT)
        except Exception as exc:
            problems["ledger"] = f"{type(exc).__name__}: {exc}"
        try:
            await asyncio.wait_for(ping_kubernetes(), READY_TIMEOUT)
        except Exception as exc:
            first_line = str(exc).splitlines()[0] if str(exc) else ""
            problems["kubernetes"] = f"{type(exc).__name__}: {first_line}"
        if problems:
            return web.json_response({"status": "not ready", "problems": problems}, status=503)
        return web.json_response({"status": "ready"})

    async def metrics_view(request: web.Request) -> web.Response:
        return web.Response(body=metrics.render(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    app.add_routes([web.get("/healthz", healthz), web.get("/readyz", readyz), web.get("/metrics", metrics_view)])
    app.add_routes(routes)
    return app
