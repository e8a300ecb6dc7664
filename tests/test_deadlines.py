"""The request deadline: a handler stuck on a dependency is answered 503 in the contract's
shape once its deadline passes (one watchdog per process, not a timer per request)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest
import yarl
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

    async def echo(request: web.Request) -> web.Response:
        return web.json_response({"read": len(await request.read())})

    app = web.Application(middlewares=[errors.error_middleware])
    app.router.add_get("/stuck", stuck)
    app.router.add_get("/swallowed", swallowed)
    app.router.add_get("/quick", quick)
    app.router.add_post("/echo", echo)
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


async def test_a_body_shorter_than_its_content_length_is_a_408_not_a_503(
    stuck_server: str,
) -> None:
    """The client announced 100 bytes and sent 2: its fault, not a dependency's."""
    url = yarl.URL(stuck_server)
    reader, writer = await asyncio.open_connection(url.host, url.port)
    try:
        writer.write(
            b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 100\r\n\r\n{}"
        )
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        body = await asyncio.wait_for(reader.readexactly(length), 5)
    finally:
        writer.close()
    assert head.startswith(b"HTTP/1.1 408 "), head
    assert b"Connection: close" in head, head
    assert b"Retry-After" not in head
    assert orjson.loads(body) == {"detail": errors.BodyTimeout.detail}
    async with aiohttp.ClientSession() as session:  # a whole body is still read as before
        async with session.post(f"{stuck_server}/echo", data=b"{}") as resp:
            assert (resp.status, await resp.json()) == (200, {"read": 2})
