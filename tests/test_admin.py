"""The admin portal: movies, shows, bookings and users, for admins only."""

from __future__ import annotations

import asyncio
import os
import sys
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from engine.settings import Settings
from tests.conftest import ROOT, Api, make_show

FUTURE = "2031-03-01T19:30:00Z"
PAST = "2020-03-01T19:30:00Z"

ADMIN_CALLS: list[tuple[str, str, Any]] = [
    ("GET", "/api/admin/movies/", None),
    ("POST", "/api/admin/movies/", {"title": "X", "duration_minutes": 90}),
    ("GET", "/api/admin/movies/1/", None),
    ("PATCH", "/api/admin/movies/1/", {"title": "Y"}),
    ("DELETE", "/api/admin/movies/1/", None),
    ("GET", "/api/admin/shows/", None),
    (
        "POST",
        "/api/admin/shows/",
        {"movie_id": 1, "screen_name": "S", "date_time": FUTURE, "total_seats": 5},
    ),
    ("GET", "/api/admin/shows/1/", None),
    ("PATCH", "/api/admin/shows/1/", {"screen_name": "T"}),
    ("DELETE", "/api/admin/shows/1/", None),
    ("GET", "/api/admin/bookings/", None),
    ("POST", "/api/admin/bookings/1/cancel/", None),
    ("GET", "/api/admin/users/", None),
    ("PATCH", "/api/admin/users/1/", {"is_admin": True}),
]


async def new_movie(http: Api, token: str, title: str = "Dune", minutes: int = 155) -> int:
    status, body = await http.post(
        "/api/admin/movies/", token=token, json={"title": title, "duration_minutes": minutes}
    )
    assert status == 201, body
    return int(body["id"])


async def new_show(http: Api, token: str, movie_id: int, **fields: Any) -> dict[str, Any]:
    payload: dict[str, Any] = {"movie_id": movie_id, "screen_name": "Screen 1", "date_time": FUTURE}
    payload.update(fields)
    if "rows" not in payload and "total_seats" not in payload:
        payload["total_seats"] = 6
    status, body = await http.post("/api/admin/shows/", token=token, json=payload)
    assert status == 201, body
    return dict(body)


async def book(http: Api, token: str, show_id: int, seat: Any) -> tuple[int, Any]:
    return await http.post(f"/api/shows/{show_id}/book/", token=token, json={"seat_number": seat})


async def user_id(pg: asyncpg.Pool, username: str) -> int:
    return int(await pg.fetchval("SELECT id FROM users WHERE username = $1", username))


# --- access ----------------------------------------------------------------------------------


async def test_every_admin_endpoint_needs_an_admin(http: Api, pg: asyncpg.Pool) -> None:
    user = await http.user("mallory")
    for method, path, body in ADMIN_CALLS:
        status, answer = await http.call(method, path, json=body)
        assert status == 401, (method, path, answer)
        assert answer["detail"]
        status, answer = await http.call(method, path, json=body, token="not-a-jwt")
        assert status == 401, (method, path, answer)
        status, answer = await http.call(method, path, json=body, token=user)
        assert status == 403, (method, path, answer)
        assert answer["detail"]
    # Nothing was changed by the refused calls.
    assert await pg.fetchval("SELECT count(*) FROM movies") == 0
    assert await pg.fetchval("SELECT bool_or(is_admin) FROM users") is False


async def test_error_precedence_and_body_handling(http: Api, pg: asyncpg.Pool) -> None:
    """401 -> 403 -> 404 -> 400 -> 409, unknown fields ignored, malformed JSON a 400."""
    token = await http.admin(pg)
    user = await http.user("mallory")
    bad = {"title": ""}
    status, _ = await http.patch("/api/admin/movies/987/", token=user, json=bad)
    assert status == 403
    for movie in ("987", "abc", str(2**63), "0"):
        status, body = await http.patch(f"/api/admin/movies/{movie}/", token=token, json=bad)
        assert status == 404, (movie, body)
        status, body = await http.get(f"/api/admin/movies/{movie}/", token=token)
        assert status == 404, (movie, body)
    status, body = await http.patch("/api/admin/shows/987/", token=token, json={"rows": 99})
    assert status == 404, body
    status, body = await http.patch("/api/admin/users/987/", token=token, json={"is_admin": 1})
    assert status == 404, body

    status, created = await http.post(
        "/api/admin/movies/",
        token=token,
        json={"title": "Heat", "duration_minutes": 170, "id": 4242, "extra": [1]},
    )
    assert status == 201, created
    assert created["id"] != 4242 and set(created) == {"id", "title", "duration_minutes"}
    for raw in ("{not json", "[]", "null", '"x"', ""):
        status, body = await http.post(
            "/api/admin/movies/",
            token=token,
            data=raw,
            headers={"Content-Type": "application/json"},
        )
        assert status == 400, (raw, body)
        assert body["detail"]
    status, body = await http.post("/api/admin/movies/", token=token, data="title=Heat")
    assert status == 400, body

    # 400 before 409: an invalid change to a show with bookings is a 400.
    show = await new_show(http, token, created["id"], total_seats=3)
    status, _ = await book(http, user, show["id"], "3")
    assert status == 201
    path = f"/api/admin/shows/{show['id']}/"
    status, body = await http.patch(path, token=token, json={"total_seats": 0})
    assert status == 400, body
    status, body = await http.patch(path, token=token, json={"total_seats": 2})
    assert status == 409, body
    assert body["detail"]


