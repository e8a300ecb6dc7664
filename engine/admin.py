"""Admin portal: movies, shows, bookings and users, for users with is_admin."""

from __future__ import annotations

import logging
from typing import Any

import asyncpg
from aiohttp import web
from aiohttp_apispec import docs, request_schema, response_schema
from marshmallow import Schema, ValidationError, fields, validates_schema

from engine import appkeys, keys
from engine.auth import require_admin
from engine.booking import SELECT_SHOWS, BookingPageSchema, BookingSchema, cancel_response
from engine.catalog import (
    SELECT_MOVIE,
    SELECT_SHOW,
    MoviePageSchema,
    MovieSchema,
    ShowSchema,
    page_of,
    shows_json,
)
from engine.errors import Conflict, InvalidInput, NotFound
from engine.idempotency import idempotency_header, idempotent
from engine.jsonutil import json_response
from engine.seats import SeatEngine, seat_labels
from engine.shapes import SHOW_COLUMNS, SHOWS_WITH_MOVIES, movie_dict, show_json_prefix, to_us
from engine.validation import (
    AwareDateTime,
    Page,
    StrictInteger,
    StrictString,
    iso_utc,
    parse_body,
    path_id,
    query_id,
)

log = logging.getLogger(__name__)

SECURITY: list[dict[str, list[str]]] = [{"Bearer": []}]
PAGE_PARAMS = [
    {"in": "query", "name": "page", "type": "integer", "required": False},
    {"in": "query", "name": "page_size", "type": "integer", "required": False},
]

# --- schemas ---------------------------------------------------------------------------------


class MovieWriteSchema(Schema):
    title = StrictString(required=True, max_length=255)
    duration_minutes = StrictInteger(required=True, minimum=1, maximum=1000)


class MoviePatchSchema(Schema):
    title = StrictString(max_length=255)
    duration_minutes = StrictInteger(minimum=1, maximum=1000)


class ShowWriteSchema(Schema):
    movie_id = StrictInteger(required=True, minimum=1, maximum=2**63 - 1)
    screen_name = StrictString(required=True, max_length=255)
    date_time = AwareDateTime(required=True)
    total_seats = StrictInteger(minimum=1, maximum=10000)
    rows = StrictInteger(minimum=1, maximum=52)
    seats_per_row = StrictInteger(minimum=1, maximum=200)

    @validates_schema
    def _layout(self, data: dict[str, Any], **kwargs: Any) -> None:
        check_layout(data, creating=not self.partial)


