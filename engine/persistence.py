"""Getting Redis' pending records into PostgreSQL, the source of truth.

The claim and release scripts write every change into the show's pending hash before the API
answers, so a 201 survives a crash of the API process. The same script marks the show dirty
(and indexes the change for the user's list), and the API enqueues at most one arq job per time
bucket per process; the worker drains the dirty shows in batches, writes a batch's records in
one transaction of three statements, and acknowledges only the records that did not change
meanwhile. The reconciler re-marks any show whose pending records
no job is carrying (lost job, crashed worker, dropped mark).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import asyncpg
from arq.connections import ArqRedis

from engine import keys
from engine.seats import BookingRecord, Scripts
from engine.shapes import from_us

log = logging.getLogger("engine.persist")

PERSIST_JOB = "persist_pending"
# Shows drained by one job; more are left marked for the next one.
SHOWS_PER_JOB = 200


class PersistScheduler:
    """API side: enqueue one persistence job per time bucket, never on the request's path."""

    def __init__(self, redis: ArqRedis, bucket_ms: int) -> None:
        self._redis = redis
        self._bucket_ms = bucket_ms
        self._scheduled: int = -1
        self._tasks: set[asyncio.Task[None]] = set()

    def schedule(self) -> None:
        bucket = int(time.time() * 1000) // self._bucket_ms
        if bucket == self._scheduled:
            return
        self._scheduled = bucket
        task = asyncio.create_task(self._enqueue(bucket))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _enqueue(self, bucket: int) -> None:
        # The job runs just after its bucket ends, so it sees every record of that bucket.
        run_at = datetime.fromtimestamp((bucket + 1) * self._bucket_ms / 1000, tz=UTC)
        try:
            await self._redis.enqueue_job(
                PERSIST_JOB, _job_id=f"persist:{bucket}", _defer_until=run_at
            )
        except Exception as exc:  # the reconciler covers a lost enqueue
            log.warning("could not enqueue persistence job: %r", exc)

    async def close(self) -> None:
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)


def mark_changed(
    pipe: Any, show_id: int, user_id: int, booking_ids: list[int], at_us: int, status: str
) -> None:
    """Queue (on a pipeline) the global bookkeeping of a record the reconciler pended again:
    the user's recent-bookings index, where each booking lives, and the show's dirty mark (the
    claim and release scripts write the same themselves)."""
    recent = keys.user_recent(user_id)
    pipe.zadd(recent, {keys.recent_member(bid, show_id, status): at_us for bid in booking_ids})
    pipe.expire(recent, keys.RECENT_TTL_S)
    for bid in booking_ids:
        pipe.set(keys.booking_show(bid), show_id, ex=keys.RECENT_TTL_S)
    pipe.sadd(keys.DIRTY_SHOWS, show_id)


# --- worker side -----------------------------------------------------------------------------

UPSERT_CANCELLED = """
INSERT INTO bookings (id, user_id, show_id, seat_number, status, created_at, cancelled_at)
SELECT b.id, b.user_id, b.show_id, b.seat, 'cancelled', b.created_at, now()
FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::text[], $5::timestamptz[])
     AS b(id, show_id, user_id, seat, created_at)
ON CONFLICT (id) DO UPDATE SET status = 'cancelled', cancelled_at = now()
WHERE bookings.status <> 'cancelled'
"""
# A cancelled booking never becomes booked again: a replayed or late booked record is a no-op.
INSERT_BOOKED = """
INSERT INTO bookings (id, user_id, show_id, seat_number, status, created_at)
SELECT b.id, b.user_id, b.show_id, b.seat, 'booked', b.created_at
FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::text[], $5::timestamptz[])
     AS b(id, show_id, user_id, seat, created_at)
ON CONFLICT (id) DO NOTHING
"""
INSERT_ONE_BOOKED = """
INSERT INTO bookings (id, user_id, show_id, seat_number, status, created_at)
VALUES ($1, $2, $3, $4, 'booked', $5) ON CONFLICT (id) DO NOTHING
"""
INSERT_ONE_CONFLICTED = """
INSERT INTO bookings (id, user_id, show_id, seat_number, status, created_at, cancelled_at)
VALUES ($1, $2, $3, $4, 'cancelled', $5, now()) ON CONFLICT (id) DO NOTHING
"""
SELECT_SHOW_EXISTS = "SELECT 1 FROM shows WHERE id = $1"
# Per-show locks, taken in ascending show order: two jobs persisting the same show never
# interleave their writes, and two jobs sharing shows cannot deadlock.
LOCK_SHOWS = """
SELECT count(pg_advisory_xact_lock(1, (s % 2147483647)::int)) FROM unnest($1::bigint[]) AS s
"""


@dataclass
class PersistResult:
    shows: int = 0
    records: int = 0
    acked: int = 0
    booking_ids: list[int] = field(default_factory=list)


