"""The reconciler: find and repair differences between Redis' seat state and PostgreSQL.

PostgreSQL is the source of truth. For every show loaded in Redis (and not closed), Redis'
view is compared with PostgreSQL's bookings of that show; what is legitimately in flight (a
booking or cancellation whose pending record exists) is not a difference, only counted.

Kinds of difference (letters as in issue 3, item 7):

- a `unpersisted`: Redis has a record PostgreSQL does not, and no pending record carries it
  (its persistence was lost). Repair: pend it again and mark the show dirty.
- b `unknown_to_redis`: PostgreSQL has a booked booking Redis' loaded show does not know (the
  worker committed after Redis was emptied and the show was reloaded). Repair: adopt it; a
  booking of Redis' that holds the same seat is cancelled (a double sale; PostgreSQL wins).
- c `cancelled_in_postgres`: PostgreSQL has it cancelled, Redis booked. Repair: Redis forgets it.
- d `booked_in_postgres`: PostgreSQL has it booked, Redis cancelled. Repair: adopt, as for b.
- e `stale_hold`: a seat held by a booking whose record is missing or cancelled. Repair: free it.
- g `unknown_seat`: PostgreSQL has a booked seat the show's Redis seat set lacks. Repair: add the
  seat when the show has it by PostgreSQL's definition; otherwise it is reported, not repaired.
- (f, two booked bookings of one seat in PostgreSQL, is prevented by a unique index: not checked.)

Races: Redis is read, then PostgreSQL, then Redis again; only what differs against both Redis
reads is reported (a claim, cancel or persistence that completed in between shows in the second
read). Each repair is one Lua script that first checks that Redis still is as it was found, so a
concurrent claim or cancel makes it a no-op, never a wrong write.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import asyncpg
from redis.asyncio import Redis

from engine import keys
from engine.persistence import mark_changed
from engine.seats import BookingRecord, Scripts, now_us, record, seat_labels
from engine.shapes import to_us

log = logging.getLogger("engine.reconcile")

UNPERSISTED = "a"
UNKNOWN_TO_REDIS = "b"
CANCELLED_IN_POSTGRES = "c"
BOOKED_IN_POSTGRES = "d"
STALE_HOLD = "e"
UNKNOWN_SEAT = "g"
ALL_KINDS = frozenset(
    {
        UNPERSISTED,
        UNKNOWN_TO_REDIS,
        CANCELLED_IN_POSTGRES,
        BOOKED_IN_POSTGRES,
        STALE_HOLD,
        UNKNOWN_SEAT,
    }
)
KIND_NAMES = {
    UNPERSISTED: "unpersisted",
    UNKNOWN_TO_REDIS: "unknown_to_redis",
    CANCELLED_IN_POSTGRES: "cancelled_in_postgres",
    BOOKED_IN_POSTGRES: "booked_in_postgres",
    STALE_HOLD: "stale_hold",
    UNKNOWN_SEAT: "unknown_seat",
}
# Repair order: seats first (an adopted booking can then hold its seat), adoptions before
# re-pending (an adoption may cancel a booking that would otherwise be pended as booked).
REPAIR_ORDER = {
    UNKNOWN_SEAT: 0,
    UNKNOWN_TO_REDIS: 1,
    BOOKED_IN_POSTGRES: 1,
    CANCELLED_IN_POSTGRES: 2,
    STALE_HOLD: 3,
    UNPERSISTED: 4,
}

# Booked rows of the shows, plus any row of the bookings Redis knows (their cancellations).
SELECT_SHOW_BOOKINGS = """
SELECT id, user_id, show_id, seat_number, status, created_at FROM bookings
WHERE show_id = ANY($1::bigint[]) AND (status = 'booked' OR id = ANY($2::bigint[]))
"""
SELECT_SHOW_SEATS = "SELECT total_seats, seat_rows, seats_per_row FROM shows WHERE id = $1"


@dataclass(frozen=True)
class Difference:
    """One way Redis and PostgreSQL disagree about a show."""

    kind: str
    show_id: int
    seat: str
    booking_id: int | None = None
    user_id: int | None = None
    created_us: int | None = None
    # The booking's record in Redis' bookings hash when found ("" when it had none); a repair
    # only writes if it is still that.
    redis_record: str = ""
    pg_status: str | None = None

    @property
    def identity(self) -> tuple[str, int, str, int | None]:
        return (self.kind, self.show_id, self.seat, self.booking_id)

    def describe(self) -> str:
        what = {
            UNPERSISTED: "Redis has it, PostgreSQL does not, nothing pending",
            UNKNOWN_TO_REDIS: "PostgreSQL has it booked, Redis does not know it",
            CANCELLED_IN_POSTGRES: "PostgreSQL has it cancelled, Redis booked",
            BOOKED_IN_POSTGRES: "PostgreSQL has it booked, Redis cancelled",
            STALE_HOLD: "seat held by a booking Redis has no booked record of",
            UNKNOWN_SEAT: "PostgreSQL has the seat booked, Redis' seat set lacks it",
        }[self.kind]
        booking = f" booking {self.booking_id}" if self.booking_id is not None else ""
        return (
            f"({self.kind}) {KIND_NAMES[self.kind]}: show {self.show_id} seat {self.seat}"
            f"{booking}: {what}"
        )


# A booking this long in Redis without reaching PostgreSQL makes `check` fail (exit 1).
STUCK_AFTER_S = 300.0


@dataclass
class Report:
    """What a check found: the differences, and what is legitimately still in flight."""

    differences: list[Difference] = field(default_factory=list)
    shows_checked: int = 0
    pending: int = 0
    oldest_pending_us: int | None = None
    # Booked records pending for over STUCK_AFTER_S: persistence is not keeping up, or
    # PostgreSQL refuses them (the worker's log says why).
    stuck: int = 0

    def oldest_pending_age_s(self, at_us: int | None = None) -> float | None:
        if self.oldest_pending_us is None:
            return None
        return max(0.0, ((at_us or now_us()) - self.oldest_pending_us) / 1e6)

    def summary(self) -> str:
        shows = len({d.show_id for d in self.differences})
        n = len(self.differences)
        line = (
            f"{n} difference{'s' if n != 1 else ''} in {shows} show{'s' if shows != 1 else ''}"
            f" ({self.shows_checked} checked); {self.pending} record"
            f"{'s' if self.pending != 1 else ''} pending"
        )
        age = self.oldest_pending_age_s()
        line += f" (oldest {age:.1f} s)" if age is not None else ""
        if self.stuck:
            line += (
                f"; {self.stuck} booking{'s' if self.stuck != 1 else ''} pending for over "
                f"{STUCK_AFTER_S:.0f} s: persistence is stuck (see the worker's log)"
            )
        return line


@dataclass
class _ShowSnapshot:
    held: dict[str, int]  # seat -> booking id
    bookings: dict[int, str]  # booking id -> record
    pending: dict[int, str]


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


async def _snapshot(redis: Redis, show_ids: list[int]) -> dict[int, _ShowSnapshot]:
    """Each show's state, read atomically per show; shows not loaded or closed are left out."""
    out: dict[int, _ShowSnapshot] = {}
    for show_id in show_ids:
        meta, _seats, held, bookings, pending = keys.show_keys(show_id)
        async with redis.pipeline(transaction=True) as pipe:
            pipe.hmget(meta, ["starts_us", "closed"])
            pipe.hgetall(held)
            pipe.hgetall(bookings)
            pipe.hgetall(pending)
            (starts, closed), h, b, p = await pipe.execute()
        if starts is None or closed is not None:
            continue
        out[show_id] = _ShowSnapshot(
            held={_text(k): int(v) for k, v in h.items()},
            bookings={int(k): _text(v) for k, v in b.items()},
            pending={int(k): _text(v) for k, v in p.items()},
        )
    return out