# --- movies ----------------------------------------------------------------------------------


async def test_movies_crud(http: Api, pg: asyncpg.Pool) -> None:
    token = await http.admin(pg)
    status, created = await http.post(
        "/api/admin/movies/", token=token, json={"title": "  Heat ", "duration_minutes": 170}
    )
    assert status == 201, created
    assert created == {"id": created["id"], "title": "Heat", "duration_minutes": 170}
    movie = created["id"]

    status, one = await http.get(f"/api/admin/movies/{movie}/", token=token)
    assert status == 200 and one == created
    status, listed = await http.get("/api/admin/movies/", token=token)
    assert status == 200 and listed["count"] == 1 and listed["results"] == [created]
    status, public = await http.get("/api/movies/")
    assert public["results"] == [created]

    status, patched = await http.patch(
        f"/api/admin/movies/{movie}/", token=token, json={"title": "Heat (1995)"}
    )
    assert status == 200, patched
    assert patched == {"id": movie, "title": "Heat (1995)", "duration_minutes": 170}
    status, patched = await http.patch(
        f"/api/admin/movies/{movie}/", token=token, json={"duration_minutes": 171}
    )
    assert status == 200 and patched["title"] == "Heat (1995)"
    assert patched["duration_minutes"] == 171

    status, _ = await http.delete(f"/api/admin/movies/{movie}/", token=token)
    assert status == 204
    status, _ = await http.get(f"/api/admin/movies/{movie}/", token=token)
    assert status == 404
    status, _ = await http.delete(f"/api/admin/movies/{movie}/", token=token)
    assert status == 404
    status, _ = await http.patch(f"/api/admin/movies/{movie}/", token=token, json={"title": "Z"})
    assert status == 404
    assert await pg.fetchval("SELECT count(*) FROM movies") == 0


@pytest.mark.parametrize(
    "body, field",
    [
        ({"duration_minutes": 90}, "title"),
        ({"title": "X"}, "duration_minutes"),
        ({"title": "", "duration_minutes": 90}, "title"),
        ({"title": "   ", "duration_minutes": 90}, "title"),
        ({"title": "x" * 256, "duration_minutes": 90}, "title"),
        ({"title": 5, "duration_minutes": 90}, "title"),
        ({"title": "X", "duration_minutes": "90"}, "duration_minutes"),
        ({"title": "X", "duration_minutes": 0}, "duration_minutes"),
        ({"title": "X", "duration_minutes": 1001}, "duration_minutes"),
        ({"title": "X", "duration_minutes": True}, "duration_minutes"),
        ({"title": "X", "duration_minutes": 90.5}, "duration_minutes"),
    ],
)
async def test_movie_create_invalid_is_400(
    http: Api, pg: asyncpg.Pool, body: dict[str, Any], field: str
) -> None:
    token = await http.admin(pg)
    status, answer = await http.post("/api/admin/movies/", token=token, json=body)
    assert status == 400, answer
    assert field in answer["errors"]
    assert await pg.fetchval("SELECT count(*) FROM movies") == 0


async def test_movie_patch_invalid_is_400(http: Api, pg: asyncpg.Pool) -> None:
    token = await http.admin(pg)
    movie = await new_movie(http, token)
    for body in ({"title": ""}, {"duration_minutes": 0}, [1], "x"):
        status, answer = await http.patch(f"/api/admin/movies/{movie}/", token=token, json=body)
        assert status == 400, (body, answer)
    status, one = await http.get(f"/api/admin/movies/{movie}/", token=token)
    assert one["title"] == "Dune" and one["duration_minutes"] == 155


async def test_delete_movie_with_bookings_is_409(http: Api, pg: asyncpg.Pool, drain) -> None:
    token = await http.admin(pg)
    movie = await new_movie(http, token)
    show = await new_show(http, token, movie)
    alice = await http.user("alice")
    status, booking = await book(http, alice, show["id"], "1")
    assert status == 201, booking

    # Not yet persisted by the worker: Redis knows it, PostgreSQL does not.
    assert await pg.fetchval("SELECT count(*) FROM bookings") == 0
    status, body = await http.delete(f"/api/admin/movies/{movie}/", token=token)
    assert status == 409, body
    # The refused delete left the show bookable.
    status, body = await book(http, alice, show["id"], "2")
    assert status == 201, body

    await drain()
    assert await pg.fetchval("SELECT count(*) FROM bookings") == 2
    status, body = await http.delete(f"/api/admin/movies/{movie}/", token=token)
    assert status == 409, body
    status, body = await book(http, alice, show["id"], "3")
    assert status == 201, body
    status, body = await http.get(f"/api/shows/{show['id']}/")
    assert status == 200 and body["available_seats"] == 3
    assert await pg.fetchval("SELECT count(*) FROM movies WHERE id = $1", movie) == 1