def _columns(
    rows: list[tuple[int, BookingRecord]],
) -> tuple[list[int], list[int], list[int], list[str], list[datetime]]:
    """Column arrays (id, show, user, seat, created) of (show id, record) pairs, by booking id."""
    rows = sorted(rows, key=lambda row: row[1].booking_id)
    return (
        [r.booking_id for _, r in rows],
        [show_id for show_id, _ in rows],
        [r.user_id for _, r in rows],
        [r.seat for _, r in rows],
        [from_us(r.created_us) for _, r in rows],
    )


async def _write_shows(
    conn: asyncpg.Connection, work: list[tuple[int, list[BookingRecord]]]
) -> None:
    """Every show's records in three statements: lock the shows, write cancels, then bookings.
    Raises what PostgreSQL refuses; the caller falls back to writing show by show."""
    await conn.execute(LOCK_SHOWS, sorted(show_id for show_id, _ in work))
    rows = [(show_id, r) for show_id, records in work for r in records]
    cancelled = [row for row in rows if row[1].status == "cancelled"]
    booked = [row for row in rows if row[1].status == "booked"]
    if cancelled:
        await conn.execute(UPSERT_CANCELLED, *_columns(cancelled))
    if booked:
        await conn.execute(INSERT_BOOKED, *_columns(booked))


async def _write_show(conn: asyncpg.Connection, show_id: int, records: list[BookingRecord]) -> None:
    """One show's records, row by row where PostgreSQL refuses the batch."""
    await conn.execute(LOCK_SHOWS, [show_id])
    rows = [(show_id, r) for r in records]
    cancelled = [row for row in rows if row[1].status == "cancelled"]
    booked = [row for row in rows if row[1].status == "booked"]
    if cancelled:
        await conn.execute(UPSERT_CANCELLED, *_columns(cancelled))
    if not booked:
        return
    try:
        async with conn.transaction():
            await conn.execute(INSERT_BOOKED, *_columns(booked))
    except asyncpg.UniqueViolationError:
        # Only possible after Redis lost state it had not persisted (see README): keep the
        # seat's holder in PostgreSQL and record the later claim as cancelled, loudly.
        for _, r in sorted(booked, key=lambda row: row[1].booking_id):
            created = from_us(r.created_us)
            try:
                async with conn.transaction():
                    await conn.execute(
                        INSERT_ONE_BOOKED, r.booking_id, r.user_id, show_id, r.seat, created
                    )
            except asyncpg.UniqueViolationError:
                log.error(
                    "double sale refused in PostgreSQL: booking %s show %s seat %s",
                    r.booking_id,
                    show_id,
                    r.seat,
                )
                await conn.execute(
                    INSERT_ONE_CONFLICTED, r.booking_id, r.user_id, show_id, r.seat, created
                )


# What a batch write can raise that writing show by show handles (or isolates).
REFUSED = (asyncpg.IntegrityConstraintViolationError, asyncpg.DataError)


async def _write(
    pool: asyncpg.Pool, work: list[tuple[int, list[BookingRecord]]]
) -> dict[int, list[BookingRecord]]:
    """Commit the records; returns those written, by show. One transaction for the whole batch;
    if PostgreSQL refuses it, show by show, and within a refused show record by record: only a
    record PostgreSQL still refuses (its user or show deleted behind the engine's back, say)
    stays pending, logged on every try, rather than blocking the rest of its show."""
    async with pool.acquire() as conn:
        try:
            async with conn.transaction():
                await _write_shows(conn, work)
            return dict(work)
        except REFUSED:
            pass
        written: dict[int, list[BookingRecord]] = {}
        async with conn.transaction():
            for show_id, records in sorted(work, key=lambda w: w[0]):
                try:
                    async with conn.transaction():
                        await _write_show(conn, show_id, records)
                    written[show_id] = records
                    continue
                except REFUSED:
                    pass
                done = []
                for r in sorted(records, key=lambda r: (r.status != "cancelled", r.booking_id)):
                    try:
                        async with conn.transaction():
                            await _write_show(conn, show_id, [r])
                        done.append(r)
                    except REFUSED as exc:
                        log.error(
                            "cannot persist booking %s of show %s (user %s): %s",
                            r.booking_id,
                            show_id,
                            r.user_id,
                            exc,
                        )
                if done:
                    written[show_id] = done
        return written


