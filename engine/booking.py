"""Booking: book a seat, cancel, my bookings. The book path runs on Redis alone."""

from __future__ import annotations

from typing import Any

import asyncpg
from aiohttp import web
from aiohttp_apispec import docs, request_schema, response_schema
from arq.connections import ArqRedis
from marshmallow import Schema, fields

from engine import appkeys, keys
from engine.auth import require_user
from engine.catalog import ShowSchema, page_of, shows_json
from engine.errors import Forbidden, InvalidInput, NotFound, Unavailable
from engine.idempotency import idempotency_header, idempotent
from engine.jsonutil import dumps, json_response, raw_json_response
from engine.persistence import PersistScheduler
from engine.seats import BookingRecord, SeatEngine, normalise_seat, now_us
from engine.shapes import (
    SHOW_COLUMNS,
    SHOWS_WITH_MOVIES,
    booking_json,
    iso_from_us,
    show_json,
    to_us,
)
from engine.validation import Page, path_id, read_json

SELECT_BOOKING = """
SELECT id, user_id, show_id, seat_number, status, created_at FROM bookings WHERE id = $1
"""
COUNT_USER_BOOKINGS = (
    "SELECT count(*) FROM bookings WHERE user_id = $1 AND NOT (id = ANY($2::bigint[]))"
)
SELECT_USER_BOOKINGS = """
SELECT id, user_id, show_id, seat_number, status, created_at FROM bookings
WHERE user_id = $1 AND NOT (id = ANY($2::bigint[]))
ORDER BY created_at DESC, id DESC LIMIT $3
"""
SELECT_SHOWS = f"""
SELECT {SHOW_COLUMNS} FROM {SHOWS_WITH_MOVIES} WHERE s.id = ANY($1::bigint[])
"""
SELECT_SHOW_EXISTS = "SELECT 1 FROM shows WHERE id = $1"


async def show_exists(pool: asyncpg.Pool, show_id: int) -> bool:
    """Whether the show exists, from PostgreSQL alone: on the error path of a bad body, where
    404 must win over 400 even while Redis is away (503 comes last)."""
    return await pool.fetchval(SELECT_SHOW_EXISTS, show_id) is not None


async def book(
    seats: SeatEngine,
    persist: PersistScheduler,
    show_id: int,
    user_id: int,
    seat: str,
) -> tuple[int, bytes]:
    """Claim a seat; (booking id, answer), only once the claim is recorded for persistence."""
    at = now_us()
    booking_ids, available, show_prefix = await seats.claim(show_id, user_id, [seat], at)
    persist.schedule()
    body = booking_json(booking_ids[0], show_json(show_prefix, available), seat, "booked", at)
    return booking_ids[0], body


async def locate(
    redis: ArqRedis, pool: asyncpg.Pool, booking_id: int
) -> tuple[int, asyncpg.Record | None] | None:
    """(show id, PostgreSQL row or None) of a booking, or None if it does not exist."""
    cached = await redis.get(keys.booking_show(booking_id))
    if cached is not None:
        return int(cached), None
    row = await pool.fetchrow(SELECT_BOOKING, booking_id)
    if row is None:
        return None
    return row["show_id"], row


