"""A harness for fault storms: the API and the worker as real processes, a booking storm
against them, and the contract's invariants checked in PostgreSQL itself.

- `Cluster` starts `python -m engine serve` / `python -m engine worker` processes (each with a
  log file) and kills every one of them on `close()`.
- `Storm` is an aiohttp client: users book random seats of several shows and cancel some of
  their own bookings, concurrently, for a few seconds. Every 201 and every 200 cancel is
  recorded; answers a fault can cause (no answer, 5xx) are counted, never raised.
- `settle()` waits until Redis has nothing pending and the reconciler finds no difference;
  `verify()` then checks the invariants against PostgreSQL's rows and Redis' seat holds.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import redis.exceptions
from redis.asyncio import Redis

from engine import keys, reconcile

ROOT = Path(__file__).resolve().parent.parent
PASSWORD = "correct-horse-9"
REQUEST_TIMEOUT_S = 10.0
START_TIMEOUT_S = 20.0
# Errors of a dependency that is restarting, seen by the test's own clients while it polls.
TRANSIENT = (
    OSError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- processes --------------------------------------------------------------------------------


def processes_marked(mark: str) -> list[int]:
    """Live processes whose environment holds `mark` (a variable a test gave the command it
    started): everything that command started, orphans and daemons included."""
    needle = mark.encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if needle in (entry / "environ").read_bytes():
                state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
                if state != "Z":
                    found.append(int(entry.name))
        except OSError:
            continue
    return found


class Service:
    """One `python -m engine <command>` process; stdout and stderr go to a log file."""

    def __init__(self, command: str, env: dict[str, str], log_path: Path) -> None:
        self.command = command
        self.env = env
        self.log_path = log_path
        self.port = int(env.get("PORT", "0"))
        self.proc: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    async def start(self) -> None:
        with self.log_path.open("ab") as out:  # the child keeps its own descriptor
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "engine",
                self.command,
                cwd=ROOT,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
            )

    def signal(self, sig: int) -> None:
        os.kill(self.pid, sig)

    async def wait(self, within: float) -> int:
        assert self.proc is not None
        return await asyncio.wait_for(self.proc.wait(), within)

    async def kill(self) -> None:
        if self.proc is None:
            return
        if self.proc.returncode is None:
            try:
                self.signal(signal.SIGKILL)
            except ProcessLookupError:
                pass
        await self.proc.wait()

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except FileNotFoundError:
            return ""

    async def wait_live(self, within: float = START_TIMEOUT_S) -> None:
        deadline = time.monotonic() + within
        timeout = aiohttp.ClientTimeout(total=1)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while True:
                assert self.running, f"`engine {self.command}` exited: {self.log_tail()}"
                try:
                    async with session.get(f"{self.url}/health/live") as resp:
                        if resp.status == 200:
                            return
                except (aiohttp.ClientError, TimeoutError, OSError):
                    pass
                assert time.monotonic() < deadline, f"API not live: {self.log_tail()}"
                await asyncio.sleep(0.05)


class Cluster:
    """The engine's processes for one test, all killed by close()."""

    def __init__(self, database_url: str, redis_url: str, jwt_secret: str, log_dir: Path) -> None:
        self.env = {
            **os.environ,
            "DATABASE_URL": database_url,
            "REDIS_URL": redis_url,
            "JWT_SECRET": jwt_secret,
            "BCRYPT_ROUNDS": "4",
            "LOG_LEVEL": "WARNING",
            "LOG_FORMAT": "text",
            "RECONCILE_INTERVAL": "1",
        }
        self.log_dir = log_dir
        self.services: list[Service] = []

    def _service(self, command: str, **extra: str) -> Service:
        n = sum(s.command == command for s in self.services)
        svc = Service(command, {**self.env, **extra}, self.log_dir / f"{command}-{n}.log")
        self.services.append(svc)
        return svc

    async def start_api(self) -> Service:
        svc = self._service("serve", PORT=str(free_port()))
        await svc.start()
        await svc.wait_live()
        return svc

    async def start_worker(self) -> Service:
        svc = self._service("worker")
        await svc.start()
        return svc

    async def close(self) -> None:
        for svc in self.services:
            await svc.kill()

    def logs(self) -> str:
        return "\n".join(f"--- {s.log_path.name}:\n{s.log_tail(1500)}" for s in self.services)


