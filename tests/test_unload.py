"""Redis forgets shows that started long ago, so it does not grow with every show ever sold."""

from datetime import timedelta

import asyncpg
from arq.connections import ArqRedis

from engine import keys
from engine.persistence import unload_finished_shows
from engine.seats import Scripts, now_us
from tests.conftest import Api, make_show

DAY_US = 24 * 3600 * 1_000_000


async def loaded(redis: ArqRedis, show: int) -> bool:
    return bool(await redis.exists(keys.show_keys(show)[0]))


async def test_finished_show_is_forgotten_once_persisted_and_rebuilt_on_use(
    http: Api, pg: asyncpg.Pool, redis: ArqRedis, drain
) -> None:
    past = await make_show(pg, total_seats=4, starts_in=timedelta(hours=1), title="Old")
    current = await make_show(pg, total_seats=4, title="New")
    alice = await http.user("alice")
    admin = await http.admin(pg)
    status, old_booking = await http.post(
        f"/api/shows/{past}/book/", token=alice, json={"seat_number": "1"}
    )
    assert status == 201, old_booking
    status, _ = await http.post(
        f"/api/shows/{current}/book/", token=alice, json={"seat_number": "2"}
    )
    assert status == 201
    scripts = Scripts(redis)
    # Neither show started before a cutoff a day ago, pending records or not.
    current_cutoff = now_us() - DAY_US
    assert await unload_finished_shows(redis, scripts, started_before_us=current_cutoff) == []
    await drain()
    assert await unload_finished_shows(redis, scripts, started_before_us=current_cutoff) == []
    assert await loaded(redis, past) and await loaded(redis, current)

    # With a cutoff after both starts, only the show with nothing pending is forgotten.
    cutoff = now_us() + 2 * DAY_US
    await redis.hset(keys.show_keys(current)[4], "1", "1|9|1|b")  # something not persisted
    assert await unload_finished_shows(redis, scripts, started_before_us=cutoff) == [past]
    assert not await loaded(redis, past) and await loaded(redis, current)
    assert str(past).encode() not in await redis.smembers(keys.LOADED_SHOWS)
    for key in keys.show_keys(past):
        assert not await redis.exists(key)
    await redis.hdel(keys.show_keys(current)[4], "1")

    # Used again (an admin cancelling after the show), it is rebuilt from PostgreSQL.
    status, body = await http.post(f"/api/admin/bookings/{old_booking['id']}/cancel/", token=admin)
    assert status == 200 and body["status"] == "cancelled", body
    assert await loaded(redis, past)
    await drain()
    row = await pg.fetchrow("SELECT status FROM bookings WHERE id = $1", old_booking["id"])
    assert row["status"] == "cancelled"
