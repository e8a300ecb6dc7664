"""The request deadline: a handler stuck on a dependency is answered 503 in the contract's
shape once its deadline passes (one watchdog per process, not a timer per request)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from engine import errors
from tests.conftest import serving


@pytest.fixture
async def stuck_server(monkeypatch: Any) -> AsyncIterator[str]:
    monkeypatch.setattr(errors, "deadlines", errors.RequestDeadlines(0.3, tick_s=0.05))

    async def stuck(request: web.Request) -> web.Response:
        await asyncio.Event().wait()  # a dependency that never answers
        raise AssertionError("unreachable")

    async def swallowed(request: web.Request) -> web.Response:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            pass  # code that catches the cancel still answers, and is not left cancelled
        await asyncio.sleep(0.01)
        return web.json_response({"ok": "late"})

    async def quick(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    app = web.Application(middlewares=[errors.error_middleware])
    app.router.add_get("/stuck", stuck)
    app.router.add_get("/swallowed", swallowed)
    app.router.add_get("/quick", quick)
    async with serving(app) as url:
        yield url


async def test_a_stuck_request_is_a_503_at_its_deadline(stuck_server: str) -> None:
    async with aiohttp.ClientSession() as session:
        started = time.monotonic()
        results = await asyncio.gather(
            *(session.get(f"{stuck_server}/stuck") for _ in range(5)),
            session.get(f"{stuck_server}/quick"),
        )
        elapsed = time.monotonic() - started
        *stuck, quick = results
        assert quick.status == 200
        for resp in stuck:
            assert resp.status == 503
            assert resp.headers["Retry-After"] == "2"
            assert (await resp.json())["detail"] == errors.Unavailable.detail
        assert 0.3 <= elapsed < 2.0
        async with session.get(f"{stuck_server}/swallowed") as resp:
            assert (resp.status, await resp.json()) == (200, {"ok": "late"})
        async with session.get(f"{stuck_server}/quick") as resp:
            assert resp.status == 200
        assert errors.deadlines._running == {} and errors.deadlines._expired == set()