class ShowPatchSchema(ShowWriteSchema):
    """Any subset of the show's fields."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(partial=True, **kwargs)


def check_layout(data: dict[str, Any], *, creating: bool) -> None:
    rows, per_row, total = data.get("rows"), data.get("seats_per_row"), data.get("total_seats")
    if (rows is None) != (per_row is None):
        raise ValidationError("Give rows and seats_per_row together.", "seats_per_row")
    if rows is not None and per_row is not None:
        if rows * per_row > 10000:
            raise ValidationError("rows x seats_per_row must be at most 10000.", "seats_per_row")
        if total is not None and total != rows * per_row:
            raise ValidationError("total_seats must equal rows x seats_per_row.", "total_seats")
    elif creating and total is None:
        raise ValidationError("Give total_seats, or rows and seats_per_row.", "total_seats")


class AdminShowSchema(ShowSchema):
    rows = fields.Integer(allow_none=True)
    seats_per_row = fields.Integer(allow_none=True)


class UserAdminSchema(Schema):
    id = fields.Integer()
    username = fields.String()
    email = fields.String()
    is_active = fields.Boolean()
    is_admin = fields.Boolean()
    date_joined = fields.DateTime()


class StrictBoolean(fields.Boolean):
    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> bool:
        if not isinstance(value, bool):
            raise ValidationError("Must be true or false.")
        return value


class UserPatchSchema(Schema):
    is_active = StrictBoolean()
    is_admin = StrictBoolean()


AdminShowPage = page_of(AdminShowSchema)
UserPage = page_of(UserAdminSchema)

# --- SQL -------------------------------------------------------------------------------------

COUNT_MOVIES = "SELECT count(*) FROM movies"
SELECT_MOVIES_BY_ID = (
    "SELECT id, title, duration_minutes FROM movies ORDER BY id LIMIT $1 OFFSET $2"
)
INSERT_MOVIE = """
INSERT INTO movies (title, duration_minutes) VALUES ($1, $2) RETURNING id, title, duration_minutes
"""
UPDATE_MOVIE = """
UPDATE movies SET title = coalesce($2, title), duration_minutes = coalesce($3, duration_minutes)
WHERE id = $1 RETURNING id, title, duration_minutes
"""
SELECT_MOVIE_SHOW_IDS = "SELECT id FROM shows WHERE movie_id = $1 ORDER BY id"
SELECT_MOVIE_SHOWS_FULL = f"""
SELECT {SHOW_COLUMNS} FROM {SHOWS_WITH_MOVIES}
WHERE s.movie_id = $1 ORDER BY s.id
"""
MOVIE_HAS_BOOKINGS = """
SELECT EXISTS (SELECT 1 FROM bookings b JOIN shows s ON s.id = b.show_id WHERE s.movie_id = $1)
"""
LOCK_MOVIE_ROW = "SELECT id FROM movies WHERE id = $1 FOR UPDATE"
LOCK_MOVIE_SHARED = "SELECT id, title, duration_minutes FROM movies WHERE id = $1 FOR SHARE"
DELETE_MOVIE = "DELETE FROM movies WHERE id = $1"

COUNT_SHOWS = "SELECT count(*) FROM shows WHERE ($1::bigint IS NULL OR movie_id = $1)"
SELECT_SHOWS_PAGE = f"""
SELECT {SHOW_COLUMNS} FROM {SHOWS_WITH_MOVIES}
WHERE ($1::bigint IS NULL OR s.movie_id = $1)
ORDER BY s.date_time, s.id LIMIT $2 OFFSET $3
"""
INSERT_SHOW = """
INSERT INTO shows (movie_id, screen_name, date_time, total_seats, seat_rows, seats_per_row)
VALUES ($1, $2, $3, $4, $5, $6) RETURNING id
"""
LOCK_SHOW_ROW = "SELECT id FROM shows WHERE id = $1 FOR UPDATE"
# The movie row is share-locked too, so that a concurrent title change waits and then reshapes
# after this one, never leaving this show's Redis JSON with the old title.
LOCK_SHOW = f"{SELECT_SHOW} FOR UPDATE OF s FOR SHARE OF m"
SELECT_BOOKED_SEATS = "SELECT seat_number FROM bookings WHERE show_id = $1 AND status = 'booked'"
UPDATE_SHOW = """
UPDATE shows SET movie_id = $2, screen_name = $3, date_time = $4, total_seats = $5,
                 seat_rows = $6, seats_per_row = $7
WHERE id = $1
"""
SHOW_HAS_BOOKINGS = "SELECT EXISTS (SELECT 1 FROM bookings WHERE show_id = $1)"
DELETE_SHOW = "DELETE FROM shows WHERE id = $1"

COUNT_BOOKINGS = """
SELECT count(*) FROM bookings
WHERE ($1::bigint IS NULL OR show_id = $1) AND ($2::bigint IS NULL OR user_id = $2)
  AND ($3::text IS NULL OR status = $3)
"""
SELECT_BOOKINGS = """
SELECT id, user_id, show_id, seat_number, status, created_at FROM bookings
WHERE ($1::bigint IS NULL OR show_id = $1) AND ($2::bigint IS NULL OR user_id = $2)
  AND ($3::text IS NULL OR status = $3)
ORDER BY created_at DESC, id DESC LIMIT $4 OFFSET $5
"""

COUNT_USERS = "SELECT count(*) FROM users"
SELECT_USERS = """
SELECT id, username, email, is_active, is_admin, date_joined FROM users
ORDER BY id LIMIT $1 OFFSET $2
"""
SELECT_USER = (
    "SELECT id, username, email, is_active, is_admin, date_joined FROM users WHERE id = $1"
)
UPDATE_USER = """
UPDATE users SET is_active = coalesce($2, is_active), is_admin = coalesce($3, is_admin)
WHERE id = $1 RETURNING id, username, email, is_active, is_admin, date_joined
"""


def user_dict(row: asyncpg.Record) -> dict[str, Any]:
    return {
        "id": row["id"],
        "username": row["username"],
        "email": row["email"],
        "is_active": row["is_active"],
        "is_admin": row["is_admin"],
        "date_joined": iso_utc(row["date_joined"]),
    }


def patched_show(
    old: asyncpg.Record, data: dict[str, Any], movie: asyncpg.Record | None
) -> dict[str, Any]:
    """The show's row with a PATCH applied (a new layout replaces the old one whole)."""
    new: dict[str, Any] = dict(old)
    if movie is not None:
        new.update(
            movie_id=movie["id"], title=movie["title"], duration_minutes=movie["duration_minutes"]
        )
    for field in ("screen_name", "date_time"):
        if field in data:
            new[field] = data[field]
    if "rows" in data:
        new.update(
            seat_rows=data["rows"],
            seats_per_row=data["seats_per_row"],
            total_seats=data["rows"] * data["seats_per_row"],
        )
    elif "total_seats" in data:
        new.update(total_seats=data["total_seats"], seat_rows=None, seats_per_row=None)
    return new


