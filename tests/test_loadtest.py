"""The load-test harness, in-process: small runs against the real service (PostgreSQL checked
too, and a row deleted from it caught), fake contract servers that sell a seat twice, lose a
booking from my-bookings or miscount available_seats, which the harness must catch, and the lean
HTTP client of the measured loop against servers that close connections or answer chunked.
Then what must not pass for clean, nor crash or hang the harness: a server that goes away
mid-run, 500s after a booking or a cancel was made, odd answers (a 201 without an id, a
my-bookings that is not JSON or whose `next` loops, absurd total_seats, seats in rows), a
verification that hangs, persistence that does not drain, refused arguments and Ctrl-C."""

from __future__ import annotations

import asyncio
import contextlib
import io
import itertools
import json
import os
import random
import signal
import subprocess
import sys
import time
from array import array
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from aiohttp import web
from arq.connections import ArqRedis

from engine.jsonutil import dumps
from engine.loadtest import (
    BOOK,
    Config,
    Connection,
    Recorder,
    measure_client_ceiling,
    parse_endpoint,
    percentile,
    percentiles,
    run,
    time_buckets,
)
from engine.persistence import mark_unpersisted, persist_dirty
from engine.seats import Scripts
from engine.settings import Settings
from tests.conftest import Api, serving, stoppable
from tests.storm import processes_marked


async def admin_config(http: Api, pg: asyncpg.Pool, server: str, **kw: Any) -> Config:
    await http.admin(pg)  # user "root", password "correct-horse-9", made admin
    defaults: dict[str, Any] = {
        "concurrency": 20,
        "users": 10,
        "seed": 7,
        "progress": False,
        "out": io.StringIO(),
        "client_ceiling": False,  # spawns a process: only where it is under test
    }
    return Config(
        url=server, admin_user="root", admin_password="correct-horse-9", **{**defaults, **kw}
    )


@pytest.fixture
async def persister(pg: asyncpg.Pool, redis: ArqRedis) -> AsyncIterator[None]:
    """The worker's persistence, in the background: the in-process server has no worker."""
    scripts = Scripts(redis)
    stop = asyncio.Event()

    async def loop() -> None:
        while not stop.is_set():
            await mark_unpersisted(redis)
            await persist_dirty(redis, pg, scripts)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.05)

    task = asyncio.create_task(loop())
    yield
    # Let the round in progress finish (cancelling it mid-transaction once hung the teardown).
    stop.set()
    await asyncio.wait_for(task, 30)


def output(cfg: Config) -> str:
    return cfg.out.getvalue() if isinstance(cfg.out, io.StringIO) else ""


def table_row(text: str, key: str) -> str | None:
    """The value of one row of the printed table (its keys are padded to one width)."""
    for line in text.splitlines():
        if line.startswith(key + "  "):
            return line[len(key) :].strip()
    return None


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


# --- fake contract servers ----------------------------------------------------------------


