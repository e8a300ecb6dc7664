"""The seat engine against the real Redis: the Lua scripts, one show's keys, booking ids."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
from redis.asyncio import BlockingConnectionPool, Redis
from redis.crc import key_slot

from engine import keys
from engine.errors import Conflict, Forbidden, InvalidInput, NotFound
from engine.seats import SeatEngine, now_us, record, seat_labels
from tests.conftest import make_show

MAX_ID = 2**53


@pytest.fixture
async def engine(pg: asyncpg.Pool, redis) -> AsyncIterator[SeatEngine]:
    seats = SeatEngine(redis, pg)
    await seats.start()
    yield seats
    await seats.close()


async def make_user(pg: asyncpg.Pool, name: str) -> int:
    return int(
        await pg.fetchval(
            "INSERT INTO users (username, email, password_hash) VALUES ($1, $2, 'x') RETURNING id",
            name,
            f"{name}@example.com",
        )
    )


async def held(redis, show: int) -> dict[str, int]:
    raw = await redis.hgetall(keys.show_keys(show)[2])
    return {k.decode(): int(v) for k, v in raw.items()}


async def test_every_key_of_a_show_shares_one_hash_tag() -> None:
    for show in (1, 42, 2**53 - 1):
        show_keys = keys.show_keys(show)
        assert len(show_keys) == len(set(show_keys)) == 5
        for key in show_keys:
            assert key.count("{") == 1 and f"{{{show}}}" in key
        assert len({key_slot(k.encode()) for k in show_keys}) == 1
    # Different shows are different keys (and normally different slots).
    assert not set(keys.show_keys(1)) & set(keys.show_keys(11))


async def test_seat_labels() -> None:
    assert seat_labels(3, None, None) == ["1", "2", "3"]
    assert seat_labels(4, 2, 2) == ["A1", "A2", "B1", "B2"]
    labels = seat_labels(52, 52, 1)
    assert labels[25:28] == ["Z1", "AA1", "AB1"] and labels[-1] == "AZ1"
    assert len(set(labels)) == 52


async def test_claim_is_all_or_nothing(engine: SeatEngine, pg, redis) -> None:
    show = await make_show(pg, total_seats=10)
    ids, free, prefix = await engine.claim(show, 1, ["1", "2"], now_us())
    assert len(ids) == 2 and free == 8 and f'"id":{show}' in prefix
    with pytest.raises(Conflict, match="Seat 2"):
        await engine.claim(show, 2, ["3", "2", "4"], now_us())
    with pytest.raises(InvalidInput):
        await engine.claim(show, 2, ["3", "11"], now_us())
    with pytest.raises(InvalidInput):
        await engine.claim(show, 2, ["3", "3"], now_us())
    assert await held(redis, show) == {"1": ids[0], "2": ids[1]}
    assert await redis.hlen(keys.show_keys(show)[4]) == 2
    # Nothing of the refused claims was kept: seats 3 and 4 are free.
    more, free, _ = await engine.claim(show, 2, ["3", "4"], now_us())
    assert free == 6
    assert (await engine.available([show]))[show] == 6
    assert set(await held(redis, show)) == {"1", "2", "3", "4"}
    assert len(set(ids + more)) == 4


async def test_claim_full_started_and_unknown(engine: SeatEngine, pg) -> None:
    show = await make_show(pg, total_seats=2)
    await engine.claim(show, 1, ["1", "2"], now_us())
    with pytest.raises(Conflict, match="full"):
        await engine.claim(show, 2, ["1"], now_us())
    with pytest.raises(InvalidInput):
        await engine.claim(show, 2, ["3"], now_us())
    past = await make_show(pg, total_seats=2, starts_in=timedelta(minutes=-1))
    with pytest.raises(Conflict, match="started"):
        await engine.claim(past, 2, ["1"], now_us())
    with pytest.raises(NotFound):
        await engine.claim(10**9, 2, ["1"], now_us())


async def test_release_frees_only_a_seat_still_held_by_that_booking(
    engine: SeatEngine, pg, redis
) -> None:
    show = await make_show(pg, total_seats=3)
    (first,), _, _ = await engine.claim(show, 1, ["1"], now_us())
    released = await engine.release(show, first, 1, now_us(), enforce_start=True)
    assert released is not None
    rec, free, _ = released
    assert (rec.status, rec.seat, rec.user_id, free) == ("cancelled", "1", 1, 3)
    (second,), _, _ = await engine.claim(show, 2, ["1"], now_us())
    # A repeated (old) cancel of the first booking leaves the new holder alone.
    again = await engine.release(show, first, 1, now_us(), enforce_start=True)
    assert again is not None and again[0].status == "cancelled" and again[1] == 2
    assert await held(redis, show) == {"1": second}
    # Even a booked record whose seat was (wrongly) given to another booking frees nothing.
    meta, _, held_key, bookings, _ = keys.show_keys(show)
    await redis.hset(bookings, "999", record(3, "1", now_us(), "booked"))
    stray = await engine.release(show, 999, 3, now_us(), enforce_start=True)
    assert stray is not None and stray[0].status == "cancelled" and stray[1] == 2
    assert await held(redis, show) == {"1": second}
    # Someone else's booking: refused; an admin (actor 0) may.
    with pytest.raises(Forbidden):
        await engine.release(show, second, 1, now_us(), enforce_start=True)
    assert await engine.release(show, 12345, 2, now_us(), enforce_start=True) is None
    await redis.hset(meta, "starts_us", now_us() - 1)
    with pytest.raises(Conflict, match="started"):
        await engine.release(show, second, 2, now_us(), enforce_start=True)
    by_admin = await engine.release(show, second, 0, now_us(), enforce_start=False)
    assert by_admin is not None and by_admin[1] == 3
    assert await held(redis, show) == {}


async def test_load_runs_once_under_concurrent_first_requests(
    engine: SeatEngine, pg, redis
) -> None:
    show = await make_show(pg, total_seats=5, starts_in=timedelta(hours=2))
    user = await make_user(pg, "loader")
    created = datetime.now(UTC)
    for booking_id, seat, status in ((101, "2", "booked"), (102, "3", "cancelled")):
        await pg.execute(
            "INSERT INTO bookings (id, user_id, show_id, seat_number, status, created_at)"
            " VALUES ($1, $2, $3, $4, $5, $6)",
            booking_id,
            user,
            show,
            seat,
            status,
            created,
        )
    loaded = await asyncio.gather(*(engine.load(show) for _ in range(30)))
    assert loaded.count(True) == 1
    assert await held(redis, show) == {"2": 101}
    assert (await engine.available([show]))[show] == 4
    assert int(await redis.sismember(keys.LOADED_SHOWS, show)) == 1
    # The PostgreSQL booking is taken, the cancelled one's seat is free.
    with pytest.raises(Conflict):
        await engine.claim(show, user, ["2"], now_us())
    await engine.claim(show, user, ["3"], now_us())
    with pytest.raises(NotFound):
        await engine.load(10**9)


async def test_load_keeps_pending_records(engine: SeatEngine, pg, redis) -> None:
    """A pending cancellation PostgreSQL does not have yet wins over PostgreSQL's booked row."""
    show = await make_show(pg, total_seats=3)
    user = await make_user(pg, "pending")
    created = datetime.now(UTC)
    await pg.execute(
        "INSERT INTO bookings (id, user_id, show_id, seat_number, status, created_at)"
        " VALUES (7, $1, $2, '1', 'booked', $3)",
        user,
        show,
        created,
    )
    pending = keys.show_keys(show)[4]
    await redis.hset(pending, "7", record(user, "1", now_us(), "cancelled"))
    assert await engine.load(show)
    assert await held(redis, show) == {}
    assert (await engine.records(show, [7]))[0].status == "cancelled"  # type: ignore[union-attr]


