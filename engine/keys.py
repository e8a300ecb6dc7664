"""Redis key names, all in one place.

Every key of one show shares the hash tag `{<show id>}`. The claim script also writes a few
global keys (the user's index, the dirty-shows set, where a booking lives) in the same atomic
step, so that a booking costs one round trip: it needs one Redis primary, not a Cluster.
"""

from __future__ import annotations

# Per show (one hash tag): meta, the seats it has, who holds each seat, its bookings, and the
# bookings whose latest state PostgreSQL does not have yet.
SHOW_PREFIX = "show:"


def show_keys(show_id: int) -> list[str]:
    """[meta, seats, held, bookings, pending] of one show, in the order the scripts take them."""
    tag = f"{SHOW_PREFIX}{{{show_id}}}"
    return [f"{tag}:meta", f"{tag}:seats", f"{tag}:held", f"{tag}:bookings", f"{tag}:pending"]


# Global keys.
BOOKING_ID_COUNTER = "booking:next-id"
# Shows with pending records that a persistence job should pick up (a hint; the pending hashes
# are the truth, and the reconciler scans LOADED_SHOWS for anything a job missed).
DIRTY_SHOWS = "persist:dirty"
LOADED_SHOWS = "shows:loaded"
ARQ_QUEUE = "arq:queue"


def user_recent(user_id: int) -> str:
    """Sorted set of recent_member()s: the user's bookings PostgreSQL may not have yet."""
    return f"user:{user_id}:recent"


def recent_member(booking_id: int, show_id: int, status: str) -> str:
    """An entry of user_recent, "<booking>:<show>:b" or ":c". The state is part of it so that
    persisting the booked state never drops the entry of a cancel made meanwhile."""
    return f"{booking_id}:{show_id}:{status[0]}"


def parse_recent_member(member: str | bytes) -> tuple[int, int]:
    """(booking id, show id) of a recent_member()."""
    text = member.decode() if isinstance(member, bytes) else member
    booking, show, *_ = text.split(":")
    return int(booking), int(show)


def booking_show(booking_id: int) -> str:
    """Which show a booking not yet persisted belongs to."""
    return f"booking:{booking_id}:show"


def idempotency(user_id: int, key: str) -> str:
    """A client's Idempotency-Key, scoped to its user: the running request's marker, then the
    answer to replay. The user id is the hash tag, so a key with braces in it changes nothing."""
    return f"idempotency:{{{user_id}}}:{key}"


# Recent-booking index entries outlive any sane persistence lag; they are deleted on persist.
RECENT_TTL_S = 7 * 24 * 3600
