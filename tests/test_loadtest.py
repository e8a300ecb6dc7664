"""The load-test harness, in-process: small runs against the real service (PostgreSQL checked
too), and a fake contract server that sells a seat twice, which the harness must catch."""

from __future__ import annotations

import asyncio
import contextlib
import io
import itertools
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp import web
from arq.connections import ArqRedis

from engine.loadtest import Config, run
from engine.persistence import mark_unpersisted, persist_dirty
from engine.seats import Scripts
from engine.settings import Settings
from tests.conftest import Api


async def admin_config(http: Api, pg: asyncpg.Pool, server: str, **kw: Any) -> Config:
    await http.admin(pg)  # user "root", password "correct-horse-9", made admin
    return Config(
        url=server,
        admin_user="root",
        admin_password="correct-horse-9",
        concurrency=20,
        users=10,
        seed=7,
        progress=False,
        out=io.StringIO(),
        **kw,
    )


@pytest.fixture
async def persister(pg: asyncpg.Pool, redis: ArqRedis) -> AsyncIterator[None]:
    """The worker's persistence, in the background: the in-process server has no worker."""
    scripts = Scripts(redis)

    async def loop() -> None:
        while True:
            await mark_unpersisted(redis)
            await persist_dirty(redis, pg, scripts)
            await asyncio.sleep(0.05)

    task = asyncio.create_task(loop())
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def output(cfg: Config) -> str:
    return cfg.out.getvalue() if isinstance(cfg.out, io.StringIO) else ""


async def test_flash_run_sells_each_seat_once(
    server: str, pg: asyncpg.Pool, settings: Settings, http: Api, persister: None
) -> None:
    cfg = await admin_config(
        http,
        pg,
        server,
        scenario="flash",
        requests=300,
        seats=50,
        database_url=settings.database_url,
    )
    code, fig = await run(cfg)
    out = output(cfg)
    assert code == 0, out
    rows = await pg.fetch("SELECT show_id, seat_number FROM bookings WHERE status = 'booked'")
    assert fig["requests"] == 300
    assert fig["bookings_201"] == 50 == len(rows) == len({tuple(r) for r in rows})
    assert fig["conflicts_409"] == 250
    assert fig["errors"] == 0
    assert fig["problems"] == []
    assert fig["persistence_drained"]
    assert any("PostgreSQL" in c for c in fig["verified"]), out
    assert "requests/s" in out and "latency p50" in out and "verified:" in out


async def test_spread_run_verifies_in_postgres(
    server: str,
    pg: asyncpg.Pool,
    settings: Settings,
    http: Api,
    persister: None,
    tmp_path: Path,
) -> None:
    cfg = await admin_config(
        http,
        pg,
        server,
        scenario="spread",
        requests=200,
        seats=20,
        show_count=5,
        database_url=settings.database_url,
        json_path=str(tmp_path / "fig.json"),
    )
    code, fig = await run(cfg)
    assert code == 0, output(cfg)
    assert fig["bookings_201"] == 100  # 5 shows x 20 seats, each tried first, then conflicts
    assert fig["conflicts_409"] == 100
    booked = await pg.fetchval("SELECT count(*) FROM bookings WHERE status = 'booked'")
    assert booked == 100
    assert json.loads((tmp_path / "fig.json").read_text())["bookings_201"] == 100


async def test_mixed_run_cancels_and_rebooks(
    server: str, pg: asyncpg.Pool, settings: Settings, http: Api, persister: None
) -> None:
    cfg = await admin_config(
        http,
        pg,
        server,
        scenario="mixed",
        requests=400,
        seats=50,
        show_count=2,
        database_url=settings.database_url,
    )
    code, fig = await run(cfg)
    assert code == 0, output(cfg)
    assert fig["errors"] == 0
    assert fig["by_kind"].get("browse", 0) > 200


# --- a broken server ----------------------------------------------------------------------


@pytest.fixture
async def double_seller() -> AsyncIterator[str]:
    """A contract server that sells seat "1" of every show twice."""
    ids = itertools.count(1)
    users: dict[str, int] = {}
    sold: dict[tuple[int, str], int] = {}
    shows: dict[int, int] = {}

    async def signup(request: web.Request) -> web.Response:
        body = await request.json()
        users[body["username"]] = next(ids)
        return web.json_response({"id": users[body["username"]]}, status=201)

    async def login(request: web.Request) -> web.Response:
        body = await request.json()
        return web.json_response({"access": f"t{users.get(body['username'], 0)}", "refresh": ""})

    async def movie(request: web.Request) -> web.Response:
        return web.json_response({"id": next(ids)}, status=201)

    async def show(request: web.Request) -> web.Response:
        body = await request.json()
        show_id = next(ids)
        shows[show_id] = int(body["total_seats"])
        return web.json_response({"id": show_id, "total_seats": shows[show_id]}, status=201)

    async def get_show(request: web.Request) -> web.Response:
        show_id = int(request.match_info["id"])
        booked = sum(1 for (s, _seat) in sold if s == show_id)
        return web.json_response(
            {
                "id": show_id,
                "total_seats": shows[show_id],
                "available_seats": shows[show_id] - booked,
            }
        )

    async def book(request: web.Request) -> web.Response:
        show_id = int(request.match_info["id"])
        seat = str((await request.json())["seat_number"])
        count = sold.get((show_id, seat), 0)
        if count >= (2 if seat == "1" else 1):
            return web.json_response({"detail": "taken"}, status=409)
        sold[(show_id, seat)] = count + 1
        return web.json_response(
            {"id": next(ids), "seat_number": seat, "status": "booked"}, status=201
        )

    app = web.Application()
    app.router.add_post("/api/auth/signup/", signup)
    app.router.add_post("/api/auth/login/", login)
    app.router.add_post("/api/admin/movies/", movie)
    app.router.add_post("/api/admin/shows/", show)
    app.router.add_get("/api/shows/{id}/", get_show)
    app.router.add_post("/api/shows/{id}/book/", book)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    await runner.cleanup()


async def test_a_seat_sold_twice_is_caught(double_seller: str) -> None:
    out = io.StringIO()
    cfg = Config(
        url=double_seller,
        scenario="flash",
        requests=200,
        seats=10,
        concurrency=10,
        users=5,
        admin_user="admin",
        admin_password="whatever-pass",
        progress=False,
        out=out,
    )
    code, fig = await run(cfg)
    text = out.getvalue()
    assert code == 1, text
    assert fig["bookings_201"] == 11
    assert "INVARIANTS BROKEN" in text
    assert "seat 1 of show" in text and "sold twice" in text
