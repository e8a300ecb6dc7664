"""Concurrency: real concurrent HTTP requests from many users never oversell, and what the
users were told is exactly what PostgreSQL holds once the worker has drained."""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from typing import Any

import asyncpg

from tests.conftest import Api, gather_limited, make_show


async def users(http: Api, count: int, prefix: str = "u") -> list[str]:
    """`count` signed-up, logged-in users; returns their access tokens."""
    return list(await gather_limited([http.user(f"{prefix}{i}") for i in range(count)], 20))


async def book(http: Api, token: str, show: int, seat: Any) -> tuple[int, Any]:
    return await http.post(f"/api/shows/{show}/book/", token=token, json={"seat_number": seat})


async def cancel(http: Api, token: str, booking_id: int) -> tuple[int, Any]:
    return await http.post(f"/api/bookings/{booking_id}/cancel/", token=token)


async def available(http: Api, show: int) -> int:
    status, body = await http.get(f"/api/shows/{show}/")
    assert status == 200, body
    return int(body["available_seats"])


async def pg_bookings(pg: asyncpg.Pool, show: int) -> dict[int, tuple[str, str]]:
    """booking id -> (seat, status) in PostgreSQL."""
    rows = await pg.fetch("SELECT id, seat_number, status FROM bookings WHERE show_id = $1", show)
    return {r["id"]: (r["seat_number"], r["status"]) for r in rows}


async def test_one_seat_200_concurrent_requests_one_wins(http: Api, pg, drain) -> None:
    show = await make_show(pg, total_seats=10)
    tokens = await users(http, 40)
    results = await asyncio.gather(*(book(http, tokens[i % 40], show, "7") for i in range(200)))
    statuses = Counter(status for status, _ in results)
    assert statuses == {201: 1, 409: 199}, statuses
    winner = next(body for status, body in results if status == 201)
    assert winner["seat_number"] == "7" and winner["show"]["available_seats"] == 9
    assert await available(http, show) == 9
    await drain()
    assert await pg_bookings(pg, show) == {winner["id"]: ("7", "booked")}


async def test_hot_show_600_requests_never_oversold(http: Api, pg, drain) -> None:
    show = await make_show(pg, total_seats=50)
    tokens = await users(http, 100)
    rng = random.Random(600)
    attempts = [(tokens[rng.randrange(100)], str(rng.randint(1, 50))) for _ in range(600)]
    started = time.monotonic()
    results = await asyncio.gather(*(book(http, t, show, seat) for t, seat in attempts))
    elapsed = time.monotonic() - started
    print(f"600 concurrent book requests on one show: {elapsed:.2f}s")
    statuses = Counter(status for status, _ in results)
    assert set(statuses) <= {201, 409}, statuses
    won = [body for status, body in results if status == 201]
    seats = [b["seat_number"] for b in won]
    assert len(seats) == len(set(seats)), "a seat was sold twice"
    assert set(seats) == {seat for _, seat in attempts}
    assert len({b["id"] for b in won}) == len(won)
    assert await available(http, show) == 50 - len(won)
    await drain()
    assert await pg_bookings(pg, show) == {b["id"]: (b["seat_number"], "booked") for b in won}