async def cancel(
    seats: SeatEngine,
    redis: ArqRedis,
    pool: asyncpg.Pool,
    persist: PersistScheduler,
    booking_id: int,
    actor_id: int,
    *,
    as_admin: bool,
) -> bytes:
    """Cancel a booking (idempotent). The owner may not once the show started; an admin may."""
    found = await locate(redis, pool, booking_id)
    if found is None:
        raise NotFound("Booking not found.")
    show_id, _ = found
    at = now_us()
    released = await seats.release(
        show_id, booking_id, 0 if as_admin else actor_id, at, enforce_start=not as_admin
    )
    if released is None:
        # Redis no longer knows it: a cancelled booking that was persisted (or an unknown id).
        # Read the row again even if `locate` read it: a cancel persisted in between (Redis then
        # forgets the record) makes that row stale, still booked.
        row = await pool.fetchrow(SELECT_BOOKING, booking_id)
        if row is None:
            raise NotFound("Booking not found.")
        if not as_admin and row["user_id"] != actor_id:
            raise Forbidden("You can only cancel your own bookings.")
        if row["status"] != "cancelled":
            raise Unavailable("This booking is being reconciled; retry shortly.")
        state = await seats.show_state(show_id)
        show = await _show_for(seats, pool, show_id, state)
        return booking_json(
            booking_id,
            show,
            row["seat_number"],
            "cancelled",
            to_us(row["created_at"]),
        )
    record, available, show_prefix = released
    persist.schedule()
    return booking_json(
        booking_id, show_json(show_prefix, available), record.seat, "cancelled", record.created_us
    )


async def _show_for(
    seats: SeatEngine, pool: asyncpg.Pool, show_id: int, state: tuple[int, str] | None
) -> str:
    if state is not None:
        return show_json(state[1], state[0])
    rows = await pool.fetch(SELECT_SHOWS, [show_id])
    return dumps((await shows_json(seats, pool, rows))[0]).decode()


async def recent_records(
    seats: SeatEngine, redis: ArqRedis, user_id: int
) -> list[tuple[int, BookingRecord]]:
    """(show id, record) of the user's bookings whose latest state may not be in PostgreSQL."""
    members = await redis.zrange(keys.user_recent(user_id), 0, -1)
    # show -> booking -> its index entries (one per state: booked, then maybe cancelled)
    by_show: dict[int, dict[int, list[bytes]]] = {}
    for m in members:
        bid, sid = keys.parse_recent_member(m)
        by_show.setdefault(sid, {}).setdefault(bid, []).append(m)
    out: list[tuple[int, BookingRecord]] = []
    stale: list[bytes] = []
    for show_id, entries in by_show.items():
        bids = list(entries)
        for bid, rec in zip(bids, await seats.records(show_id, bids), strict=True):
            if rec is None or rec.user_id != user_id:
                stale += entries[bid]
            else:
                out.append((show_id, rec))
    if stale:
        await redis.zrem(keys.user_recent(user_id), *stale)
    return out


async def my_bookings(
    seats: SeatEngine, redis: ArqRedis, pool: asyncpg.Pool, user_id: int, page: Page
) -> dict[str, Any]:
    """PostgreSQL's rows merged with what Redis knows newer; newest first, ties by id."""
    recent = await recent_records(seats, redis, user_id)
    recent_ids = [r.booking_id for _, r in recent]
    pg_count = await pool.fetchval(COUNT_USER_BOOKINGS, user_id, recent_ids)
    rows = await pool.fetch(SELECT_USER_BOOKINGS, user_id, recent_ids, page.offset + page.size)
    items: list[tuple[int, int, int, str, str]] = [  # (created_us, id, show, seat, status)
        (r.created_us, r.booking_id, sid, r.seat, r.status) for sid, r in recent
    ]
    items += [
        (
            to_us(r["created_at"]),
            r["id"],
            r["show_id"],
            r["seat_number"],
            r["status"],
        )
        for r in rows
    ]
    items.sort(key=lambda i: (i[0], i[1]), reverse=True)
    window = items[page.offset : page.offset + page.size]
    show_ids = sorted({i[2] for i in window})
    show_rows = await pool.fetch(SELECT_SHOWS, show_ids) if show_ids else []
    shows = {s["id"]: s for s in await shows_json(seats, pool, show_rows)}
    results = [
        {
            "id": bid,
            "show": shows[sid],
            "seat_number": seat,
            "status": status,
            "created_at": iso_from_us(created),
        }
        for created, bid, sid, seat, status in window
        if sid in shows
    ]
    return page.body(pg_count + len(recent), results)