async def test_ids_unique_and_below_2_53_across_counter_loss(engine: SeatEngine, pg, redis) -> None:
    first = [i for _ in range(20) for i in await engine.ids.take(7)]
    # Redis loses the counter (emptied, or restarted without persistence); a restart takes
    # milliseconds at least, and the counter's clock floor (ms x 2048) moves on meanwhile.
    await asyncio.sleep(0.005)
    await redis.delete(keys.BOOKING_ID_COUNTER)
    other = SeatEngine(redis, pg)
    await other.start()
    second = [i for _ in range(20) for i in await other.ids.take(7)]
    # The first process still uses the rest of its block, interleaved with the second.
    third = [i for _ in range(20) for i in await engine.ids.take(3)]
    everything = first + second + third
    assert len(set(everything)) == len(everything)
    assert all(0 < i < MAX_ID for i in everything)


async def test_ids_never_fall_below_postgresql_max(engine: SeatEngine, pg, redis) -> None:
    """An id PostgreSQL already has (e.g. allocated by a clock running ahead) is never reused."""
    show = await make_show(pg, total_seats=3)
    user = await make_user(pg, "ahead")
    ahead = (await engine.ids.take(1))[0] + 10_000_000
    await pg.execute(
        "INSERT INTO bookings (id, user_id, show_id, seat_number, status, created_at)"
        " VALUES ($1, $2, $3, '1', 'booked', now())",
        ahead,
        user,
        show,
    )
    await redis.flushdb()
    fresh = SeatEngine(redis, pg)
    await fresh.start()
    ids = await fresh.ids.take(100)
    assert min(ids) > ahead and max(ids) < MAX_ID