async def test_delete_movie_without_bookings_removes_its_shows(http: Api, pg: asyncpg.Pool) -> None:
    token = await http.admin(pg)
    movie = await new_movie(http, token)
    show = await new_show(http, token, movie)
    alice = await http.user("alice")
    # A refused booking still loads the show into Redis.
    status, _ = await book(http, alice, show["id"], "99")
    assert status == 400
    status, _ = await http.delete(f"/api/admin/movies/{movie}/", token=token)
    assert status == 204
    status, _ = await http.get(f"/api/shows/{show['id']}/")
    assert status == 404
    status, _ = await http.get(f"/api/movies/{movie}/shows/")
    assert status == 404
    status, body = await book(http, alice, show["id"], "1")
    assert status == 404, body
    assert await pg.fetchval("SELECT count(*) FROM shows") == 0


# --- shows -----------------------------------------------------------------------------------


async def test_show_crud_numbered_seats(http: Api, pg: asyncpg.Pool) -> None:
    token = await http.admin(pg)
    movie = await new_movie(http, token)
    show = await new_show(http, token, movie, total_seats=4, screen_name=" Hall 9 ")
    assert show["movie"] == {"id": movie, "title": "Dune", "duration_minutes": 155}
    assert show["screen_name"] == "Hall 9"
    assert show["total_seats"] == 4 and show["available_seats"] == 4
    assert datetime.fromisoformat(show["date_time"]) == datetime(2031, 3, 1, 19, 30, tzinfo=UTC)
    assert show["rows"] is None and show["seats_per_row"] is None

    status, one = await http.get(f"/api/admin/shows/{show['id']}/", token=token)
    assert status == 200 and one == show
    status, public = await http.get(f"/api/shows/{show['id']}/")
    assert status == 200
    assert {k: v for k, v in show.items() if k not in ("rows", "seats_per_row")} == public

    alice = await http.user("alice")
    for seat, expected in (("0", 400), ("5", 400), ("A1", 400), ("4", 201), (1, 201)):
        status, body = await book(http, alice, show["id"], seat)
        assert status == expected, (seat, body)

    status, patched = await http.patch(
        f"/api/admin/shows/{show['id']}/",
        token=token,
        json={"screen_name": "Hall 10", "date_time": "2031-03-02T10:00:00-03:00"},
    )
    assert status == 200, patched
    assert patched["screen_name"] == "Hall 10"
    assert datetime.fromisoformat(patched["date_time"]) == datetime(2031, 3, 2, 13, tzinfo=UTC)
    assert patched["available_seats"] == 2


async def test_show_with_rows(http: Api, pg: asyncpg.Pool) -> None:
    token = await http.admin(pg)
    movie = await new_movie(http, token)
    show = await new_show(http, token, movie, rows=3, seats_per_row=4)
    assert show["total_seats"] == 12 and show["available_seats"] == 12
    assert show["rows"] == 3 and show["seats_per_row"] == 4
    alice = await http.user("alice")
    for seat, expected in (("D1", 400), ("A5", 400), ("1", 400), (" c4 ", 201), ("A1", 201)):
        status, body = await book(http, alice, show["id"], seat)
        assert status == expected, (seat, body)
    status, body = await http.get(f"/api/shows/{show['id']}/")
    assert body["available_seats"] == 10

    same = await new_show(http, token, movie, rows=2, seats_per_row=5, total_seats=10)
    assert same["total_seats"] == 10

    # 52 rows (A..Z, AA..AZ) is the most.
    wide = await new_show(http, token, movie, rows=52, seats_per_row=2)
    assert wide["total_seats"] == 104
    for seat, expected in (("AZ2", 201), ("Z1", 201), ("AA1", 201), ("BA1", 400)):
        status, body = await book(http, alice, wide["id"], seat)
        assert status == expected, (seat, body)
    biggest = await new_show(http, token, movie, rows=50, seats_per_row=200)
    assert biggest["total_seats"] == 10000
    await new_show(http, token, movie, total_seats=10000)


