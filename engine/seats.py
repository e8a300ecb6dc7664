"""The seat engine: per-show seat state in Redis, changed only by the Lua scripts in lua/.

A show in Redis is: its meta (start time and the show's JSON), the set of seats it has, the
seat -> booking map of claimed seats, its bookings, and its pending records (bookings and
cancellations PostgreSQL does not have yet). Everything but the pending records is rebuilt from
PostgreSQL when a show is first used (or after Redis was emptied).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
from redis.asyncio import Redis
from redis.commands.core import AsyncScript

from engine import keys
from engine.autopipe import ScriptPipeline
from engine.errors import Conflict, Forbidden, InvalidInput, NotFound
from engine.shapes import SHOW_COLUMNS, SHOWS_WITH_MOVIES, show_json_prefix, to_us

LUA_DIR = Path(__file__).resolve().parent.parent / "lua"
SCRIPT_NAMES = (
    "claim_seats",
    "release_seat",
    "load_show",
    "reshape_show",
    "retire_show",
    "ack_persisted",
    "allocate_ids",
    "probe",
    "adopt_booking",
    "repend_booking",
    "forget_booking",
    "free_stale_seat",
    "add_seat",
    "claim_request",
    "settle_request",
    "unload_show",
)
ID_BLOCK = 64
MAX_SEAT_LABEL = 16


class Scripts:
    """The Lua scripts, registered once; redis-py re-sends a script Redis answers NOSCRIPT to."""

    def __init__(self, redis: Redis) -> None:
        self.by_name: dict[str, AsyncScript] = {
            name: redis.register_script((LUA_DIR / f"{name}.lua").read_text())
            for name in SCRIPT_NAMES
        }
        self.claim_seats = self.by_name["claim_seats"]
        self.release_seat = self.by_name["release_seat"]
        self.load_show = self.by_name["load_show"]
        self.reshape_show = self.by_name["reshape_show"]
        self.retire_show = self.by_name["retire_show"]
        self.ack_persisted = self.by_name["ack_persisted"]
        self.allocate_ids = self.by_name["allocate_ids"]
        self.probe = self.by_name["probe"]
        # The reconciler's repairs (engine/reconcile.py).
        self.adopt_booking = self.by_name["adopt_booking"]
        self.repend_booking = self.by_name["repend_booking"]
        self.forget_booking = self.by_name["forget_booking"]
        self.free_stale_seat = self.by_name["free_stale_seat"]
        self.add_seat = self.by_name["add_seat"]
        self.claim_request = self.by_name["claim_request"]
        self.settle_request = self.by_name["settle_request"]
        self.unload_show = self.by_name["unload_show"]

    async def preload(self, redis: Redis) -> None:
        """Load every script into Redis' cache at start-up (fails fast if Redis is away)."""
        for script in self.by_name.values():
            await redis.script_load(script.script)


def now_us() -> int:
    return time.time_ns() // 1000


def row_name(index: int) -> str:
    """0 -> A, 25 -> Z, 26 -> AA, 51 -> AZ."""
    name = ""
    n = index + 1
    while n:
        n, rest = divmod(n - 1, 26)
        name = chr(65 + rest) + name
    return name


def seat_labels(total_seats: int, rows: int | None, seats_per_row: int | None) -> list[str]:
    if rows and seats_per_row:
        return [f"{row_name(r)}{c}" for r in range(rows) for c in range(1, seats_per_row + 1)]
    return [str(i) for i in range(1, total_seats + 1)]