# --- schemas ---------------------------------------------------------------------------------


class BookRequestSchema(Schema):
    seat_number = fields.Raw(
        required=True,
        metadata={
            "type": "string",
            "example": "A1",
            "description": "seat label; an integer is read as its decimal label",
        },
    )


class BookingSchema(Schema):
    id = fields.Integer()
    show = fields.Nested(ShowSchema)
    seat_number = fields.String()
    status = fields.String(metadata={"enum": ["booked", "cancelled"]})
    created_at = fields.DateTime()


BookingPageSchema = page_of(BookingSchema)


# --- handlers --------------------------------------------------------------------------------

routes = web.RouteTableDef()


@docs(
    tags=["Bookings"],
    summary="Book a seat",
    security=[{"Bearer": []}],
    responses={
        201: {"description": "booked"},
        400: {"description": "no such seat"},
        401: {"description": "not authenticated"},
        404: {"description": "unknown show"},
        409: {"description": "seat taken, show full or started"},
    },
)
@idempotency_header
@request_schema(BookRequestSchema)
@response_schema(BookingSchema, 201)
@routes.post(r"/api/shows/{id}/book/")
@idempotent(require_user)
async def book_view(request: web.Request) -> web.Response:
    principal = require_user(request)
    show_id = path_id(request)
    app = request.app
    try:
        data = await read_json(request)
        if not isinstance(data, dict):
            raise InvalidInput("The body must be a JSON object.")
        if "seat_number" not in data or data["seat_number"] is None:
            raise InvalidInput(errors={"seat_number": ["This field is required."]})
        seat = normalise_seat(data["seat_number"])
    except InvalidInput:
        if not await show_exists(app[appkeys.PG_POOL], show_id):
            raise NotFound("Show not found.") from None
        raise
    booking_id, body = await book(
        app[appkeys.SEATS],
        app[appkeys.PERSIST],
        show_id,
        principal.user_id,
        seat,
    )
    request[appkeys.BOOKING_ID] = booking_id
    return raw_json_response(body, status=201)


@docs(
    tags=["Bookings"],
    summary="Cancel one of your bookings (idempotent)",
    security=[{"Bearer": []}],
    responses={
        200: {"description": "cancelled"},
        403: {"description": "not your booking"},
        404: {"description": "unknown booking"},
        409: {"description": "show started"},
    },
)
@idempotency_header
@response_schema(BookingSchema, 200)
@routes.post(r"/api/bookings/{id}/cancel/")
@idempotent(require_user)
async def cancel_view(request: web.Request) -> web.Response:
    return await cancel_response(request, require_user(request).user_id, as_admin=False)


async def cancel_response(request: web.Request, actor_id: int, *, as_admin: bool) -> web.Response:
    """The cancel of the booking in the path, by its owner or by an admin."""
    booking_id = path_id(request)
    request[appkeys.BOOKING_ID] = booking_id
    app = request.app
    body = await cancel(
        app[appkeys.SEATS],
        app[appkeys.REDIS],
        app[appkeys.PG_POOL],
        app[appkeys.PERSIST],
        booking_id,
        actor_id,
        as_admin=as_admin,
    )
    return raw_json_response(body)


@docs(
    tags=["Bookings"],
    summary="Your bookings, newest first",
    security=[{"Bearer": []}],
    parameters=[
        {"in": "query", "name": "page", "type": "integer", "required": False},
        {"in": "query", "name": "page_size", "type": "integer", "required": False},
    ],
)
@response_schema(BookingPageSchema, 200)
@routes.get("/api/my-bookings/")
async def my_bookings_view(request: web.Request) -> web.Response:
    principal = require_user(request)
    page = Page(request)
    app = request.app
    body = await my_bookings(
        app[appkeys.SEATS], app[appkeys.REDIS], app[appkeys.PG_POOL], principal.user_id, page
    )
    return json_response(body)