async def persist_shows(
    redis: ArqRedis, pool: asyncpg.Pool, scripts: Scripts, show_ids: list[int]
) -> PersistResult:
    """Write the pending records of these shows to PostgreSQL and acknowledge them in Redis."""
    result = PersistResult()
    if not show_ids:
        return result
    async with redis.pipeline(transaction=False) as pipe:
        for show_id in show_ids:
            pipe.hgetall(keys.show_keys(show_id)[4])
        snapshots = await pipe.execute()
    work: dict[int, tuple[dict[bytes, bytes], list[BookingRecord]]] = {}
    for show_id, raw in zip(show_ids, snapshots, strict=True):
        if raw:
            records = [BookingRecord.parse(int(bid), rec) for bid, rec in raw.items()]
            work[show_id] = (raw, records)
    if not work:
        return result
    written = await _write(pool, [(show_id, records) for show_id, (_, records) in work.items()])
    # Committed: forget what did not change since it was read (one script call per show).
    async with redis.pipeline(transaction=False) as pipe:
        for show_id, records in written.items():
            read = work[show_id][0]
            show_keys = keys.show_keys(show_id)
            ack_keys = [show_keys[3], show_keys[4]]
            args: list[Any] = [show_id]
            for r in records:
                ack_keys += [keys.user_recent(r.user_id), keys.booking_show(r.booking_id)]
                args += [r.booking_id, read[str(r.booking_id).encode()]]
            await scripts.ack_persisted(keys=ack_keys, args=args, client=pipe)
        replies = await pipe.execute()
    for (_, records), acked in zip(written.items(), replies, strict=True):
        result.shows += 1
        result.records += len(records)
        result.booking_ids += [r.booking_id for r in records]
        result.acked += int(acked)
    return result


async def persist_dirty(redis: ArqRedis, pool: asyncpg.Pool, scripts: Scripts) -> PersistResult:
    """Drain the dirty shows (in rounds of SHOWS_PER_JOB) into PostgreSQL."""
    total = PersistResult()
    while True:
        popped = await redis.spop(keys.DIRTY_SHOWS, SHOWS_PER_JOB)
        if not popped:
            return total
        show_ids = sorted({int(s) for s in popped})
        try:
            done = await persist_shows(redis, pool, scripts, show_ids)
        except BaseException:
            # Put the marks back so the retry (or the reconciler) finds these shows again.
            await redis.sadd(keys.DIRTY_SHOWS, *show_ids)
            raise
        total.shows += done.shows
        total.records += done.records
        total.booking_ids += done.booking_ids
        total.acked += done.acked
        if len(popped) < SHOWS_PER_JOB:
            return total


async def mark_unpersisted(redis: ArqRedis) -> list[int]:
    """Reconciler: mark dirty every loaded show that still has pending records."""
    show_ids = [int(s) for s in await redis.smembers(keys.LOADED_SHOWS)]
    if not show_ids:
        return []
    async with redis.pipeline(transaction=False) as pipe:
        for show_id in show_ids:
            pipe.hlen(keys.show_keys(show_id)[4])
        counts = await pipe.execute()
    behind = [sid for sid, n in zip(show_ids, counts, strict=True) if n]
    if behind:
        await redis.sadd(keys.DIRTY_SHOWS, *behind)
    return behind


async def pending_bookings(redis: ArqRedis) -> tuple[int, int | None]:
    """(records not yet in PostgreSQL, claim time in µs of the oldest unpersisted booking)."""
    show_ids = [int(s) for s in await redis.smembers(keys.LOADED_SHOWS)]
    if not show_ids:
        return 0, None
    async with redis.pipeline(transaction=False) as pipe:
        for show_id in show_ids:
            pipe.hvals(keys.show_keys(show_id)[4])
        replies = await pipe.execute()
    count = 0
    oldest: int | None = None
    for records in replies:
        count += len(records)
        for raw in records:
            _, _, created, status = raw.decode().split("|")
            if status == "b" and (oldest is None or int(created) < oldest):
                oldest = int(created)
    return count, oldest


# A show is forgotten by Redis this long after it started (and once nothing is pending).
UNLOAD_AFTER_S = 24 * 3600


async def unload_finished_shows(
    redis: ArqRedis, scripts: Scripts, *, started_before_us: int
) -> list[int]:
    """Forget the Redis state of shows that started before the cutoff and have nothing pending,
    so that Redis holds the shows on sale, not every show ever sold."""
    unloaded: list[int] = []
    loaded = sorted(int(s) for s in await redis.smembers(keys.LOADED_SHOWS))
    if not loaded:
        return unloaded
    async with redis.pipeline(transaction=False) as pipe:
        for show_id in loaded:
            pipe.hget(keys.show_keys(show_id)[0], "starts_us")
        starts = await pipe.execute()
    # Only shows that started before the cutoff (or whose meta is gone) are worth a script call.
    due = [
        sid
        for sid, at in zip(loaded, starts, strict=True)
        if at is None or int(at) < started_before_us
    ]
    for show_id in due:
        outcome = await scripts.unload_show(keys=keys.show_keys(show_id), args=[started_before_us])
        if outcome in (b"ok", b"missing"):
            await redis.srem(keys.LOADED_SHOWS, show_id)
            # A request may have loaded it again in between: keep it listed then.
            if await redis.exists(keys.show_keys(show_id)[0]):
                await redis.sadd(keys.LOADED_SHOWS, show_id)
            elif outcome == b"ok":
                unloaded.append(show_id)
    return unloaded