def _compare(
    show_id: int, snap: _ShowSnapshot, rows: dict[int, asyncpg.Record], kinds: frozenset[str]
) -> list[Difference]:
    diffs: list[Difference] = []
    # Bookings PostgreSQL has booked that Redis should hold: b (unknown) and d (cancelled).
    adopted: set[int] = set()
    for bid, row in rows.items():
        if row["status"] != "booked" or bid in snap.pending:
            continue
        rec = snap.bookings.get(bid)
        if rec is not None and rec.endswith("|b"):
            continue
        kind = UNKNOWN_TO_REDIS if rec is None else BOOKED_IN_POSTGRES
        adopted.add(bid)
        if kind in kinds:
            diffs.append(
                Difference(
                    kind,
                    show_id,
                    row["seat_number"],
                    bid,
                    row["user_id"],
                    to_us(row["created_at"]),
                    rec or "",
                    "booked",
                )
            )
    # Records Redis has with nothing pending: a (PostgreSQL lacks them), c (cancelled there).
    for bid, raw in snap.bookings.items():
        if bid in snap.pending:
            continue
        parsed = BookingRecord.parse(bid, raw)
        row = rows.get(bid)
        if row is None:
            kind = UNPERSISTED
        elif row["status"] == "cancelled" and parsed.status == "booked":
            kind = CANCELLED_IN_POSTGRES
        else:
            continue
        if kind in kinds:
            diffs.append(
                Difference(
                    kind,
                    show_id,
                    parsed.seat,
                    bid,
                    parsed.user_id,
                    parsed.created_us,
                    raw,
                    None if row is None else row["status"],
                )
            )
    # e: seats held by a booking with no booked record (unless an adoption above fixes it).
    if STALE_HOLD in kinds:
        for seat, bid in snap.held.items():
            raw_or_none = snap.bookings.get(bid)
            if bid in adopted or (raw_or_none is not None and raw_or_none.endswith("|b")):
                continue
            diffs.append(Difference(STALE_HOLD, show_id, seat, bid, redis_record=raw_or_none or ""))
    return diffs