def contract_app(
    *,
    sell_twice: bool = False,
    forget_one: bool = False,
    miscount: bool = False,
    busy: Callable[[], bool] = lambda: False,
    close_every: int = 0,
    chunked: bool = False,
    book_then_500: int = 0,
    no_id: bool = False,
    my_bookings_fault: str = "",
    total_seats: int | None = None,
    pending: int | None = None,
    cancel_then_500: int = 0,
) -> web.Application:
    """Enough of the contract for a flash run. `sell_twice`: seat "1" of every show is sold
    twice; `forget_one`: the first booking answered 201 is missing from its owner's
    my-bookings; `miscount`: available_seats is one more than it is; `busy()`: logins answer 503
    with Retry-After: 1 while it is true; `close_every`: every Nth
    answer says `Connection: close` and the connection is closed; `chunked`: every answer is
    sent with `Transfer-Encoding: chunked`, in pieces. `book_then_500`: every Nth booking (of
    a seat other than "1") is made but answered 500; `cancel_then_500`: every Nth cancel is
    made but answered 500; `no_id`: a 201's body has no id; `my_bookings_fault`: "not-json",
    "loop" (`next` is the same page) or "hang" (2 s a page); `total_seats`: what the shows
    claim to have; `pending`: /health/ready is served and reports this many records pending,
    for ever. Show 1000 exists from the start, with rows of seats (A1 ... B5), not numbered ones."""
    ids = itertools.count(1)
    answers = itertools.count(1)
    books = itertools.count(1)
    cancels = itertools.count(1)
    users: dict[str, int] = {}
    sold: dict[tuple[int, str], int] = {}
    shows: dict[int, int] = {1000: 10}
    labelled = {1000: {f"{r}{c}" for r in "AB" for c in range(1, 6)}}
    bookings: dict[str, list[dict[str, Any]]] = {}  # by access token

    async def signup(request: web.Request) -> web.Response:
        body = await request.json()
        users[body["username"]] = next(ids)
        return web.json_response({"id": users[body["username"]]}, status=201)

    async def login(request: web.Request) -> web.Response:
        body = await request.json()
        if busy():
            return web.json_response({"detail": "busy"}, status=503, headers={"Retry-After": "1"})
        return web.json_response({"access": f"t{users.get(body['username'], 0)}", "refresh": ""})

    async def movie(request: web.Request) -> web.Response:
        return web.json_response({"id": next(ids)}, status=201)

    async def show(request: web.Request) -> web.Response:
        body = await request.json()
        show_id = next(ids)
        shows[show_id] = int(body["total_seats"])
        claimed = shows[show_id] if total_seats is None else total_seats
        return web.json_response({"id": show_id, "total_seats": claimed}, status=201)

    async def get_show(request: web.Request) -> web.Response:
        show_id = int(request.match_info["id"])
        booked = sum(n for (s, _seat), n in sold.items() if s == show_id)
        return web.json_response(
            {
                "id": show_id,
                "total_seats": shows[show_id] if total_seats is None else total_seats,
                "available_seats": shows[show_id] - booked + (1 if miscount else 0),
            }
        )

    async def admin_show(request: web.Request) -> web.Response:
        show_id = int(request.match_info["id"])
        rows = {"rows": 2, "seats_per_row": 5} if show_id in labelled else {}
        return web.json_response({"id": show_id, "total_seats": shows[show_id], **rows})

    async def my_bookings(request: web.Request) -> web.Response:
        if my_bookings_fault == "not-json":
            return web.Response(text="<html>oops</html>", content_type="text/html")
        if my_bookings_fault == "hang":
            await asyncio.sleep(2)
        mine = bookings.get(request.headers.get("Authorization", ""), [])
        looping = str(request.url) if my_bookings_fault == "loop" else None
        return web.json_response(
            {"count": len(mine), "next": looping, "previous": None, "results": mine}
        )

    async def book(request: web.Request) -> web.Response:
        show_id = int(request.match_info["id"])
        seat = str((await request.json())["seat_number"])
        if show_id in labelled and seat not in labelled[show_id]:
            return web.json_response({"detail": "No such seat."}, status=400)
        count = sold.get((show_id, seat), 0)
        if count >= (2 if sell_twice and seat == "1" else 1):
            return web.json_response({"detail": "taken"}, status=409)
        sold[(show_id, seat)] = count + 1
        booking = {"id": next(ids), "show": {"id": show_id}, "seat_number": seat}
        booking["status"] = "booked"
        if not (forget_one and sum(sold.values()) == 1):
            bookings.setdefault(request.headers.get("Authorization", ""), []).append(booking)
        if book_then_500 and seat != "1" and next(books) % book_then_500 == 0:
            return web.json_response({"detail": "oops"}, status=500)
        return web.json_response({} if no_id else booking, status=201)

    async def cancel(request: web.Request) -> web.Response:
        booking_id = int(request.match_info["id"])
        mine = bookings.get(request.headers.get("Authorization", ""), [])
        booking = next(b for b in mine if b["id"] == booking_id)
        if booking["status"] == "booked":
            booking["status"] = "cancelled"
            sold[(booking["show"]["id"], booking["seat_number"])] -= 1
        if cancel_then_500 and next(cancels) % cancel_then_500 == 0:
            return web.json_response({"detail": "oops"}, status=500)
        return web.json_response(booking)

    async def movies(request: web.Request) -> web.Response:
        return web.json_response({"count": 0, "next": None, "previous": None, "results": []})

    async def ready(request: web.Request) -> web.Response:
        return web.json_response({"pending_records": pending, "persistence_lag_s": 4.0})

    @web.middleware
    async def framing(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        resp = await handler(request)
        close = bool(close_every) and next(answers) % close_every == 0
        if chunked and isinstance(resp, web.Response) and isinstance(resp.body, bytes):
            stream = web.StreamResponse(
                status=resp.status, headers={"Content-Type": "application/json"}
            )
            stream.enable_chunked_encoding()
            if close:
                stream.force_close()
            await stream.prepare(request)
            half = len(resp.body) // 2
            await stream.write(resp.body[:half])
            await asyncio.sleep(0)
            await stream.write(resp.body[half:])
            await stream.write_eof()
            return stream
        if close:
            resp.force_close()
        return resp

    app = web.Application(middlewares=[framing])
    app.router.add_post("/api/auth/signup/", signup)
    app.router.add_post("/api/auth/login/", login)
    app.router.add_post("/api/admin/movies/", movie)
    app.router.add_post("/api/admin/shows/", show)
    app.router.add_get("/api/shows/{id}/", get_show)
    app.router.add_post("/api/shows/{id}/book/", book)
    app.router.add_get("/api/my-bookings/", my_bookings)
    app.router.add_get("/api/admin/shows/{id}/", admin_show)
    app.router.add_post("/api/bookings/{id}/cancel/", cancel)
    app.router.add_get("/api/movies/", movies)
    if pending is not None:
        app.router.add_get("/health/ready", ready)
    return app


def fake_config(url: str, out: io.StringIO, **kw: Any) -> Config:
    defaults: dict[str, Any] = {
        "scenario": "flash",
        "requests": 200,
        "seats": 10,
        "concurrency": 10,
        "users": 5,
        "admin_user": "admin",
        "admin_password": "whatever-pass",
        "progress": False,
        "client_ceiling": False,
    }
    return Config(url=url, out=out, **{**defaults, **kw})


@pytest.mark.parametrize(
    ("fault", "bookings", "expected"),
    [
        ("sell_twice", 11, ["seat 1 of show", "sold twice"]),
        (
            "forget_one",
            10,
            [
                "is missing in my-bookings, expected booked",
                "my-bookings has 9 booked, but 201s minus successful cancels = 10",
            ],
        ),
        ("miscount", 10, ["available_seats 1, but total 10 - booked 10 = 0"]),
    ],
)
async def test_a_broken_invariant_is_caught(fault: str, bookings: int, expected: list[str]) -> None:
    out = io.StringIO()
    async with serving(contract_app(**{fault: True})) as url:
        code, fig = await run(fake_config(url, out))
    text = out.getvalue()
    assert code == 1, text
    assert fig["bookings_201"] == bookings
    assert "INVARIANTS BROKEN" in text
    for line in expected:
        assert line in text


async def test_an_honest_fake_server_passes() -> None:
    """The checks above fail because of what they test, not because the fake server fails any
    run: the same server without a fault passes, my-bookings and available_seats checked."""
    out = io.StringIO()
    async with serving(contract_app()) as url:
        code, fig = await run(fake_config(url, out))
    assert code == 0, out.getvalue()
    assert any("my-bookings" in c for c in fig["verified"])
    assert any("available_seats" in c for c in fig["verified"])


async def test_a_201_missing_from_postgres_is_caught(
    server: str, pg: asyncpg.Pool, settings: Settings, http: Api, persister: None
) -> None:
    """A booking row lost after the worker persisted it (deleted once PostgreSQL held every
    201, just before the harness verifies) is a broken invariant: exit 1."""
    lost: list[int] = []

    async def on_clock(event: str) -> None:
        if event == "drained":
            lost.append(
                await pg.fetchval(
                    "DELETE FROM bookings WHERE id = (SELECT max(id) FROM bookings) RETURNING id"
                )
            )

    cfg = await admin_config(
        http,
        pg,
        server,
        scenario="flash",
        requests=60,
        seats=20,
        database_url=settings.database_url,
        on_clock=on_clock,
    )
    code, fig = await run(cfg)
    out = output(cfg)
    assert code == 1, out
    assert fig["bookings_201"] == 20 and len(lost) == 1
    assert f"PostgreSQL: booking {lost[0]} (a 201) has no row" in out
    assert "INVARIANTS BROKEN" in out


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_connection_close_and_chunked_answers_are_no_errors(chunked: bool) -> None:
    """Every 3rd answer closes the connection; the run reconnects and counts no error."""
    out = io.StringIO()
    async with serving(contract_app(close_every=3, chunked=chunked)) as url:
        code, fig = await run(fake_config(url, out))
    assert code == 0, out.getvalue()
    assert fig["errors"] == 0, fig["errors_by_status"]
    assert fig["requests"] == 200
    assert fig["bookings_201"] == 10 and fig["conflicts_409"] == 190
    assert fig["statuses"] == {"book 201": 10, "book 409": 190}


# --- the lean client, byte by byte ----------------------------------------------------------


@contextlib.asynccontextmanager
async def raw_server(mode: str) -> AsyncIterator[tuple[str, list[int]]]:
    """A raw HTTP/1.1 server echoing {"n", "path", "body"} (n counts requests); yields (URL,
    connections accepted so far). Modes: "close-every-3" (`Connection: close` on every 3rd
    answer, then closed), "chunked" (pieces, a chunk extension, a trailer), "until-close"
    (no length: the body ends with the connection), "idle-close" (closes each connection 20 ms
    after an answer, saying nothing), "hang-up" (reads the request, closes without answering),
    "silent" (never answers)."""
    count = itertools.count(1)
    accepted = [0]

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted[0] += 1
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                path = head.split(b" ", 2)[1].decode()
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                body = await reader.readexactly(length)
                n = next(count)
                if mode == "hang-up":
                    return
                if mode == "silent":
                    await asyncio.sleep(30)
                    return
                answer = dumps({"n": n, "path": path, "body": body.decode()})
                if mode == "chunked":
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n")
                    writer.write(b"Transfer-Encoding: chunked\r\n\r\n")
                    await writer.drain()
                    for i in range(0, len(answer), 7):
                        piece = answer[i : i + 7]
                        writer.write(b"%x;ext=1\r\n%s\r\n" % (len(piece), piece))
                        await writer.drain()
                    writer.write(b"0\r\nX-Trailer: yes\r\n\r\n")
                    await writer.drain()
                    continue
                if mode == "until-close":
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n")
                    writer.write(answer)
                    return
                close = mode == "close-every-3" and n % 3 == 0
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    b"Content-Length: %d\r\n%s\r\n%s"
                    % (len(answer), b"Connection: close\r\n" if close else b"", answer)
                )
                await writer.drain()
                if close:
                    return
                if mode == "idle-close":
                    await asyncio.sleep(0.02)
                    return
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}", accepted
    finally:
        server.close()
        await server.wait_closed()


