"""`make bench`: the flash and spread scenarios against (a) the ceiling of this design in Python
and (b) our engine, on this machine, with the same harness settings.

(a) is a bare aiohttp app with one route, POST /api/shows/{id}/book/, that verifies the JWT and
runs the claim script: no index writes, no persistence, no idempotency, no logging. It uses its
own Redis database (so the engine's worker never sees its claims); its users sign up and log in
through the engine (same JWT secret, same PostgreSQL), and its shows are created in PostgreSQL.

Run the ceiling alone with `python -m engine.bench` (DATABASE_URL, REDIS_URL, JWT_SECRET, PORT).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlparse, urlunparse

import asyncpg
from aiohttp import web

from engine.auth import TokenService
from engine.errors import Conflict, InvalidInput, NotFound, Unauthorized
from engine.jsonutil import json_response
from engine.seats import SeatEngine, normalise_seat, now_us
from engine.settings import Settings, load_settings

ROOT = Path(__file__).resolve().parent.parent
SEATS_KEY: web.AppKey[SeatEngine] = web.AppKey("seats", SeatEngine)
TOKENS_KEY: web.AppKey[TokenService] = web.AppKey("tokens", TokenService)
SPREAD_SHOWS = 50
SPREAD_SEATS = 200


# --- (a) the ceiling --------------------------------------------------------------------------


def ceiling_app(settings: Settings) -> web.Application:
    from engine.app import redis_client
    from engine.db import create_pool

    app = web.Application()

    async def pools(app: web.Application) -> AsyncIterator[None]:
        pool = await create_pool(settings.database_url, min_size=1, max_size=4)
        redis = redis_client(settings.redis_url)
        seats = SeatEngine(redis, pool)
        await seats.start()
        app[SEATS_KEY] = seats
        app[TOKENS_KEY] = TokenService(
            settings.jwt_secret, settings.access_ttl_s, settings.refresh_ttl_s, 10
        )
        yield
        await redis.aclose()
        await pool.close()

    async def book(request: web.Request) -> web.Response:
        header = request.headers.get("Authorization", "")
        try:
            if not header.startswith("Bearer "):
                raise Unauthorized("No token.")
            principal = request.app[TOKENS_KEY].verify_access(header[7:].strip())
            show_id = int(request.match_info["id"])
            data = await request.json()
            seat = normalise_seat(data.get("seat_number") if isinstance(data, dict) else None)
            ids, _available, _show = await request.app[SEATS_KEY].claim(
                show_id, principal.user_id, [seat], now_us()
            )
        except Unauthorized as exc:
            return json_response({"detail": str(exc)}, status=401)
        except NotFound as exc:
            return json_response({"detail": str(exc)}, status=404)
        except (InvalidInput, ValueError) as exc:
            return json_response({"detail": str(exc)}, status=400)
        except Conflict as exc:
            return json_response({"detail": str(exc)}, status=409)
        return json_response(
            {"id": ids[0], "show": {"id": show_id}, "seat_number": seat, "status": "booked"},
            status=201,
        )

    app.cleanup_ctx.append(pools)
    app.router.add_post(r"/api/shows/{id:\d+}/book/", book)
    return app


def serve_ceiling() -> int:
    settings = load_settings(start_embedded=False)
    try:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    except ImportError:  # pragma: no cover
        pass
    web.run_app(
        ceiling_app(settings),
        host=settings.host,
        port=settings.port,
        access_log=None,
        print=lambda *_: None,
    )
    return 0


# --- the bench --------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def other_redis_db(url: str, db: int) -> str:
    parsed = urlparse(url)
    if parsed.scheme == "unix":
        return url.split("?")[0] + f"?db={db}"
    return urlunparse(parsed._replace(path=f"/{db}"))


def wait_port(port: int, proc: subprocess.Popen[bytes], name: str, within: float = 30) -> None:
    deadline = time.monotonic() + within
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not start listening on {port}") from None
            time.sleep(0.1)


async def make_shows(dsn: str, count: int, seats: int, title: str) -> list[int]:
    conn = await asyncpg.connect(dsn)
    try:
        movie = await conn.fetchval(
            "INSERT INTO movies (title, duration_minutes) VALUES ($1, 120) RETURNING id", title
        )
        when = datetime.now(UTC) + timedelta(days=30)
        return [
            int(
                await conn.fetchval(
                    "INSERT INTO shows (movie_id, screen_name, date_time, total_seats)"
                    " VALUES ($1, $2, $3, $4) RETURNING id",
                    movie,
                    f"Bench {n + 1}",
                    when,
                    seats,
                )
            )
            for n in range(count)
        ]
    finally:
        await conn.close()


FIGURES = (
    ("requests/s", "requests_per_s", "{:.0f}"),
    ("bookings/s (201)", "bookings_per_s", "{:.0f}"),
    ("201s", "bookings_201", "{:d}"),
    ("409s", "conflicts_409", "{:d}"),
    ("errors", "errors", "{:d}"),
    ("p50 ms", "p50_ms", "{:.1f}"),
    ("p90 ms", "p90_ms", "{:.1f}"),
    ("p99 ms", "p99_ms", "{:.1f}"),
    ("p99.9 ms", "p99_9_ms", "{:.1f}"),
    ("max ms", "max_ms", "{:.1f}"),
    ("client CPU (share of a core)", "client_cpu_share", "{:.2f}"),
)


def comparison_table(results: dict[str, dict[str, dict[str, Any]]], cores: int) -> str:
    lines = [
        f"make bench on this machine: {cores} cores (os.cpu_count()), the load generator on the "
        "same machine",
        "",
        "| scenario | figure | (a) ceiling | (b) engine | (b)/(a) |",
        "| --- | --- | --- | --- | --- |",
    ]
    for scenario, pair in results.items():
        a, b = pair.get("ceiling", {}), pair.get("engine", {})
        for label, key, fmt in FIGURES:
            va, vb = a.get(key), b.get(key)
            ratio = (
                f"{vb / va:.2f}" if isinstance(va, int | float) and va and vb is not None else ""
            )
            lines.append(
                f"| {scenario} | {label} | {fmt.format(va) if va is not None else '-'} | "
                f"{fmt.format(vb) if vb is not None else '-'} | {ratio} |"
            )
        lag = b.get("persistence_lag_s")
        lines.append(
            f"| {scenario} | persistence lag after the run | n/a (none) | "
            f"{f'{lag:.2f} s' if lag is not None else 'not drained'} | |"
        )
        verdicts = [
            ("BROKEN" if r.get("problems") else "ok")
            + (
                " (client records only)"
                if len(r.get("verified", [])) == 1
                else " (API + PostgreSQL)"
            )
            for r in (a, b)
        ]
        lines.append(f"| {scenario} | invariants verified | {' | '.join(verdicts)} | |")
    return "\n".join(lines)


async def _bench_runs(
    args: argparse.Namespace, settings: Settings, ceiling_url: str, engine_url: str
) -> tuple[int, dict[str, dict[str, dict[str, Any]]]]:
    from engine.loadtest import Config, run

    results: dict[str, dict[str, dict[str, Any]]] = {}
    code = 0
    plans = [
        ("flash", args.flash_requests, 1, args.flash_seats),
        ("spread", args.spread_requests, SPREAD_SHOWS, SPREAD_SEATS),
    ]
    for scenario, requests, count, seats in plans:
        results[scenario] = {}
        for name, url in (("ceiling", ceiling_url), ("engine", engine_url)):
            shows = await make_shows(
                settings.database_url, count, seats, f"bench {scenario} {name} {time.time()}"
            )
            print(f"\n== {scenario} against ({'a' if name == 'ceiling' else 'b'}) {name} ==")
            config = Config(
                url=url,
                auth_url=engine_url,
                scenario=scenario,
                requests=requests,
                concurrency=args.concurrency,
                users=args.users,
                seed=1,
                shows=shows,
                own_shows=True,
                seats=seats,
                database_url=settings.database_url if name == "engine" else None,
            )
            rc, fig = await run(config)
            code = code or rc
            results[scenario][name] = fig
    return code, results


def bench(args: argparse.Namespace) -> int:
    from engine.db import migrate

    env = dict(os.environ)
    env.setdefault("BOOKING_DATA_DIR", str(ROOT / ".data-bench"))
    settings = load_settings(env)
    asyncio.run(migrate(settings.database_url))
    ceiling_redis = other_redis_db(settings.redis_url, 1)

    async def flush() -> None:
        from engine.app import redis_client

        client = redis_client(ceiling_redis)
        await client.flushdb()
        await client.aclose()

    asyncio.run(flush())
    child_env = {
        **env,
        "DATABASE_URL": settings.database_url,
        "REDIS_URL": settings.redis_url,
        "JWT_SECRET": settings.jwt_secret,
        # Only signup and login hash passwords; the booking path never does.
        "BCRYPT_ROUNDS": "4",
        "LOG_LEVEL": "WARNING",
    }
    engine_port, ceiling_port = free_port(), free_port()
    log_dir = settings.data_dir / "bench-logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    procs: list[subprocess.Popen[bytes]] = []

    def start(name: str, argv: list[str], extra: dict[str, str]) -> subprocess.Popen[bytes]:
        with (log_dir / f"{name}.log").open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, *argv],
                cwd=ROOT,
                env={**child_env, **extra},
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
            )
        procs.append(proc)
        return proc

    try:
        engine = start("engine", ["-m", "engine", "serve"], {"PORT": str(engine_port)})
        start("worker", ["-m", "engine", "worker"], {})
        ceiling = start(
            "ceiling",
            ["-m", "engine.bench"],
            {"PORT": str(ceiling_port), "REDIS_URL": ceiling_redis},
        )
        wait_port(engine_port, engine, "engine")
        wait_port(ceiling_port, ceiling, "ceiling")
        code, results = asyncio.run(
            _bench_runs(
                args,
                settings,
                f"http://127.0.0.1:{ceiling_port}",
                f"http://127.0.0.1:{engine_port}",
            )
        )
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in procs:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if settings.embedded_postgres or settings.embedded_redis:
            from engine.embedded import stop_embedded

            stop_embedded(settings.data_dir)  # the bench's own embedded servers
    cores = os.cpu_count() or 0
    print()
    print(comparison_table(results, cores))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"cores": cores, "results": results}, f, indent=2)
    print(f"\nlogs of the processes: {log_dir}")
    return code


if __name__ == "__main__":
    sys.exit(serve_ceiling())
