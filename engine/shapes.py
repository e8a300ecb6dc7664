"""The API's JSON shapes (movie, show, booking), and the instants in them.

The booking path answers from Redis alone, so a show's JSON is kept in Redis up to the value of
available_seats (show_json_prefix) and completed with the count the claim returns.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from engine.jsonutil import dumps

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def to_us(moment: datetime) -> int:
    """Microseconds since the epoch, in integers (a float would shift far-future instants)."""
    if moment.tzinfo is None:  # asyncpg gives datetime.max (naive) for the largest instant
        moment = moment.replace(tzinfo=UTC)
    return (moment - _EPOCH) // _MICROSECOND


def from_us(us: int) -> datetime:
    return _EPOCH + timedelta(microseconds=us)


def iso_from_us(us: int) -> str:
    return from_us(us).isoformat().replace("+00:00", "Z")


# The columns show_dict() reads: a show joined with its movie (SELECT {SHOW_COLUMNS} FROM ...).
SHOW_COLUMNS = """
s.id, s.movie_id, m.title, m.duration_minutes, s.screen_name, s.date_time, s.total_seats,
s.seat_rows, s.seats_per_row
"""
SHOWS_WITH_MOVIES = "shows s JOIN movies m ON m.id = s.movie_id"


def movie_dict(row: asyncpg.Record | dict[str, Any]) -> dict[str, Any]:
    return {"id": row["id"], "title": row["title"], "duration_minutes": row["duration_minutes"]}


def show_dict(row: asyncpg.Record | dict[str, Any], available: int) -> dict[str, Any]:
    """A show; `row` has the show's columns with the movie's as movie_id, title, duration."""
    return {
        "id": row["id"],
        "movie": {
            "id": row["movie_id"],
            "title": row["title"],
            "duration_minutes": row["duration_minutes"],
        },
        "screen_name": row["screen_name"],
        "date_time": iso_from_us(to_us(row["date_time"])),
        "total_seats": row["total_seats"],
        "available_seats": available,
    }


def show_json_prefix(row: asyncpg.Record | dict[str, Any]) -> str:
    """The show's JSON up to the value of available_seats, which Redis counts."""
    return dumps(show_dict(row, 0)).decode()[: -len("0}")]


def show_json(prefix: str | bytes, available: int) -> str:
    text = prefix.decode() if isinstance(prefix, bytes) else prefix
    return f"{text}{available}}}"


def booking_json(booking_id: int, show: str, seat: str, status: str, created_us: int) -> bytes:
    """A booking's JSON around the show's JSON (already serialised)."""
    return (
        f'{{"id":{booking_id},"show":{show},"seat_number":{dumps(seat).decode()},'
        f'"status":"{status}","created_at":"{iso_from_us(created_us)}"}}'
    ).encode()
