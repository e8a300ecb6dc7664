"""Catalog: movies and shows, read from PostgreSQL, with available seats counted in Redis."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

import asyncpg
from aiohttp import web
from aiohttp_apispec import docs, response_schema
from marshmallow import Schema, ValidationError, fields

from engine import appkeys
from engine.errors import InvalidInput, NotFound
from engine.jsonutil import json_response
from engine.seats import SeatEngine
from engine.shapes import SHOW_COLUMNS, SHOWS_WITH_MOVIES, movie_dict, show_dict
from engine.validation import Page, parse_aware_datetime, path_id

SELECT_SHOW = f"SELECT {SHOW_COLUMNS} FROM {SHOWS_WITH_MOVIES} WHERE s.id = $1"
COUNT_MOVIES = "SELECT count(*) FROM movies"
SELECT_MOVIES = """
SELECT id, title, duration_minutes FROM movies ORDER BY title, id LIMIT $1 OFFSET $2
"""
SELECT_MOVIE = "SELECT id, title, duration_minutes FROM movies WHERE id = $1"
COUNT_MOVIE_SHOWS = "SELECT count(*) FROM shows WHERE movie_id = $1 AND date_time >= $2"
SELECT_MOVIE_SHOWS = f"""
SELECT {SHOW_COLUMNS} FROM {SHOWS_WITH_MOVIES}
WHERE s.movie_id = $1 AND s.date_time >= $2
ORDER BY s.date_time, s.id LIMIT $3 OFFSET $4
"""
COUNT_BOOKED_BY_SHOW = """
SELECT show_id, count(*) AS booked FROM bookings
WHERE show_id = ANY($1::bigint[]) AND status = 'booked' GROUP BY show_id
"""
EPOCH = datetime.fromisoformat("1970-01-01T00:00:00+00:00")
# A "+hh:mm" offset typed into a URL unencoded arrives as " hh:mm" ('+' means a space in a query
# string); right after a full date and time, that space can mean nothing else.
SPACED_OFFSET = re.compile(
    r"^(\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d{1,6})?)?) (\d{2}:?\d{2})$"
)


def parse_from(raw: str) -> datetime:
    """The `from` query parameter: an aware ISO 8601 instant; anything else is a 400."""
    text = raw.strip()
    spaced = SPACED_OFFSET.match(text)
    if spaced:
        text = f"{spaced[1]}+{spaced[2]}"
    try:
        return parse_aware_datetime(text)
    except ValidationError as exc:
        raise InvalidInput(errors={"from": [str(m) for m in exc.messages]}) from None


async def available_seats(
    seats: SeatEngine, pool: asyncpg.Pool, rows: list[asyncpg.Record]
) -> dict[int, int]:
    """Free seats per show: Redis for loaded shows, PostgreSQL (exact, since nothing can be
    claimed in a show Redis has not loaded) for the others."""
    ids = [r["id"] for r in rows]
    counted = await seats.available(ids)
    missing = [sid for sid, free in counted.items() if free is None]
    booked: dict[int, int] = {}
    if missing:
        booked = {
            r["show_id"]: r["booked"] for r in await pool.fetch(COUNT_BOOKED_BY_SHOW, missing)
        }
    out: dict[int, int] = {}
    for row in rows:
        free = counted.get(row["id"])
        out[row["id"]] = free if free is not None else row["total_seats"] - booked.get(row["id"], 0)
    return out


async def shows_json(
    seats: SeatEngine, pool: asyncpg.Pool, rows: list[asyncpg.Record]
) -> list[dict[str, Any]]:
    free = await available_seats(seats, pool, rows)
    return [show_dict(r, free[r["id"]]) for r in rows]


async def get_show(seats: SeatEngine, pool: asyncpg.Pool, show_id: int) -> dict[str, Any]:
    row = await pool.fetchrow(SELECT_SHOW, show_id)
    if row is None:
        raise NotFound("Show not found.")
    return (await shows_json(seats, pool, [row]))[0]


# --- schemas (documentation of responses) ----------------------------------------------------


class MovieSchema(Schema):
    id = fields.Integer()
    title = fields.String()
    duration_minutes = fields.Integer()


class ShowSchema(Schema):
    id = fields.Integer()
    movie = fields.Nested(MovieSchema)
    screen_name = fields.String()
    date_time = fields.DateTime()
    total_seats = fields.Integer()
    available_seats = fields.Integer()


def page_of(item: type[Schema]) -> type[Schema]:
    return type(
        f"{item.__name__.removesuffix('Schema')}PageSchema",
        (Schema,),
        {
            "count": fields.Integer(),
            "next": fields.String(allow_none=True),
            "previous": fields.String(allow_none=True),
            "results": fields.List(fields.Nested(item)),
        },
    )


MoviePageSchema = page_of(MovieSchema)
ShowPageSchema = page_of(ShowSchema)

PAGE_PARAMS = [
    {"in": "query", "name": "page", "type": "integer", "minimum": 1, "required": False},
    {
        "in": "query",
        "name": "page_size",
        "type": "integer",
        "minimum": 1,
        "maximum": 100,
        "required": False,
    },
]

# --- handlers --------------------------------------------------------------------------------

routes = web.RouteTableDef()


@docs(tags=["Movies"], summary="Movies, by title", parameters=PAGE_PARAMS)
@response_schema(MoviePageSchema, 200)
@routes.get("/api/movies/")
async def list_movies(request: web.Request) -> web.Response:
    page = Page(request)
    pool = request.app[appkeys.PG_POOL]
    count = await pool.fetchval(COUNT_MOVIES)
    rows = await pool.fetch(SELECT_MOVIES, page.size, page.offset)
    return json_response(page.body(count, [movie_dict(r) for r in rows]))


@docs(
    tags=["Movies"],
    summary="A movie's shows, soonest first",
    parameters=PAGE_PARAMS
    + [
        {
            "in": "query",
            "name": "from",
            "type": "string",
            "format": "date-time",
            "required": False,
            "description": "only shows at or after this instant",
        }
    ],
    responses={404: {"description": "unknown movie"}},
)
@response_schema(ShowPageSchema, 200)
@routes.get(r"/api/movies/{id}/shows/")
async def list_movie_shows(request: web.Request) -> web.Response:
    movie_id = path_id(request)
    pool = request.app[appkeys.PG_POOL]
    if await pool.fetchval(SELECT_MOVIE, movie_id) is None:
        raise NotFound("Movie not found.")
    page = Page(request)
    since = parse_from(request.query["from"]) if "from" in request.query else EPOCH
    count = await pool.fetchval(COUNT_MOVIE_SHOWS, movie_id, since)
    rows = await pool.fetch(SELECT_MOVIE_SHOWS, movie_id, since, page.size, page.offset)
    results = await shows_json(request.app[appkeys.SEATS], pool, rows)
    return json_response(page.body(count, results))


@docs(
    tags=["Shows"],
    summary="One show, with its available seats",
    responses={404: {"description": "unknown show"}},
)
@response_schema(ShowSchema, 200)
@routes.get(r"/api/shows/{id}/")
async def show_detail(request: web.Request) -> web.Response:
    show_id = path_id(request)
    return json_response(
        await get_show(request.app[appkeys.SEATS], request.app[appkeys.PG_POOL], show_id)
    )