@pytest.mark.parametrize(
    "fields, field",
    [
        ({"rows": 3, "seats_per_row": 4, "total_seats": 11}, "total_seats"),
        ({"rows": 3}, "seats_per_row"),
        ({"seats_per_row": 3}, "seats_per_row"),
        ({"rows": 3, "total_seats": 3}, "seats_per_row"),
        ({"rows": 53, "seats_per_row": 1}, "rows"),
        ({"rows": 0, "seats_per_row": 1}, "rows"),
        ({"rows": 1, "seats_per_row": 201}, "seats_per_row"),
        ({"rows": 52, "seats_per_row": 200}, "seats_per_row"),
        ({"total_seats": 10001}, "total_seats"),
        ({"total_seats": 0}, "total_seats"),
        ({"total_seats": "5"}, "total_seats"),
        ({}, "total_seats"),
        ({"total_seats": 5, "date_time": "2031-03-01T19:30:00"}, "date_time"),
        ({"total_seats": 5, "date_time": "tomorrow"}, "date_time"),
        ({"total_seats": 5, "date_time": 1700000000}, "date_time"),
        ({"total_seats": 5, "screen_name": ""}, "screen_name"),
        ({"total_seats": 5, "movie_id": "1"}, "movie_id"),
        ({"total_seats": 5, "movie_id": 999999}, "movie_id"),
    ],
)
async def test_show_create_invalid_is_400(
    http: Api, pg: asyncpg.Pool, fields: dict[str, Any], field: str
) -> None:
    token = await http.admin(pg)
    movie = await new_movie(http, token)
    payload = {"movie_id": movie, "screen_name": "S", "date_time": FUTURE, **fields}
    status, body = await http.post("/api/admin/shows/", token=token, json=payload)
    assert status == 400, body
    assert field in body["errors"], body
    assert await pg.fetchval("SELECT count(*) FROM shows") == 0


async def test_show_in_the_past_can_be_created_not_booked(http: Api, pg: asyncpg.Pool) -> None:
    token = await http.admin(pg)
    movie = await new_movie(http, token)
    show = await new_show(http, token, movie, date_time=PAST)
    assert datetime.fromisoformat(show["date_time"]) == datetime(2020, 3, 1, 19, 30, tzinfo=UTC)
    alice = await http.user("alice")
    status, body = await book(http, alice, show["id"], "1")
    assert status == 409, body


async def test_patch_show_shrink_below_a_booked_seat_is_409(
    http: Api, pg: asyncpg.Pool, drain
) -> None:
    token = await http.admin(pg)
    movie = await new_movie(http, token)
    show = await new_show(http, token, movie, total_seats=6)
    path = f"/api/admin/shows/{show['id']}/"
    alice = await http.user("alice")
    status, body = await book(http, alice, show["id"], "2")
    assert status == 201, body

    status, body = await http.patch(path, token=token, json={"total_seats": 1})
    assert status == 409, body
    # A layout without seat "2" is refused the same way.
    status, body = await http.patch(path, token=token, json={"rows": 1, "seats_per_row": 6})
    assert status == 409, body
    await drain()
    status, body = await http.patch(path, token=token, json={"total_seats": 1})
    assert status == 409, body
    status, one = await http.get(path, token=token)
    assert one["total_seats"] == 6 and one["available_seats"] == 5
    # Seat "6" still exists after the refused shrinks.
    status, body = await book(http, alice, show["id"], "6")
    assert status == 201, body
    status, body = await http.post(f"/api/bookings/{body['id']}/cancel/", token=alice)
    assert status == 200, body

    status, body = await http.patch(path, token=token, json={"total_seats": 5})
    assert status == 200, body
    assert body["total_seats"] == 5 and body["available_seats"] == 4
    # The new capacity is enforced at once.
    status, body = await book(http, alice, show["id"], "6")
    assert status == 400, body
    status, body = await book(http, alice, show["id"], "5")
    assert status == 201, body
    assert body["show"]["total_seats"] == 5 and body["show"]["available_seats"] == 3

    status, body = await http.patch(path, token=token, json={"total_seats": 2})
    assert status == 409, body
    await drain()
    status, body = await http.patch(path, token=token, json={"total_seats": 2})
    assert status == 409, body


async def test_patch_show_shrink_after_a_cancel_not_yet_persisted(
    http: Api, pg: asyncpg.Pool, drain
) -> None:
    token = await http.admin(pg)
    movie = await new_movie(http, token)
    show = await new_show(http, token, movie, total_seats=6)
    alice = await http.user("alice")
    status, booking = await book(http, alice, show["id"], "2")
    assert status == 201
    await drain()
    status, body = await http.post(f"/api/bookings/{booking['id']}/cancel/", token=alice)
    assert status == 200 and body["show"]["available_seats"] == 6
    # PostgreSQL still says "booked"; the cancel has answered, so seat "2" is not booked.
    status, body = await http.patch(
        f"/api/admin/shows/{show['id']}/", token=token, json={"total_seats": 1}
    )
    assert status == 200, body
    assert body["total_seats"] == 1 and body["available_seats"] == 1
    status, body = await book(http, alice, show["id"], "2")
    assert status == 400, body
    await drain()
    row = await pg.fetchrow("SELECT status FROM bookings WHERE id = $1", booking["id"])
    assert row["status"] == "cancelled"