async def exchange(conn: Connection, i: int) -> dict[str, Any]:
    status, body = await conn.request(
        b"POST", f"/echo/{i}/", b"Authorization: Bearer t\r\n", dumps({"i": i})
    )
    assert status == 200
    answer = json.loads(body)
    assert answer["path"] == f"/echo/{i}/" and json.loads(answer["body"]) == {"i": i}
    return dict(answer)


@pytest.mark.parametrize("mode", ["close-every-3", "chunked", "until-close"])
async def test_lean_client_reads_each_framing(mode: str) -> None:
    async with raw_server(mode) as (url, accepted):
        conns = [Connection(parse_endpoint(url)) for _ in range(4)]

        async def worker(conn: Connection, first: int) -> None:
            for i in range(first, first + 15):
                await exchange(conn, i)

        try:
            await asyncio.gather(*(worker(c, k * 100) for k, c in enumerate(conns)))
        finally:
            for conn in conns:
                conn.close()
        connects = sum(c.connects for c in conns)
    assert connects == accepted[0]
    if mode == "close-every-3":
        assert 20 <= connects <= 24  # a new connection after every 3rd of 60 answers
    elif mode == "chunked":
        assert connects == 4  # kept alive
    else:
        assert connects == 60


async def test_lean_client_reconnects_when_the_server_closed_an_idle_connection() -> None:
    async with raw_server("idle-close") as (url, accepted):
        conn = Connection(parse_endpoint(url))
        try:
            for i in range(3):
                await exchange(conn, i)
                await asyncio.sleep(0.1)  # the server closes meanwhile, without a word
        finally:
            conn.close()
    assert conn.connects == accepted[0] == 3