async def admin_shows(
    seats: SeatEngine, pool: asyncpg.Pool, rows: list[asyncpg.Record]
) -> list[dict[str, Any]]:
    out = await shows_json(seats, pool, rows)
    for item, row in zip(out, rows, strict=True):
        item["rows"] = row["seat_rows"]
        item["seats_per_row"] = row["seats_per_row"]
    return out


async def admin_show(seats: SeatEngine, pool: asyncpg.Pool, show_id: int) -> dict[str, Any]:
    row = await pool.fetchrow(SELECT_SHOW, show_id)
    if row is None:
        raise NotFound("Show not found.")
    return (await admin_shows(seats, pool, [row]))[0]


async def reshape_in_redis(
    seats: SeatEngine, row: dict[str, Any] | asyncpg.Record
) -> tuple[bool, str | None]:
    """Apply a show's (new) data to its Redis state if loaded: (loaded, conflicting seat)."""
    labels = seat_labels(row["total_seats"], row["seat_rows"], row["seats_per_row"])
    result = await seats.scripts.reshape_show(
        keys=keys.show_keys(row["id"])[:3],
        args=[to_us(row["date_time"]), show_json_prefix(row), ",".join(labels)],
    )
    if result[0] == b"conflict":
        return True, result[1].decode()
    return result[0] == b"ok", None


async def retire(seats: SeatEngine, show_ids: list[int], action: str) -> bool:
    ok = True
    for show_id in show_ids:
        result = await seats.scripts.retire_show(keys=keys.show_keys(show_id), args=[action])
        ok = ok and result[0] == b"ok"
    if action == "purge" and show_ids:
        await seats.redis.srem(keys.LOADED_SHOWS, *show_ids)
    return ok


async def delete_unbooked(
    seats: SeatEngine,
    pool: asyncpg.Pool,
    target_id: int,
    lock_sql: str,
    shows_sql: str,
    has_bookings_sql: str,
    delete_sql: str,
    what: str,
) -> None:
    """Delete a movie or a show unless it has bookings.

    The row is locked first (a concurrent delete then finds nothing: 404; a show cannot be moved
    onto a movie being deleted), its shows are listed under that lock and closed to claims in
    Redis (so none slips in between the check and the delete), reopened if the delete does not
    happen, and purged from Redis once it did."""
    closed: list[int] = []
    try:
        async with pool.acquire() as conn, conn.transaction():
            if await conn.fetchval(lock_sql, target_id) is None:
                raise NotFound(f"{what.capitalize()} not found.")
            show_ids = [r["id"] for r in await conn.fetch(shows_sql, target_id)]
            for show_id in show_ids:
                if not await retire(seats, [show_id], "close"):
                    raise Conflict(f"This {what} still has bookings.")
                closed.append(show_id)
            if await conn.fetchval(has_bookings_sql, target_id):
                raise Conflict(f"This {what} still has bookings.")
            try:
                await conn.execute(delete_sql, target_id)
            except asyncpg.ForeignKeyViolationError:
                raise Conflict(f"This {what} still has bookings.") from None
    except BaseException:
        await retire(seats, closed, "reopen")
        raise
    await retire(seats, closed, "purge")


# --- handlers --------------------------------------------------------------------------------

routes = web.RouteTableDef()


@docs(tags=["Admin"], summary="List movies", security=SECURITY, parameters=PAGE_PARAMS)
@response_schema(MoviePageSchema, 200)
@routes.get("/api/admin/movies/")
async def list_movies(request: web.Request) -> web.Response:
    await require_admin(request)
    page = Page(request)
    pool = request.app[appkeys.PG_POOL]
    count = await pool.fetchval(COUNT_MOVIES)
    rows = await pool.fetch(SELECT_MOVIES_BY_ID, page.size, page.offset)
    return json_response(page.body(count, [movie_dict(r) for r in rows]))