async def test_patch_show_shrink_races_bookings(http: Api, pg: asyncpg.Pool, drain) -> None:
    """A shrink and bookings of the seat it removes, at once, on a show not yet in Redis:
    either the shrink wins and no booking of that seat exists, or the booking wins and the
    shrink is refused."""
    token = await http.admin(pg)
    movie = await new_movie(http, token)
    users = [await http.user(f"u{i}") for i in range(8)]
    for _ in range(5):
        show = await new_show(http, token, movie, total_seats=6)
        path = f"/api/admin/shows/{show['id']}/"
        results = await asyncio.gather(
            http.patch(path, token=token, json={"total_seats": 5}),
            *(book(http, u, show["id"], "6") for u in users),
        )
        (patch_status, patched), booked = results[0], results[1:]
        wins = [b for s, b in booked if s == 201]
        assert all(s in (201, 400, 409) for s, _ in booked), booked
        assert len(wins) <= 1
        if patch_status == 200:
            assert patched["total_seats"] == 5
            assert wins == [], (patched, wins)
        else:
            assert patch_status == 409 and len(wins) == 1, (patched, wins)
        await drain()
        total = await pg.fetchval("SELECT total_seats FROM shows WHERE id = $1", show["id"])
        seats = await pg.fetch(
            "SELECT seat_number FROM bookings WHERE show_id = $1 AND status = 'booked'",
            show["id"],
        )
        assert all(int(r["seat_number"]) <= total for r in seats)


async def test_patch_show_layout_checks(http: Api, pg: asyncpg.Pool) -> None:
    token = await http.admin(pg)
    movie = await new_movie(http, token)
    show = await new_show(http, token, movie, total_seats=6)
    path = f"/api/admin/shows/{show['id']}/"
    for body in (
        {"rows": 2},
        {"seats_per_row": 2},
        {"rows": 2, "seats_per_row": 3, "total_seats": 7},
        {"rows": 53, "seats_per_row": 1},
        {"total_seats": 10001},
        {"date_time": "2031-03-01T19:30:00"},
        {"movie_id": 987654},
        {"is_active": "yes", "total_seats": 0},
    ):
        status, answer = await http.patch(path, token=token, json=body)
        assert status == 400, (body, answer)
    status, body = await http.patch(path, token=token, json={"rows": 2, "seats_per_row": 3})
    assert status == 200, body
    assert body["total_seats"] == 6 and body["rows"] == 2 and body["seats_per_row"] == 3
    alice = await http.user("alice")
    status, body = await book(http, alice, show["id"], "b3")
    assert status == 201 and body["seat_number"] == "B3"
    status, body = await book(http, alice, show["id"], "1")
    assert status == 400, body
    status, _ = await http.patch("/api/admin/shows/99999/", token=token, json={"total_seats": 3})
    assert status == 404


async def test_patch_show_into_the_past_stops_booking_at_once(
    http: Api, pg: asyncpg.Pool, drain
) -> None:
    token = await http.admin(pg)
    movie = await new_movie(http, token)
    show = await new_show(http, token, movie, total_seats=6)
    alice = await http.user("alice")
    status, booking = await book(http, alice, show["id"], "1")
    assert status == 201

    status, body = await http.patch(
        f"/api/admin/shows/{show['id']}/", token=token, json={"date_time": PAST}
    )
    assert status == 200, body
    status, body = await book(http, alice, show["id"], "2")
    assert status == 409, body
    # The owner may no longer cancel; an admin may, repeatedly.
    status, body = await http.post(f"/api/bookings/{booking['id']}/cancel/", token=alice)
    assert status == 409, body
    for _ in range(2):
        status, body = await http.post(f"/api/admin/bookings/{booking['id']}/cancel/", token=token)
        assert status == 200, body
        assert body["status"] == "cancelled" and body["id"] == booking["id"]
        assert body["show"]["available_seats"] == 6
    await drain()
    status, body = await http.post(f"/api/admin/bookings/{booking['id']}/cancel/", token=token)
    assert status == 200, body
    assert body["status"] == "cancelled" and body["seat_number"] == "1"
    row = await pg.fetchrow("SELECT status FROM bookings WHERE id = $1", booking["id"])
    assert row["status"] == "cancelled"
    # Still not bookable: the show has started.
    status, body = await book(http, alice, show["id"], "1")
    assert status == 409, body


