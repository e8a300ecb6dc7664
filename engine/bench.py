"""`make bench`: the flash and spread scenarios against (a) the ceiling of this design in Python
and (b) our engine, on this machine, with the same harness settings.

(a) is a bare aiohttp app with one route, POST /api/shows/{id}/book/, that verifies the JWT and
runs the claim script: no index writes, no persistence, no idempotency, no logging. It uses its
own Redis database (so the engine's worker never sees its claims); its users sign up and log in
through the engine (same JWT secret, same PostgreSQL), and its shows are created in PostgreSQL.

Run the ceiling alone with `python -m engine.bench [--reuse-port]` (DATABASE_URL, REDIS_URL,
JWT_SECRET, PORT); the bench starts one such process per API worker, sharing the port.

The bench runs both with 1 and with 2 API processes (`serve --workers N`), reports where the CPU
went (API, worker, Redis, PostgreSQL, the load generator), checks the targets of issue 4, and
with `--soak N` instead drives N requests of the mixed scenario through one API process while
sampling its RSS and Redis' memory.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import secrets
import shutil
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

from engine import keys
from engine.auth import TokenService
from engine.errors import Conflict, InvalidInput, NotFound, Unauthorized
from engine.jsonutil import json_response
from engine.seats import SeatEngine, normalise_seat, now_us
from engine.settings import Settings, SettingsError, load_settings

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
        await seats.close()
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


def serve_ceiling(reuse_port: bool = False) -> int:
    settings = load_settings(start_embedded=False)
    try:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    except ImportError:  # pragma: no cover
        pass
    from engine.app import freeze_heap

    app = ceiling_app(settings)
    app.on_startup.append(freeze_heap)  # as `engine serve` does
    web.run_app(
        app,
        host=settings.host,
        port=settings.port,
        reuse_port=reuse_port,
        access_log=None,
        print=lambda *_: None,
    )
    return 0


# --- the bench ------------------------------------------------------------------------------
# The reference Django service on this machine (gunicorn, 2 workers, PostgreSQL), from issue 4:
# 110 to 220 bookings/s at 50 concurrent clients, p99 350 to 650 ms.
REFERENCE_BOOKINGS_PER_S = (110, 220)
TARGET_TIMES_REFERENCE = 30
TARGET_SHARE_OF_CEILING = 0.70
TARGET_P99_MS = 25.0
TARGET_LAG_S = 1.0
TARGET_DRAIN_S = 2.0
# The engine above its ceiling by more than this: the two runs did not see the same machine.
DISTURBED_RATIO = 1.05
SOAK_SHOWS = 40
SOAK_SEATS = 5000
RSS_LIMIT_MB = 150


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def other_redis_db(url: str, db: int) -> str:
    parsed = urlparse(url)
    if parsed.scheme == "unix":
        return url.split("?")[0] + f"?db={db}"
    return urlunparse(parsed._replace(path=f"/{db}"))


def wait_port(
    port: int, proc: subprocess.Popen[bytes], name: str, log_dir: Path, within: float = 30
) -> None:
    deadline = time.monotonic() + within
    while True:
        if proc.poll() is not None:
            raise RuntimeError(
                f"{name} exited with {proc.returncode} (its output: {log_dir / name}.log)"
            )
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


# --- CPU and memory of the processes involved, from /proc (Linux) ------------------------------

_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _stat(pid: int) -> tuple[int, float] | None:
    """(parent pid, CPU seconds) of a live process."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / _TICKS


