"""The load-test harness: `python -m engine loadtest`.

Drives any server that speaks the contract (../shared/CONTRACT.md) by base URL. Users are signed
up and logged in before the clock starts; the catalog is created through the admin API
(--admin-user/--admin-password) or given (--show). One aiohttp ClientSession with a keep-alive
connection pool of --concurrency connections, and --concurrency worker coroutines pulling from
one request budget (--requests) or running until a deadline (--duration).

After the run it verifies, through the API (and PostgreSQL with --database-url), that no seat was
sold twice and that the counts agree; a broken invariant prints the problems and exits 1.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import sys
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TextIO

import aiohttp

PASSWORD_PREFIX = "lt-pass-"
SCENARIOS = ("flash", "spread", "mixed", "login")
DEFAULT_SEATS = {"flash": 1000, "spread": 200, "mixed": 200, "login": 0}
DEFAULT_SHOWS = {"flash": 1, "spread": 50, "mixed": 10, "login": 0}
CLIENT_CPU_WARNING = 0.8


@dataclass
class Config:
    url: str
    scenario: str = "flash"
    requests: int | None = None
    duration: float | None = None
    concurrency: int = 50
    users: int = 50
    seed: int = 1
    admin_user: str | None = None
    admin_password: str | None = None
    shows: list[int] = field(default_factory=list)
    own_shows: bool = False
    seats: int | None = None
    show_count: int | None = None
    auth_url: str | None = None
    database_url: str | None = None
    json_path: str | None = None
    progress: bool = True
    lag_deadline_s: float = 30.0
    out: TextIO | None = None


@dataclass
class Show:
    id: int
    total_seats: int
    labels: list[str]
    owned: bool  # created by this run, or declared as used by this run only (--own-shows)


@dataclass
class User:
    id: int
    name: str
    token: str
    bookings: list[tuple[int, int, str]] = field(default_factory=list)  # (id, show, seat)


@dataclass
class Stats:
    latencies: list[float] = field(default_factory=list)
    by_kind: Counter[str] = field(default_factory=Counter)
    statuses: Counter[str] = field(default_factory=Counter)  # "kind status"
    errors: Counter[str] = field(default_factory=Counter)
    booked: int = 0
    conflicts: int = 0
    cancels: int = 0
    # booking id -> (show, seat, user id) for every 201, and the ids cancelled with a 200
    sold: list[tuple[int, int, str, int]] = field(default_factory=list)
    cancelled: set[int] = field(default_factory=set)
    health_latencies: list[float] = field(default_factory=list)
    health_errors: int = 0
    timeline: list[dict[str, float]] = field(default_factory=list)


class SetupError(RuntimeError):
    pass


def percentile(sorted_values: list[float], p: float) -> float:
    if not sorted_values:
        return 0.0
    index = min(len(sorted_values) - 1, max(0, int(round(p / 100 * len(sorted_values) + 0.5)) - 1))
    return sorted_values[index]


async def _json(resp: aiohttp.ClientResponse) -> Any:
    text = await resp.text()
    try:
        return json.loads(text) if text else None
    except ValueError:
        return text


class Harness:
    def __init__(self, cfg: Config, session: aiohttp.ClientSession) -> None:
        self.cfg = cfg
        self.session = session
        self.url = cfg.url.rstrip("/")
        self.auth_url = (cfg.auth_url or cfg.url).rstrip("/")
        self.rng = random.Random(cfg.seed)
        self.users: list[User] = []
        self.shows: list[Show] = []
        self.untried: list[tuple[Show, str]] = []
        self.stats = Stats()
        self.remaining = cfg.requests
        self.deadline = 0.0
        self.admin_token: str | None = None
        self.notes: list[str] = []

    # --- setup ----------------------------------------------------------------------------

    async def _post(self, base: str, path: str, body: Any, token: str | None = None) -> Any:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with self.session.post(base + path, json=body, headers=headers) as resp:
            data = await _json(resp)
            if resp.status not in (200, 201):
                raise SetupError(f"POST {path} answered {resp.status}: {data}")
            return data

    async def login(self, name: str, password: str) -> str:
        body = await self._post(
            self.auth_url, "/api/auth/login/", {"username": name, "password": password}
        )
        return str(body["access"])

    async def make_users(self) -> None:
        suffix = os.urandom(3).hex()
        sem = asyncio.Semaphore(max(1, min(self.cfg.concurrency, 32)))

        async def one(i: int) -> User:
            name = f"lt{self.cfg.seed}-{suffix}-{i}"
            password = PASSWORD_PREFIX + suffix
            async with sem:
                body = await self._post(
                    self.auth_url,
                    "/api/auth/signup/",
                    {"username": name, "email": f"{name}@example.com", "password": password},
                )
                token = await self.login(name, password)
            return User(int(body["id"]), name, token)

        self.users = list(await asyncio.gather(*(one(i) for i in range(self.cfg.users))))

    async def make_catalog(self) -> None:
        cfg = self.cfg
        if cfg.scenario == "login":
            return
        seats = cfg.seats or DEFAULT_SEATS[cfg.scenario]
        if cfg.shows:
            unknown: list[int] = []
            for show_id in cfg.shows:
                total = seats
                async with self.session.get(f"{self.url}/api/shows/{show_id}/") as resp:
                    if resp.status == 200:
                        total = int((await _json(resp))["total_seats"])
                    else:
                        unknown.append(show_id)
                # Existing shows are assumed to have numbered seats "1".."N".
                labels = [str(i) for i in range(1, total + 1)]
                self.shows.append(Show(show_id, total, labels, cfg.own_shows))
            if unknown:
                self.notes.append(
                    f"GET /api/shows/{{id}}/ not served for {len(unknown)} show(s): assumed "
                    f"{seats} seats each"
                )
        else:
            if not (cfg.admin_user and cfg.admin_password):
                raise SetupError("give --admin-user/--admin-password or --show ids")
            self.admin_token = await self.login(cfg.admin_user, cfg.admin_password)
            count = cfg.show_count or DEFAULT_SHOWS[cfg.scenario]
            movie = await self._post(
                self.url,
                "/api/admin/movies/",
                {"title": f"Load test {cfg.seed}-{os.urandom(3).hex()}", "duration_minutes": 120},
                self.admin_token,
            )
            when = (datetime.now(UTC) + timedelta(days=30)).isoformat()
            for n in range(count):
                body = await self._post(
                    self.url,
                    "/api/admin/shows/",
                    {
                        "movie_id": movie["id"],
                        "screen_name": f"Screen {n + 1}",
                        "date_time": when,
                        "total_seats": seats,
                    },
                    self.admin_token,
                )
                total = int(body["total_seats"])
                self.shows.append(
                    Show(int(body["id"]), total, [str(i) for i in range(1, total + 1)], True)
                )
        self.untried = [(show, label) for show in self.shows for label in show.labels]
        self.rng.shuffle(self.untried)

    # --- the run --------------------------------------------------------------------------

    def take(self) -> bool:
        if self.remaining is not None:
            if self.remaining <= 0:
                return False
            self.remaining -= 1
            return True
        return time.monotonic() < self.deadline

    async def request(
        self, kind: str, method: str, path: str, token: str | None, body: Any = None
    ) -> tuple[int | None, Any]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        url = (self.auth_url if kind == "login" else self.url) + path
        started = time.perf_counter()
        status: int | None = None
        data: Any = None
        try:
            async with self.session.request(method, url, json=body, headers=headers) as resp:
                status = resp.status
                data = await _json(resp)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            self.stats.errors[f"{kind} {type(exc).__name__}"] += 1
        self.stats.latencies.append(time.perf_counter() - started)
        self.stats.by_kind[kind] += 1
        if status is not None:
            self.stats.statuses[f"{kind} {status}"] += 1
        return status, data

    async def book(self, user: User, show: Show, seat: str) -> None:
        status, data = await self.request(
            "book", "POST", f"/api/shows/{show.id}/book/", user.token, {"seat_number": seat}
        )
        if status == 201 and isinstance(data, dict):
            self.stats.booked += 1
            booking = (int(data["id"]), show.id, str(data.get("seat_number", seat)))
            self.stats.sold.append((*booking, user.id))
            user.bookings.append(booking)
        elif status == 409:
            self.stats.conflicts += 1
        elif status is not None:
            self.stats.errors[f"book {status}"] += 1

    def pick_untried(self) -> tuple[Show, str]:
        if self.untried:
            return self.untried.pop()
        show = self.rng.choice(self.shows)
        return show, self.rng.choice(show.labels)

    async def one(self) -> None:
        cfg, rng = self.cfg, self.rng
        user = rng.choice(self.users)
        if cfg.scenario == "flash":
            show = self.shows[0]
            await self.book(user, show, rng.choice(show.labels))
        elif cfg.scenario == "spread":
            await self.book(user, *self.pick_untried())
        elif cfg.scenario == "login":
            status, _ = await self.request(
                "login",
                "POST",
                "/api/auth/login/",
                None,
                {"username": user.name, "password": PASSWORD_PREFIX + user.name.split("-")[1]},
            )
            if status is not None and status != 200:
                self.stats.errors[f"login {status}"] += 1
        else:  # mixed
            r = rng.random()
            if r < 0.80:
                if rng.random() < 0.5:
                    path = "/api/movies/"
                else:
                    path = f"/api/shows/{rng.choice(self.shows).id}/"
                status, _ = await self.request("browse", "GET", path, None)
                if status is not None and status != 200:
                    self.stats.errors[f"browse {status}"] += 1
            elif r < 0.95 or not user.bookings:
                await self.book(user, *self.pick_untried())
            else:
                booking = user.bookings.pop(rng.randrange(len(user.bookings)))
                booking_id, show_id, seat = booking
                status, _ = await self.request(
                    "cancel", "POST", f"/api/bookings/{booking_id}/cancel/", user.token
                )
                if status == 200:
                    self.stats.cancels += 1
                    self.stats.cancelled.add(booking_id)
                    if self.take():  # re-book the seat just freed
                        show = next(s for s in self.shows if s.id == show_id)
                        await self.book(user, show, seat)
                else:
                    user.bookings.append(booking)
                    if status is not None:
                        self.stats.errors[f"cancel {status}"] += 1

    async def worker(self) -> None:
        while self.take():
            await self.one()

    async def health_probe(self, stop: asyncio.Event) -> None:
        timeout = aiohttp.ClientTimeout(total=10)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while not stop.is_set():
                started = time.perf_counter()
                try:
                    async with session.get(f"{self.url}/health/live") as resp:
                        await resp.read()
                        if resp.status != 200:
                            self.stats.health_errors += 1
                except (aiohttp.ClientError, TimeoutError, OSError):
                    self.stats.health_errors += 1
                self.stats.health_latencies.append(time.perf_counter() - started)
                try:
                    await asyncio.wait_for(stop.wait(), 0.1)
                except TimeoutError:
                    pass

    async def progress(self, stop: asyncio.Event, started: float) -> None:
        last_n, last_t = 0, started
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), 1.0)
            except TimeoutError:
                pass
            now = time.perf_counter()
            n = len(self.stats.latencies)
            rate = (n - last_n) / max(now - last_t, 1e-9)
            last_n, last_t = n, now
            p99 = percentile(sorted(self.stats.latencies[-20000:]), 99) * 1000
            errors = sum(self.stats.errors.values())
            self.stats.timeline.append(
                {"t": round(now - started, 3), "rps": round(rate, 1), "p99_ms": round(p99, 2)}
            )
            if self.cfg.progress:
                print(
                    f"[{now - started:6.1f}s] {rate:8.0f} req/s  201: {self.stats.booked}"
                    f"  409: {self.stats.conflicts}  errors: {errors}  p99 so far: {p99:.1f} ms",
                    file=sys.stderr,
                    flush=True,
                )

    async def run_clock(self) -> tuple[float, float]:
        """The measured part; returns (wall seconds, client CPU seconds)."""
        stop = asyncio.Event()
        cpu0, t0 = time.process_time(), time.perf_counter()
        if self.cfg.duration is not None:
            self.deadline = time.monotonic() + self.cfg.duration
        side = [asyncio.create_task(self.progress(stop, t0))]
        if self.cfg.scenario == "login":
            side.append(asyncio.create_task(self.health_probe(stop)))
        await asyncio.gather(*(self.worker() for _ in range(self.cfg.concurrency)))
        wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        stop.set()
        await asyncio.gather(*side)
        return wall, cpu

    # --- after the run --------------------------------------------------------------------

    async def persistence_lag(self) -> float | None:
        """Seconds until GET /health/ready reports no pending records; None if not reported."""
        t0 = time.monotonic()
        while True:
            pending: Any = None
            try:
                async with self.session.get(f"{self.url}/health/ready") as resp:
                    body = await _json(resp)
                    if isinstance(body, dict):
                        pending = body.get("pending_records")
                    if resp.status == 404:
                        return None
            except (aiohttp.ClientError, TimeoutError, OSError):
                pass
            if pending == 0:
                return time.monotonic() - t0
            if pending is None and time.monotonic() - t0 > 2:
                return None
            if time.monotonic() - t0 > self.cfg.lag_deadline_s:
                return float("inf")
            await asyncio.sleep(0.05)

    def expected_booked(self) -> dict[int, int]:
        per_show: dict[int, int] = defaultdict(int)
        for booking_id, show_id, _seat, _user in self.stats.sold:
            if booking_id not in self.stats.cancelled:
                per_show[show_id] += 1
        return per_show

    async def verify(self) -> tuple[list[str], list[str]]:
        """(problems, what was checked)."""
        problems: list[str] = []
        checked: list[str] = []
        sold = self.stats.sold
        ids = Counter(b[0] for b in sold)
        for booking_id, n in ids.items():
            if n > 1:
                problems.append(f"booking id {booking_id} was answered 201 {n} times")
        live: dict[tuple[int, str], list[int]] = defaultdict(list)
        for booking_id, show_id, seat, _user in sold:
            if booking_id not in self.stats.cancelled:
                live[(show_id, seat)].append(booking_id)
        for (show_id, seat), held in sorted(live.items()):
            if len(held) > 1:
                problems.append(
                    f"seat {seat} of show {show_id} is in {len(held)} 201s not cancelled "
                    f"(bookings {', '.join(map(str, held))}): sold twice"
                )
        checked.append("no seat in two 201s (client records)")
        expected = self.expected_booked()
        for show in self.shows:
            if expected[show.id] > show.total_seats:
                problems.append(
                    f"show {show.id}: {expected[show.id]} bookings for {show.total_seats} seats"
                )
        await self.verify_my_bookings(expected, problems, checked)
        await self.verify_available(expected, problems, checked)
        if self.cfg.database_url:
            await self.verify_database(expected, problems, checked)
        return problems, checked

    async def verify_my_bookings(
        self, expected: dict[int, int], problems: list[str], checked: list[str]
    ) -> None:
        if not self.users or self.cfg.scenario == "login":
            return
        api_booked: dict[int, int] = defaultdict(int)
        seen: dict[int, str] = {}
        for user in self.users:
            path: str | None = f"{self.url}/api/my-bookings/?page_size=100"
            while path:
                headers = {"Authorization": f"Bearer {user.token}"}
                async with self.session.get(path, headers=headers) as resp:
                    if resp.status == 404 and not seen:
                        self.notes.append("GET /api/my-bookings/ not served: not checked")
                        return
                    if resp.status != 200:
                        problems.append(f"GET /api/my-bookings/ answered {resp.status}")
                        return
                    page = await _json(resp)
                for b in page["results"]:
                    seen[int(b["id"])] = b["status"]
                    if b["status"] == "booked":
                        api_booked[int(b["show"]["id"])] += 1
                path = page.get("next")
        for booking_id, show_id, seat, _user in self.stats.sold:
            want = "cancelled" if booking_id in self.stats.cancelled else "booked"
            if seen.get(booking_id) != want:
                problems.append(
                    f"booking {booking_id} (show {show_id}, seat {seat}) is "
                    f"{seen.get(booking_id, 'missing')} in my-bookings, expected {want}"
                )
        for show in self.shows:
            if api_booked[show.id] != expected[show.id]:
                problems.append(
                    f"show {show.id}: my-bookings has {api_booked[show.id]} booked, but 201s "
                    f"minus successful cancels = {expected[show.id]}"
                )
        checked.append("per show, booked in my-bookings == 201s - cancels")

    async def verify_available(
        self, expected: dict[int, int], problems: list[str], checked: list[str]
    ) -> None:
        owned = [s for s in self.shows if s.owned]
        if not owned:
            return
        for show in owned:
            async with self.session.get(f"{self.url}/api/shows/{show.id}/") as resp:
                if resp.status != 200:
                    self.notes.append(
                        f"GET /api/shows/{show.id}/ answered {resp.status}: "
                        "available_seats not checked"
                    )
                    return
                body = await _json(resp)
            available = int(body["available_seats"])
            if available != show.total_seats - expected[show.id]:
                problems.append(
                    f"show {show.id}: available_seats {available}, but total {show.total_seats}"
                    f" - booked {expected[show.id]} = {show.total_seats - expected[show.id]}"
                )
        checked.append("available_seats == total_seats - booked (shows this run owns)")

    async def verify_database(
        self, expected: dict[int, int], problems: list[str], checked: list[str]
    ) -> None:
        import asyncpg

        show_ids = [s.id for s in self.shows]
        conn = await asyncpg.connect(self.cfg.database_url)
        try:
            rows = await conn.fetch(
                "SELECT id, show_id, seat_number, status, user_id FROM bookings"
                " WHERE show_id = ANY($1::bigint[])",
                show_ids,
            )
        finally:
            await conn.close()
        by_id = {int(r["id"]): r for r in rows}
        for booking_id, show_id, seat, user_id in self.stats.sold:
            row = by_id.get(booking_id)
            want = "cancelled" if booking_id in self.stats.cancelled else "booked"
            if row is None:
                problems.append(f"PostgreSQL: booking {booking_id} (a 201) has no row")
            elif (int(row["show_id"]), row["seat_number"], row["status"], int(row["user_id"])) != (
                show_id,
                seat,
                want,
                user_id,
            ):
                problems.append(
                    f"PostgreSQL: booking {booking_id} is show {row['show_id']} seat "
                    f"{row['seat_number']} {row['status']} user {row['user_id']}, expected show "
                    f"{show_id} seat {seat} {want} user {user_id}"
                )
        held: Counter[tuple[int, str]] = Counter(
            (int(r["show_id"]), r["seat_number"]) for r in rows if r["status"] == "booked"
        )
        for (show_id, seat), n in sorted(held.items()):
            if n > 1:
                problems.append(f"PostgreSQL: seat {seat} of show {show_id} has {n} booked rows")
        ours = {u.id for u in self.users}
        for show in self.shows:
            booked_rows = [
                r for r in rows if r["status"] == "booked" and int(r["show_id"]) == show.id
            ]
            n = len(booked_rows if show.owned else [r for r in booked_rows if r["user_id"] in ours])
            if n != expected[show.id]:
                problems.append(
                    f"PostgreSQL: show {show.id} has {n} booked rows, the API {expected[show.id]}"
                )
        checked.append("PostgreSQL: every 201 a row, no seat booked twice, booked rows per show")


def summarise(h: Harness, wall: float, cpu: float, lag: float | None) -> dict[str, Any]:
    lat = sorted(h.stats.latencies)
    n = len(lat)
    ms = {
        f"p{p}_ms".replace(".", "_"): round(percentile(lat, p) * 1000, 2)
        for p in (50, 90, 99, 99.9)
    }
    health = sorted(h.stats.health_latencies)
    return {
        "scenario": h.cfg.scenario,
        "url": h.url,
        "concurrency": h.cfg.concurrency,
        "users": len(h.users),
        "shows": len(h.shows),
        "seats": sum(s.total_seats for s in h.shows),
        "seed": h.cfg.seed,
        "requests": n,
        "wall_s": round(wall, 3),
        "requests_per_s": round(n / wall, 1) if wall else 0.0,
        "bookings_201": h.stats.booked,
        "bookings_per_s": round(h.stats.booked / wall, 1) if wall else 0.0,
        "conflicts_409": h.stats.conflicts,
        "cancels_200": h.stats.cancels,
        "errors": sum(h.stats.errors.values()),
        "errors_by_status": dict(sorted(h.stats.errors.items())),
        "statuses": dict(sorted(h.stats.statuses.items())),
        "by_kind": dict(sorted(h.stats.by_kind.items())),
        **ms,
        "max_ms": round(lat[-1] * 1000, 2) if lat else 0.0,
        "client_cpu_s": round(cpu, 3),
        "client_cpu_share": round(cpu / wall, 3) if wall else 0.0,
        "client_limited": bool(wall and cpu / wall > CLIENT_CPU_WARNING),
        "persistence_lag_s": None if lag is None or lag == float("inf") else round(lag, 3),
        "persistence_drained": lag is not None and lag != float("inf"),
        "health_live_p50_ms": round(percentile(health, 50) * 1000, 2) if health else None,
        "health_live_p99_ms": round(percentile(health, 99) * 1000, 2) if health else None,
        "health_live_errors": h.stats.health_errors,
        "timeline": h.stats.timeline,
    }


def print_table(fig: dict[str, Any], out: TextIO) -> None:
    rows: list[tuple[str, str]] = [
        ("scenario", f"{fig['scenario']} against {fig['url']}"),
        (
            "concurrency / users / shows / seats",
            (f"{fig['concurrency']} / {fig['users']} / {fig['shows']} / {fig['seats']}"),
        ),
        ("requests", f"{fig['requests']} in {fig['wall_s']:.2f} s"),
        ("requests/s", f"{fig['requests_per_s']:.0f}"),
        ("successful bookings (201)", f"{fig['bookings_201']}  ({fig['bookings_per_s']:.0f}/s)"),
        ("conflicts (409)", str(fig["conflicts_409"])),
        ("successful cancels (200)", str(fig["cancels_200"])),
        (
            "errors",
            f"{fig['errors']}"
            + (
                "  (" + ", ".join(f"{k}: {v}" for k, v in fig["errors_by_status"].items()) + ")"
                if fig["errors"]
                else ""
            ),
        ),
        (
            "latency p50 / p90 / p99 / p99.9 / max",
            f"{fig['p50_ms']:.1f} / {fig['p90_ms']:.1f} / {fig['p99_ms']:.1f} / "
            f"{fig['p99_9_ms']:.1f} / {fig['max_ms']:.1f} ms",
        ),
        ("client CPU", f"{fig['client_cpu_share'] * 100:.0f}% of one core"),
    ]
    if fig["health_live_p50_ms"] is not None:
        rows.append(
            (
                "GET /health/live during the run",
                f"p50 {fig['health_live_p50_ms']:.1f} ms, p99 {fig['health_live_p99_ms']:.1f} ms,"
                f" {fig['health_live_errors']} errors",
            )
        )
    lag = fig["persistence_lag_s"]
    if fig["persistence_drained"]:
        rows.append(("persistence lag after the run", f"{lag:.2f} s until pending_records = 0"))
    elif fig.get("persistence_lag_s") is None and fig["scenario"] != "login":
        rows.append(("persistence lag after the run", "not reported by /health/ready (or > 30 s)"))
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}", file=out)
    if fig["client_limited"]:
        print(
            f"WARNING: the client used {fig['client_cpu_share'] * 100:.0f}% of a core: "
            "this run may be limited by the client",
            file=out,
        )


async def run(cfg: Config) -> tuple[int, dict[str, Any]]:
    """The harness, in-process: (exit code, figures). Prints the table to cfg.out."""
    out = cfg.out or sys.stdout
    if cfg.scenario not in SCENARIOS:
        raise ValueError(f"unknown scenario {cfg.scenario!r}")
    if (cfg.requests is None) == (cfg.duration is None):
        raise ValueError("give exactly one of --requests and --duration")
    connector = aiohttp.TCPConnector(limit=cfg.concurrency, keepalive_timeout=60)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        h = Harness(cfg, session)
        try:
            await h.make_users()
            await h.make_catalog()
        except (SetupError, aiohttp.ClientError, OSError) as exc:
            print(f"error: setting up the run failed: {exc}", file=sys.stderr)
            return 2, {}
        wall, cpu = await h.run_clock()
        lag = await h.persistence_lag() if cfg.scenario != "login" else None
        problems, checked = await h.verify()
    fig = summarise(h, wall, cpu, lag)
    fig["verified"] = checked
    fig["problems"] = problems
    fig["notes"] = h.notes
    print_table(fig, out)
    for note in h.notes:
        print(f"note: {note}", file=out)
    if problems:
        print(f"INVARIANTS BROKEN ({len(problems)}):", file=out)
        for p in problems[:50]:
            print(f"  - {p}", file=out)
    else:
        print("verified: " + "; ".join(checked), file=out)
    if cfg.json_path:
        await asyncio.to_thread(Path(cfg.json_path).write_text, json.dumps(fig, indent=2))
    return (1 if problems else 0), fig
