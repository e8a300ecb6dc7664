"""Thin arq tasks over engine code."""

from __future__ import annotations

import logging
from typing import Any

import asyncpg
import redis.exceptions
from arq import Retry

from engine.persistence import mark_unpersisted, persist_dirty

log = logging.getLogger("worker")

# Transient: PostgreSQL restarting, a dropped connection, a deadlock or serialisation failure.
TRANSIENT = (
    OSError,
    ConnectionError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.DeadlockDetectedError,
    asyncpg.SerializationError,
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
)


async def persist_pending(ctx: dict[str, Any]) -> int:
    """Persist every dirty show's pending records; retried with backoff on transient errors."""
    try:
        result = await persist_dirty(ctx["redis"], ctx["pg_pool"], ctx["scripts"])
    except TRANSIENT as exc:
        tries = int(ctx.get("job_try", 1))
        delay = min(2 ** (tries - 1), 10)
        log.warning("persist failed (try %s), retrying in %ss: %r", tries, delay, exc)
        raise Retry(defer=delay) from exc
    if result.records:
        log.info("persisted %s records of %s shows", result.records, result.shows)
    return result.records


async def reconcile(ctx: dict[str, Any]) -> int:
    """Cron: mark shows whose pending records no job carries, then persist them."""
    behind = await mark_unpersisted(ctx["redis"])
    if behind:
        log.info("reconciler found pending records in %s shows", len(behind))
        return await persist_pending(ctx)
    return 0
