"""Settings: one typed object read from the environment once, shared by API, worker and CLI."""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass, field, replace
from pathlib import Path


class SettingsError(RuntimeError):
    """A missing or malformed setting; the message names the variable."""


@dataclass(frozen=True)
class Settings:
    database_url: str
    redis_url: str
    jwt_secret: str = field(repr=False)
    host: str = "127.0.0.1"
    port: int = 8000
    data_dir: Path = Path(".data")
    embedded_postgres: bool = False
    embedded_redis: bool = False
    access_ttl_s: int = 15 * 60
    refresh_ttl_s: int = 7 * 24 * 3600
    jwt_leeway_s: int = 10
    bcrypt_rounds: int = 12
    # How often the worker's reconciler looks for bookings that no job is carrying.
    reconcile_interval_s: int = 5
    # Persistence jobs are coalesced per time bucket: at most one job per bucket per API process.
    persist_bucket_ms: int = 100
    log_level: str = "INFO"

    def with_(self, **changes: object) -> Settings:
        return replace(self, **changes)  # type: ignore[arg-type]


def _int(env: dict[str, str], name: str, default: int, lo: int, hi: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name} must be an integer, got {raw!r}") from None
    if not lo <= value <= hi:
        raise SettingsError(f"{name} must be between {lo} and {hi}, got {value}")
    return value


def data_dir_from(env: dict[str, str]) -> Path:
    return Path(env.get("BOOKING_DATA_DIR") or ".data").resolve()


def load_settings(env: dict[str, str] | None = None, *, start_embedded: bool = True) -> Settings:
    """Read and check every setting, then start embedded servers for unset URLs."""
    env = dict(os.environ if env is None else env)
    data_dir = data_dir_from(env)
    database_url = env.get("DATABASE_URL", "")
    redis_url = env.get("REDIS_URL", "")
    embedded_pg = not database_url
    embedded_redis = not redis_url
    if database_url and not database_url.startswith(("postgresql://", "postgres://")):
        raise SettingsError("DATABASE_URL must start with postgresql://")
    if redis_url and not redis_url.startswith(("redis://", "rediss://", "unix://")):
        raise SettingsError("REDIS_URL must start with redis://, rediss:// or unix://")
    jwt_secret = env.get("JWT_SECRET", "")
    if not jwt_secret and not (embedded_pg or embedded_redis):
        raise SettingsError(
            "JWT_SECRET is not set: it is required when DATABASE_URL and REDIS_URL are set "
            "(only embedded mode generates one)"
        )
    if jwt_secret and len(jwt_secret) < 16:
        raise SettingsError("JWT_SECRET must be at least 16 characters long")
    settings = Settings(
        database_url=database_url,
        redis_url=redis_url,
        jwt_secret=jwt_secret,
        host=env.get("HOST") or "127.0.0.1",
        port=_int(env, "PORT", 8000, 0, 65535),
        data_dir=data_dir,
        embedded_postgres=embedded_pg,
        embedded_redis=embedded_redis,
        access_ttl_s=_int(env, "ACCESS_TOKEN_TTL", 15 * 60, 10, 24 * 3600),
        refresh_ttl_s=_int(env, "REFRESH_TOKEN_TTL", 7 * 24 * 3600, 60, 365 * 24 * 3600),
        bcrypt_rounds=_int(env, "BCRYPT_ROUNDS", 12, 4, 16),
        reconcile_interval_s=_int(env, "RECONCILE_INTERVAL", 5, 1, 30),
        log_level=(env.get("LOG_LEVEL") or "INFO").upper(),
    )
    # Only once every setting is known good: start (or find) the embedded servers.
    if embedded_pg or embedded_redis:
        if not jwt_secret:
            settings = settings.with_(jwt_secret=_embedded_secret(data_dir))
        if start_embedded:
            from engine import embedded

            if embedded_pg:
                settings = settings.with_(database_url=embedded.ensure_postgres(data_dir))
            if embedded_redis:
                settings = settings.with_(redis_url=embedded.ensure_redis(data_dir))
    return settings


def _embedded_secret(data_dir: Path) -> str:
    """A random JWT secret generated once and kept in the data folder."""
    path = data_dir / "jwt_secret"
    data_dir.mkdir(parents=True, exist_ok=True)
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    secret = secrets.token_urlsafe(48)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another command created it first
        return path.read_text().strip()
    with os.fdopen(fd, "w") as f:
        f.write(secret)
    return secret