async def test_lean_client_a_request_lost_mid_flight_is_an_error() -> None:
    async with raw_server("hang-up") as (url, _):
        conn = Connection(parse_endpoint(url))
        with pytest.raises(ConnectionResetError):
            await exchange(conn, 1)
        assert conn.connects == 1  # a POST is not sent twice
    async with raw_server("silent") as (url, _):
        conn = Connection(parse_endpoint(url), timeout=0.2)
        with pytest.raises(TimeoutError):
            await exchange(conn, 1)


def test_only_http_urls() -> None:
    assert parse_endpoint("http://example.com").port == 80
    assert parse_endpoint("http://127.0.0.1:8400/base/").prefix == b"/base"
    with pytest.raises(ValueError, match="https"):
        parse_endpoint("https://example.com")


# The environment of `python -m engine loadtest` in a child process: dummy, unused services.
CLI_ENV = {
    "DATABASE_URL": "postgresql://unused@127.0.0.1:1/unused",
    "REDIS_URL": "redis://127.0.0.1:1/0",
    "JWT_SECRET": "unused-but-long-enough-secret",
    "LOG_LEVEL": "WARNING",
}


def cli(*args: str, prelude: str = "") -> subprocess.CompletedProcess[str]:
    """`python -m engine loadtest ...` in a child process (env with dummy, unused services)."""
    env = {**os.environ, **CLI_ENV}
    code = "\n".join(
        ["import sys", prelude, "from engine.__main__ import main", "sys.exit(main(sys.argv[1:]))"]
    )
    return subprocess.run(
        [sys.executable, "-c", code, "loadtest", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
    )


def test_cli_refuses_https_and_plot_without_matplotlib() -> None:
    done = cli("--url", "https://127.0.0.1:1", "--requests", "1")
    assert done.returncode == 2 and "https" in done.stderr
    done = cli(
        "--url",
        "http://127.0.0.1:1",
        "--requests",
        "1",
        "--plot",
        "x.png",
        prelude="sys.modules['matplotlib'] = None",  # as if not installed
    )
    assert done.returncode == 2
    assert "error: --plot needs matplotlib: pip install 'booking-engine[plot]'" in done.stderr


# --- login, the plot, the client ceiling -------------------------------------------------------


async def test_login_run_for_a_duration_keeps_health_responsive(
    server: str, pg: asyncpg.Pool, http: Api
) -> None:
    cfg = await admin_config(http, pg, server, scenario="login", duration=1.5, users=5)
    started = time.monotonic()
    code, fig = await run(cfg)
    assert code == 0, output(cfg)
    assert 1.5 <= fig["wall_s"] < 1.5 + 5 and time.monotonic() - started < 10
    assert fig["errors"] == 0, fig["errors_by_status"]
    assert fig["requests"] > 0
    assert fig["by_kind"] == {"login": fig["requests"]}
    assert fig["statuses"] == {"login 200": fig["requests"]} == {"login 200": fig["logins_200"]}
    assert fig["login_200_p99_ms"] is not None
    assert "successful logins (200)" in output(cfg)
    assert fig["bookings_201"] == fig["conflicts_409"] == 0
    assert fig["health_live_errors"] == 0
    assert fig["health_live_p99_ms"] is not None and fig["health_live_p99_ms"] < 1000
    assert sum(point["rps"] for point in fig["timeline"]) > 0


async def test_a_503_with_retry_after_pauses_that_worker() -> None:
    """A well-behaved client: a worker answered 503 with Retry-After waits before its next
    request (within the run's time) instead of looping on 503s."""
    state = {"busy": False}

    def on_clock(event: str) -> None:
        state["busy"] = event == "start"  # setup's logins go through; the measured ones do not

    out = io.StringIO()
    async with serving(contract_app(busy=lambda: state["busy"])) as url:
        cfg = fake_config(url, out, duration=1.5, on_clock=on_clock)
        cfg.scenario, cfg.concurrency, cfg.requests = "login", 5, None
        code, fig = await run(cfg)
    assert code == 0, out.getvalue()
    # Each of the 5 workers: a 503 at once, a 1 s wait, another 503, a wait cut at the end.
    assert fig["statuses"] == {"login 503": fig["requests"]}, fig["statuses"]
    assert 5 <= fig["requests"] <= 15, fig["requests"]
    assert 1.5 <= fig["wall_s"] < 3
    assert fig["logins_200"] == 0
    # The server turning callers away by design: counted apart, not errors (the run is clean).
    assert fig["turned_away_503"] == fig["requests"] and fig["errors"] == 0 and fig["clean"]
    assert table_row(out.getvalue(), "turned away (503 with Retry-After)") == str(fig["requests"])


async def test_plot_is_a_png(
    server: str, pg: asyncpg.Pool, http: Api, persister: None, tmp_path: Path
) -> None:
    path = tmp_path / "run.png"
    cfg = await admin_config(
        http, pg, server, scenario="flash", requests=300, seats=50, plot_path=str(path)
    )
    code, fig = await run(cfg)
    assert code == 0, output(cfg)
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > 10_000
    assert f"plot written to {path}" in output(cfg)


def test_percentiles_of_a_large_run_are_exact() -> None:
    """Above 100 000 values they are found without sorting them all: same answers."""
    rng = random.Random(3)
    values = array("d", (rng.lognormvariate(-3, 1) for _ in range(150_000)))
    values.append(30.0)  # one timeout-sized outlier
    ordered = sorted(values)
    wanted = (0, 50, 90, 99, 99.9, 100)
    assert percentiles(values, wanted) == {p: percentile(ordered, p) for p in wanted}


def test_time_buckets_cover_the_run() -> None:
    rec = Recorder()
    for i in range(100):
        rec.add(i * 0.1, 0.01 * (1 + i % 10), BOOK, 201 if i < 10 else 409)
    width, buckets = time_buckets(rec, 10.0)
    assert width == 0.25 and len(buckets) == 40
    assert sum(b.requests_per_s * width for b in buckets) == pytest.approx(100)
    assert sum(b.bookings_per_s * width for b in buckets) == pytest.approx(10)
    width, buckets = time_buckets(rec, 600.0)
    assert width == 10.0 and len(buckets) == 60


async def test_client_ceiling_is_measured_and_reported(
    server: str, pg: asyncpg.Pool, http: Api, persister: None
) -> None:
    ceiling = await measure_client_ceiling(concurrency=5, seconds=0.3)
    assert ceiling.rps > 0 and ceiling.errors == 0 and 0 < ceiling.cpu_share
    cfg = await admin_config(
        http,
        pg,
        server,
        scenario="flash",
        requests=200,
        seats=50,
        client_ceiling=True,
        ceiling_seconds=0.3,
    )
    code, fig = await run(cfg)
    out = output(cfg)
    assert code == 0, out
    assert fig["client_ceiling_rps"] > 0 and fig["client_ceiling_cpu_share"] > 0
    assert 0 < fig["client_ceiling_share_used"] < 1
    assert "client ceiling: " in out and "at concurrency 20 against a trivial endpoint" in out
    assert "share of the client ceiling used" in out


async def test_a_run_longer_than_the_access_tokens_renews_them(
    settings: Settings, pg: asyncpg.Pool, http: Api, persister: None, monkeypatch: Any
) -> None:
    """Tokens that expire during the run (2 s here, no leeway) are renewed by refresh token
    before they do: no 401s, and the verification after the run works too."""
    from engine import loadtest
    from engine.app import create_app

    monkeypatch.setattr(loadtest, "TOKEN_MARGIN_S", 1.0)
    monkeypatch.setattr(loadtest, "TOKEN_CHECK_EVERY_S", 0.2)
    async with serving(create_app(settings.with_(access_ttl_s=2, jwt_leeway_s=0))) as url:
        cfg = await admin_config(http, pg, url, scenario="mixed", duration=4.0, users=5)
        code, fig = await run(cfg)
    assert code == 0, output(cfg)
    assert fig["errors"] == 0, fig["errors_by_status"]
    assert fig["bookings_201"] > 0 and fig["wall_s"] >= 4.0


async def test_a_database_it_cannot_check_is_reported_not_a_traceback(
    server: str, pg: asyncpg.Pool, http: Api, persister: None, settings: Settings
) -> None:
    """A --database-url without the bookings table (or unreachable): the run's figures are
    printed, the check is reported as not made, and the exit code is 2."""
    from urllib.parse import urlsplit, urlunsplit

    wrong = urlunsplit(urlsplit(settings.database_url)._replace(path="/postgres"))
    cfg = await admin_config(
        http, pg, server, scenario="flash", requests=200, seats=20, database_url=wrong
    )
    code, fig = await run(cfg)
    assert code == 2
    assert fig["requests"] == 200 and not fig["problems"]
    assert "NOT VERIFIED: could not check in PostgreSQL" in output(cfg)
    assert "requests/s" in output(cfg)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--requests", "0"], "--requests must be at least 1"),
        (["--duration", "-1"], "--duration must be more than 0"),
        (["--requests", "5", "--users", "0"], "--users must be at least 1"),
        (["--requests", "5", "--shows", "-2"], "--shows must be at least 1"),
        (["--requests", "5", "--seats", "0"], "--seats must be at least 1"),
        (["--requests", "5", "--json", "/proc/nope/x.json"], "--json /proc/nope/x.json: no such"),
        (["--requests", "5", "--plot", "/"], "--plot /: is a directory"),
        (["--requests", "5", "--json", "/sys/x.json"], "--json /sys/x.json: Permission denied"),
        (["--requests", "5", "--seats", "10001"], "--seats must be at most 10000"),
        (["--duration", "86401"], "--duration must be at most 86400 seconds"),
        (["--duration", "inf"], "--duration must be at most 86400 seconds"),
        (["--duration", "nan"], "--duration must be more than 0"),
        (["--requests", "5", "--url", "http://127.0.0.1:1/?x=1"], "no query (?) or fragment"),
        (["--requests", "5", "--url", "http://127.0.0.1:1/#top"], "no query (?) or fragment"),
        (["--requests", "5", "--url", "http://127.0.0.1:0"], "the port must be a number from 1"),
        (["--requests", "5", "--url", "http://127.0.0.1:99999"], "the port must be a number"),
        (["--requests", "5", "--url", "http://u:pw@127.0.0.1:8000"], "no user:password@"),
        (["--requests", str(10**20)], "--requests must be at most 100,000,000"),
        (["--requests", "5", "--concurrency", "100000"], "--concurrency must be at most 10,000"),
    ],
)
def test_cli_refuses_bad_arguments_before_sending_anything(args: list[str], message: str) -> None:
    # The URL answers nothing: a refusal must come before the run ever tries it.
    done = cli("--url", "http://127.0.0.1:1", *args)
    assert done.returncode == 2, done.stderr
    assert message in done.stderr and "Traceback" not in done.stderr


