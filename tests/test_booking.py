"""Booking through the API: what a user sees, and what PostgreSQL holds after the worker ran."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from tests.conftest import Api, make_show

MAX_ID = 2**53


async def book(http: Api, token: str, show: int, seat: Any) -> tuple[int, Any]:
    return await http.post(f"/api/shows/{show}/book/", token=token, json={"seat_number": seat})


async def cancel(http: Api, token: str, booking_id: int) -> tuple[int, Any]:
    return await http.post(f"/api/bookings/{booking_id}/cancel/", token=token)


async def booked(http: Api, token: str, show: int, seat: Any) -> dict[str, Any]:
    status, body = await book(http, token, show, seat)
    assert status == 201, body
    return dict(body)


async def available(http: Api, show: int) -> int:
    status, body = await http.get(f"/api/shows/{show}/")
    assert status == 200, body
    return int(body["available_seats"])


async def my_bookings(http: Api, token: str, query: str = "") -> list[dict[str, Any]]:
    status, body = await http.get(f"/api/my-bookings/{query}", token=token)
    assert status == 200, body
    return list(body["results"])


async def pg_rows(pg: asyncpg.Pool, show: int) -> dict[int, tuple[int, str, str]]:
    """booking id -> (user id, seat, status) in PostgreSQL."""
    rows = await pg.fetch(
        "SELECT id, user_id, seat_number, status FROM bookings WHERE show_id = $1", show
    )
    return {r["id"]: (r["user_id"], r["seat_number"], r["status"]) for r in rows}


async def user_id(http: Api, token: str) -> int:
    status, body = await http.get("/api/auth/me/", token=token)
    assert status == 200, body
    return int(body["id"])


# --- the reference service's scenarios -------------------------------------------------------


async def test_double_booking_of_a_seat_is_refused(http: Api, pg, drain) -> None:
    show = await make_show(pg, total_seats=5)
    alice, bob = await http.user("alice"), await http.user("bob")
    first = await booked(http, alice, show, "1")
    assert first["status"] == "booked" and first["show"]["id"] == show
    assert 0 < first["id"] < MAX_ID
    status, body = await book(http, bob, show, "1")
    assert status == 409 and "detail" in body
    status, _ = await book(http, alice, show, 1)
    assert status == 409
    await drain()
    assert await pg_rows(pg, show) == {first["id"]: (await user_id(http, alice), "1", "booked")}


async def test_capacity_is_enforced(http: Api, pg, drain) -> None:
    show = await make_show(pg, total_seats=3)
    tokens = [await http.user(f"cap{i}") for i in range(4)]
    answers = [await booked(http, tokens[i], show, str(i + 1)) for i in range(3)]
    assert [a["show"]["available_seats"] for a in answers] == [2, 1, 0]
    for seat in ("1", "3"):
        status, body = await book(http, tokens[3], show, seat)
        assert status == 409, body
    status, body = await book(http, tokens[3], show, "4")
    assert status == 400 and "seat_number" in body["errors"]
    assert await available(http, show) == 0
    await drain()
    rows = await pg_rows(pg, show)
    assert sorted(rows) == sorted(a["id"] for a in answers)
    assert {r[2] for r in rows.values()} == {"booked"}


async def test_cancel_frees_the_seat_at_once(http: Api, pg, drain) -> None:
    show = await make_show(pg, total_seats=4)
    alice, bob = await http.user("alice"), await http.user("bob")
    mine = await booked(http, alice, show, "2")
    assert await available(http, show) == 3
    status, body = await cancel(http, alice, mine["id"])
    assert status == 200, body
    assert body["status"] == "cancelled" and body["id"] == mine["id"]
    assert body["seat_number"] == "2" and body["created_at"] == mine["created_at"]
    assert body["show"]["available_seats"] == 4
    assert await available(http, show) == 4
    theirs = await booked(http, bob, show, "2")
    assert theirs["show"]["available_seats"] == 3
    await drain()
    assert await pg_rows(pg, show) == {
        mine["id"]: (await user_id(http, alice), "2", "cancelled"),
        theirs["id"]: (await user_id(http, bob), "2", "booked"),
    }


async def test_only_the_owner_may_cancel(http: Api, pg, drain) -> None:
    show = await make_show(pg, total_seats=4)
    alice, bob = await http.user("alice"), await http.user("bob")
    mine = await booked(http, alice, show, "1")
    status, body = await cancel(http, bob, mine["id"])
    assert status == 403, body
    await drain()
    status, _ = await cancel(http, bob, mine["id"])
    assert status == 403
    status, _ = await cancel(http, alice, mine["id"])
    assert status == 200
    await drain()
    status, _ = await cancel(http, bob, mine["id"])  # cancelled and persisted: still not theirs
    assert status == 403
    status, _ = await cancel(http, bob, mine["id"] + 1_000_000)
    assert status == 404
    status, _ = await http.post(f"/api/bookings/{mine['id']}/cancel/")
    assert status == 401
    assert (await pg_rows(pg, show))[mine["id"]][2] == "cancelled"


async def test_signup_login_book_list_cancel_rebook(http: Api, pg, drain) -> None:
    show = await make_show(pg, rows=2, seats_per_row=5)
    status, body = await http.post(
        "/api/auth/signup/",
        json={"username": "carol", "email": "carol@example.com", "password": "s3cret-pass"},
    )
    assert status == 201, body
    status, body = await http.post(
        "/api/auth/login/", json={"username": "carol", "password": "s3cret-pass"}
    )
    assert status == 200, body
    token = body["access"]
    first = await booked(http, token, show, "a1")
    assert first["seat_number"] == "A1"
    listed = await my_bookings(http, token)
    assert [(b["id"], b["status"]) for b in listed] == [(first["id"], "booked")]
    assert listed[0]["show"]["available_seats"] == 9
    status, body = await cancel(http, token, first["id"])
    assert status == 200 and body["status"] == "cancelled"
    again = await booked(http, token, show, "A1")
    assert again["id"] != first["id"]
    listed = await my_bookings(http, token)
    assert [(b["id"], b["status"]) for b in listed] == [
        (again["id"], "booked"),
        (first["id"], "cancelled"),
    ]
    await drain()
    assert [(b["id"], b["status"]) for b in await my_bookings(http, token)] == [
        (again["id"], "booked"),
        (first["id"], "cancelled"),
    ]
    rows = await pg_rows(pg, show)
    assert {k: v[1:] for k, v in rows.items()} == {
        first["id"]: ("A1", "cancelled"),
        again["id"]: ("A1", "booked"),
    }


async def test_cancel_is_idempotent(http: Api, pg, drain) -> None:
    show = await make_show(pg, total_seats=2)
    alice = await http.user("alice")
    mine = await booked(http, alice, show, "1")
    answers = [await cancel(http, alice, mine["id"]) for _ in range(2)]
    await drain()
    answers.append(await cancel(http, alice, mine["id"]))
    for status, body in answers:
        assert status == 200, body
        assert body["status"] == "cancelled" and body["seat_number"] == "1"
        assert body["show"]["available_seats"] == 2
    assert await available(http, show) == 2
    row = await pg.fetchrow("SELECT status, cancelled_at FROM bookings WHERE id = $1", mine["id"])
    assert row["status"] == "cancelled" and row["cancelled_at"] is not None


async def test_owner_cannot_cancel_after_the_show_started(http: Api, pg, drain) -> None:
    show = await make_show(pg, total_seats=3)
    alice = await http.user("alice")
    admin = await http.admin(pg)
    mine = await booked(http, alice, show, "1")
    other = await booked(http, alice, show, "2")
    past = (datetime.now(UTC) - timedelta(minutes=5)).isoformat()
    status, body = await http.patch(
        f"/api/admin/shows/{show}/", token=admin, json={"date_time": past}
    )
    assert status == 200, body
    status, body = await cancel(http, alice, mine["id"])
    assert status == 409, body
    status, _ = await book(http, alice, show, "3")
    assert status == 409
    # The admin still may; the owner's repeat of an already cancelled booking stays 200.
    status, body = await http.post(f"/api/admin/bookings/{other['id']}/cancel/", token=admin)
    assert status == 200 and body["status"] == "cancelled", body
    await drain()
    status, _ = await cancel(http, alice, mine["id"])
    assert status == 409
    rows = await pg_rows(pg, show)
    assert rows[mine["id"]][2] == "booked" and rows[other["id"]][2] == "cancelled"


async def test_a_show_starting_while_loaded_refuses_book_and_cancel(http: Api, pg) -> None:
    show = await make_show(pg, total_seats=3, starts_in=timedelta(seconds=1.5))
    starts = time.monotonic() + 1.5
    alice = await http.user("alice")
    mine = await booked(http, alice, show, "1")
    await asyncio.sleep(max(0.0, starts - time.monotonic()) + 0.05)
    status, body = await book(http, alice, show, "2")
    assert status == 409, body
    status, body = await cancel(http, alice, mine["id"])
    assert status == 409, body
    assert await available(http, show) == 2


async def test_booking_a_show_that_started_is_409(http: Api, pg) -> None:
    show = await make_show(pg, total_seats=3, starts_in=timedelta(minutes=-1))
    alice = await http.user("alice")
    status, body = await book(http, alice, show, "1")
    assert status == 409, body
    # A seat that is not in the show is still 400 (400 comes before 409).
    status, _ = await book(http, alice, show, "9")
    assert status == 400


async def test_unknown_show_is_404(http: Api, pg) -> None:
    alice = await http.user("alice")
    status, body = await book(http, alice, 987654, "1")
    assert status == 404, body
    status, _ = await http.post("/api/shows/987654/book/", token=alice, json={})
    assert status == 404
    status, _ = await http.post(f"/api/shows/{2**63}/book/", token=alice, json={"seat_number": 1})
    assert status == 404
    status, _ = await http.post("/api/shows/987654/book/", json={"seat_number": "1"})
    assert status == 401


@pytest.mark.parametrize(
    ("seat", "label"), [(" b3 ", "B3"), ("b3", "B3"), ("\tB3\n", "B3"), ("B3", "B3")]
)
async def test_seat_labels_are_normalised(http: Api, pg, redis, seat: str, label: str) -> None:
    show = await make_show(pg, rows=2, seats_per_row=3)
    alice = await http.user("alice")
    answer = await booked(http, alice, show, seat)
    assert answer["seat_number"] == label
    status, _ = await book(http, alice, show, "B3")
    assert status == 409
    assert [b["seat_number"] for b in await my_bookings(http, alice)] == [label]


async def test_an_integer_seat_is_its_decimal_label(http: Api, pg, redis) -> None:
    show = await make_show(pg, total_seats=10)
    alice = await http.user("alice")
    answer = await booked(http, alice, show, 5)
    assert answer["seat_number"] == "5"
    status, _ = await book(http, alice, show, " 5 ")
    assert status == 409
    for bad in (0, 11, -1, "05", "", "  ", 5.0, True, None, [5], 10**30):
        status, body = await book(http, alice, show, bad)
        assert status == 400, (bad, body)
        assert "seat_number" in body.get("errors", {}), (bad, body)


async def test_row_labels_go_on_after_z(http: Api, pg, drain) -> None:
    show = await make_show(pg, rows=28, seats_per_row=2)
    alice = await http.user("alice")
    for seat in ("A1", "z2", "AA1", "ab2"):
        assert (await booked(http, alice, show, seat))["seat_number"] == seat.upper()
    for seat in ("A3", "AC1", "1", "BA1", "A0"):
        status, _ = await book(http, alice, show, seat)
        assert status == 400, seat
    assert await available(http, show) == 56 - 4
    await drain()
    assert sorted(r[1] for r in (await pg_rows(pg, show)).values()) == ["A1", "AA1", "AB2", "Z2"]


@pytest.mark.parametrize("first_persisted", [False, True])
async def test_a_seat_cancelled_and_rebooked_before_persistence(
    http: Api, pg, drain, first_persisted: bool
) -> None:
    """Book, cancel, book again, cancel, book again: one seat, three users, the worker behind
    all of it; PostgreSQL ends with exactly what they were told."""
    show = await make_show(pg, total_seats=2)
    tokens = [await http.user(f"chain{i}") for i in range(3)]
    first = await booked(http, tokens[0], show, "1")
    if first_persisted:
        await drain()
    assert (await cancel(http, tokens[0], first["id"]))[0] == 200
    second = await booked(http, tokens[1], show, "1")
    assert (await cancel(http, tokens[1], second["id"]))[0] == 200
    third = await booked(http, tokens[2], show, "1")
    status, _ = await book(http, tokens[0], show, "1")
    assert status == 409
    await drain()
    assert {k: v[2] for k, v in (await pg_rows(pg, show)).items()} == {
        first["id"]: "cancelled",
        second["id"]: "cancelled",
        third["id"]: "booked",
    }
    assert await available(http, show) == 1


# --- my bookings (invariant 3) ---------------------------------------------------------------


async def test_my_bookings_shows_a_booking_at_once_and_exactly_once(http: Api, pg, drain) -> None:
    shows = [await make_show(pg, total_seats=5, title=f"Film {i}") for i in range(2)]
    alice, bob = await http.user("alice"), await http.user("bob")
    made = []
    for i in range(5):
        made.append(await booked(http, alice, shows[i % 2], str(i // 2 + 1)))
        listed = await my_bookings(http, alice)
        assert [b["id"] for b in listed] == [m["id"] for m in reversed(made)]
    await booked(http, bob, shows[0], "5")
    status, body = await cancel(http, alice, made[1]["id"])
    assert status == 200
    expected = [(m["id"], "cancelled" if m is made[1] else "booked") for m in reversed(made)]

    async def check() -> None:
        status, body = await http.get("/api/my-bookings/", token=alice)
        assert status == 200 and body["count"] == 5
        assert [(b["id"], b["status"]) for b in body["results"]] == expected
        assert body["results"][0] == {**made[4], "show": body["results"][0]["show"]}
        # Two pages of 2 and the last of 1 add up to the same list, no booking twice.
        paged = []
        for page in (1, 2, 3):
            paged += await my_bookings(http, alice, f"?page_size=2&page={page}")
        assert [(b["id"], b["status"]) for b in paged] == expected

    await check()
    await drain()
    await check()
    assert [b["seat_number"] for b in await my_bookings(http, bob)] == ["5"]


async def test_a_cancel_shows_in_my_bookings_at_once(http: Api, pg, drain) -> None:
    show = await make_show(pg, total_seats=5)
    alice = await http.user("alice")
    mine = await booked(http, alice, show, "3")
    await drain()  # PostgreSQL says booked; Redis now knows better
    status, _ = await cancel(http, alice, mine["id"])
    assert status == 200
    assert [(b["id"], b["status"]) for b in await my_bookings(http, alice)] == [
        (mine["id"], "cancelled")
    ]
    await drain()
    assert [(b["id"], b["status"]) for b in await my_bookings(http, alice)] == [
        (mine["id"], "cancelled")
    ]


async def test_my_bookings_order_is_newest_first_ties_by_id(http: Api, pg, drain) -> None:
    show = await make_show(pg, total_seats=10)
    alice = await http.user("alice")
    uid = await user_id(http, alice)
    same = datetime.now(UTC) - timedelta(hours=1)
    for booking_id, seat in ((500, "1"), (700, "2"), (600, "3")):
        await pg.execute(
            "INSERT INTO bookings (id, user_id, show_id, seat_number, status, created_at)"
            " VALUES ($1, $2, $3, $4, 'booked', $5)",
            booking_id,
            uid,
            show,
            seat,
            same,
        )
    fresh = await booked(http, alice, show, "4")
    expected = [fresh["id"], 700, 600, 500]
    assert [b["id"] for b in await my_bookings(http, alice)] == expected
    paged = await my_bookings(http, alice, "?page_size=3")
    paged += await my_bookings(http, alice, "?page_size=3&page=2")
    assert [b["id"] for b in paged] == expected
    await drain()
    assert [b["id"] for b in await my_bookings(http, alice)] == expected
    status, _ = await http.get("/api/my-bookings/?page=3&page_size=3", token=alice)
    assert status == 404


# --- Redis faults ----------------------------------------------------------------------------


async def test_show_is_rebuilt_from_postgresql_after_redis_is_emptied(
    http: Api, pg, redis, drain
) -> None:
    show = await make_show(pg, total_seats=4)
    alice, bob = await http.user("alice"), await http.user("bob")
    kept = await booked(http, alice, show, "1")
    dropped = await booked(http, alice, show, "2")
    assert (await cancel(http, alice, dropped["id"]))[0] == 200
    await drain()
    existing = set(await pg_rows(pg, show))
    await redis.flushdb()  # the id counter, the show, every index: gone
    assert await available(http, show) == 3
    assert [(b["id"], b["status"]) for b in await my_bookings(http, alice)] == [
        (dropped["id"], "cancelled"),
        (kept["id"], "booked"),
    ]
    status, _ = await book(http, bob, show, "1")
    assert status == 409
    fresh = [await booked(http, bob, show, seat) for seat in ("2", "3")]
    assert fresh[-1]["show"]["available_seats"] == 1
    for answer in fresh:
        assert answer["id"] not in existing and 0 < answer["id"] < MAX_ID
    # Cancels of bookings Redis forgot: a booked one frees its seat, a cancelled one stays so.
    status, body = await cancel(http, alice, kept["id"])
    assert status == 200 and body["status"] == "cancelled"
    status, body = await cancel(http, alice, dropped["id"])
    assert status == 200 and body["status"] == "cancelled"
    assert await available(http, show) == 2
    await booked(http, alice, show, "1")
    await drain()
    rows = await pg_rows(pg, show)
    assert sorted(r[1] for r in rows.values() if r[2] == "booked") == ["1", "2", "3"]
    assert len(rows) == 5


async def test_bookings_survive_a_script_cache_flush(http: Api, pg, redis, drain) -> None:
    show = await make_show(pg, total_seats=3)
    alice = await http.user("alice")
    first = await booked(http, alice, show, "1")
    await redis.script_flush()
    second = await booked(http, alice, show, "2")
    await redis.script_flush()
    status, body = await cancel(http, alice, first["id"])
    assert status == 200 and body["status"] == "cancelled"
    await redis.script_flush()
    await drain()
    assert {k: v[2] for k, v in (await pg_rows(pg, show)).items()} == {
        first["id"]: "cancelled",
        second["id"]: "booked",
    }


async def test_booking_works_after_redis_restarts(
    http: Api, pg, redis, redis_server, drain
) -> None:
    if redis_server is None:
        pytest.skip("Redis is external (REDIS_URL): not restartable from here")
    show = await make_show(pg, total_seats=3)
    alice = await http.user("alice")
    first = await booked(http, alice, show, "1")
    redis_server.stop(kill=False)
    redis_server.start()
    second = await booked(http, alice, show, "2")
    status, _ = await book(http, alice, show, "1")  # appendfsync always: nothing was lost
    assert status == 409
    assert await available(http, show) == 1
    await drain()
    assert set(await pg_rows(pg, show)) == {first["id"], second["id"]}