# --- the storm client -------------------------------------------------------------------------


@dataclass
class Outcome:
    """One request of the storm: what was asked, when, and what came back."""

    kind: str  # "book" or "cancel"
    sent: float
    received: float
    status: int | None  # None: no answer (connection refused or reset, timeout)
    error: str | None
    target: str
    retry_after: str | None = None


@dataclass
class Booking:
    id: int
    show: int
    seat: str
    user: int
    sent: float
    received: float


@dataclass
class Storm:
    """Users booking random seats and cancelling some of their own bookings, concurrently.

    `targets` is the list of API base URLs requests go to (one at random each time); a test
    may change it while the storm runs (a load balancer dropping a dead process).
    """

    tokens: list[str]
    shows: dict[int, int]  # show id -> total seats
    targets: list[str]
    concurrency: int = 24
    cancel_ratio: float = 0.25
    seed: int = 0
    booked: dict[int, Booking] = field(default_factory=dict)
    cancelled: set[int] = field(default_factory=set)  # answered 200
    cancel_attempted: set[int] = field(default_factory=set)
    outcomes: list[Outcome] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._active: list[list[int]] = [[] for _ in self.tokens]
        self._rng = random.Random(self.seed)
        self._deadline = 0.0

    def stop(self) -> None:
        """End the storm now (requests in flight still finish)."""
        self._deadline = time.monotonic()

    async def run(self, seconds: float) -> Storm:
        """Storm for `seconds` (or until stop())."""
        self._deadline = time.monotonic() + seconds
        timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
        connector = aiohttp.TCPConnector(limit=self.concurrency * 2)
        async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
            await asyncio.gather(*(self._client(session) for _ in range(self.concurrency)))
        return self

    async def _client(self, session: aiohttp.ClientSession) -> None:
        rng = self._rng
        while time.monotonic() < self._deadline:
            if not self.targets:
                await asyncio.sleep(0.05)
                continue
            user = rng.randrange(len(self.tokens))
            mine = self._active[user]
            if mine and rng.random() < self.cancel_ratio:
                outcome = await self.cancel(session, user, mine.pop(rng.randrange(len(mine))))
            else:
                show = rng.choice(list(self.shows))
                seat = str(rng.randint(1, self.shows[show]))
                outcome = await self.book(session, user, show, seat)
            if outcome.status is None or outcome.status >= 500:
                await asyncio.sleep(0.05)  # a client backs off a little when nobody answers

    async def _request(
        self, session: aiohttp.ClientSession, kind: str, path: str, token: str, body: Any
    ) -> tuple[Outcome, Any]:
        target = self._rng.choice(self.targets)
        url = target + path
        sent = time.monotonic()
        headers = {"Authorization": f"Bearer {token}"}
        try:
            async with session.post(url, json=body, headers=headers) as resp:
                data = await resp.json(content_type=None)
                outcome = Outcome(
                    kind,
                    sent,
                    time.monotonic(),
                    resp.status,
                    None,
                    target,
                    resp.headers.get("Retry-After"),
                )
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
            error = type(exc).__name__
            outcome, data = Outcome(kind, sent, time.monotonic(), None, error, target), None
        self.outcomes.append(outcome)
        return outcome, data

    async def book(
        self, session: aiohttp.ClientSession, user: int, show: int, seat: str
    ) -> Outcome:
        outcome, data = await self._request(
            session, "book", f"/api/shows/{show}/book/", self.tokens[user], {"seat_number": seat}
        )
        if outcome.status == 201:
            assert data["seat_number"] == seat and data["show"]["id"] == show, data
            bid = int(data["id"])
            assert bid not in self.booked, f"booking id {bid} answered twice"
            self.booked[bid] = Booking(bid, show, seat, user, outcome.sent, outcome.received)
            self._active[user].append(bid)
        return outcome

    async def cancel(self, session: aiohttp.ClientSession, user: int, bid: int) -> Outcome:
        self.cancel_attempted.add(bid)
        outcome, data = await self._request(
            session, "cancel", f"/api/bookings/{bid}/cancel/", self.tokens[user], None
        )
        if outcome.status == 200:
            assert data["status"] == "cancelled" and data["id"] == bid, data
            self.cancelled.add(bid)
        return outcome

    def between(self, start: float, end: float, kind: str | None = None) -> list[Outcome]:
        """Requests sent in [start, end)."""
        return [
            o for o in self.outcomes if start <= o.sent < end and (kind is None or o.kind == kind)
        ]

    @staticmethod
    def tally(outcomes: list[Outcome]) -> dict[str, int]:
        return dict(
            Counter(f"{o.kind} {o.status if o.status is not None else o.error}" for o in outcomes)
        )

    def summary(self) -> str:
        return (
            f"{len(self.outcomes)} requests, {len(self.booked)} booked (201),"
            f" {len(self.cancelled)} cancelled (200); {self.tally(self.outcomes)}"
        )