async def test_patch_movie_refreshes_booking_responses(http: Api, pg: asyncpg.Pool) -> None:
    token = await http.admin(pg)
    movie = await new_movie(http, token, "Old title", 100)
    show = await new_show(http, token, movie, total_seats=6)
    alice = await http.user("alice")
    status, body = await book(http, alice, show["id"], "1")
    assert status == 201 and body["show"]["movie"]["title"] == "Old title"

    status, body = await http.patch(
        f"/api/admin/movies/{movie}/",
        token=token,
        json={"title": "New title", "duration_minutes": 101},
    )
    assert status == 200, body
    status, body = await book(http, alice, show["id"], "2")
    assert status == 201, body
    assert body["show"]["movie"] == {"id": movie, "title": "New title", "duration_minutes": 101}
    status, body = await http.post(f"/api/bookings/{body['id']}/cancel/", token=alice)
    assert status == 200 and body["show"]["movie"]["title"] == "New title"

    status, body = await http.patch(
        f"/api/admin/shows/{show['id']}/", token=token, json={"screen_name": "Screen 7"}
    )
    assert status == 200, body
    status, body = await book(http, alice, show["id"], "3")
    assert status == 201 and body["show"]["screen_name"] == "Screen 7"
    status, body = await http.get(f"/api/shows/{show['id']}/")
    assert body["movie"]["title"] == "New title" and body["screen_name"] == "Screen 7"

    # Moving the show to another movie shows that movie at once too.
    other = await new_movie(http, token, "Other", 90)
    status, body = await http.patch(
        f"/api/admin/shows/{show['id']}/", token=token, json={"movie_id": other}
    )
    assert status == 200 and body["movie"]["title"] == "Other"
    status, body = await book(http, alice, show["id"], "4")
    assert status == 201 and body["show"]["movie"] == {
        "id": other,
        "title": "Other",
        "duration_minutes": 90,
    }


async def test_delete_show(http: Api, pg: asyncpg.Pool, drain) -> None:
    token = await http.admin(pg)
    movie = await new_movie(http, token)
    booked = await new_show(http, token, movie)
    empty = await new_show(http, token, movie)
    alice = await http.user("alice")
    status, _ = await book(http, alice, booked["id"], "1")
    assert status == 201

    status, body = await http.delete(f"/api/admin/shows/{booked['id']}/", token=token)
    assert status == 409, body
    status, body = await book(http, alice, booked["id"], "2")
    assert status == 201, body
    await drain()
    status, body = await http.delete(f"/api/admin/shows/{booked['id']}/", token=token)
    assert status == 409, body
    status, body = await http.get(f"/api/shows/{booked['id']}/")
    assert status == 200 and body["available_seats"] == 4

    # Loaded into Redis by a refused booking, then deleted.
    status, _ = await book(http, alice, empty["id"], "X9")
    assert status == 400
    status, body = await http.delete(f"/api/admin/shows/{empty['id']}/", token=token)
    assert status == 204, body
    status, _ = await http.get(f"/api/shows/{empty['id']}/")
    assert status == 404
    status, _ = await http.get(f"/api/admin/shows/{empty['id']}/", token=token)
    assert status == 404
    status, body = await book(http, alice, empty["id"], "1")
    assert status == 404, body
    status, _ = await http.delete(f"/api/admin/shows/{empty['id']}/", token=token)
    assert status == 404

    # Never loaded into Redis, then deleted.
    cold = await new_show(http, token, movie)
    status, _ = await http.delete(f"/api/admin/shows/{cold['id']}/", token=token)
    assert status == 204
    status, body = await book(http, alice, cold["id"], "1")
    assert status == 404, body
    status, body = await http.get(f"/api/movies/{movie}/shows/")
    assert [s["id"] for s in body["results"]] == [booked["id"]]


async def test_admin_shows_list_filter(http: Api, pg: asyncpg.Pool) -> None:
    token = await http.admin(pg)
    dune = await new_movie(http, token, "Dune")
    heat = await new_movie(http, token, "Heat")
    d1 = await new_show(http, token, dune, date_time="2031-01-02T10:00:00Z")
    h1 = await new_show(http, token, heat, date_time="2031-01-01T10:00:00Z")
    d2 = await new_show(http, token, dune, date_time="2031-01-01T12:00:00Z")

    status, body = await http.get("/api/admin/shows/", token=token)
    assert status == 200 and body["count"] == 3
    assert [s["id"] for s in body["results"]] == [h1["id"], d2["id"], d1["id"]]
    status, body = await http.get(f"/api/admin/shows/?movie={dune}", token=token)
    assert status == 200, body
    assert body["count"] == 2 and [s["id"] for s in body["results"]] == [d2["id"], d1["id"]]
    assert body["results"][0] == d2
    status, body = await http.get(f"/api/admin/shows/?movie={heat}&page_size=1", token=token)
    assert status == 200 and body["count"] == 1 and body["next"] is None
    status, body = await http.get("/api/admin/shows/?movie=424242", token=token)
    assert status == 200 and body["count"] == 0 and body["results"] == []
    for bad in ("abc", "0", "-1", "1.5", "", str(2**63)):
        status, body = await http.get(f"/api/admin/shows/?movie={bad}", token=token)
        assert status == 400, (bad, body)
        assert "movie" in body["errors"]


# --- bookings --------------------------------------------------------------------------------