def tree_cpu_s(root: int | None) -> float:
    """CPU seconds used so far by a process and its live descendants (0 if unknown)."""
    if root is None:
        return 0.0
    stats: dict[int, tuple[int, float]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            st = _stat(int(entry.name))
            if st is not None:
                stats[int(entry.name)] = st
    wanted, total, frontier = {root}, 0.0, [root]
    while frontier:
        pid = frontier.pop()
        if pid in stats:
            total += stats[pid][1]
        for child, (parent, _) in stats.items():
            if parent == pid and child not in wanted:
                wanted.add(child)
                frontier.append(child)
    return total


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def _pid_file(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


class Processes:
    """The processes a bench run starts, and the embedded servers it measures."""

    def __init__(self, root: Path, env: dict[str, str], log_dir: Path) -> None:
        self.root, self.env, self.log_dir = root, env, log_dir
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, argv: list[str], extra: dict[str, str]) -> subprocess.Popen[bytes]:
        with (self.log_dir / f"{name}.log").open("ab") as out:
            proc = subprocess.Popen(
                [sys.executable, *argv],
                cwd=self.root,
                env={**self.env, **extra},
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                # Ctrl-C reaches only the bench, which stops each of them with one SIGTERM.
                process_group=0,
            )
        self.procs[name] = proc
        return proc

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.procs.clear()


def cpu_roots(procs: Processes, settings: Settings) -> dict[str, int | None]:
    data = settings.data_dir
    return {
        "API": procs.procs["engine"].pid,
        "worker": procs.procs["worker"].pid,
        "ceiling": procs.procs["ceiling"].pid if "ceiling" in procs.procs else None,
        "Redis": _pid_file(data / "redis" / "redis.pid") if settings.embedded_redis else None,
        "PostgreSQL": (
            _pid_file(data / "postgres" / "postmaster.pid") if settings.embedded_postgres else None
        ),
    }


async def sample_lag(url: str, stop: asyncio.Event, out: list[float]) -> None:
    """Polls /health/ready's persistence_lag_s (age of the oldest unpersisted 201) 4 times a
    second while a run goes on."""
    import aiohttp

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        while not stop.is_set():
            with contextlib.suppress(aiohttp.ClientError, TimeoutError, OSError, ValueError):
                async with session.get(f"{url}/health/ready") as resp:
                    body = await resp.json()
                    if isinstance(body.get("persistence_lag_s"), int | float):
                        out.append(float(body["persistence_lag_s"]))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.25)


# --- the table --------------------------------------------------------------------------------

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
    ("load generator CPU (share of a core)", "client_cpu_share", "{:.2f}"),
)
CPU_PARTS = ("API", "worker", "Redis", "PostgreSQL", "load generator")

Results = dict[int, dict[str, dict[str, dict[str, Any]]]]  # workers -> scenario -> target -> fig


def _fmt(fmt: str, value: Any) -> str:
    return fmt.format(value) if value is not None else "-"