async def check(
    redis: Redis,
    pool: asyncpg.Pool,
    show_ids: Iterable[int] | None = None,
    *,
    kinds: Iterable[str] = ALL_KINDS,
    older_than_s: float = 0.0,
) -> Report:
    """Compare every loaded show (or these) with PostgreSQL; see the module's docstring.

    `older_than_s` leaves out differences about bookings created less than that long ago.
    """
    wanted = frozenset(kinds)
    if show_ids is None:
        ids = sorted(int(s) for s in await redis.smembers(keys.LOADED_SHOWS))
    else:
        ids = sorted(set(show_ids))
    report = Report()
    first = await _snapshot(redis, ids)
    if not first:
        return report
    known = sorted({bid for snap in first.values() for bid in snap.bookings})
    fetched = await pool.fetch(SELECT_SHOW_BOOKINGS, list(first), known)
    rows: dict[int, dict[int, asyncpg.Record]] = {sid: {} for sid in first}
    for row in fetched:
        rows[row["show_id"]][row["id"]] = row
    second = await _snapshot(redis, list(first))
    cutoff = now_us() - int(older_than_s * 1_000_000)
    stuck_before = now_us() - int(STUCK_AFTER_S * 1_000_000)
    for show_id, snap in second.items():
        report.shows_checked += 1
        for raw in snap.pending.values():
            parsed = BookingRecord.parse(0, raw)
            created = parsed.created_us
            report.pending += 1
            if parsed.status == "booked" and created < stuck_before:
                report.stuck += 1
            if report.oldest_pending_us is None or created < report.oldest_pending_us:
                report.oldest_pending_us = created
        earlier = {d.identity for d in _compare(show_id, first[show_id], rows[show_id], wanted)}
        for diff in _compare(show_id, snap, rows[show_id], wanted):
            if diff.identity not in earlier:
                continue  # changed between the two reads: in flight, not a difference
            if older_than_s and (diff.created_us is None or diff.created_us > cutoff):
                continue
            report.differences.append(diff)
        if UNKNOWN_SEAT in wanted:
            booked = sorted(
                {r["seat_number"] for r in rows[show_id].values() if r["status"] == "booked"}
            )
            if booked:
                present = await redis.smismember(keys.show_keys(show_id)[1], booked)
                for seat, there in zip(booked, present, strict=True):
                    if not there:
                        report.differences.append(Difference(UNKNOWN_SEAT, show_id, seat))
    return report


async def find_differences(
    redis: Redis, pool: asyncpg.Pool, show_ids: Iterable[int] | None = None
) -> list[Difference]:
    """Every difference between Redis' loaded shows and PostgreSQL (pending records excluded)."""
    return (await check(redis, pool, show_ids)).differences