@docs(tags=["Admin"], summary="Create a movie", security=SECURITY)
@idempotency_header
@request_schema(MovieWriteSchema)
@response_schema(MovieSchema, 201)
@routes.post("/api/admin/movies/")
@idempotent(require_admin)
async def create_movie(request: web.Request) -> web.Response:
    await require_admin(request)
    data = await parse_body(request, MovieWriteSchema())
    row = await request.app[appkeys.PG_POOL].fetchrow(
        INSERT_MOVIE, data["title"], data["duration_minutes"]
    )
    return json_response(movie_dict(row), status=201)


@docs(tags=["Admin"], summary="One movie", security=SECURITY)
@response_schema(MovieSchema, 200)
@routes.get(r"/api/admin/movies/{id}/")
async def get_movie(request: web.Request) -> web.Response:
    await require_admin(request)
    row = await request.app[appkeys.PG_POOL].fetchrow(SELECT_MOVIE, path_id(request))
    if row is None:
        raise NotFound("Movie not found.")
    return json_response(movie_dict(row))


@docs(tags=["Admin"], summary="Change a movie", security=SECURITY)
@idempotency_header
@request_schema(MoviePatchSchema)
@response_schema(MovieSchema, 200)
@routes.patch(r"/api/admin/movies/{id}/")
@idempotent(require_admin)
async def patch_movie(request: web.Request) -> web.Response:
    await require_admin(request)
    movie_id = path_id(request)
    app = request.app
    pool, seats = app[appkeys.PG_POOL], app[appkeys.SEATS]
    if await pool.fetchrow(SELECT_MOVIE, movie_id) is None:
        raise NotFound("Movie not found.")
    data = await parse_body(request, MoviePatchSchema())
    async with pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(
            UPDATE_MOVIE, movie_id, data.get("title"), data.get("duration_minutes")
        )
        if row is None:
            raise NotFound("Movie not found.")
        # The movie is part of every show's JSON that Redis answers bookings with; rewritten
        # while the movie row is locked, so a show edited at the same time reshapes after this.
        for show in await conn.fetch(SELECT_MOVIE_SHOWS_FULL, movie_id):
            await reshape_in_redis(seats, show)
    return json_response(movie_dict(row))


@docs(
    tags=["Admin"],
    summary="Delete a movie and its shows (409 if it has bookings)",
    security=SECURITY,
    responses={204: {"description": "deleted"}, 409: {"description": "it has bookings"}},
)
@idempotency_header
@routes.delete(r"/api/admin/movies/{id}/")
@idempotent(require_admin)
async def delete_movie(request: web.Request) -> web.Response:
    await require_admin(request)
    movie_id = path_id(request)
    pool, seats = request.app[appkeys.PG_POOL], request.app[appkeys.SEATS]
    await delete_unbooked(
        seats,
        pool,
        movie_id,
        LOCK_MOVIE_ROW,
        SELECT_MOVIE_SHOW_IDS,
        MOVIE_HAS_BOOKINGS,
        DELETE_MOVIE,
        "movie",
    )
    return web.Response(status=204)


@docs(
    tags=["Admin"],
    summary="List shows",
    security=SECURITY,
    parameters=PAGE_PARAMS
    + [{"in": "query", "name": "movie", "type": "integer", "required": False}],
)
@response_schema(AdminShowPage, 200)
@routes.get("/api/admin/shows/")
async def list_shows(request: web.Request) -> web.Response:
    await require_admin(request)
    movie = query_id(request, "movie")
    page = Page(request)
    pool, seats = request.app[appkeys.PG_POOL], request.app[appkeys.SEATS]
    count = await pool.fetchval(COUNT_SHOWS, movie)
    rows = await pool.fetch(SELECT_SHOWS_PAGE, movie, page.size, page.offset)
    return json_response(page.body(count, await admin_shows(seats, pool, rows)))


