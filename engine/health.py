"""Probes: liveness, and readiness (PostgreSQL answers and a Lua script runs in Redis)."""

from __future__ import annotations

import asyncio
import time

from aiohttp import web
from aiohttp_apispec import docs

from engine import appkeys, keys
from engine.jsonutil import json_response
from engine.persistence import pending_bookings
from engine.seats import now_us

routes = web.RouteTableDef()
PROBE_TIMEOUT_S = 2.0


@docs(tags=["Operations"], summary="Liveness: the process serves requests")
@routes.get("/health/live")
async def live(request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


@docs(tags=["Operations"], summary="Readiness: PostgreSQL answers and Redis runs scripts")
@routes.get("/health/ready")
async def ready(request: web.Request) -> web.Response:
    app = request.app
    checks: dict[str, str] = {}
    try:
        await asyncio.wait_for(app[appkeys.PG_POOL].fetchval("SELECT 1"), PROBE_TIMEOUT_S)
        checks["postgres"] = "ok"
    except Exception as exc:
        checks["postgres"] = f"error: {type(exc).__name__}"
    queue_depth = pending = lag_s = None
    try:
        token = str(time.time_ns())
        answer = await asyncio.wait_for(
            app[appkeys.SEATS].scripts.probe(keys=[], args=[token]), PROBE_TIMEOUT_S
        )
        checks["redis"] = "ok" if answer.decode() == token else "error: wrong answer"
        queue_depth = await app[appkeys.REDIS].zcard(keys.ARQ_QUEUE)
        pending, oldest_us = await pending_bookings(app[appkeys.REDIS])
        lag_s = 0.0 if oldest_us is None else round(max(0, now_us() - oldest_us) / 1e6, 3)
    except Exception as exc:
        checks["redis"] = f"error: {type(exc).__name__}"
    ok = all(v == "ok" for v in checks.values())
    body = {
        "status": "ok" if ok else "unavailable",
        "checks": checks,
        # Jobs waiting in arq's queue, records PostgreSQL does not have yet, and the age of the
        # oldest unpersisted booking: the persistence lag.
        "queue_depth": queue_depth,
        "pending_records": pending,
        "persistence_lag_s": lag_s,
    }
    response = json_response(body, status=200 if ok else 503)
    if not ok:
        response.headers["Retry-After"] = "2"
    return response
