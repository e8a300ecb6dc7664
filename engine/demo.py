"""A small demo catalog, loaded by `make run` when the catalog is empty."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import asyncpg

MOVIES = [
    ("Dune: Part Two", 166),
    ("Inside Out 2", 96),
    ("Oppenheimer", 180),
    ("The Grand Budapest Hotel", 99),
]
INSERT_MOVIE = "INSERT INTO movies (title, duration_minutes) VALUES ($1, $2) RETURNING id"
INSERT_SHOW = """
INSERT INTO shows (movie_id, screen_name, date_time, total_seats, seat_rows, seats_per_row)
VALUES ($1, $2, $3, $4, $5, $6)
"""
COUNT_MOVIES = "SELECT count(*) FROM movies"


async def load_demo(dsn: str) -> bool:
    """Insert the demo catalog if there are no movies yet; True if it did."""
    conn = await asyncpg.connect(dsn)
    try:
        async with conn.transaction():
            await conn.execute("LOCK TABLE movies IN EXCLUSIVE MODE")
            if await conn.fetchval(COUNT_MOVIES):
                return False
            tomorrow = (datetime.now(UTC) + timedelta(days=1)).replace(
                hour=18, minute=0, second=0, microsecond=0
            )
            for index, (title, minutes) in enumerate(MOVIES):
                movie_id = await conn.fetchval(INSERT_MOVIE, title, minutes)
                if index == 0:
                    # Show 1, the premiere of the README's walk-through: far enough ahead that
                    # the walk-through works for weeks after the catalog was loaded.
                    await conn.execute(
                        INSERT_SHOW, movie_id, "IMAX", tomorrow + timedelta(days=60), 96, 8, 12
                    )
                for day in range(3):
                    when = tomorrow + timedelta(days=day, hours=2 * (index % 2))
                    if index == 0:
                        # Rows A-H of 12 seats: seats A1 .. H12.
                        await conn.execute(INSERT_SHOW, movie_id, "IMAX", when, 96, 8, 12)
                    else:
                        await conn.execute(
                            INSERT_SHOW, movie_id, f"Screen {index}", when, 50, None, None
                        )
        return True
    finally:
        await conn.close()