@docs(
    tags=["Admin"],
    summary="Create a show (seats 1..N, or rows x seats_per_row: A1..)",
    security=SECURITY,
)
@idempotency_header
@request_schema(ShowWriteSchema)
@response_schema(AdminShowSchema, 201)
@routes.post("/api/admin/shows/")
@idempotent(require_admin)
async def create_show(request: web.Request) -> web.Response:
    await require_admin(request)
    data = await parse_body(request, ShowWriteSchema())
    pool, seats = request.app[appkeys.PG_POOL], request.app[appkeys.SEATS]
    rows, per_row = data.get("rows"), data.get("seats_per_row")
    total = rows * per_row if rows and per_row else data["total_seats"]
    try:
        show_id = await pool.fetchval(
            INSERT_SHOW,
            data["movie_id"],
            data["screen_name"],
            data["date_time"],
            total,
            rows,
            per_row,
        )
    except asyncpg.ForeignKeyViolationError:
        raise InvalidInput(errors={"movie_id": ["No movie with this id."]}) from None
    return json_response(await admin_show(seats, pool, show_id), status=201)


@docs(tags=["Admin"], summary="One show", security=SECURITY)
@response_schema(AdminShowSchema, 200)
@routes.get(r"/api/admin/shows/{id}/")
async def get_show(request: web.Request) -> web.Response:
    await require_admin(request)
    return json_response(
        await admin_show(request.app[appkeys.SEATS], request.app[appkeys.PG_POOL], path_id(request))
    )


@docs(
    tags=["Admin"],
    summary="Change a show (409 if a booked seat would no longer exist)",
    security=SECURITY,
    responses={409: {"description": "a booked seat would no longer exist"}},
)
@idempotency_header
@request_schema(ShowPatchSchema)
@response_schema(AdminShowSchema, 200)
@routes.patch(r"/api/admin/shows/{id}/")
@idempotent(require_admin)
async def patch_show(request: web.Request) -> web.Response:
    await require_admin(request)
    show_id = path_id(request)
    pool, seats = request.app[appkeys.PG_POOL], request.app[appkeys.SEATS]
    if await pool.fetchrow(SELECT_SHOW, show_id) is None:
        raise NotFound("Show not found.")
    data = await parse_body(request, ShowPatchSchema())
    # Loaded first, the show's Redis state is where every claim is decided: reshape_show then
    # changes the layout atomically with respect to claims, and no load racing this change can
    # bring the old layout back. Redis also knows every booked seat, cancellations not yet
    # persisted included, so it alone tells whether a booked seat would disappear.
    await seats.load(show_id)
    old: asyncpg.Record | None = None
    reshaped = False
    try:
        async with pool.acquire() as conn, conn.transaction():
            old = await conn.fetchrow(LOCK_SHOW, show_id)
            if old is None:
                raise NotFound("Show not found.")
            movie = None
            if "movie_id" in data:
                # Share-locked: the movie cannot be deleted (with its shows) under this change.
                movie = await conn.fetchrow(LOCK_MOVIE_SHARED, data["movie_id"])
                if movie is None:
                    raise InvalidInput(errors={"movie_id": ["No movie with this id."]})
            new = patched_show(old, data, movie)
            # PostgreSQL first, uncommitted: whatever it refuses, Redis has not changed yet.
            await conn.execute(
                UPDATE_SHOW,
                show_id,
                new["movie_id"],
                new["screen_name"],
                new["date_time"],
                new["total_seats"],
                new["seat_rows"],
                new["seats_per_row"],
            )
            loaded, missing = await reshape_in_redis(seats, new)
            reshaped = loaded and missing is None
            if not loaded:
                # Only a show being deleted (closed in Redis) is not loaded here: it has nothing
                # pending in Redis, so PostgreSQL knows all of its booked seats.
                labels = set(
                    seat_labels(new["total_seats"], new["seat_rows"], new["seats_per_row"])
                )
                booked = await conn.fetch(SELECT_BOOKED_SEATS, show_id)
                missing = next(
                    (b["seat_number"] for b in booked if b["seat_number"] not in labels), None
                )
            if missing is not None:
                raise Conflict(f"Seat {missing} is booked and would no longer exist.")
    except BaseException:
        # Only a failed commit gets here with Redis reshaped; claims since then fit both layouts
        # only if they are in the old one, so this can be refused, and is logged if it is.
        if reshaped and old is not None:
            conflict = await reshape_in_redis(seats, old)
            if conflict[1] is not None:
                log.error("show %s: Redis keeps the new layout after a failed commit", show_id)
        raise
    return json_response(await admin_show(seats, pool, show_id))