async def repair(
    redis: Redis, pool: asyncpg.Pool, scripts: Scripts, differences: Iterable[Difference]
) -> list[str]:
    """Repair the differences (each with one Lua script of its show); one line per outcome."""
    done: list[str] = []
    for diff in sorted(differences, key=lambda d: (REPAIR_ORDER[d.kind], d.show_id, d.seat)):
        outcome = await _repair_one(redis, pool, scripts, diff)
        done.append(f"{diff.describe()} -> {outcome}")
    return done


async def _repair_one(redis: Redis, pool: asyncpg.Pool, scripts: Scripts, diff: Difference) -> str:
    show_keys = keys.show_keys(diff.show_id)
    bid = diff.booking_id
    if diff.kind == UNKNOWN_SEAT:
        row = await pool.fetchrow(SELECT_SHOW_SEATS, diff.show_id)
        labels = (
            set(seat_labels(row["total_seats"], row["seat_rows"], row["seats_per_row"]))
            if row
            else set()
        )
        if diff.seat not in labels:
            log.error("show %s has booked seat %s it does not have", diff.show_id, diff.seat)
            return "NOT repaired: the show has no such seat in PostgreSQL either"
        result = _text(await scripts.add_seat(keys=show_keys[:2], args=[diff.seat]))
        return "seat added" if result == "ok" else f"skipped ({result})"
    assert bid is not None
    if diff.kind == STALE_HOLD:
        outcome = _text(await scripts.free_stale_seat(keys=show_keys, args=[diff.seat, bid]))
        return "seat freed" if outcome == "ok" else f"skipped ({outcome})"
    if diff.kind in (UNKNOWN_TO_REDIS, BOOKED_IN_POSTGRES):
        assert diff.user_id is not None and diff.created_us is not None
        pg_record = record(diff.user_id, diff.seat, diff.created_us, "booked")
        reply = await scripts.adopt_booking(
            keys=show_keys, args=[bid, pg_record, diff.redis_record]
        )
        outcome = _text(reply[0])
        if outcome == "unseated":
            return "adopted (its seat is not in Redis' seat set)"
        if outcome != "adopted":
            return f"skipped ({outcome})"
        if len(reply) == 1:
            return "adopted"
        holder = int(reply[1])
        displaced = BookingRecord.parse(holder, reply[2])
        log.error(
            "double sale after Redis lost data: show %s seat %s is booking %s's in PostgreSQL;"
            " booking %s (user %s) cancelled",
            diff.show_id,
            diff.seat,
            bid,
            holder,
            displaced.user_id,
        )
        await _mark(redis, diff.show_id, displaced)
        return f"adopted; double sale: booking {holder} of user {displaced.user_id} cancelled"
    if diff.kind == UNPERSISTED:
        outcome = _text(await scripts.repend_booking(keys=show_keys, args=[bid, diff.redis_record]))
        if outcome != "ok":
            return f"skipped ({outcome})"
        log.warning("re-pending booking %s of show %s: its persistence was lost", bid, diff.show_id)
        await _mark(redis, diff.show_id, BookingRecord.parse(bid, diff.redis_record))
        return "pended again for the worker"
    if diff.kind == CANCELLED_IN_POSTGRES:
        outcome = _text(await scripts.forget_booking(keys=show_keys, args=[bid, diff.redis_record]))
        return "Redis follows PostgreSQL: cancelled" if outcome == "ok" else f"skipped ({outcome})"
    raise ValueError(f"unknown difference kind {diff.kind!r}")


async def _mark(redis: Redis, show_id: int, rec: BookingRecord) -> None:
    """The global bookkeeping of a record just pended: user's index, its show, the dirty mark."""
    async with redis.pipeline(transaction=False) as pipe:
        mark_changed(pipe, show_id, rec.user_id, [rec.booking_id], rec.created_us, rec.status)
        await pipe.execute()


async def reconcile(
    redis: Redis,
    pool: asyncpg.Pool,
    scripts: Scripts,
    show_ids: Iterable[int] | None = None,
    **options: Any,
) -> tuple[Report, list[str]]:
    """Check, then repair what was found; options as for check()."""
    report = await check(redis, pool, show_ids, **options)
    return report, await repair(redis, pool, scripts, report.differences)
