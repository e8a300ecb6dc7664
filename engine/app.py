"""The app factory: nothing is built at import time."""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator

from aiohttp import web
from aiohttp.web_middlewares import normalize_path_middleware
from arq.connections import ArqRedis

from engine import admin, appkeys, auth, booking, catalog, db, health
from engine.auth import TokenService
from engine.docs import setup_docs
from engine.errors import error_middleware
from engine.persistence import PersistScheduler
from engine.seats import SeatEngine
from engine.settings import Settings, load_settings

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 64 * 1024


def redis_client(url: str, *, max_connections: int = 64) -> ArqRedis:
    """One client for the seat scripts and for enqueuing jobs (arq's Redis is redis-py's)."""
    return ArqRedis.from_url(
        url,
        max_connections=max_connections,
        socket_connect_timeout=2,
        # A Redis that stops answering is a 503 after this long, never a hung request.
        socket_timeout=5,
        health_check_interval=30,
    )


async def _pools(app: web.Application) -> AsyncIterator[None]:
    settings = app[appkeys.SETTINGS]
    pool = await db.create_pool(settings.database_url, min_size=1, max_size=10, name="booking-api")
    redis = redis_client(settings.redis_url)
    seats = SeatEngine(redis, pool)
    await seats.start()
    app[appkeys.PG_POOL] = pool
    app[appkeys.REDIS] = redis
    app[appkeys.SEATS] = seats
    app[appkeys.PERSIST] = PersistScheduler(redis, settings.persist_bucket_ms)
    app[appkeys.TOKENS] = TokenService(
        settings.jwt_secret, settings.access_ttl_s, settings.refresh_ttl_s, settings.jwt_leeway_s
    )
    yield
    await app[appkeys.PERSIST].close()
    await seats.close()
    await redis.aclose()
    await pool.close()


async def freeze_heap(_app: web.Application) -> None:
    """Move everything alive once the app has started (modules, schemas, pools) out of the
    cyclic garbage collector's reach: a full collection then scans only what requests made,
    instead of pausing a busy process for ~45 ms every few thousand requests. For servers, as an
    on_startup handler; not in create_app, since tests build many apps in one process."""
    gc.collect()
    gc.freeze()


def create_app(settings: Settings | None = None) -> web.Application:
    settings = settings or load_settings()
    app = web.Application(
        middlewares=[
            error_middleware,
            normalize_path_middleware(
                append_slash=True, remove_slash=False, redirect_class=web.HTTPPermanentRedirect
            ),
        ],
        client_max_size=MAX_BODY_BYTES,
    )
    app[appkeys.SETTINGS] = settings
    app.cleanup_ctx.append(_pools)
    for module in (auth, catalog, booking, admin, health):
        app.router.add_routes(module.routes)
    setup_docs(app)
    return app