async def test_an_unknown_show_on_a_contract_server_is_refused(
    server: str, pg: asyncpg.Pool, http: Api
) -> None:
    cfg = await admin_config(http, pg, server, scenario="spread", requests=10, shows=[10**9])
    code, _ = await run(cfg)
    assert code == 2


async def test_setup_requests_answered_503_are_retried() -> None:
    """Signups and logins on a server busy hashing passwords may get a 503: the harness tries
    again after Retry-After rather than giving up on the whole run."""
    from engine.loadtest import SETUP_TRIES, Harness, SetupError

    seen: list[int] = []

    async def busy(request: web.Request) -> web.Response:
        seen.append(1)
        if len(seen) % 3:
            return web.json_response({"detail": "busy"}, status=503, headers={"Retry-After": "0"})
        return web.json_response({"ok": len(seen)}, status=201)

    async def down(request: web.Request) -> web.Response:
        seen.append(1)
        return web.json_response({"detail": "down"}, status=503, headers={"Retry-After": "0"})

    app = web.Application()
    app.router.add_post("/busy", busy)
    app.router.add_post("/down", down)
    async with serving(app) as url, aiohttp.ClientSession() as session:
        h = Harness(Config(url=url, requests=1, progress=False), session)
        assert await h._post(url, "/busy", {}) == {"ok": 3}
        seen.clear()
        with pytest.raises(SetupError, match="503"):
            await h._post(url, "/down", {})
        assert len(seen) == SETUP_TRIES


