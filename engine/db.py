"""PostgreSQL access: the pool, and the migrations runner."""

from __future__ import annotations

import logging
from pathlib import Path

import asyncpg

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"
# Any constant will do; it serialises concurrent `migrate` runs.
_MIGRATION_LOCK = 7_340_001

CREATE_MIGRATIONS_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    name       text PRIMARY KEY,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""
SELECT_APPLIED = "SELECT name FROM schema_migrations"
INSERT_APPLIED = "INSERT INTO schema_migrations (name) VALUES ($1)"


async def create_pool(
    dsn: str, *, min_size: int = 1, max_size: int = 10, name: str = "booking"
) -> asyncpg.Pool:
    """`name` is the connections' application_name (who is who in pg_stat_activity)."""
    pool = await asyncpg.create_pool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        command_timeout=10,
        server_settings={"application_name": name},
    )
    assert pool is not None
    return pool


async def migrate(dsn: str, directory: Path = MIGRATIONS_DIR) -> list[str]:
    """Apply every migration not yet applied, in order, each in its own transaction."""
    conn = await asyncpg.connect(dsn)
    applied_now: list[str] = []
    try:
        await conn.execute("SELECT pg_advisory_lock($1)", _MIGRATION_LOCK)
        try:
            await conn.execute(CREATE_MIGRATIONS_TABLE)
            applied = {r["name"] for r in await conn.fetch(SELECT_APPLIED)}
            for path in sorted(directory.glob("*.sql")):  # noqa: ASYNC240 - a few local files
                if path.name in applied:
                    continue
                async with conn.transaction():
                    await conn.execute(path.read_text())
                    await conn.execute(INSERT_APPLIED, path.name)
                applied_now.append(path.name)
                log.info("applied migration %s", path.name)
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", _MIGRATION_LOCK)
    finally:
        await conn.close()
    return applied_now
