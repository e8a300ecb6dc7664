"""The reconciler: every difference between Redis and PostgreSQL is made for real, reported by
`python -m engine check` (exit 1), repaired by `python -m engine reconcile`, and what users see
afterwards is right. What is merely in flight (pending records) is never a difference."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
from typing import Any

import asyncpg

from engine import keys, reconcile
from engine.seats import Scripts, now_us, record
from tests.conftest import ROOT, Api, make_show
from worker import tasks

SHOW_SEATS = 6


async def engine_cli(settings: Any, command: str) -> tuple[int, str]:
    """`python -m engine <command>` against the test services: (exit code, stdout)."""
    env = {
        **os.environ,
        "DATABASE_URL": settings.database_url,
        "REDIS_URL": settings.redis_url,
        "JWT_SECRET": settings.jwt_secret,
        "LOG_LEVEL": "ERROR",
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "engine",
        command,
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode is not None
    assert proc.returncode in (0, 1), err.decode()
    # stderr is kept in what a failing assertion shows (logs go there)
    return proc.returncode, out.decode() + err.decode()


async def book(http: Api, token: str, show: int, seat: str) -> tuple[int, Any]:
    return await http.post(f"/api/shows/{show}/book/", token=token, json={"seat_number": seat})


async def booked_in_pg(pg: asyncpg.Pool, show: int) -> dict[str, int]:
    rows = await pg.fetch(
        "SELECT seat_number, id FROM bookings WHERE show_id = $1 AND status = 'booked'", show
    )
    return {r["seat_number"]: r["id"] for r in rows}


async def assert_available_matches_pg(http: Api, pg: asyncpg.Pool, show: int) -> None:
    status, body = await http.get(f"/api/shows/{show}/")
    assert status == 200, body
    assert body["available_seats"] == body["total_seats"] - len(await booked_in_pg(pg, show))


async def user_id(pg: asyncpg.Pool, name: str) -> int:
    return int(await pg.fetchval("SELECT id FROM users WHERE username = $1", name))


async def insert_booked(pg: asyncpg.Pool, booking_id: int, user: int, show: int, seat: str) -> None:
    await pg.execute(
        "INSERT INTO bookings (id, user_id, show_id, seat_number, status, created_at)"
        " VALUES ($1, $2, $3, $4, 'booked', now())",
        booking_id,
        user,
        show,
        seat,
    )


async def test_bookings_in_flight_are_pending_not_differences(
    http: Api, pg: asyncpg.Pool, redis: Any, settings: Any, drain: Any
) -> None:
    show = await make_show(pg, total_seats=SHOW_SEATS)
    token = await http.user("alice")
    made = [await book(http, token, show, str(seat)) for seat in (1, 2, 3)]
    assert [s for s, _ in made] == [201, 201, 201]
    status, _ = await http.post(f"/api/bookings/{made[0][1]['id']}/cancel/", token=token)
    assert status == 200

    report = await reconcile.check(redis, pg)
    assert report.differences == []
    assert report.shows_checked == 1 and report.pending == 3
    age = report.oldest_pending_age_s()
    assert age is not None and 0 <= age < 30
    code, out = await engine_cli(settings, "check")
    assert code == 0, out
    assert "0 differences in 0 shows" in out and "3 records pending (oldest" in out

    await drain()
    report = await reconcile.check(redis, pg)
    assert report.differences == [] and report.pending == 0
    assert await reconcile.find_differences(redis, pg) == []


async def test_a_lost_persistence_is_pended_again(
    http: Api, pg: asyncpg.Pool, redis: Any, settings: Any, drain: Any
) -> None:
    """(a) Redis has a booking, PostgreSQL does not, and no pending record carries it."""
    show = await make_show(pg, total_seats=SHOW_SEATS)
    token = await http.user("alice")
    status, lost = await book(http, token, show, "1")
    assert status == 201
    assert (await book(http, token, show, "2"))[0] == 201
    await redis.hdel(keys.show_keys(show)[4], lost["id"])
    await redis.delete(keys.user_recent(await user_id(pg, "alice")))
    await drain()
    assert "1" not in await booked_in_pg(pg, show)

    diffs = await reconcile.find_differences(redis, pg)
    assert [(d.kind, d.show_id, d.seat, d.booking_id) for d in diffs] == [
        (reconcile.UNPERSISTED, show, "1", lost["id"])
    ]
    code, out = await engine_cli(settings, "check")
    assert code == 1
    assert f"(a) unpersisted: show {show} seat 1 booking {lost['id']}" in out
    assert "1 difference in 1 show" in out

    code, out = await engine_cli(settings, "reconcile")
    assert code == 0 and "pended again" in out, out
    await drain()
    assert (await booked_in_pg(pg, show))["1"] == lost["id"]
    assert (await engine_cli(settings, "check"))[0] == 0
    status, body = await http.get("/api/my-bookings/", token=token)
    assert {b["id"]: b["status"] for b in body["results"]}[lost["id"]] == "booked"
    assert (await book(http, await http.user("bob"), show, "1"))[0] == 409
    await assert_available_matches_pg(http, pg, show)


async def test_a_postgresql_booking_redis_does_not_know_is_adopted(
    http: Api, pg: asyncpg.Pool, redis: Any, settings: Any, drain: Any
) -> None:
    """(b) PostgreSQL has booked bookings the loaded show does not know, one of them on a seat
    Redis sold again meanwhile (a double sale after Redis lost data): PostgreSQL's wins."""
    show = await make_show(pg, total_seats=SHOW_SEATS)
    alice, bob = await http.user("alice"), await http.user("bob")
    await http.user("carol")
    assert (await book(http, alice, show, "1"))[0] == 201
    await drain()
    status, resold = await book(http, bob, show, "3")  # pending, not yet in PostgreSQL
    assert status == 201
    carol_id = await user_id(pg, "carol")
    await insert_booked(pg, 10**12 + 2, carol_id, show, "2")
    await insert_booked(pg, 10**12 + 3, carol_id, show, "3")

    report = await reconcile.check(redis, pg)
    assert sorted((d.kind, d.seat, d.booking_id) for d in report.differences) == [
        (reconcile.UNKNOWN_TO_REDIS, "2", 10**12 + 2),
        (reconcile.UNKNOWN_TO_REDIS, "3", 10**12 + 3),
    ]
    assert report.pending == 1  # bob's booking: in flight, not a difference
    assert (await engine_cli(settings, "check"))[0] == 1

    code, out = await engine_cli(settings, "reconcile")
    assert code == 0, out
    assert f"double sale: booking {resold['id']}" in out
    await drain()
    booked = await booked_in_pg(pg, show)
    assert sorted(booked) == ["1", "2", "3"]
    assert (booked["2"], booked["3"]) == (10**12 + 2, 10**12 + 3)
    status_of_resold = await pg.fetchval("SELECT status FROM bookings WHERE id = $1", resold["id"])
    assert status_of_resold == "cancelled"
    assert (await engine_cli(settings, "check"))[0] == 0
    status, body = await http.get("/api/my-bookings/", token=bob)
    assert [(b["id"], b["status"]) for b in body["results"]] == [(resold["id"], "cancelled")]
    for seat in ("2", "3"):
        assert (await book(http, bob, show, seat))[0] == 409
    await assert_available_matches_pg(http, pg, show)
    # The adopted booking is an ordinary one again: Redis answers for it (before the repair,
    # its cancel could only say "being reconciled").
    dave = await http.user("dave")
    status, _ = await http.post(f"/api/bookings/{10**12 + 2}/cancel/", token=dave)
    assert status == 403