def comparison_table(results: Results) -> str:
    workers = sorted(results)
    head = "| scenario | figure |"
    rule = "| --- | --- |"
    for n in workers:
        head += f" (a) ceiling, {n} proc. | (b) engine, {n} proc. | (b)/(a) |"
        rule += " --- | --- | --- |"
    lines = [head, rule]
    scenarios = list(next(iter(results.values())).keys()) if results else []
    for scenario in scenarios:
        rows: list[tuple[str, list[str]]] = []
        for label, key, fmt in FIGURES:
            cells = []
            for n in workers:
                a = results[n][scenario].get("ceiling", {})
                b = results[n][scenario].get("engine", {})
                va, vb = a.get(key), b.get(key)
                ratio = f"{vb / va:.2f}" if isinstance(va, int | float) and va and vb else ""
                cells += [_fmt(fmt, va), _fmt(fmt, vb), ratio]
            rows.append((label, cells))
        lag_cells, drain_cells, ok_cells, cpu_cells = [], [], [], []
        for n in workers:
            b = results[n][scenario].get("engine", {})
            a = results[n][scenario].get("ceiling", {})
            lag = b.get("lag_max_s")
            lag_cells += ["n/a", f"{lag:.2f} s" if lag is not None else "-", ""]
            drain = b.get("persistence_lag_s")
            drain_cells += ["n/a", f"{drain:.2f} s" if drain is not None else "not drained", ""]
            ok_cells += [
                "BROKEN" if a.get("problems") else "ok (client records)",
                "BROKEN" if b.get("problems") else "ok (API + PostgreSQL)",
                "",
            ]
            cpu = b.get("cpu_us_per_request", {})
            cpu_cells += [
                _fmt("{:.0f}", a.get("cpu_us_per_request", {}).get("API")) + " µs",
                " + ".join(f"{part} {cpu[part]:.0f}" for part in CPU_PARTS if part in cpu) + " µs",
                "",
            ]
        rows.append(("persistence lag during the run (max)", lag_cells))
        rows.append(("until PostgreSQL holds every 201", drain_cells))
        rows.append(("CPU per request", cpu_cells))
        rows.append(("invariants verified", ok_cells))
        for label, cells in rows:
            lines.append(f"| {scenario} | {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def targets_report(results: Results) -> list[str]:
    """Issue 4's targets, met or missed, for each number of API processes."""
    lines = []
    low, high = REFERENCE_BOOKINGS_PER_S
    for n in sorted(results):
        spread = results[n].get("spread", {})
        flash = results[n].get("flash", {})
        b, a = spread.get("engine", {}), spread.get("ceiling", {})
        fb = flash.get("engine", {})

        def mark(ok: bool) -> str:
            return "met" if ok else "MISSED"

        rate = b.get("bookings_per_s", 0.0)
        share = rate / a["bookings_per_s"] if a.get("bookings_per_s") else 0.0
        lines += [
            f"{n} API process(es):",
            f"  spread {rate:.0f} bookings/s = {rate / high:.1f}x to {rate / low:.1f}x the "
            f"reference ({low}-{high}/s); target {TARGET_TIMES_REFERENCE}x: "
            f"{mark(rate >= TARGET_TIMES_REFERENCE * high)} against {high}/s, "
            f"{mark(rate >= TARGET_TIMES_REFERENCE * low)} against {low}/s",
            # rounded down: 0.698 is not shown as a 0.70 that missed 0.70
            f"  spread {math.floor(share * 100) / 100:.2f} of the ceiling; target "
            f"{TARGET_SHARE_OF_CEILING:.2f}: "
            f"{mark(share >= TARGET_SHARE_OF_CEILING)}",
            f"  spread p99 {b.get('p99_ms', 0):.1f} ms; target < {TARGET_P99_MS:.0f} ms: "
            f"{mark(b.get('p99_ms', 1e9) < TARGET_P99_MS)}",
            f"  flash {fb.get('requests', 0)} requests, {fb.get('errors', 0)} errors, "
            f"{'oversold' if fb.get('problems') else 'never oversold'}: "
            f"{mark(not fb.get('errors') and not fb.get('problems'))}; p99 "
            f"{fb.get('p99_ms', 0):.1f} ms: {mark(fb.get('p99_ms', 1e9) < TARGET_P99_MS)}",
            f"  persistence lag during spread (max) {b.get('lag_max_s') or 0:.2f} s; target < "
            f"{TARGET_LAG_S:.0f} s: {mark((b.get('lag_max_s') or 0) < TARGET_LAG_S)}; PostgreSQL"
            f" held every 201 {b.get('persistence_lag_s') or 0:.2f} s after the run; target < "
            f"{TARGET_DRAIN_S:.0f} s: "
            f"{mark(b.get('persistence_drained', False) and b['persistence_lag_s'] < 2)}",
        ]
        for scenario, runs in results[n].items():
            engine_rps = runs.get("engine", {}).get("requests_per_s") or 0.0
            ceiling_rps = runs.get("ceiling", {}).get("requests_per_s") or 0.0
            if ceiling_rps and engine_rps > DISTURBED_RATIO * ceiling_rps:
                lines.append(
                    f"  WARNING: {scenario}: the engine ran {engine_rps / ceiling_rps:.2f}x its"
                    " ceiling, which does less per request: the ceiling's run was disturbed"
                    " (something else was using the cores); run the bench again on a quiet"
                    " machine before reading its ratios"
                )
    return lines


# --- running it -------------------------------------------------------------------------------


BENCH_MARK = ".bench-data"
MAX_WORKERS = 32


def _fresh_data_dir(data_dir: Path) -> None:
    """Embedded servers from scratch, so that every bench starts from the same empty state."""
    from engine.embedded import stop_embedded

    redis_pid = _pid_file(data_dir / "redis" / "redis.pid")
    stop_embedded(data_dir)
    deadline = time.monotonic() + 10
    while redis_pid and Path(f"/proc/{redis_pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    shutil.rmtree(data_dir, ignore_errors=True)
    data_dir.mkdir(parents=True)
    _mark_as_bench_data(data_dir)


def _mark_as_bench_data(data_dir: Path) -> None:
    """What lets a later bench empty this directory again (see data_dir_problem)."""
    (data_dir / BENCH_MARK).write_text("make bench's own data: emptied by every bench run\n")


def bench_data_dir(env: dict[str, str]) -> Path:
    """BENCH_DATA_DIR, or .data-bench: never BOOKING_DATA_DIR, the application's own data."""
    return Path(env.get("BENCH_DATA_DIR") or ROOT / ".data-bench").resolve()


def data_dir_problem(data_dir: Path) -> str | None:
    """The bench empties its data directory: only one it made (or an empty or new one), and
    one it can make."""
    default = (ROOT / ".data-bench").resolve()
    if not data_dir.exists():
        try:
            data_dir.mkdir(parents=True)
        except OSError as exc:
            return f"BENCH_DATA_DIR {data_dir}: cannot create it: {exc.strerror or exc}"
        _mark_as_bench_data(data_dir)
        return None
    if data_dir == default or (data_dir / BENCH_MARK).exists():
        return None
    if data_dir.is_dir() and not any(data_dir.iterdir()):
        return None
    return (
        f"BENCH_DATA_DIR {data_dir} is not a bench data directory (no {BENCH_MARK} in it), and "
        "the bench empties it: give a new or empty directory"
    )


def bench_env(environ: dict[str, str]) -> dict[str, str]:
    """The bench's environment: its own data directory and servers. DATABASE_URL and REDIS_URL
    are ignored (they may well be the application's own, and the bench writes shows and
    bookings); BENCH_DATABASE_URL and BENCH_REDIS_URL name servers to use instead of embedded
    ones."""
    env = {k: v for k, v in environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    for name in ("DATABASE_URL", "REDIS_URL"):
        if environ.get("BENCH_" + name):
            env[name] = environ["BENCH_" + name]
    env["BOOKING_DATA_DIR"] = str(bench_data_dir(environ))
    if env.get("DATABASE_URL") and env.get("REDIS_URL") and not env.get("JWT_SECRET"):
        env["JWT_SECRET"] = secrets.token_urlsafe(32)  # only this run's processes share it
    return env


def _setup(env: dict[str, str]) -> Settings:
    from engine.db import migrate

    if not env.get("DATABASE_URL") and not env.get("REDIS_URL"):
        _fresh_data_dir(Path(env["BOOKING_DATA_DIR"]))
    settings = load_settings(env)
    asyncio.run(migrate(settings.database_url))
    return settings


def args_problem(args: argparse.Namespace) -> str | None:
    """Why these bench arguments cannot run (before any process starts), or None."""
    from engine.loadtest import out_of_range, unwritable

    problem = out_of_range(
        [
            ("--flash-requests", args.flash_requests, 1, 1_000_000),
            ("--flash-seats", args.flash_seats, 1, 10_000),
            ("--spread-requests", args.spread_requests, 1, 500_000),
            ("--concurrency", args.concurrency, 1, 1_000),
            ("--users", args.users, 1, 10_000),
            ("--soak", args.soak, 1, 100_000_000),
        ]
    )
    if problem:
        return problem
    if any(n < 1 or n > MAX_WORKERS for n in args.workers):
        return f"--workers must be from 1 to {MAX_WORKERS}"
    if args.json and (problem := unwritable(args.json)):
        return f"--json {args.json}: {problem}"
    for name, schemes in (
        ("BENCH_DATABASE_URL", ("postgresql://", "postgres://")),
        ("BENCH_REDIS_URL", ("redis://", "rediss://", "unix://")),
    ):
        if os.environ.get(name) and not os.environ[name].startswith(schemes):
            return f"{name} must start with {' or '.join(schemes)}"
    if args.plot_dir:
        try:
            Path(args.plot_dir).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            return f"--plot-dir {args.plot_dir}: {exc.strerror or exc}"
    return data_dir_problem(bench_data_dir(dict(os.environ)))


def _child_env(env: dict[str, str], settings: Settings) -> dict[str, str]:
    return {
        **env,
        "DATABASE_URL": settings.database_url,
        "REDIS_URL": settings.redis_url,
        "JWT_SECRET": settings.jwt_secret,
        # Only signup and login hash passwords; the booking path never does.
        "BCRYPT_ROUNDS": "4",
        # Warnings and errors only: no access log line per request, in (a) as in (b).
        "LOG_LEVEL": "WARNING",
    }


async def _measured_run(
    config: Any, roots: dict[str, int | None], lag_url: str | None
) -> tuple[int, dict[str, Any]]:
    """One loadtest run, with the CPU each process spent per request: the API and Redis while
    the clock ran, the worker and PostgreSQL until PostgreSQL held every 201 (setup and the
    verification after the run are left out)."""
    from engine.loadtest import run

    lags: list[float] = []
    stop = asyncio.Event()
    sampler = asyncio.create_task(sample_lag(lag_url, stop, lags)) if lag_url else None
    marks: dict[str, dict[str, float]] = {}

    def on_clock(event: str) -> None:
        marks[event] = {name: tree_cpu_s(pid) for name, pid in roots.items() if pid}

    config.on_clock = on_clock
    rc, fig = await run(config)
    stop.set()
    if sampler:
        await sampler
    n = max(1, int(fig.get("requests", 0)))
    per: dict[str, float] = {}
    if "start" in marks and "stop" in marks:
        for name in marks["start"]:
            end = (
                marks.get("drained", marks["stop"])
                if name in ("worker", "PostgreSQL")
                else marks["stop"]
            )
            per["API" if name == "ceiling" else name] = (end[name] - marks["start"][name]) * 1e6 / n
    per["load generator"] = float(fig.get("client_cpu_s", 0.0)) * 1e6 / n
    fig["cpu_us_per_request"] = {k: round(v, 1) for k, v in per.items()}
    fig["lag_max_s"] = max(lags) if lags else None
    return rc, fig


async def _scenarios(
    args: argparse.Namespace,
    settings: Settings,
    procs: Processes,
    workers: int,
    ceiling_url: str,
    engine_url: str,
    plot_dir: Path,
) -> tuple[int, dict[str, dict[str, dict[str, Any]]]]:
    from engine.loadtest import Config

    results: dict[str, dict[str, dict[str, Any]]] = {}
    code = 0
    plans = [
        ("flash", args.flash_requests, 1, args.flash_seats),
        (
            "spread",
            args.spread_requests,
            SPREAD_SHOWS,
            max(SPREAD_SEATS, args.spread_requests // SPREAD_SHOWS),
        ),
    ]
    roots = cpu_roots(procs, settings)
    for scenario, requests, count, seats in plans:
        results[scenario] = {}
        for name, url in (("ceiling", ceiling_url), ("engine", engine_url)):
            shows = await make_shows(
                settings.database_url, count, seats, f"bench {scenario} {name} {time.time()}"
            )
            print(
                f"\n== {scenario} against ({'a' if name == 'ceiling' else 'b'}) {name}, "
                f"{workers} API process(es) ==",
                flush=True,
            )
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
                client_ceiling=False,
                plot_path=str(plot_dir / f"{scenario}-{name}-{workers}.png"),
            )
            if name == "ceiling":
                mine = {"ceiling": roots["ceiling"], "Redis": roots["Redis"]}
            else:
                mine = {k: v for k, v in roots.items() if k != "ceiling"}
            rc, fig = await _measured_run(config, mine, engine_url if name == "engine" else None)
            code = code or rc
            results[scenario][name] = fig
    return code, results


def bench(args: argparse.Namespace) -> int:
    """`python -m engine bench`: every process it starts is stopped however it ends (Ctrl-C
    included, and SIGTERM or SIGHUP, which `python -m engine` turns into Ctrl-C: exit 130),
    and its embedded servers with them."""
    problem = args_problem(args)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    env = bench_env(dict(os.environ))
    try:
        return soak(args, env) if args.soak else _bench(args, env)
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    except (SettingsError, RuntimeError) as exc:  # a BENCH_ setting, a server that won't start
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        from engine.embedded import stop_embedded

        stop_embedded(Path(env["BOOKING_DATA_DIR"]))  # the bench's own embedded servers, if any


def _bench(args: argparse.Namespace, env: dict[str, str]) -> int:
    from engine.loadtest import measure_client_ceiling

    settings = _setup(env)
    ceiling_redis = other_redis_db(settings.redis_url, 1)
    child_env = _child_env(env, settings)
    log_dir = settings.data_dir / "bench-logs"
    plot_dir = Path(args.plot_dir) if args.plot_dir else settings.data_dir / "bench-plots"
    log_dir.mkdir(parents=True, exist_ok=True)
    plot_dir.mkdir(parents=True, exist_ok=True)
    client = asyncio.run(measure_client_ceiling(args.concurrency, 2.0))
    client_line = (
        f"load generator ceiling: {client.rps:.0f} req/s at concurrency {args.concurrency} "
        f"against a trivial endpoint (it used {client.cpu_share * 100:.0f}% of a core)"
    )
    print(client_line, flush=True)
    results: Results = {}
    code = 0
    procs = Processes(ROOT, child_env, log_dir)
    try:
        for workers in args.workers:
            engine_port, ceiling_port = free_port(), free_port()
            engine = procs.start(
                "engine",
                ["-m", "engine", "serve", "--workers", str(workers)],
                {"PORT": str(engine_port)},
            )
            procs.start("worker", ["-m", "engine", "worker"], {})
            extra = {"PORT": str(ceiling_port), "REDIS_URL": ceiling_redis}
            ceiling = procs.start(
                "ceiling",
                ["-m", "engine.bench", *(["--workers", str(workers)] if workers > 1 else [])],
                extra,
            )
            wait_port(engine_port, engine, "engine", log_dir)
            wait_port(ceiling_port, ceiling, "ceiling", log_dir)
            rc, results[workers] = asyncio.run(
                _scenarios(
                    args,
                    settings,
                    procs,
                    workers,
                    f"http://127.0.0.1:{ceiling_port}",
                    f"http://127.0.0.1:{engine_port}",
                    plot_dir,
                )
            )
            code = code or rc
            procs.stop()
    finally:
        procs.stop()
    cores = os.cpu_count() or 0
    print(
        f"\nmake bench on this machine: {cores} cores (os.cpu_count()), the load generator on "
        f"the same cores; concurrency {args.concurrency}; {client_line}\n"
    )
    print(comparison_table(results))
    print()
    print("\n".join(targets_report(results)))
    print(f"\nplots: {plot_dir}\nlogs of the processes: {log_dir}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "cores": cores,
                    "client_ceiling_rps": client.rps,
                    "results": {str(n): r for n, r in results.items()},
                },
                f,
                indent=2,
            )
    return code


# --- the soak: memory over a long run ---------------------------------------------------------


async def _redis_memory(url: str) -> dict[str, int]:
    from engine.app import redis_client

    client = redis_client(url)
    try:
        info = await client.info("memory")
        counts = {"keys": int(await client.dbsize())}
        for pattern in ("user:*:recent", "booking:*:show"):
            n = 0
            async for _ in client.scan_iter(match=pattern, count=1000):
                n += 1
            counts[pattern] = n
        # What the shows' own state takes: their seat sets, and the holds and bookings.
        seat_sets = booking_state = 0
        async for key in client.scan_iter(match=f"{keys.SHOW_PREFIX}*", count=1000):
            size = int(await client.memory_usage(key, samples=0) or 0)
            if key.endswith(b":seats"):
                seat_sets += size
            else:
                booking_state += size
        return {
            "used_memory": int(info["used_memory"]),
            "seat_sets": seat_sets,
            "booking_state": booking_state,
            **counts,
        }
    finally:
        await client.aclose()


def soak(args: argparse.Namespace, env: dict[str, str]) -> int:
    """N requests of the mixed scenario through one API process; its RSS sampled every second,
    Redis' memory before, and after PostgreSQL holds everything."""
    from engine.loadtest import Config, run

    settings = _setup(env)
    child_env = _child_env(env, settings)
    log_dir = settings.data_dir / "bench-logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    procs = Processes(ROOT, child_env, log_dir)
    port = free_port()
    samples: list[tuple[float, float]] = []
    try:
        engine = procs.start("engine", ["-m", "engine", "serve"], {"PORT": str(port)})
        procs.start("worker", ["-m", "engine", "worker"], {})
        wait_port(port, engine, "engine", log_dir)
        url = f"http://127.0.0.1:{port}"

        async def main() -> tuple[int, dict[str, Any], dict[str, int], dict[str, int]]:
            shows = await make_shows(settings.database_url, SOAK_SHOWS, SOAK_SEATS, "soak")
            before = await _redis_memory(settings.redis_url)
            stop = asyncio.Event()
            t0 = time.monotonic()

            async def sample() -> None:
                while not stop.is_set():
                    rss = rss_mb(engine.pid)
                    if rss is not None:
                        samples.append((time.monotonic() - t0, rss))
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), 1.0)

            sampler = asyncio.create_task(sample())
            config = Config(
                url=url,
                scenario="mixed",
                requests=args.soak,
                concurrency=args.concurrency,
                users=max(args.users, 200),
                seed=1,
                shows=shows,
                own_shows=True,
                seats=SOAK_SEATS,
                database_url=settings.database_url,
                client_ceiling=False,
                plot_path=str(log_dir / "soak.png"),
                json_path=args.json,
            )
            rc, fig = await run(config)
            stop.set()
            await sampler
            after = await _redis_memory(settings.redis_url)
            return rc, fig, before, after

        rc, fig, before, after = asyncio.run(main())
    finally:
        procs.stop()
    rss = [mb for _, mb in samples]
    live = fig.get("bookings_201", 0) - fig.get("cancels_200", 0)
    grown = after["used_memory"] - before["used_memory"]
    print(f"\nsoak: {fig.get('requests', 0)} requests (mixed) in {fig.get('wall_s', 0):.0f} s")
    print(
        f"API process RSS: start {rss[0]:.1f} MB, max {max(rss):.1f} MB, end {rss[-1]:.1f} MB"
        f" ({len(rss)} samples); limit {RSS_LIMIT_MB} MB: "
        f"{'met' if max(rss) < RSS_LIMIT_MB else 'MISSED'}"
        if rss
        else "API process RSS: not sampled"
    )
    shows = (
        after["seat_sets"] + after["booking_state"] - before["seat_sets"] - before["booking_state"]
    )
    print(
        f"Redis used_memory: before {before['used_memory'] / 1e6:.1f} MB, after the run and "
        f"the drain {after['used_memory'] / 1e6:.1f} MB (+{grown / 1e6:.1f} MB). Of that, the "
        f"{SOAK_SHOWS} shows' seat sets ({SOAK_SHOWS * SOAK_SEATS} seats) take "
        f"{(after['seat_sets'] - before['seat_sets']) / 1e6:.1f} MB and their holds and "
        f"bookings {(after['booking_state'] - before['booking_state']) / 1e6:.1f} MB for {live}"
        f" live bookings ({(after['booking_state'] - before['booking_state']) / max(live, 1):.0f}"
        f" bytes each); everything else {(grown - shows) / 1e6:+.1f} MB"
    )
    print(
        f"Redis bookkeeping left after the drain: {after['user:*:recent']} recent-index keys, "
        f"{after['booking:*:show']} booking-location keys (before: {before['user:*:recent']}, "
        f"{before['booking:*:show']}); keys {before['keys']} -> {after['keys']}"
    )
    return rc


def main_ceiling(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m engine.bench")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--reuse-port", action="store_true")
    args = parser.parse_args(argv)
    if args.workers <= 1:
        return serve_ceiling(reuse_port=args.reuse_port)
    from engine.__main__ import _supervise

    return _supervise([["--reuse-port"]] * args.workers, module="engine.bench")


if __name__ == "__main__":
    sys.exit(main_ceiling(sys.argv[1:]))