@contextlib.asynccontextmanager
async def late_loader(pg: asyncpg.Pool, url: str) -> AsyncIterator[SeatEngine]:
    """A seat engine whose Redis client has a single connection, held busy for 0.5 s from the
    moment it is yielded: its loads read PostgreSQL at once and write Redis late."""
    slow = Redis.from_pool(BlockingConnectionPool.from_url(url, max_connections=1, timeout=5))
    try:
        loader = SeatEngine(slow, pg)
        await loader.start()
        busy = asyncio.create_task(slow.blpop(["nothing-comes"], timeout=0.5))
        await asyncio.sleep(0.05)
        yield loader
        await busy
    finally:
        await slow.aclose()


async def test_a_load_racing_an_admin_show_change_never_keeps_the_old_show(
    http, pg, redis, settings
) -> None:
    """A load reads PostgreSQL, the admin moves the show into the past, then the load writes
    Redis: Redis must not end up with the old start time."""
    show = await make_show(pg, total_seats=3)
    token = await http.user("alice")
    admin = await http.admin(pg)
    async with late_loader(pg, settings.redis_url) as loader:
        loading = asyncio.create_task(loader.load(show))
        await asyncio.sleep(0.1)
        past = (datetime.now(UTC) - timedelta(minutes=5)).isoformat()
        status, body = await http.patch(
            f"/api/admin/shows/{show}/", token=admin, json={"date_time": past}
        )
        assert status == 200, body
        await loading
    status, body = await http.post(
        f"/api/shows/{show}/book/", token=token, json={"seat_number": "1"}
    )
    assert status == 409, body


async def test_a_load_racing_a_movie_rename_never_keeps_the_old_title(
    http, pg, redis, settings
) -> None:
    show = await make_show(pg, total_seats=3, title="Old title")
    movie = await pg.fetchval("SELECT movie_id FROM shows WHERE id = $1", show)
    token = await http.user("alice")
    admin = await http.admin(pg)
    async with late_loader(pg, settings.redis_url) as loader:
        loading = asyncio.create_task(loader.load(show))
        await asyncio.sleep(0.1)
        status, body = await http.patch(
            f"/api/admin/movies/{movie}/", token=admin, json={"title": "New title"}
        )
        assert status == 200, body
        await loading
    status, body = await http.post(
        f"/api/shows/{show}/book/", token=token, json={"seat_number": "1"}
    )
    assert status == 201, body
    assert body["show"]["movie"]["title"] == "New title"