async def test_redis_follows_postgresql_on_status_seats_and_holds(
    http: Api, pg: asyncpg.Pool, redis: Any, settings: Any, drain: Any
) -> None:
    """(c) cancelled in PostgreSQL, booked in Redis; (d) the reverse; (e) a seat held by a
    booking with no record; (g) a booked seat missing from Redis' seat set."""
    show = await make_show(pg, total_seats=SHOW_SEATS)
    alice, bob = await http.user("alice"), await http.user("bob")
    ids = {}
    for seat in ("1", "2", "4"):
        status, body = await book(http, alice, show, seat)
        assert status == 201
        ids[seat] = body["id"]
    await drain()
    meta, seats, held, bookings, _pending = keys.show_keys(show)
    await pg.execute("UPDATE bookings SET status = 'cancelled' WHERE id = $1", ids["1"])
    raw = (await redis.hget(bookings, ids["2"])).decode()
    await redis.hset(bookings, ids["2"], raw[:-1] + "c")
    await redis.hdel(held, "2")
    await redis.hset(held, "5", 424242)
    await redis.srem(seats, "4")

    report = await reconcile.check(redis, pg)
    assert sorted((d.kind, d.seat) for d in report.differences) == [
        (reconcile.CANCELLED_IN_POSTGRES, "1"),
        (reconcile.BOOKED_IN_POSTGRES, "2"),
        (reconcile.STALE_HOLD, "5"),
        (reconcile.UNKNOWN_SEAT, "4"),
    ]
    code, out = await engine_cli(settings, "check")
    assert code == 1
    assert len([line for line in out.splitlines() if line.startswith("(")]) == 4
    assert "4 differences in 1 show" in out

    code, out = await engine_cli(settings, "reconcile")
    assert code == 0, out
    assert "skipped" not in out and "NOT" not in out, out
    code, out = await engine_cli(settings, "check")
    assert code == 0, out
    assert (await book(http, bob, show, "1"))[0] == 201  # PostgreSQL said cancelled
    assert (await book(http, bob, show, "2"))[0] == 409  # PostgreSQL said booked
    assert (await book(http, bob, show, "4"))[0] == 409
    assert (await book(http, bob, show, "5"))[0] == 201  # the stale hold is gone
    await drain()
    assert await reconcile.find_differences(redis, pg) == []
    await assert_available_matches_pg(http, pg, show)


