"""The public catalog: movies by title, a movie's shows, one show and its free seats."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qs, urlsplit

import asyncpg
import pytest
from arq.connections import ArqRedis
from yarl import URL

from tests.conftest import Api, make_show

SHOW_KEYS = {"id", "movie", "screen_name", "date_time", "total_seats", "available_seats"}
BASE = datetime(2030, 1, 1, tzinfo=UTC)


async def add_movie(pg: asyncpg.Pool, title: str, duration: int = 100) -> int:
    return int(
        await pg.fetchval(
            "INSERT INTO movies (title, duration_minutes) VALUES ($1, $2) RETURNING id",
            title,
            duration,
        )
    )


async def add_show(
    pg: asyncpg.Pool, movie_id: int, when: datetime, total: int = 10, screen: str = "Screen 1"
) -> int:
    return int(
        await pg.fetchval(
            "INSERT INTO shows (movie_id, screen_name, date_time, total_seats)"
            " VALUES ($1, $2, $3, $4) RETURNING id",
            movie_id,
            screen,
            when,
            total,
        )
    )


def relative(url: str) -> str:
    """An absolute next/previous link as a path the test client can follow (encoding kept)."""
    return str(URL(url).relative())


def query_of(url: str) -> dict[str, list[str]]:
    return parse_qs(urlsplit(url).query, keep_blank_values=True)


def parse_instant(text: str) -> datetime:
    moment = datetime.fromisoformat(text)
    assert moment.utcoffset() == timedelta(0), text
    return moment


# --- movies ----------------------------------------------------------------------------------


async def test_movies_by_title_ties_by_id(http: Api, pg: asyncpg.Pool) -> None:
    zeta = await add_movie(pg, "Zeta", 90)
    alpha1 = await add_movie(pg, "Alpha", 100)
    mid = await add_movie(pg, "Mid", 110)
    alpha2 = await add_movie(pg, "Alpha", 120)
    status, body = await http.get("/api/movies/")
    assert status == 200, body
    assert body["count"] == 4
    assert body["next"] is None and body["previous"] is None
    assert [m["id"] for m in body["results"]] == [alpha1, alpha2, mid, zeta]
    assert body["results"][0] == {"id": alpha1, "title": "Alpha", "duration_minutes": 100}


async def test_movies_pagination_links_keep_other_params(
    http: Api, pg: asyncpg.Pool, server: str
) -> None:
    ids = [await add_movie(pg, f"Movie {i:02d}") for i in range(25)]
    status, first = await http.get("/api/movies/?page_size=10&lang=en")
    assert status == 200, first
    assert first["count"] == 25
    assert [m["id"] for m in first["results"]] == ids[:10]
    assert first["previous"] is None
    nxt = first["next"]
    assert nxt.startswith(f"{server}/api/movies/?"), nxt
    assert query_of(nxt) == {"page_size": ["10"], "lang": ["en"], "page": ["2"]}

    status, second = await http.get(relative(nxt))
    assert status == 200, second
    assert [m["id"] for m in second["results"]] == ids[10:20]
    assert query_of(second["previous"]) == {"page_size": ["10"], "lang": ["en"]}
    assert second["previous"].startswith(f"{server}/api/movies/?")

    status, third = await http.get(relative(second["next"]))
    assert status == 200, third
    assert [m["id"] for m in third["results"]] == ids[20:]
    assert third["next"] is None
    assert query_of(third["previous"])["page"] == ["2"]

    status, back = await http.get(relative(second["previous"]))
    assert status == 200
    assert back["results"] == first["results"]


async def test_page_size_default_and_clamp(http: Api, pg: asyncpg.Pool) -> None:
    await pg.executemany(
        "INSERT INTO movies (title, duration_minutes) VALUES ($1, 100)",
        [(f"Film {i:03d}",) for i in range(105)],
    )
    status, body = await http.get("/api/movies/")
    assert status == 200
    assert body["count"] == 105 and len(body["results"]) == 10
    assert query_of(body["next"])["page"] == ["2"]

    status, body = await http.get("/api/movies/?page_size=1000")
    assert status == 200
    assert len(body["results"]) == 100
    assert body["results"][-1]["title"] == "Film 099"
    status, rest = await http.get(relative(body["next"]))
    assert status == 200
    assert [m["title"] for m in rest["results"]] == [f"Film {i:03d}" for i in range(100, 105)]
    assert rest["next"] is None

    status, body = await http.get("/api/movies/?page_size=100&page=2")
    assert status == 200 and len(body["results"]) == 5


@pytest.mark.parametrize(
    "query", ["page=0", "page=-1", "page=abc", "page_size=0", "page_size=x", "page=1.5"]
)
async def test_bad_page_params_are_400(http: Api, pg: asyncpg.Pool, query: str) -> None:
    await add_movie(pg, "Alpha")
    status, body = await http.get(f"/api/movies/?{query}")
    assert status == 400, body
    assert "errors" in body and body["detail"]


async def test_empty_first_page_and_page_past_end(http: Api, pg: asyncpg.Pool) -> None:
    status, body = await http.get("/api/movies/")
    assert status == 200
    assert body == {"count": 0, "next": None, "previous": None, "results": []}
    status, body = await http.get("/api/movies/?page=2")
    assert status == 404, body

    for title in ("A", "B", "C"):
        await add_movie(pg, title)
    status, body = await http.get("/api/movies/?page_size=3")
    assert status == 200 and body["next"] is None and len(body["results"]) == 3
    status, body = await http.get("/api/movies/?page_size=3&page=2")
    assert status == 404
    assert body["detail"]
    status, body = await http.get("/api/movies/?page_size=2&page=2")
    assert status == 200 and [m["title"] for m in body["results"]] == ["C"]


# --- a movie's shows -------------------------------------------------------------------------


async def test_movie_shows_soonest_first_ties_by_id(http: Api, pg: asyncpg.Pool) -> None:
    movie = await add_movie(pg, "Dune")
    other = await add_movie(pg, "Other")
    now = datetime.now(UTC)
    later = await add_show(pg, movie, now + timedelta(days=2))
    tie_a = await add_show(pg, movie, now + timedelta(days=1), screen="A")
    tie_b = await add_show(pg, movie, now + timedelta(days=1), screen="B")
    past = await add_show(pg, movie, now - timedelta(days=1))
    await add_show(pg, other, now + timedelta(hours=1))
    status, body = await http.get(f"/api/movies/{movie}/shows/")
    assert status == 200, body
    assert body["count"] == 4
    assert [s["id"] for s in body["results"]] == [past, tie_a, tie_b, later]
    first = body["results"][1]
    assert set(first) == SHOW_KEYS
    assert first["movie"] == {"id": movie, "title": "Dune", "duration_minutes": 100}
    assert first["available_seats"] == first["total_seats"] == 10

    status, page = await http.get(f"/api/movies/{movie}/shows/?page_size=3&page=2")
    assert status == 200 and [s["id"] for s in page["results"]] == [later]


async def test_movie_shows_from_filter(http: Api, pg: asyncpg.Pool) -> None:
    movie = await add_movie(pg, "Dune")
    s08 = await add_show(pg, movie, BASE.replace(hour=8))
    s10 = await add_show(pg, movie, BASE.replace(hour=10))
    s12 = await add_show(pg, movie, BASE.replace(hour=12))
    path = f"/api/movies/{movie}/shows/"

    async def ids(query: str) -> list[int]:
        status, body = await http.get(f"{path}?{query}")
        assert status == 200, (query, body)
        return [s["id"] for s in body["results"]]

    # At or after: the boundary instant itself is kept.
    assert await ids("from=2030-01-01T10:00:00Z") == [s10, s12]
    assert await ids("from=2030-01-01T10:00:00.000001Z") == [s12]
    assert await ids("from=2030-01-01T10:00:00%2B00:00") == [s10, s12]
    # +02:00 (encoded as the client must): 12:00+02:00 is 10:00 UTC.
    assert await ids("from=2030-01-01T12:00:00%2B02:00") == [s10, s12]
    assert await ids("from=2030-01-01T03:00:00-05:00") == [s08, s10, s12]
    assert await ids("from=2030-01-01T13:00:00Z") == []
    # A raw '+' arrives as a space; after a full date and time it can only be the offset.
    assert await ids("from=2030-01-01T12:00:00+02:00") == [s10, s12]
    assert await ids("from=2030-01-01T12:00+02:00") == [s10, s12]


async def test_from_is_kept_in_next_link(http: Api, pg: asyncpg.Pool) -> None:
    movie = await add_movie(pg, "Dune")
    await add_show(pg, movie, BASE.replace(hour=8))
    s10 = await add_show(pg, movie, BASE.replace(hour=10))
    s12 = await add_show(pg, movie, BASE.replace(hour=12))
    status, body = await http.get(
        f"/api/movies/{movie}/shows/?from=2030-01-01T12:00:00%2B02:00&page_size=1"
    )
    assert status == 200, body
    assert body["count"] == 2 and [s["id"] for s in body["results"]] == [s10]
    assert query_of(body["next"])["from"] == ["2030-01-01T12:00:00+02:00"]
    status, body = await http.get(relative(body["next"]))
    assert status == 200, body
    assert [s["id"] for s in body["results"]] == [s12]
    assert body["next"] is None


@pytest.mark.parametrize(
    "value",
    [
        "2030-01-01T10:00:00",  # naive
        "2030-01-01",  # a date, naive
        "2030-01-01%2010:00",  # naive, space separated
        "garbage",
        "",
        "2030-13-01T10:00:00Z",
        "2030-01-01T10:00:00%2B25:00",
        "1" * 100,
    ],
)
async def test_from_naive_or_garbage_is_400(http: Api, pg: asyncpg.Pool, value: str) -> None:
    movie = await add_movie(pg, "Dune")
    status, body = await http.get(f"/api/movies/{movie}/shows/?from={value}")
    assert status == 400, (value, body)
    assert list(body["errors"]) == ["from"]


async def test_movie_shows_unknown_movie_404(http: Api, pg: asyncpg.Pool) -> None:
    await add_movie(pg, "Dune")
    for movie in ("999", "abc", str(2**63), "0"):
        status, body = await http.get(f"/api/movies/{movie}/shows/")
        assert status == 404, (movie, body)
    # 404 wins over a bad query.
    status, _ = await http.get("/api/movies/999/shows/?from=garbage")
    assert status == 404
    movie = await add_movie(pg, "No shows")
    status, body = await http.get(f"/api/movies/{movie}/shows/")
    assert status == 200 and body["count"] == 0 and body["results"] == []


# --- one show --------------------------------------------------------------------------------


async def test_show_detail_shape(http: Api, pg: asyncpg.Pool) -> None:
    show = await make_show(pg, total_seats=7, title="Arrival", screen="Hall 2")
    stored = await pg.fetchval("SELECT date_time FROM shows WHERE id = $1", show)
    movie = await pg.fetchval("SELECT movie_id FROM shows WHERE id = $1", show)
    status, body = await http.get(f"/api/shows/{show}/")
    assert status == 200, body
    assert set(body) == SHOW_KEYS
    assert body["id"] == show
    assert body["movie"] == {"id": movie, "title": "Arrival", "duration_minutes": 120}
    assert body["screen_name"] == "Hall 2"
    assert body["total_seats"] == 7 and body["available_seats"] == 7
    assert parse_instant(body["date_time"]) == stored


async def test_show_unknown_is_404(http: Api, pg: asyncpg.Pool) -> None:
    for show in ("12345", "abc", str(2**63), "-1"):
        status, body = await http.get(f"/api/shows/{show}/")
        assert status == 404, (show, body)
        assert body["detail"]


async def test_show_offset_round_trip(http: Api, pg: asyncpg.Pool) -> None:
    token = await http.admin(pg)
    status, movie = await http.post(
        "/api/admin/movies/", token=token, json={"title": "Lagaan", "duration_minutes": 224}
    )
    assert status == 201, movie
    status, created = await http.post(
        "/api/admin/shows/",
        token=token,
        json={
            "movie_id": movie["id"],
            "screen_name": "Mumbai 1",
            "date_time": "2031-06-01T20:00:00+05:30",
            "total_seats": 5,
        },
    )
    assert status == 201, created
    expected = datetime(2031, 6, 1, 14, 30, tzinfo=UTC)
    assert parse_instant(created["date_time"]) == expected
    status, body = await http.get(f"/api/shows/{created['id']}/")
    assert status == 200
    assert parse_instant(body["date_time"]) == expected
    assert body["date_time"] == created["date_time"]
    status, listed = await http.get(f"/api/movies/{movie['id']}/shows/")
    assert parse_instant(listed["results"][0]["date_time"]) == expected
    stored = await pg.fetchval("SELECT date_time FROM shows WHERE id = $1", created["id"])
    assert stored == expected


async def test_available_seats_exact_after_book_and_cancel(
    http: Api, pg: asyncpg.Pool, redis: ArqRedis, drain
) -> None:
    show = await make_show(pg, total_seats=5)
    movie = await pg.fetchval("SELECT movie_id FROM shows WHERE id = $1", show)
    token = await http.user()

    async def available() -> tuple[int, int]:
        status, one = await http.get(f"/api/shows/{show}/")
        assert status == 200
        status, listed = await http.get(f"/api/movies/{movie}/shows/")
        assert status == 200
        return one["available_seats"], listed["results"][0]["available_seats"]

    assert await available() == (5, 5)
    status, first = await http.post(
        f"/api/shows/{show}/book/", token=token, json={"seat_number": "1"}
    )
    assert status == 201, first
    assert first["show"]["available_seats"] == 4
    assert await available() == (4, 4)
    status, second = await http.post(
        f"/api/shows/{show}/book/", token=token, json={"seat_number": 2}
    )
    assert status == 201 and second["show"]["available_seats"] == 3
    assert await available() == (3, 3)

    status, cancelled = await http.post(f"/api/bookings/{first['id']}/cancel/", token=token)
    assert status == 200, cancelled
    assert cancelled["show"]["available_seats"] == 4
    assert await available() == (4, 4)

    # Still exact from PostgreSQL alone once persisted and Redis is emptied.
    await drain()
    await redis.flushdb()
    assert await available() == (4, 4)


@pytest.mark.parametrize(
    "when",
    [
        "2031-06-01T14:30:00.123457Z",
        "1970-01-01T00:00:00.000001Z",
        "9001-04-16T00:10:56.760333Z",
        "9999-12-31T23:59:59.999999Z",
    ],
)
async def test_show_instant_never_shifts_in_booking_responses(
    http: Api, pg: asyncpg.Pool, when: str
) -> None:
    token = await http.admin(pg)
    status, movie = await http.post(
        "/api/admin/movies/", token=token, json={"title": "Far", "duration_minutes": 90}
    )
    assert status == 201
    status, show = await http.post(
        "/api/admin/shows/",
        token=token,
        json={"movie_id": movie["id"], "screen_name": "S", "date_time": when, "total_seats": 2},
    )
    assert status == 201, show
    assert show["date_time"] == when
    user = await http.user()
    status, booking = await http.post(
        f"/api/shows/{show['id']}/book/", token=user, json={"seat_number": "1"}
    )
    expected = 201 if when > "2" else 409  # the 1970 show has started
    assert status == expected, booking
    status, body = await http.get(f"/api/shows/{show['id']}/")
    assert status == 200 and body["date_time"] == when
    if expected == 201:
        assert booking["show"]["date_time"] == when
