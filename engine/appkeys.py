"""Typed application state keys."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import asyncpg
from aiohttp import web
from arq.connections import ArqRedis

from engine.settings import Settings

if TYPE_CHECKING:
    from engine.auth import TokenService
    from engine.persistence import PersistScheduler
    from engine.seats import SeatEngine

SETTINGS = web.AppKey("settings", Settings)
PG_POOL = web.AppKey("pg_pool", asyncpg.Pool)
REDIS = web.AppKey("redis", ArqRedis)
SEATS: web.AppKey[SeatEngine] = web.AppKey("seats")
TOKENS: web.AppKey[TokenService] = web.AppKey("tokens")
PERSIST: web.AppKey[PersistScheduler] = web.AppKey("persist")
OPENAPI: web.AppKey[dict[str, Any]] = web.AppKey("openapi")

# Per request, for its log line: who asked, and which booking it made or changed.
USER_ID = web.RequestKey("user_id", int)
BOOKING_ID = web.RequestKey("booking_id", int)