async def test_repairs_do_nothing_when_redis_changed_meanwhile(
    http: Api, pg: asyncpg.Pool, redis: Any, drain: Any
) -> None:
    """A repair checks, in its script, that Redis is still as found: a cancel that lands
    between check and repair is never overwritten."""
    show = await make_show(pg, total_seats=SHOW_SEATS)
    alice = await http.user("alice")
    status, body = await book(http, alice, show, "1")
    assert status == 201
    await redis.hdel(keys.show_keys(show)[4], body["id"])
    diffs = await reconcile.find_differences(redis, pg)
    assert [d.kind for d in diffs] == [reconcile.UNPERSISTED]
    status, _ = await http.post(f"/api/bookings/{body['id']}/cancel/", token=alice)
    assert status == 200
    repaired = await reconcile.repair(redis, pg, Scripts(redis), diffs)
    assert len(repaired) == 1 and "skipped (pending)" in repaired[0]
    await drain()
    assert await pg.fetchval("SELECT status FROM bookings WHERE id = $1", body["id"]) == (
        "cancelled"
    )
    assert await reconcile.find_differences(redis, pg) == []


async def test_the_worker_cron_re_pends_only_old_lost_records(
    http: Api, pg: asyncpg.Pool, redis: Any, drain: Any
) -> None:
    show = await make_show(pg, total_seats=SHOW_SEATS)
    alice = await http.user("alice")
    made = [(await book(http, alice, show, seat))[1]["id"] for seat in ("1", "2")]
    _meta, _seats, _held, bookings, pending = keys.show_keys(show)
    await redis.hdel(pending, *made)
    # Seat 1's booking was claimed a minute ago; seat 2's just now.
    old = record(await user_id(pg, "alice"), "1", now_us() - 60_000_000, "booked")
    await redis.hset(bookings, made[0], old)

    ctx: dict[str, Any] = {"redis": redis, "pg_pool": pg, "scripts": Scripts(redis)}
    started = time.monotonic()
    await tasks.reconcile(ctx)
    assert await booked_in_pg(pg, show) == {"1": made[0]}
    await tasks.reconcile(ctx)  # within LOST_CHECK_EVERY_S: no new comparison
    assert time.monotonic() - started < tasks.LOST_CHECK_EVERY_S
    assert [d.booking_id for d in await reconcile.find_differences(redis, pg)] == [made[1]]


async def test_the_cron_sweeps_loaded_shows_newest_first_within_a_budget_per_tick(
    http: Api, pg: asyncpg.Pool, redis: Any, drain: Any, monkeypatch: Any
) -> None:
    """However many shows are on sale, one tick compares a bounded slice of them: the next
    shows of a rolling sweep, newest first, until the budget of bookings is spent."""
    monkeypatch.setattr(tasks, "SWEEP_BOOKINGS_PER_TICK", 1)
    alice = await http.user("alice")
    uid = await user_id(pg, "alice")
    shows = [await make_show(pg, total_seats=SHOW_SEATS) for _ in range(3)]
    lost = {}
    for show in shows:
        status, body = await book(http, alice, show, "1")
        assert status == 201
        lost[show] = body["id"]
    await drain()
    # Each show's booking was claimed a minute ago, and its persistence was lost.
    await pg.execute("DELETE FROM bookings WHERE id = ANY($1::bigint[])", list(lost.values()))
    for show, booking_id in lost.items():
        old = record(uid, "1", now_us() - 60_000_000, "booked")
        await redis.hset(keys.show_keys(show)[3], booking_id, old)

    ctx: dict[str, Any] = {"redis": redis, "pg_pool": pg, "scripts": Scripts(redis)}
    for tick, newest in enumerate(reversed(shows)):
        await tasks.repair_lost(ctx)
        await drain()
        repaired = [s for s in shows if await booked_in_pg(pg, s) == {"1": lost[s]}]
        assert repaired == shows[len(shows) - 1 - tick :], f"tick {tick}"
        assert newest in repaired


async def test_check_fails_on_a_booking_persistence_cannot_write(
    http: Api, pg: asyncpg.Pool, redis: Any, settings: Any, drain: Any
) -> None:
    """A pending booking PostgreSQL refuses (its user deleted behind the engine's back) is not
    a difference between the two stores, but once it has waited long, `check` says so and
    fails, and the rest of its show is persisted all the same."""
    show = await make_show(pg, total_seats=SHOW_SEATS)
    alice = await http.user("alice")
    status, fine = await book(http, alice, show, "1")
    assert status == 201
    minutes_ago = now_us() - 10 * 60_000_000
    await redis.hset(keys.show_keys(show)[4], "777", record(987654321, "2", minutes_ago, "booked"))
    await redis.hset(keys.show_keys(show)[3], "777", record(987654321, "2", minutes_ago, "booked"))
    await redis.hset(keys.show_keys(show)[2], "2", "777")
    with contextlib.suppress(AssertionError):
        await drain()  # persistence cannot drain the refused record
    assert await booked_in_pg(pg, show) == {"1": fine["id"]}
    code, out = await engine_cli(settings, "check")
    assert code == 1, out
    assert "1 booking pending for over 300 s: persistence is stuck" in out
