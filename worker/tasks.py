"""Thin arq tasks over engine code."""

from __future__ import annotations

import logging
import time
from typing import Any

import asyncpg
import redis.exceptions
from arq import Retry

from engine import keys
from engine import reconcile as reconciler
from engine.persistence import (
    UNLOAD_AFTER_S,
    mark_unpersisted,
    persist_dirty,
    unload_finished_shows,
)
from engine.seats import now_us

log = logging.getLogger("worker")

# Transient: PostgreSQL restarting, a dropped connection, a deadlock or serialisation failure.
TRANSIENT = (
    OSError,
    ConnectionError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
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
        log.info(
            "persisted %s records of %s shows",
            result.records,
            result.shows,
            extra={"job_id": ctx.get("job_id"), "booking_ids": result.booking_ids},
        )
    return result.records


# The cron compares loaded shows with PostgreSQL in a rolling sweep, newest shows first: each
# tick takes the next shows up to SWEEP_BOOKINGS_PER_TICK bookings (about 30 µs of CPU each), so
# the cost of a tick stays bounded however many shows are on sale, and a new sweep starts at
# most every LOST_CHECK_EVERY_S. It only repairs differences about bookings at least
# LOST_AFTER_S old (younger ones may be in flight).
LOST_CHECK_EVERY_S = 30.0
LOST_AFTER_S = 5.0
SWEEP_BOOKINGS_PER_TICK = 5_000


async def next_sweep_slice(ctx: dict[str, Any]) -> list[int]:
    """The shows this tick compares: the sweep's next ones (ids below ctx["sweep_below"])."""
    below = ctx.get("sweep_below")
    if below is None:
        last = ctx.get("lost_checked_at")
        if last is not None and time.monotonic() - last < LOST_CHECK_EVERY_S:
            return []
        ctx["lost_checked_at"] = time.monotonic()
    redis = ctx["redis"]
    loaded = sorted(
        (
            sid
            for sid in map(int, await redis.smembers(keys.LOADED_SHOWS))
            if below is None or sid < below
        ),
        reverse=True,
    )
    async with redis.pipeline(transaction=False) as pipe:
        for show_id in loaded:
            pipe.hlen(keys.show_keys(show_id)[3])
        sizes = await pipe.execute() if loaded else []
    chosen: list[int] = []
    total = 0
    for show_id, size in zip(loaded, sizes, strict=True):
        if chosen and total + int(size) > SWEEP_BOOKINGS_PER_TICK:
            break
        chosen.append(show_id)
        total += int(size)
    # The sweep ends with the oldest loaded show; the next tick then waits for a new sweep.
    ctx["sweep_below"] = chosen[-1] if len(chosen) < len(loaded) else None
    return chosen


async def repair_lost(ctx: dict[str, Any]) -> list[str]:
    """Repair every difference between Redis and PostgreSQL in this tick's shows: lost records
    are pended again, and where PostgreSQL changed behind Redis' back (a commit racing Redis
    being emptied), Redis follows PostgreSQL."""
    show_ids = await next_sweep_slice(ctx)
    if not show_ids:
        return []
    report, repaired = await reconciler.reconcile(
        ctx["redis"],
        ctx["pg_pool"],
        ctx["scripts"],
        show_ids,
        older_than_s=LOST_AFTER_S,
    )
    for line in repaired:
        log.warning("reconciler repaired %s", line)
    return repaired


async def unload_finished(ctx: dict[str, Any]) -> list[int]:
    """Forget shows that started over a day ago (at most every LOST_CHECK_EVERY_S)."""
    last = ctx.get("unloaded_at")
    if last is not None and time.monotonic() - last < LOST_CHECK_EVERY_S:
        return []
    ctx["unloaded_at"] = time.monotonic()
    cutoff = now_us() - UNLOAD_AFTER_S * 1_000_000
    unloaded = await unload_finished_shows(ctx["redis"], ctx["scripts"], started_before_us=cutoff)
    if unloaded:
        log.info("forgot %s finished shows in Redis", len(unloaded), extra={"shows": unloaded})
    return unloaded


async def reconcile(ctx: dict[str, Any]) -> int:
    """Cron: re-pend lost records (now and then), mark shows whose pending records no job
    carries, then persist them."""
    try:
        await repair_lost(ctx)
        await unload_finished(ctx)
    except TRANSIENT as exc:  # next time; persisting what is pending matters more
        log.warning("reconciler could not compare Redis with PostgreSQL: %r", exc)
    behind = await mark_unpersisted(ctx["redis"])
    if behind:
        log.info("reconciler found pending records in %s shows", len(behind))
        return await persist_pending(ctx)
    return 0
