"""The worker: the real arq worker persists what the API answered, and persistence is
idempotent whatever order records arrive in."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from arq import Retry

from engine import keys
from engine.persistence import LOCK_SHOWS, persist_shows
from engine.seats import Scripts, now_us, record
from tests.conftest import ROOT, Api, make_show
from worker.tasks import persist_pending

PERSIST_DEADLINE_S = 3.0


async def book(http: Api, token: str, show: int, seat: Any) -> tuple[int, Any]:
    return await http.post(f"/api/shows/{show}/book/", token=token, json={"seat_number": seat})


async def cancel(http: Api, token: str, booking_id: int) -> tuple[int, Any]:
    return await http.post(f"/api/bookings/{booking_id}/cancel/", token=token)


async def statuses(pg: asyncpg.Pool, show: int | None = None) -> dict[int, str]:
    rows = await pg.fetch(
        "SELECT id, status FROM bookings WHERE $1::bigint IS NULL OR show_id = $1", show
    )
    return {r["id"]: r["status"] for r in rows}


async def user_id(pg: asyncpg.Pool, name: str) -> int:
    return int(await pg.fetchval("SELECT id FROM users WHERE username = $1", name))


async def my_statuses(http: Api, token: str) -> dict[int, str]:
    status, body = await http.get("/api/my-bookings/?page_size=100", token=token)
    assert status == 200, body
    return {b["id"]: b["status"] for b in body["results"]}


# --- the real worker process -----------------------------------------------------------------


@contextlib.asynccontextmanager
async def running_worker(settings: Any, redis: Any, log_path: Path) -> AsyncIterator[None]:
    """`python -m engine worker` as a subprocess, up (its health key written) until SIGTERM,
    after which it must exit cleanly."""
    env = {
        **os.environ,
        "DATABASE_URL": settings.database_url,
        "REDIS_URL": settings.redis_url,
        "JWT_SECRET": settings.jwt_secret,
        "RECONCILE_INTERVAL": "1",
    }

    async def log() -> str:
        return await asyncio.to_thread(log_path.read_text)

    with log_path.open("wb") as out:
        worker = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "engine", "worker", cwd=ROOT, env=env, stdout=out, stderr=out
        )
        try:
            deadline = time.monotonic() + 20
            while not await redis.exists(f"{keys.ARQ_QUEUE}:health-check"):
                if worker.returncode is not None:
                    pytest.fail(f"the worker exited: {await log()}")
                assert time.monotonic() < deadline, "the worker did not start"
                await asyncio.sleep(0.05)
            yield
            if worker.returncode is not None:
                pytest.fail(f"the worker exited: {await log()}")
        finally:
            if worker.returncode is None:
                worker.send_signal(signal.SIGTERM)
            try:
                code = await asyncio.wait_for(worker.wait(), 15)
            except TimeoutError:
                worker.kill()
                await worker.wait()
                raise
    assert code == 0, await log()


async def wait_for_postgresql(pg: asyncpg.Pool, expected: dict[int, str], what: str) -> float:
    """Seconds until PostgreSQL's bookings are exactly `expected`; fails after the deadline."""
    started = time.monotonic()
    while (found := await statuses(pg)) != expected:
        if time.monotonic() - started > PERSIST_DEADLINE_S:
            missing = {k: v for k, v in expected.items() if found.get(k) != v}
            pytest.fail(f"{what}: not persisted within {PERSIST_DEADLINE_S}s: {missing}")
        await asyncio.sleep(0.02)
    return time.monotonic() - started