async def test_admin_bookings_list_and_filters(http: Api, pg: asyncpg.Pool, drain) -> None:
    token = await http.admin(pg)
    movie = await new_movie(http, token)
    s1 = (await new_show(http, token, movie))["id"]
    s2 = (await new_show(http, token, movie))["id"]
    alice, bob = await http.user("alice"), await http.user("bob")
    alice_id, bob_id = await user_id(pg, "alice"), await user_id(pg, "bob")

    made = []
    for who, show, seat in ((alice, s1, "1"), (bob, s1, "2"), (alice, s2, "1")):
        status, body = await book(http, who, show, seat)
        assert status == 201, body
        made.append(body["id"])
    status, body = await http.post(f"/api/bookings/{made[0]}/cancel/", token=alice)
    assert status == 200

    await drain()
    path = "/api/admin/bookings/"
    status, body = await http.get(path, token=token)
    assert status == 200, body
    assert body["count"] == 3
    assert [b["id"] for b in body["results"]] == made[::-1]  # newest first
    newest = body["results"][0]
    assert newest["seat_number"] == "1" and newest["status"] == "booked"
    assert newest["show"]["id"] == s2 and newest["show"]["available_seats"] == 5
    assert datetime.fromisoformat(newest["created_at"]).utcoffset() == timedelta(0)

    async def ids(query: str) -> list[int]:
        status, body = await http.get(f"{path}?{query}", token=token)
        assert status == 200, (query, body)
        assert body["count"] == len(body["results"])
        return [b["id"] for b in body["results"]]

    assert await ids(f"show={s1}") == [made[1], made[0]]
    assert await ids(f"user={bob_id}") == [made[1]]
    assert await ids(f"user={alice_id}") == [made[2], made[0]]
    assert await ids("status=cancelled") == [made[0]]
    assert await ids("status=booked") == [made[2], made[1]]
    assert await ids(f"show={s1}&status=booked") == [made[1]]
    assert await ids(f"show={s2}&user={bob_id}") == []
    assert await ids("show=987654") == []
    status, body = await http.get(f"{path}?page_size=2", token=token)
    assert [b["id"] for b in body["results"]] == [made[2], made[1]]
    assert "page_size=2" in body["next"] and "page=2" in body["next"]

    for bad in ("status=pending", "status=", "status=BOOKED", "show=abc", "user=0", "page=0"):
        status, body = await http.get(f"{path}?{bad}", token=token)
        assert status == 400, (bad, body)
        assert body["errors"]


async def test_admin_bookings_list_reads_postgresql(http: Api, pg: asyncpg.Pool, drain) -> None:
    token = await http.admin(pg)
    show = await make_show(pg)
    alice = await http.user("alice")
    status, booking = await book(http, alice, show, "3")
    assert status == 201
    await drain()
    row = await pg.fetchrow("SELECT * FROM bookings WHERE id = $1", booking["id"])
    assert row["status"] == "booked" and row["seat_number"] == "3"
    status, body = await http.get("/api/admin/bookings/", token=token)
    assert status == 200 and [b["id"] for b in body["results"]] == [booking["id"]]


async def test_admin_cancels_anyones_booking(http: Api, pg: asyncpg.Pool, drain) -> None:
    token = await http.admin(pg)
    show = await make_show(pg, total_seats=3)
    alice, bob = await http.user("alice"), await http.user("bob")
    status, booking = await book(http, alice, show, "2")
    assert status == 201
    path = f"/api/admin/bookings/{booking['id']}/cancel/"

    status, body = await http.post(path, token=token)
    assert status == 200, body
    assert body["status"] == "cancelled" and body["seat_number"] == "2"
    assert body["show"]["available_seats"] == 3
    status, again = await http.post(path, token=token)
    assert status == 200 and again["status"] == "cancelled"
    # The owner sees it cancelled too (idempotent), and the seat is free again at once.
    status, body = await http.post(f"/api/bookings/{booking['id']}/cancel/", token=alice)
    assert status == 200 and body["status"] == "cancelled"
    status, body = await book(http, bob, show, "2")
    assert status == 201, body

    await drain()
    rows = await pg.fetch("SELECT id, status FROM bookings ORDER BY id")
    assert [(r["id"], r["status"]) for r in rows] == [
        (booking["id"], "cancelled"),
        (body["id"], "booked"),
    ]
    status, again = await http.post(path, token=token)
    assert status == 200 and again["status"] == "cancelled"
    # Cancelling a persisted booked one.
    status, other = await http.post(f"/api/admin/bookings/{body['id']}/cancel/", token=token)
    assert status == 200 and other["status"] == "cancelled"
    assert other["show"]["available_seats"] == 3

    for missing in ("987654", "abc", str(2**63)):
        status, body = await http.post(f"/api/admin/bookings/{missing}/cancel/", token=token)
        assert status == 404, (missing, body)


# --- users -----------------------------------------------------------------------------------