async def signup_users(base_url: str, count: int, prefix: str) -> list[str]:
    """Sign up and log in `count` users through the API; their access tokens."""

    async def one(session: aiohttp.ClientSession, name: str) -> str:
        body = {"username": name, "email": f"{name}@example.com", "password": PASSWORD}
        async with session.post(f"{base_url}/api/auth/signup/", json=body) as resp:
            assert resp.status == 201, await resp.text()
        body = {"username": name, "password": PASSWORD}
        async with session.post(f"{base_url}/api/auth/login/", json=body) as resp:
            assert resp.status == 200, await resp.text()
            return str((await resp.json())["access"])

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as session:
        return list(await asyncio.gather(*(one(session, f"{prefix}{i}") for i in range(count))))


# --- invariants -------------------------------------------------------------------------------


async def settle(redis: Redis, pool: asyncpg.Pool, within: float) -> float:
    """Seconds until Redis has nothing pending and the reconciler finds no difference."""
    started = time.monotonic()
    last = "no answer yet"
    while True:
        try:
            report = await reconcile.check(redis, pool)
            if report.pending == 0 and not report.differences:
                return time.monotonic() - started
            last = report.summary() + "".join(
                "\n  " + d.describe() for d in report.differences[:10]
            )
        except TRANSIENT as exc:  # a dependency still coming back
            last = repr(exc)
        if time.monotonic() - started > within:
            raise AssertionError(f"not settled within {within}s: {last}")
        await asyncio.sleep(0.1)


async def wait_rows(pool: asyncpg.Pool, ids: set[int], within: float) -> float:
    """Seconds until every booking id in `ids` is a row in PostgreSQL."""
    started = time.monotonic()
    missing = set(ids)
    while missing:
        try:
            rows = await pool.fetch(
                "SELECT id FROM bookings WHERE id = ANY($1::bigint[])", sorted(missing)
            )
            missing -= {r["id"] for r in rows}
        except TRANSIENT:
            pass
        if missing and time.monotonic() - started > within:
            raise AssertionError(f"{len(missing)} 201s not persisted within {within}s")
        await asyncio.sleep(0.05)
    return time.monotonic() - started


@dataclass
class Verdict:
    rows: int = 0
    booked_rows: int = 0
    displaced: list[int] = field(default_factory=list)  # 201s nobody cancelled, now cancelled
    lost: list[int] = field(default_factory=list)  # 201s with no row (allowed ones only)