# --- an unclean run, a server that goes away, odd answers -------------------------------------


async def test_an_api_that_goes_away_is_backed_off_from_and_unverified() -> None:
    """The server stops as the clock starts: every worker backs off (50 ms doubling, not a
    reconnect loop), the verification after the run cannot reach it, and the run ends with its
    figures printed, exit 2, well within its bounds."""
    out = io.StringIO()
    async with stoppable(contract_app()) as (url, stop):

        async def on_clock(event: str) -> None:
            if event == "start":
                await stop()

        cfg = fake_config(url, out, on_clock=on_clock, concurrency=3, lag_deadline_s=0.3)
        cfg.requests, cfg.duration = None, 1.0
        started = time.monotonic()
        code, fig = await run(cfg)
    text = out.getvalue()
    assert code == 2, text
    assert time.monotonic() - started < 4
    # 50 + 100 + 200 + 400 ms, then the deadline: about 5 requests a worker, not thousands.
    assert 3 <= fig["requests"] <= 24, fig["requests"]
    assert fig["no_answer"] == fig["requests"] == fig["unknown_outcomes"]
    assert not fig["problems"] and not fig["clean"]
    assert "NOT VERIFIED: could not check through the API" in text
    assert f"NOT CLEAN: {fig['requests']} requests got no answer" in text
    assert "requests/s" in text and table_row(text, "requests with no answer") == str(
        fig["requests"]
    )