async def test_users_list_and_deactivate(http: Api, pg: asyncpg.Pool) -> None:
    token = await http.admin(pg, "root")
    alice = await http.user("alice")
    alice_id = await user_id(pg, "alice")
    status, body = await http.get("/api/admin/users/", token=token)
    assert status == 200, body
    assert body["count"] == 2
    by_name = {u["username"]: u for u in body["results"]}
    assert by_name["alice"]["id"] == alice_id
    assert by_name["alice"]["email"] == "alice@example.com"
    assert by_name["alice"]["is_active"] is True and by_name["alice"]["is_admin"] is False
    assert by_name["root"]["is_admin"] is True
    assert "password_hash" not in by_name["alice"] and "password" not in by_name["alice"]

    path = f"/api/admin/users/{alice_id}/"
    for bad in (
        {"is_active": "yes"},
        {"is_active": "false"},
        {"is_active": 0},
        {"is_admin": 1},
        {"is_admin": None},
        ["is_active"],
    ):
        status, answer = await http.patch(path, token=token, json=bad)
        assert status == 400, (bad, answer)
    status, _ = await http.patch("/api/admin/users/987654/", token=token, json={"is_active": True})
    assert status == 404

    status, body = await http.patch(path, token=token, json={"is_active": False})
    assert status == 200, body
    assert body["is_active"] is False and body["is_admin"] is False and body["id"] == alice_id
    status, body = await http.post(
        "/api/auth/login/", json={"username": "alice", "password": "correct-horse-9"}
    )
    assert status == 401, body
    status, body = await http.get("/api/auth/me/", token=alice)
    assert status == 401, body

    status, body = await http.patch(path, token=token, json={"is_active": True})
    assert status == 200 and body["is_active"] is True
    status, body = await http.post(
        "/api/auth/login/", json={"username": "alice", "password": "correct-horse-9"}
    )
    assert status == 200, body


async def test_user_made_admin_gets_admin_rights(http: Api, pg: asyncpg.Pool) -> None:
    root = await http.admin(pg, "root")
    bob = await http.user("bob")
    bob_id = await user_id(pg, "bob")
    status, _ = await http.get("/api/admin/users/", token=bob)
    assert status == 403

    status, body = await http.patch(
        f"/api/admin/users/{bob_id}/", token=root, json={"is_admin": True}
    )
    assert status == 200 and body["is_admin"] is True
    # The very token issued before the grant: rights are read from PostgreSQL.
    status, body = await http.get("/api/admin/users/", token=bob)
    assert status == 200, body
    status, body = await http.get("/api/auth/me/", token=bob)
    assert body["is_admin"] is True
    status, body = await http.post(
        "/api/auth/login/", json={"username": "bob", "password": "correct-horse-9"}
    )
    bob_admin = body["access"]

    status, body = await http.patch(
        f"/api/admin/users/{bob_id}/", token=root, json={"is_admin": False}
    )
    assert status == 200 and body["is_admin"] is False
    # Revoked at once, even with a token issued while bob was an admin.
    status, _ = await http.get("/api/admin/users/", token=bob_admin)
    assert status == 403

    # A deactivated admin loses the portal at once as well.
    status, body = await http.patch(
        f"/api/admin/users/{bob_id}/", token=root, json={"is_admin": True}
    )
    assert status == 200
    status, _ = await http.patch(
        f"/api/admin/users/{bob_id}/", token=root, json={"is_active": False}
    )
    assert status == 200
    status, _ = await http.get("/api/admin/users/", token=bob_admin)
    assert status in (401, 403)


async def run_cli(settings: Settings, *args: str, password: str) -> tuple[int, str]:
    env = {
        **os.environ,
        "DATABASE_URL": settings.database_url,
        "REDIS_URL": settings.redis_url,
        "JWT_SECRET": settings.jwt_secret,
        "BOOKING_SUPERUSER_PASSWORD": password,
        "BCRYPT_ROUNDS": "4",
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "engine",
        *args,
        cwd=ROOT,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode()


async def test_createsuperuser_command(http: Api, pg: asyncpg.Pool, settings: Settings) -> None:
    password = "s3cret-admin-pass"
    code, out = await run_cli(
        settings,
        "createsuperuser",
        "--username",
        "boss",
        "--email",
        "boss@example.com",
        password=password,
    )
    assert code == 0, out
    status, body = await http.post(
        "/api/auth/login/", json={"username": "boss", "password": password}
    )
    assert status == 200, body
    token = body["access"]
    status, me = await http.get("/api/auth/me/", token=token)
    assert status == 200
    assert me["username"] == "boss" and me["email"] == "boss@example.com" and me["is_admin"]
    status, body = await http.get("/api/admin/users/", token=token)
    assert status == 200 and [u["username"] for u in body["results"]] == ["boss"]

    # A taken username and a weak password are refused without a prompt.
    code, out = await run_cli(
        settings, "createsuperuser", "--username", "boss", "--email", "b@x.io", password=password
    )
    assert code != 0 and "taken" in out
    code, out = await run_cli(
        settings, "createsuperuser", "--username", "boss2", "--email", "b@x.io", password="12345678"
    )
    assert code != 0
    assert await pg.fetchval("SELECT count(*) FROM users") == 1