def normalise_seat(value: Any) -> str:
    """A seat label as matched: trimmed, upper-cased; an integer reads as its decimal label."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise InvalidInput(errors={"seat_number": ["Must be a string or an integer."]})
    label = str(value).strip().upper()
    if not label:
        raise InvalidInput(errors={"seat_number": ["This field may not be blank."]})
    if len(label) > MAX_SEAT_LABEL or "|" in label or "," in label:
        raise InvalidInput(
            "That seat is not in this show.", errors={"seat_number": ["No such seat."]}
        )
    return label


def record(user_id: int, seat: str, created_us: int, status: str) -> str:
    return f"{user_id}|{seat}|{created_us}|{status[0]}"


@dataclass(frozen=True)
class BookingRecord:
    booking_id: int
    user_id: int
    seat: str
    created_us: int
    status: str  # "booked" | "cancelled"

    @classmethod
    def parse(cls, booking_id: int, raw: str | bytes) -> BookingRecord:
        text = raw.decode() if isinstance(raw, bytes) else raw
        user, seat, created, status = text.split("|")
        return cls(
            booking_id, int(user), seat, int(created), "booked" if status == "b" else "cancelled"
        )


class IdAllocator:
    """Booking ids in blocks from Redis, so most bookings need no extra round trip."""

    def __init__(self, scripts: Scripts, floor: int = 0) -> None:
        self._scripts = scripts
        self._next = 0
        self._last = -1
        self._floor = floor
        self._lock = asyncio.Lock()

    def raise_floor(self, known_max: int) -> None:
        self._floor = max(self._floor, known_max)

    async def take(self, count: int = 1) -> list[int]:
        if self._last - self._next + 1 >= count:
            # No await between the check and the take: no other request can interleave.
            return self._take(count)
        async with self._lock:
            if self._last - self._next + 1 < count:
                first, last = await self._scripts.allocate_ids(
                    keys=[keys.BOOKING_ID_COUNTER],
                    args=[int(time.time() * 1000), max(ID_BLOCK, count), self._floor],
                )
                self._next, self._last = int(first), int(last)
            return self._take(count)

    def _take(self, count: int) -> list[int]:
        ids = list(range(self._next, self._next + count))
        self._next += count
        return ids


# Share-locked until the show is written to Redis: an admin change of the show or its movie
# (which locks the row, then reshapes the show in Redis if loaded) either waits for this load
# and then finds the show loaded, or commits first and is what this load reads.
SELECT_SHOW_FOR_LOAD = f"""
SELECT {SHOW_COLUMNS} FROM {SHOWS_WITH_MOVIES} WHERE s.id = $1 FOR SHARE OF s, m
"""
SELECT_BOOKED_FOR_LOAD = """
SELECT id, user_id, seat_number, created_at FROM bookings
WHERE show_id = $1 AND status = 'booked'
"""
SELECT_MAX_BOOKING_ID = "SELECT coalesce(max(id), 0) FROM bookings"


class SeatEngine:
    """Claims, releases and loads; the only code that changes a show's Redis state."""

    def __init__(self, redis: Redis, pool: asyncpg.Pool) -> None:
        self.redis = redis
        self.pool = pool
        self.scripts = Scripts(redis)
        self.ids = IdAllocator(self.scripts)
        # Claims and releases of concurrent requests share one round trip.
        self.pipeline = ScriptPipeline(redis)

    async def close(self) -> None:
        await self.pipeline.aclose()

    async def start(self) -> None:
        await self.scripts.preload(self.redis)
        self.ids.raise_floor(int(await self.pool.fetchval(SELECT_MAX_BOOKING_ID)))

    async def load(self, show_id: int) -> bool:
        """Load a show from PostgreSQL unless loaded already; NotFound if it does not exist."""
        # Read committed: the share lock, once granted, reads the latest committed rows.
        async with self.pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(SELECT_SHOW_FOR_LOAD, show_id)
            if row is None:
                raise NotFound("Show not found.")
            booked = await conn.fetch(SELECT_BOOKED_FOR_LOAD, show_id)
            max_id = int(await conn.fetchval(SELECT_MAX_BOOKING_ID))
            self.ids.raise_floor(max_id)
            labels = seat_labels(row["total_seats"], row["seat_rows"], row["seats_per_row"])
            args: list[Any] = [to_us(row["date_time"]), show_json_prefix(row), ",".join(labels)]
            for b in booked:
                args += [
                    b["id"],
                    record(b["user_id"], b["seat_number"], to_us(b["created_at"]), "booked"),
                    b["seat_number"],
                ]
            loaded = bool(await self.scripts.load_show(keys=keys.show_keys(show_id), args=args))
        if loaded:
            await self.redis.sadd(keys.LOADED_SHOWS, show_id)
        return loaded

    async def claim(
        self, show_id: int, user_id: int, seats: list[str], at_us: int
    ) -> tuple[list[int], int, str]:
        """Claim seats all-or-nothing; returns (booking ids, available seats, show JSON prefix).
        The same atomic step records the claim for persistence and in the user's index."""
        if len(set(seats)) != len(seats):
            raise InvalidInput(errors={"seat_number": ["A seat appears twice."]})
        booking_ids = await self.ids.take(len(seats))
        args: list[Any] = [at_us, user_id, len(seats)]
        for seat, booking_id in zip(seats, booking_ids, strict=True):
            args += [seat, booking_id]
        args += [show_id, keys.RECENT_TTL_S]
        claim_keys = [
            *keys.show_keys(show_id),
            keys.user_recent(user_id),
            keys.DIRTY_SHOWS,
            *(keys.booking_show(bid) for bid in booking_ids),
        ]
        for _ in range(3):
            result = await self.pipeline(self.scripts.claim_seats, claim_keys, args)
            outcome = result[0]
            if outcome == b"ok":
                return booking_ids, int(result[1]), result[2].decode()
            if outcome == b"unloaded":
                await self.load(show_id)
                continue
            if outcome == b"gone":
                # Closed while an admin deletes it: 404 once deleted, bookable again if not.
                raise Conflict("This show is being changed by an admin; try again shortly.")
            if outcome == b"invalid":
                raise InvalidInput(
                    f"Seat {result[1].decode()} is not in this show.",
                    errors={"seat_number": ["No such seat in this show."]},
                )
            if outcome == b"started":
                raise Conflict("This show has already started; it can no longer be booked.")
            if outcome == b"full":
                raise Conflict("This show is full.")
            if outcome == b"taken":
                raise Conflict(f"Seat {result[1].decode()} is already booked.")
            raise RuntimeError(f"unexpected claim result {result!r}")
        raise RuntimeError(f"show {show_id} could not be loaded into Redis")

    async def release(
        self, show_id: int, booking_id: int, actor_id: int, at_us: int, *, enforce_start: bool
    ) -> tuple[BookingRecord, int, str] | None:
        """Cancel a booking in Redis. None when Redis does not know it (ask PostgreSQL). The
        same atomic step records the cancel for persistence and in the owner's index."""
        owner = actor_id  # an admin (actor 0) learns the owner from the first answer
        for _ in range(4):
            release_keys = [
                *keys.show_keys(show_id),
                keys.user_recent(owner),
                keys.DIRTY_SHOWS,
                keys.booking_show(booking_id),
            ]
            args = [
                booking_id,
                actor_id,
                at_us,
                1 if enforce_start else 0,
                show_id,
                keys.RECENT_TTL_S,
                owner,
            ]
            result = await self.pipeline(self.scripts.release_seat, release_keys, args)
            outcome = result[0]
            if outcome == b"owner":
                owner = int(result[1])
                continue
            if outcome == b"ok":
                return (
                    BookingRecord.parse(booking_id, result[1]),
                    int(result[2]),
                    result[3].decode(),
                )
            if outcome == b"unloaded":
                try:
                    await self.load(show_id)
                except NotFound:
                    return None
                continue
            if outcome == b"missing":
                return None
            if outcome == b"forbidden":
                raise Forbidden("You can only cancel your own bookings.")
            if outcome == b"started":
                raise Conflict(
                    "This show has already started; the booking can no longer be cancelled."
                )
            raise RuntimeError(f"unexpected release result {result!r}")
        raise RuntimeError(f"show {show_id} could not be loaded into Redis")

    async def available(self, show_ids: list[int]) -> dict[int, int | None]:
        """Free seats of loaded shows; None for shows Redis has not loaded (PostgreSQL knows)."""
        if not show_ids:
            return {}
        async with self.redis.pipeline(transaction=False) as pipe:
            for show_id in show_ids:
                meta, seats, held, *_ = keys.show_keys(show_id)
                pipe.hexists(meta, "starts_us")
                pipe.scard(seats)
                pipe.hlen(held)
            replies = await pipe.execute()
        out: dict[int, int | None] = {}
        for i, show_id in enumerate(show_ids):
            loaded, capacity, held_count = replies[3 * i : 3 * i + 3]
            out[show_id] = int(capacity) - int(held_count) if loaded else None
        return out

    async def show_state(self, show_id: int) -> tuple[int, str] | None:
        """(available seats, show JSON prefix) of a loaded show, else None."""
        meta, seats, held, *_ = keys.show_keys(show_id)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hmget(meta, ["json", "closed"])
            pipe.scard(seats)
            pipe.hlen(held)
            (prefix, closed), capacity, held_count = await pipe.execute()
        if prefix is None or closed is not None:
            return None
        return int(capacity) - int(held_count), prefix.decode()

    async def records(self, show_id: int, booking_ids: list[int]) -> list[BookingRecord | None]:
        if not booking_ids:
            return []
        raw = await self.redis.hmget(keys.show_keys(show_id)[3], booking_ids)
        return [
            BookingRecord.parse(bid, r) if r is not None else None
            for bid, r in zip(booking_ids, raw, strict=True)
        ]