async def verify(
    pool: asyncpg.Pool,
    redis: Redis,
    storms: list[Storm],
    shows: dict[int, int],
    *,
    may_be_lost: set[int] | None = None,
    may_be_displaced: set[int] | None = None,
) -> Verdict:
    """The contract's invariants, in PostgreSQL itself (after settle()):

    - every 201 is a row, of its show and seat (except ids in `may_be_lost`);
    - every 200 cancel is 'cancelled'; a 201 nobody tried to cancel is 'booked' (except ids
      in `may_be_displaced`: a double sale after Redis lost data, which PostgreSQL wins);
    - no seat has two 'booked' rows, no show more 'booked' rows than seats;
    - Redis agrees: each loaded show's seat holds are exactly PostgreSQL's booked rows.
    """
    may_be_lost = may_be_lost or set()
    may_be_displaced = may_be_displaced or set()
    booked: dict[int, Booking] = {}
    cancelled: set[int] = set()
    attempted: set[int] = set()
    for storm in storms:
        booked |= storm.booked
        cancelled |= storm.cancelled
        attempted |= storm.cancel_attempted
    rows = {
        r["id"]: r
        for r in await pool.fetch(
            "SELECT id, show_id, seat_number, status FROM bookings WHERE id = ANY($1::bigint[])",
            sorted(booked),
        )
    }
    verdict = Verdict(rows=len(rows))
    problems: list[str] = []
    for bid, b in booked.items():
        row = rows.get(bid)
        if row is None:
            if bid in may_be_lost:
                verdict.lost.append(bid)
            else:
                problems.append(f"201 booking {bid} (show {b.show} seat {b.seat}) has no row")
            continue
        if (row["show_id"], row["seat_number"]) != (b.show, b.seat):
            problems.append(f"booking {bid} is {dict(row)} in PostgreSQL, answered {b}")
        if bid in cancelled and row["status"] != "cancelled":
            problems.append(f"booking {bid} was cancelled (200) but is {row['status']!r}")
        if bid not in attempted and row["status"] != "booked":
            if bid in may_be_displaced:
                verdict.displaced.append(bid)
            else:
                problems.append(f"booking {bid}, never cancelled, is {row['status']!r}")
    doubles = await pool.fetch(
        "SELECT show_id, seat_number, array_agg(id) AS ids FROM bookings WHERE status = 'booked'"
        " GROUP BY show_id, seat_number HAVING count(*) > 1"
    )
    problems += [f"seat booked twice: {dict(r)}" for r in doubles]
    counts = await pool.fetch(
        "SELECT b.show_id, count(*) AS n, s.total_seats FROM bookings b JOIN shows s"
        " ON s.id = b.show_id WHERE b.status = 'booked' GROUP BY b.show_id, s.total_seats"
    )
    problems += [f"show over capacity: {dict(r)}" for r in counts if r["n"] > r["total_seats"]]
    verdict.booked_rows = sum(r["n"] for r in counts)
    for show in shows:
        meta, _, held_key, *_ = keys.show_keys(show)
        if not await redis.hexists(meta, "starts_us"):
            continue  # not loaded: it is loaded from PostgreSQL when next needed
        held = {k.decode(): int(v) for k, v in (await redis.hgetall(held_key)).items()}
        pg_booked = {
            r["seat_number"]: r["id"]
            for r in await pool.fetch(
                "SELECT id, seat_number FROM bookings WHERE show_id = $1 AND status = 'booked'",
                show,
            )
        }
        if held != pg_booked:
            only_redis = {s: b for s, b in held.items() if pg_booked.get(s) != b}
            only_pg = {s: b for s, b in pg_booked.items() if held.get(s) != b}
            problems.append(
                f"show {show}: Redis holds {only_redis} that PostgreSQL does not have booked;"
                f" PostgreSQL has {only_pg} booked that Redis does not hold"
            )
    assert not problems, "\n".join(problems[:30])
    return verdict