async def test_real_worker_persists_a_burst_within_seconds(
    http: Api, pg, redis, settings, tmp_path: Path
) -> None:
    shows = [await make_show(pg, total_seats=30, title=f"Film {i}") for i in range(3)]
    tokens = [await http.user(f"w{i}") for i in range(6)]
    async with running_worker(settings, redis, tmp_path / "worker.log"):
        answers = await asyncio.gather(
            *(book(http, tokens[i % 6], shows[i % 3], str(i // 3 + 1)) for i in range(60))
        )
        assert {status for status, _ in answers} == {201}
        expected = {body["id"]: "booked" for _, body in answers}
        owners = {body["id"]: tokens[i % 6] for i, (_, body) in enumerate(answers)}
        to_cancel = sorted(expected)[::3]
        cancels = await asyncio.gather(*(cancel(http, owners[b], b) for b in to_cancel))
        assert {status for status, _ in cancels} == {200}
        expected.update(dict.fromkeys(to_cancel, "cancelled"))
        lag = await wait_for_postgresql(pg, expected, "burst")
        print(f"worker persisted 60 bookings and 20 cancels {lag:.3f}s after the last answer")
        deadline = time.monotonic() + PERSIST_DEADLINE_S
        while any([await redis.hlen(keys.show_keys(s)[4]) for s in shows]):
            assert time.monotonic() < deadline, "pending records were never acknowledged"
            await asyncio.sleep(0.02)


async def test_reconciler_persists_what_no_job_carries(
    http: Api, pg, redis, settings, tmp_path: Path
) -> None:
    """Jobs lost (or never enqueued) and dirty marks dropped: the reconciler still persists."""
    show = await make_show(pg, total_seats=10)
    alice = await http.user("alice")
    answers = [await book(http, alice, show, seat) for seat in ("1", "2", "3")]
    assert (await cancel(http, alice, answers[0][1]["id"]))[0] == 200
    await asyncio.sleep(0.1)  # let the API's enqueues land, then lose them
    for key in await redis.keys("arq:*"):
        await redis.delete(key)
    await redis.delete(keys.DIRTY_SHOWS)
    expected = {body["id"]: "booked" for _, body in answers}
    expected[answers[0][1]["id"]] = "cancelled"
    async with running_worker(settings, redis, tmp_path / "worker.log"):
        lag = await wait_for_postgresql(pg, expected, "reconciler")
    print(f"reconciler persisted orphaned records {lag:.3f}s after the worker started")


# --- persistence, called directly ------------------------------------------------------------


async def test_persisting_twice_or_replaying_records_changes_nothing(
    http: Api, pg, redis, drain
) -> None:
    show = await make_show(pg, total_seats=5)
    alice = await http.user("alice")
    first = [(await book(http, alice, show, seat))[1]["id"] for seat in ("1", "2", "3")]
    pending = keys.show_keys(show)[4]
    before_cancel = await redis.hgetall(pending)
    assert (await cancel(http, alice, first[0]))[0] == 200
    scripts = Scripts(redis)
    done = await persist_shows(redis, pg, scripts, [show])
    assert (done.shows, done.records, done.acked) == (1, 3, 3)
    snapshot = [dict(r) for r in await pg.fetch("SELECT * FROM bookings ORDER BY id")]
    # Persisting again finds nothing; replaying the old records (booked ones included, one of
    # them since cancelled) is a no-op in PostgreSQL.
    assert (await persist_shows(redis, pg, scripts, [show])).records == 0
    await redis.hset(pending, mapping=before_cancel)
    await redis.sadd(keys.DIRTY_SHOWS, show)
    await drain()
    assert [dict(r) for r in await pg.fetch("SELECT * FROM bookings ORDER BY id")] == snapshot
    assert await statuses(pg, show) == {
        first[0]: "cancelled",
        first[1]: "booked",
        first[2]: "booked",
    }
    assert await redis.hlen(pending) == 0
    status, _ = await book(http, alice, show, "1")
    assert status == 201
    status, _ = await book(http, alice, show, "2")
    assert status == 409


async def test_a_cancellation_persisted_before_its_booking_stays_cancelled(
    http: Api, pg, redis
) -> None:
    show = await make_show(pg, total_seats=5)
    await http.user("alice")
    uid = await user_id(pg, "alice")
    created = now_us()
    pending = keys.show_keys(show)[4]
    scripts = Scripts(redis)
    await redis.hset(pending, "4242", record(uid, "5", created, "cancelled"))
    assert (await persist_shows(redis, pg, scripts, [show])).acked == 1
    await redis.hset(pending, "4242", record(uid, "5", created, "booked"))
    await persist_shows(redis, pg, scripts, [show])
    row = await pg.fetchrow("SELECT * FROM bookings WHERE id = 4242")
    assert (row["status"], row["seat_number"], row["user_id"]) == ("cancelled", "5", uid)
    assert int(row["created_at"].timestamp() * 1_000_000) == created
    # The seat is free in PostgreSQL for a later booking of the same batch kind.
    await redis.hset(pending, "4243", record(uid, "5", created + 1, "booked"))
    await persist_shows(redis, pg, scripts, [show])
    assert await statuses(pg, show) == {4242: "cancelled", 4243: "booked"}


async def test_a_double_sale_refused_by_postgresql_does_not_wedge_the_batch(
    http: Api, pg, redis
) -> None:
    """Only possible after Redis lost unpersisted state: PostgreSQL keeps the first holder, the
    other records of the batch (and of other shows) are persisted all the same."""
    show, other = await make_show(pg, total_seats=5), await make_show(pg, total_seats=5)
    await http.user("alice")
    uid = await user_id(pg, "alice")
    await pg.execute(
        "INSERT INTO bookings (id, user_id, show_id, seat_number, status, created_at)"
        " VALUES (10, $1, $2, '1', 'booked', now())",
        uid,
        show,
    )
    at = now_us()
    await redis.hset(
        keys.show_keys(show)[4],
        mapping={
            "11": record(uid, "1", at, "booked"),
            "12": record(uid, "2", at, "booked"),
            "13": record(uid, "3", at, "cancelled"),
        },
    )
    await redis.hset(keys.show_keys(other)[4], "14", record(uid, "1", at, "booked"))
    done = await persist_shows(redis, pg, Scripts(redis), [show, other])
    assert (done.shows, done.acked) == (2, 4)
    assert await statuses(pg) == {
        10: "booked",
        11: "cancelled",
        12: "booked",
        13: "cancelled",
        14: "booked",
    }


async def test_a_record_postgresql_refuses_stays_pending_and_the_rest_commits(
    http: Api, pg, redis
) -> None:
    """The batch is written in one statement per kind; a record PostgreSQL refuses (a user it
    does not have) must not cost the other records their write, in its show or any other."""
    good, bad, also_good = [await make_show(pg, total_seats=5) for _ in range(3)]
    await http.user("alice")
    uid = await user_id(pg, "alice")
    at = now_us()
    await redis.hset(keys.show_keys(good)[4], "21", record(uid, "1", at, "booked"))
    await redis.hset(keys.show_keys(bad)[4], "22", record(uid, "1", at, "booked"))
    await redis.hset(keys.show_keys(bad)[4], "23", record(987654321, "2", at, "booked"))
    await redis.hset(keys.show_keys(also_good)[4], "24", record(uid, "1", at, "cancelled"))
    done = await persist_shows(redis, pg, Scripts(redis), [good, bad, also_good])
    # Only the refused record itself stays pending; its show's other record is written.
    assert (done.shows, done.acked, sorted(done.booking_ids)) == (3, 3, [21, 22, 24])
    assert await statuses(pg) == {21: "booked", 22: "booked", 24: "cancelled"}
    assert await redis.hkeys(keys.show_keys(bad)[4]) == [b"23"]


async def test_a_cancel_racing_persistence_shows_cancelled_at_once(
    http: Api, pg, redis, drain
) -> None:
    """The worker read the booking as booked, the user cancels before it committed: the user's
    list must say cancelled from the cancel's answer on, not only after the next job."""
    show = await make_show(pg, total_seats=5)
    alice = await http.user("alice")
    status, mine = await book(http, alice, show, "1")
    assert status == 201
    async with pg.acquire() as conn, conn.transaction():
        # Hold the show's persistence lock: the job reads Redis, then waits for the lock.
        await conn.execute(LOCK_SHOWS, [show])
        job = asyncio.create_task(persist_shows(redis, pg, Scripts(redis), [show]))
        await asyncio.sleep(0.2)
        assert not job.done()
        status, body = await cancel(http, alice, mine["id"])
        assert status == 200 and body["status"] == "cancelled"
    done = await job
    assert (done.records, done.acked) == (1, 0)  # wrote "booked"; the cancel is still pending
    assert await statuses(pg, show) == {mine["id"]: "booked"}
    assert await my_statuses(http, alice) == {mine["id"]: "cancelled"}
    await drain()
    assert await statuses(pg, show) == {mine["id"]: "cancelled"}
    assert await my_statuses(http, alice) == {mine["id"]: "cancelled"}


async def test_a_job_whose_postgresql_connection_dies_is_retried(
    http: Api, pg, redis, settings, drain
) -> None:
    """PostgreSQL restarting kills the job's connection mid-write: the task asks arq for a retry
    (rather than failing for good) and nothing is lost."""
    show = await make_show(pg, total_seats=3)
    alice = await http.user("alice")
    status, mine = await book(http, alice, show, "1")
    assert status == 201
    await redis.sadd(keys.DIRTY_SHOWS, show)
    pool = await asyncpg.create_pool(settings.database_url, min_size=1, max_size=1)
    ctx = {"redis": redis, "pg_pool": pool, "scripts": Scripts(redis), "job_try": 1}
    try:
        async with pg.acquire() as conn, conn.transaction():
            await conn.execute(LOCK_SHOWS, [show])  # the job's write waits here
            job = asyncio.create_task(persist_pending(ctx))
            await asyncio.sleep(0.2)
            killed = await conn.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE wait_event_type = 'Lock' AND pid <> pg_backend_pid()"
                " AND datname = current_database()"
            )
            assert killed == 1
            with pytest.raises(Retry):
                await job
    finally:
        await pool.close()
    assert await statuses(pg, show) == {}
    assert int(await redis.sismember(keys.DIRTY_SHOWS, show)) == 1  # for the retry to find
    await drain()
    assert await statuses(pg, show) == {mine["id"]: "booked"}


async def test_bookkeeping_of_books_and_cancels_is_gone_once_persisted(
    http: Api, pg, redis, drain
) -> None:
    """The claim and release scripts index a change for the user and record where the booking
    lives in the same atomic step as the change; once PostgreSQL has it, all of it is gone, even
    when the worker persists while bookings and cancels (the owner's and an admin's) go on."""
    show = await make_show(pg, total_seats=40)
    alice = await http.user("alice")
    root = await http.admin(pg)
    uid = await user_id(pg, "alice")
    made = [
        body["id"] for status, body in [await book(http, alice, show, str(s)) for s in range(1, 31)]
    ]
    scripts = Scripts(redis)
    stop = asyncio.Event()

    async def persist_meanwhile() -> None:
        while not stop.is_set():
            await persist_shows(redis, pg, scripts, [show])
            await asyncio.sleep(0)

    persister = asyncio.create_task(persist_meanwhile())
    answers = await asyncio.gather(
        *(cancel(http, alice, bid) for bid in made[:10]),
        *(http.post(f"/api/admin/bookings/{bid}/cancel/", token=root) for bid in made[10:20]),
        *(book(http, alice, show, str(s)) for s in range(31, 41)),
    )
    stop.set()
    await persister
    assert [status for status, _ in answers] == [200] * 20 + [201] * 10
    await drain()
    everything = made + [body["id"] for _, body in answers[20:]]
    assert await statuses(pg, show) == {
        bid: "cancelled" if bid in made[:20] else "booked" for bid in everything
    }
    assert await redis.exists(*(keys.booking_show(bid) for bid in everything)) == 0
    assert await redis.zcard(keys.user_recent(uid)) == 0
    assert await redis.hlen(keys.show_keys(show)[4]) == 0


async def test_a_booking_cancelled_before_it_was_persisted_leaves_no_index_entry(
    http: Api, pg, redis, drain
) -> None:
    """Its booked state is never written on its own: persisting the cancel removes the booked
    entry from the user's index too (it would otherwise stay for the index's TTL)."""
    show = await make_show(pg, total_seats=5)
    alice = await http.user("alice")
    uid = await user_id(pg, "alice")
    _, kept = await book(http, alice, show, "1")
    _, gone = await book(http, alice, show, "2")
    status, _ = await cancel(http, alice, gone["id"])
    assert status == 200
    assert await redis.zcard(keys.user_recent(uid)) == 3  # kept:b, gone:b, gone:c
    await drain()
    assert await statuses(pg, show) == {kept["id"]: "booked", gone["id"]: "cancelled"}
    assert await redis.exists(keys.user_recent(uid)) == 0