@docs(
    tags=["Admin"],
    summary="Delete a show (409 if it has bookings)",
    security=SECURITY,
    responses={204: {"description": "deleted"}, 409: {"description": "it has bookings"}},
)
@idempotency_header
@routes.delete(r"/api/admin/shows/{id}/")
@idempotent(require_admin)
async def delete_show(request: web.Request) -> web.Response:
    await require_admin(request)
    show_id = path_id(request)
    pool, seats = request.app[appkeys.PG_POOL], request.app[appkeys.SEATS]
    await delete_unbooked(
        seats, pool, show_id, LOCK_SHOW_ROW, LOCK_SHOW_ROW, SHOW_HAS_BOOKINGS, DELETE_SHOW, "show"
    )
    return web.Response(status=204)


@docs(
    tags=["Admin"],
    summary="All bookings, newest first (as persisted in PostgreSQL)",
    security=SECURITY,
    parameters=PAGE_PARAMS
    + [
        {"in": "query", "name": "show", "type": "integer", "required": False},
        {"in": "query", "name": "user", "type": "integer", "required": False},
        {
            "in": "query",
            "name": "status",
            "type": "string",
            "enum": ["booked", "cancelled"],
            "required": False,
        },
    ],
)
@response_schema(BookingPageSchema, 200)
@routes.get("/api/admin/bookings/")
async def list_bookings(request: web.Request) -> web.Response:
    await require_admin(request)
    show, user = query_id(request, "show"), query_id(request, "user")
    status = request.query.get("status")
    if status is not None and status not in ("booked", "cancelled"):
        raise InvalidInput(errors={"status": ["Must be booked or cancelled."]})
    page = Page(request)
    pool, seats = request.app[appkeys.PG_POOL], request.app[appkeys.SEATS]
    count = await pool.fetchval(COUNT_BOOKINGS, show, user, status)
    rows = await pool.fetch(SELECT_BOOKINGS, show, user, status, page.size, page.offset)
    show_ids = sorted({r["show_id"] for r in rows})
    shows = (
        {
            s["id"]: s
            for s in await shows_json(seats, pool, await pool.fetch(SELECT_SHOWS, show_ids))
        }
        if show_ids
        else {}
    )
    results = [
        {
            "id": r["id"],
            "user_id": r["user_id"],
            "show": shows[r["show_id"]],
            "seat_number": r["seat_number"],
            "status": r["status"],
            "created_at": iso_utc(r["created_at"]),
        }
        for r in rows
    ]
    return json_response(page.body(count, results))


@docs(
    tags=["Admin"],
    summary="Cancel anyone's booking (idempotent, also after the show started)",
    security=SECURITY,
)
@idempotency_header
@response_schema(BookingSchema, 200)
@routes.post(r"/api/admin/bookings/{id}/cancel/")
@idempotent(require_admin)
async def admin_cancel(request: web.Request) -> web.Response:
    principal = await require_admin(request)
    return await cancel_response(request, principal.user_id, as_admin=True)


@docs(tags=["Admin"], summary="List users", security=SECURITY, parameters=PAGE_PARAMS)
@response_schema(UserPage, 200)
@routes.get("/api/admin/users/")
async def list_users(request: web.Request) -> web.Response:
    await require_admin(request)
    page = Page(request)
    pool = request.app[appkeys.PG_POOL]
    count = await pool.fetchval(COUNT_USERS)
    rows = await pool.fetch(SELECT_USERS, page.size, page.offset)
    return json_response(page.body(count, [user_dict(r) for r in rows]))


@docs(
    tags=["Admin"],
    summary="Activate or deactivate a user; grant or revoke admin",
    security=SECURITY,
)
@idempotency_header
@request_schema(UserPatchSchema)
@response_schema(UserAdminSchema, 200)
@routes.patch(r"/api/admin/users/{id}/")
@idempotent(require_admin)
async def patch_user(request: web.Request) -> web.Response:
    await require_admin(request)
    user_id = path_id(request)
    pool = request.app[appkeys.PG_POOL]
    if await pool.fetchrow(SELECT_USER, user_id) is None:
        raise NotFound("User not found.")
    data = await parse_body(request, UserPatchSchema())
    row = await pool.fetchrow(UPDATE_USER, user_id, data.get("is_active"), data.get("is_admin"))
    if row is None:
        raise NotFound("User not found.")
    return json_response(user_dict(row))