async def test_concurrent_cancels_and_rebooks_end_right_in_postgresql(
    http: Api, pg, redis, drain
) -> None:
    """Seats cancelled and booked again, round after round, while persistence runs alongside:
    every answer is reflected in PostgreSQL, whatever order the worker applied them in."""
    show = await make_show(pg, total_seats=8)
    tokens = await users(http, 24, "rb")
    owner: dict[int, str] = {}  # booking id -> its user's token
    holder: dict[str, int] = {}  # seat -> booking id holding it
    for seat in range(1, 9):
        status, body = await book(http, tokens[seat], show, str(seat))
        assert status == 201
        owner[body["id"]] = tokens[seat]
        holder[str(seat)] = body["id"]
    await drain()  # the first holders are in PostgreSQL, what follows only in Redis at first
    cancelled: set[int] = set()
    persisting = True

    async def persist_alongside() -> None:
        while persisting:
            await drain()
            await asyncio.sleep(0.002)

    background = [asyncio.create_task(persist_alongside()) for _ in range(2)]
    rng = random.Random(8)
    try:
        for _ in range(6):
            calls: list[tuple[str, str, Any]] = []  # (kind, token, coroutine)
            for seat, booking_id in holder.items():
                calls.append(
                    ("cancel", owner[booking_id], cancel(http, owner[booking_id], booking_id))
                )
                for token in rng.sample(tokens, 3):
                    calls.append(("book", token, book(http, token, show, seat)))
            results = await asyncio.gather(*(c for _, _, c in calls))
            for (kind, _, _), (status, body) in zip(calls, results, strict=True):
                if kind == "cancel":
                    assert status == 200 and body["status"] == "cancelled", body
                    cancelled.add(body["id"])
                    assert holder.pop(body["seat_number"]) == body["id"]
            for (kind, token, _), (status, body) in zip(calls, results, strict=True):
                if kind == "book":
                    assert status in (201, 409), body
                    if status == 201:
                        assert body["seat_number"] not in holder, "a seat was sold twice"
                        holder[body["seat_number"]] = body["id"]
                        owner[body["id"]] = token
            # A canceller sees the cancel at once, even with persistence in flight.
            for (kind, token, _), (status, body) in zip(calls, results, strict=True):
                if kind == "cancel":
                    status, mine = await http.get("/api/my-bookings/?page_size=100", token=token)
                    statuses = {b["id"]: b["status"] for b in mine["results"]}
                    assert statuses[body["id"]] == "cancelled"
            assert await available(http, show) == 8 - len(holder)
    finally:
        persisting = False
        await asyncio.gather(*background)
    await drain()
    rows = await pg_bookings(pg, show)
    assert set(rows) == set(owner)
    assert {bid for bid, (_, status) in rows.items() if status == "booked"} == set(holder.values())
    assert {bid for bid, (_, status) in rows.items() if status == "cancelled"} == cancelled
    assert {rows[bid][0] for bid in holder.values()} == set(holder)
    assert await redis.hlen(f"show:{{{show}}}:pending") == 0


async def test_concurrent_first_requests_load_a_show_once(http: Api, pg, redis, drain) -> None:
    """A show not in Redis yet, hit by 100 requests at once: loaded once, nothing sold twice,
    and a seat PostgreSQL already has booked stays booked."""
    show = await make_show(pg, total_seats=60)
    tokens = await users(http, 50, "f")
    keeper = await pg.fetchval("SELECT id FROM users WHERE username = 'f0'")
    await pg.execute(
        "INSERT INTO bookings (id, user_id, show_id, seat_number, status, created_at)"
        " VALUES (77, $1, $2, '2', 'booked', now())",
        keeper,
        show,
    )
    seats = ["1"] * 30 + ["2"] * 10 + [str(s) for s in range(3, 63)]
    results = await asyncio.gather(
        *(book(http, tokens[i % 50], show, seat) for i, seat in enumerate(seats))
    )
    by_seat: dict[str, Counter[int]] = {}
    for seat, (status, _) in zip(seats, results, strict=True):
        by_seat.setdefault(seat, Counter())[status] += 1
    assert by_seat["1"] == {201: 1, 409: 29}
    assert by_seat["2"] == {409: 10}
    assert all(by_seat[str(s)] == {201: 1} for s in range(3, 61))
    assert by_seat["61"] == by_seat["62"] == {400: 1}
    won = [body for status, body in results if status == 201]
    assert len(won) == 59
    assert await available(http, show) == 0
    assert await redis.smembers("shows:loaded") == {str(show).encode()}
    await drain()
    expected = {b["id"]: (b["seat_number"], "booked") for b in won}
    assert await pg_bookings(pg, show) == {**expected, 77: ("2", "booked")}