async def test_a_500_is_unclean_and_its_booking_is_tolerated(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Every 3rd booking is made but answered 500: the run is not clean (exit 2, not 0), and
    my-bookings and available_seats, which count those bookings, are not a broken invariant
    (exit 1): each 500 makes its show's count uncertain by one."""
    out = io.StringIO()
    async with serving(contract_app(book_then_500=3)) as url:
        code, fig = await run(fake_config(url, out))
    text = out.getvalue()
    assert code == 2, text
    assert fig["bookings_201"] == 7 and fig["unknown_books"] == 3, fig
    assert fig["errors_by_status"] == {"book 500": 3}
    assert not fig["problems"], fig["problems"]
    assert any("my-bookings" in c for c in fig["verified"])
    assert any("available_seats" in c for c in fig["verified"])
    assert "NOT CLEAN: 3 unexpected answers (book 500: 3)" in text
    assert table_row(text, "outcomes unknown (no answer, 5xx)") == "3  (3 books, 0 cancels)"
    assert "Traceback" not in capsys.readouterr().err


async def test_a_cancel_answered_500_is_tolerated() -> None:
    """Every 2nd cancel is made but answered 500: its booking may be booked or cancelled (and
    its seat booked again), its show's count is uncertain by one; exit 2, not 1."""
    out = io.StringIO()
    async with serving(contract_app(cancel_then_500=2)) as url:
        cfg = fake_config(url, out, scenario="mixed", requests=600, show_count=1, seed=3)
        code, fig = await run(cfg)
    text = out.getvalue()
    assert code == 2, text
    assert fig["unknown_cancels"] >= 2 and fig["cancels_200"] >= 2, fig
    assert not fig["problems"], fig["problems"]
    assert set(fig["errors_by_status"]) == {"cancel 500"}
    assert any("my-bookings" in c for c in fig["verified"])


async def test_a_seat_sold_twice_is_still_caught_with_unknown_outcomes() -> None:
    """The tolerance is for counts: a seat in two 201s stays a broken invariant (exit 1)."""
    out = io.StringIO()
    async with serving(contract_app(sell_twice=True, book_then_500=4)) as url:
        code, fig = await run(fake_config(url, out))
    assert code == 1, out.getvalue()
    assert fig["unknown_books"] > 0
    assert "sold twice" in out.getvalue()


@pytest.mark.parametrize(
    ("fault", "expected"),
    [
        ({"no_id": True}, "NOT CLEAN: 10 unexpected answers (book 201 without a booking id: 10)"),
        (
            {"my_bookings_fault": "not-json"},
            "NOT VERIFIED: GET /api/my-bookings/ answered '<html>oops</html>', not a page",
        ),
        ({"my_bookings_fault": "loop"}, "NOT VERIFIED: GET /api/my-bookings/: the next link"),
    ],
    ids=["201-without-id", "my-bookings-not-json", "my-bookings-next-loops"],
)
async def test_odd_answers_are_reported_not_a_traceback(
    fault: dict[str, Any], expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    out = io.StringIO()
    async with serving(contract_app(**fault)) as url:
        code, fig = await asyncio.wait_for(run(fake_config(url, out)), 10)
    text = out.getvalue()
    assert code == 2, text
    assert expected in text
    assert "requests/s" in text and "Traceback" not in capsys.readouterr().err


async def test_a_verification_that_hangs_is_cut_short() -> None:
    out = io.StringIO()
    async with serving(contract_app(my_bookings_fault="hang")) as url:
        cfg = fake_config(url, out, verify_deadline_s=0.5)
        started = time.monotonic()
        code, _ = await run(cfg)
        assert code == 2 and time.monotonic() - started < 2
    assert "NOT VERIFIED: the verification did not finish within 0.5 s" in out.getvalue()


@pytest.mark.parametrize("shows", [[], [1000]], ids=["created", "given"])
async def test_an_absurd_total_seats_is_refused(
    shows: list[int], capsys: pytest.CaptureFixture[str]
) -> None:
    out = io.StringIO()
    async with serving(contract_app(total_seats=10**12)) as url:
        code, _ = await asyncio.wait_for(run(fake_config(url, out, shows=shows)), 10)
    err = capsys.readouterr().err
    assert code == 2
    assert "the server gave total_seats 1000000000000, not a number of seats from 1 to 10000" in err
    assert "Traceback" not in err


async def test_a_given_show_with_rows_of_seats(capsys: pytest.CaptureFixture[str]) -> None:
    """Show 1000 has seats A1 ... B5. With an admin, the harness reads its rows and books those
    labels; without one, it books "1" ... and is told so, clearly."""
    out = io.StringIO()
    async with serving(contract_app()) as url:
        code, fig = await run(fake_config(url, out, shows=[1000]))
        assert code == 0, out.getvalue()
        assert fig["bookings_201"] == 10 and fig["errors"] == 0
        cfg = fake_config(url, io.StringIO(), shows=[1000])
        cfg.admin_user = cfg.admin_password = None
        code, fig = await run(cfg)
    err = capsys.readouterr().err
    assert code == 2
    assert "error: show 1000 answered 400 to seat" in err
    assert "its seats are not labelled as this run assumed (1 to 10)" in err
    assert "Traceback" not in err


async def test_persistence_that_does_not_drain_is_told_apart_from_no_figure() -> None:
    out = io.StringIO()
    async with serving(contract_app(pending=3)) as url:
        code, fig = await run(fake_config(url, out, lag_deadline_s=0.3))
    assert code == 0, out.getvalue()
    assert not fig["persistence_drained"] and fig["persistence_pending"] == 3
    assert "persistence did not drain within 0.3 s: 3 pending (lag 4.0 s)" in out.getvalue()
    out = io.StringIO()
    async with serving(contract_app()) as url:
        code, fig = await run(fake_config(url, out))
    assert code == 0 and not fig["persistence_reported"]
    assert "persistence lag not reported" in out.getvalue()
    assert "did not drain" not in out.getvalue()


async def test_a_json_file_that_cannot_be_written_after_the_run_is_exit_2(
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = io.StringIO()
    async with serving(contract_app()) as url:
        code, _ = await run(fake_config(url, out, json_path="/dev/full"))
    err = capsys.readouterr().err
    assert code == 2 and "error: writing --json /dev/full failed" in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("signum", "ceiling"),
    [
        (signal.SIGINT, False),
        (signal.SIGTERM, False),
        (signal.SIGHUP, False),
        (signal.SIGTERM, True),  # while it measures its own ceiling, in a child process
    ],
)
async def test_a_signal_during_a_run_says_interrupted_exits_130_and_stops_its_child(
    signum: int, ceiling: bool
) -> None:
    """`python -m engine loadtest` in a child process: Ctrl-C, SIGTERM or SIGHUP (a terminal
    closing) sent to it by pid, mid-run or while the client's ceiling is measured."""
    mark = f"LOADTEST_TEST_MARK_{os.getpid()}_{signum}_{ceiling}"
    async with serving(contract_app()) as url:
        proc = await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "engine", "loadtest", "--url", url, "--duration", "30"),
            *("--users", "2", "--concurrency", "2", "--admin-user", "admin"),
            *("--admin-password", "whatever-pass"),
            *([] if ceiling else ["--no-client-ceiling"]),
            stderr=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            env={**os.environ, **CLI_ENV, mark: "1"},
        )
        try:
            assert proc.stderr is not None
            if ceiling:  # its trivial server has started
                for _ in range(2000):
                    if len(processes_marked(mark)) > 1:
                        break
                    await asyncio.sleep(0.01)
                assert len(processes_marked(mark)) > 1, (proc.returncode, await proc.stderr.read())
            else:  # the first progress line: the clock runs
                line = await asyncio.wait_for(proc.stderr.readline(), 20)
                assert b"req/s" in line, line
            proc.send_signal(signum)
            _, err = await asyncio.wait_for(proc.communicate(), 20)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    assert proc.returncode == 130, err
    assert b"interrupted" in err and b"Traceback" not in err and b"never retrieved" not in err
    for _ in range(50):
        if not processes_marked(mark):
            break
        await asyncio.sleep(0.1)
    assert processes_marked(mark) == []
