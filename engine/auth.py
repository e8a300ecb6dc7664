"""Auth: signup, login, refresh (rotated), me; JWT access and refresh tokens; bcrypt off-loop."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import re
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import asyncpg
import bcrypt
import jwt
from aiohttp import web
from aiohttp_apispec import docs, request_schema, response_schema
from marshmallow import Schema, ValidationError, fields, validate, validates_schema

from engine import appkeys
from engine.errors import Forbidden, InvalidInput, Unauthorized, Unavailable
from engine.jsonutil import json_response
from engine.validation import StrictString, db_id, parse_body

ALGORITHM = "HS256"
ACCESS = "access"
REFRESH = "refresh"
_T = TypeVar("_T")
USERNAME_RE = re.compile(r"^[\w.@+-]+\Z")
_TOKEN_CACHE_SIZE = 50_000


# --- passwords -------------------------------------------------------------------------------


def _prehash(password: str) -> bytes:
    """bcrypt reads 72 bytes at most: hash first so every character of a long password counts."""
    return base64.b64encode(hashlib.sha256(password.encode("utf-8", "surrogatepass")).digest())


def hash_password_sync(password: str, rounds: int) -> str:
    return bcrypt.hashpw(_prehash(password), bcrypt.gensalt(rounds)).decode()


def check_password_sync(password: str, hashed: str) -> bool:
    try:
        return bcrypt.checkpw(_prehash(password), hashed.encode())
    except ValueError:
        return False


class PasswordWork:
    """bcrypt off the event loop, at most one hash per core at a time.

    A caller whose turn would come more than `max_wait_s` from now (by the measured duration of
    a hash) is answered 503 with Retry-After at once: a login storm beyond what the cores can
    hash gets prompt answers, instead of requests that queue until the request deadline."""

    def __init__(self, max_wait_s: float = 2.0, workers: int | None = None) -> None:
        self.workers = workers or os.cpu_count() or 1
        self.max_wait_s = max_wait_s
        self._executor: ThreadPoolExecutor | None = None  # made on first use
        self._in_flight = 0  # hashing, or waiting for a thread
        self._hash_s = 0.0  # moving average of one hash's duration

    def expected_wait_s(self) -> float:
        """How long a new caller would wait for a thread."""
        ahead = self._in_flight - self.workers + 1
        return max(0, ahead) * self._hash_s / self.workers

    async def run(self, fn: Callable[..., _T], *args: Any) -> _T:
        if self.expected_wait_s() > self.max_wait_s:
            raise Unavailable("The server is busy checking passwords; retry shortly.")
        if self._executor is None:
            self._executor = ThreadPoolExecutor(self.workers, thread_name_prefix="bcrypt")
        self._in_flight += 1
        try:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self._executor, self._timed, fn, *args)
        finally:
            self._in_flight -= 1

    def _timed(self, fn: Callable[..., _T], *args: Any) -> _T:
        started = time.perf_counter()
        try:
            return fn(*args)
        finally:
            took = time.perf_counter() - started
            self._hash_s = 0.8 * self._hash_s + 0.2 * took if self._hash_s else took


passwords = PasswordWork()


async def hash_password(password: str, rounds: int) -> str:
    return await passwords.run(hash_password_sync, password, rounds)


async def check_password(password: str, hashed: str) -> bool:
    return await passwords.run(check_password_sync, password, hashed)


def password_problems(password: str, username: str) -> list[str]:
    problems = []
    if len(password) < 8:
        problems.append("This password is too short. It must contain at least 8 characters.")
    if len(password) > 128:
        problems.append("This password is too long. It must contain at most 128 characters.")
    if password.isdigit():
        problems.append("This password is entirely numeric.")
    if password.casefold() == username.casefold():
        problems.append("The password is too similar to the username.")
    return problems


# --- tokens ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Principal:
    user_id: int
    is_admin: bool


class TokenService:
    """Issues and verifies HS256 tokens; verified access tokens are cached until they expire."""

    def __init__(self, secret: str, access_ttl_s: int, refresh_ttl_s: int, leeway_s: int) -> None:
        self._secret = secret
        self.access_ttl_s = access_ttl_s
        self.refresh_ttl_s = refresh_ttl_s
        self._leeway = leeway_s
        self._cache: OrderedDict[str, tuple[Principal, float]] = OrderedDict()

    def _encode(self, claims: dict[str, Any]) -> str:
        return jwt.encode(claims, self._secret, algorithm=ALGORITHM)

    def access_token(self, user_id: int, is_admin: bool) -> str:
        now = int(time.time())
        return self._encode(
            {
                "sub": str(user_id),
                "typ": ACCESS,
                "adm": is_admin,
                "iat": now,
                "exp": now + self.access_ttl_s,
                "jti": uuid.uuid4().hex,
            }
        )

    def refresh_token(self, user_id: int, jti: uuid.UUID, expires_at: int) -> str:
        return self._encode(
            {
                "sub": str(user_id),
                "typ": REFRESH,
                "iat": int(time.time()),
                "exp": expires_at,
                "jti": str(jti),
            }
        )

    def decode(self, token: str, expected_type: str) -> dict[str, Any]:
        if not token.isascii():  # a JWT is ASCII; PyJWT raises UnicodeError on some others
            raise Unauthorized("Token is invalid.")
        try:
            claims = jwt.decode(
                token,
                self._secret,
                algorithms=[ALGORITHM],
                leeway=self._leeway,
                options={"require": ["exp", "sub", "typ", "jti"]},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthorized("Token has expired.") from None
        except jwt.PyJWTError:
            raise Unauthorized("Token is invalid.") from None
        if claims.get("typ") != expected_type:
            raise Unauthorized(
                f"Token is not an {expected_type} token."
                if expected_type == ACCESS
                else f"Token is not a {expected_type} token."
            )
        sub = claims.get("sub")
        if not isinstance(sub, str) or db_id(sub) is None:
            raise Unauthorized("Token is invalid.")
        return claims

    def verify_access(self, token: str) -> Principal:
        now = time.time()
        hit = self._cache.get(token)
        if hit is not None:
            principal, expires = hit
            if now < expires + self._leeway:
                return principal
            del self._cache[token]
        claims = self.decode(token, ACCESS)
        principal = Principal(int(claims["sub"]), bool(claims.get("adm", False)))
        self._cache[token] = (principal, float(claims["exp"]))
        if len(self._cache) > _TOKEN_CACHE_SIZE:
            self._cache.popitem(last=False)
        return principal


def bearer_token(request: web.Request) -> str:
    header = request.headers.get("Authorization", "")
    if not header.strip():
        raise Unauthorized("Authentication credentials were not provided.")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized('The Authorization header must be "Bearer <access token>".')
    return token.strip()


def require_user(request: web.Request) -> Principal:
    """The caller, from the access token alone (no database)."""
    principal = request.app[appkeys.TOKENS].verify_access(bearer_token(request))
    request[appkeys.USER_ID] = principal.user_id  # for the request's log line
    return principal


SELECT_USER_RIGHTS = "SELECT is_active, is_admin FROM users WHERE id = $1"


async def require_admin(request: web.Request) -> Principal:
    """The caller, who must be an active admin now (checked in PostgreSQL, not the token)."""
    principal = require_user(request)
    row = await request.app[appkeys.PG_POOL].fetchrow(SELECT_USER_RIGHTS, principal.user_id)
    if row is None or not row["is_active"]:
        raise Unauthorized("User is inactive or does not exist.")
    if not row["is_admin"]:
        raise Forbidden()
    return principal


# --- data access -----------------------------------------------------------------------------

INSERT_USER = """
INSERT INTO users (username, email, password_hash, is_admin) VALUES ($1, $2, $3, $4)
ON CONFLICT (username) DO NOTHING
RETURNING id, username, email, is_admin
"""
SELECT_LOGIN = "SELECT id, password_hash, is_active, is_admin FROM users WHERE username = $1"
SELECT_ME = "SELECT id, username, email, is_admin, is_active FROM users WHERE id = $1"
INSERT_REFRESH = "INSERT INTO refresh_tokens (jti, user_id, expires_at) VALUES ($1, $2, $3)"
# Single use: only the first refresh with a token finds used_at NULL.
USE_REFRESH = """
UPDATE refresh_tokens r SET used_at = now()
FROM users u
WHERE r.jti = $1 AND r.user_id = u.id AND r.used_at IS NULL AND r.expires_at > now()
  AND u.is_active
RETURNING u.id, u.is_admin
"""
DELETE_EXPIRED_REFRESH = "DELETE FROM refresh_tokens WHERE expires_at < now() - interval '1 day'"


async def create_user(
    pool: asyncpg.Pool,
    username: str,
    email: str,
    password: str,
    rounds: int,
    *,
    is_admin: bool = False,
) -> asyncpg.Record | None:
    """Insert a user; None when the username is taken."""
    hashed = await hash_password(password, rounds)
    return await pool.fetchrow(INSERT_USER, username, email, hashed, is_admin)


async def issue_pair(
    pool: asyncpg.Pool,
    tokens: TokenService,
    user_id: int,
    is_admin: bool,
    conn: asyncpg.Connection | None = None,
) -> dict[str, str]:
    jti = uuid.uuid4()
    expires = datetime.now(UTC) + timedelta(seconds=tokens.refresh_ttl_s)
    await (conn or pool).execute(INSERT_REFRESH, jti, user_id, expires)
    return {
        "access": tokens.access_token(user_id, is_admin),
        "refresh": tokens.refresh_token(user_id, jti, int(expires.timestamp())),
    }


# Checked on unknown usernames too, so that timing does not tell which usernames exist: made
# lazily (nothing at import time) with the configured cost, by bcrypt rounds.
_dummy_hashes: dict[int, str] = {}


async def dummy_hash(rounds: int) -> str:
    if rounds not in _dummy_hashes:
        _dummy_hashes[rounds] = await hash_password("not a real password", rounds)
    return _dummy_hashes[rounds]


async def login(
    pool: asyncpg.Pool, tokens: TokenService, username: str, password: str, rounds: int
) -> dict[str, str]:
    """A token pair for valid credentials of an active user; Unauthorized otherwise."""
    row = await pool.fetchrow(SELECT_LOGIN, username)
    if row is None:
        await check_password(password, await dummy_hash(rounds))
        raise Unauthorized("No active account found with the given credentials.")
    if not await check_password(password, row["password_hash"]) or not row["is_active"]:
        raise Unauthorized("No active account found with the given credentials.")
    return await issue_pair(pool, tokens, row["id"], row["is_admin"])


async def refresh(pool: asyncpg.Pool, tokens: TokenService, token: str) -> dict[str, str]:
    claims = tokens.decode(token, REFRESH)
    try:
        jti = uuid.UUID(claims["jti"])
    except (ValueError, TypeError, AttributeError):
        raise Unauthorized("Token is invalid.") from None
    async with pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(USE_REFRESH, jti)
        if row is None or row["id"] != int(claims["sub"]):
            raise Unauthorized("Refresh token was already used, revoked or the user is inactive.")
        return await issue_pair(pool, tokens, row["id"], row["is_admin"], conn)


# --- schemas ---------------------------------------------------------------------------------


class SignupSchema(Schema):
    username = StrictString(
        required=True,
        max_length=150,
        trim=False,
        metadata={"description": "letters, digits and @.+-_"},
    )
    email = fields.Email(
        required=True,
        validate=validate.Length(
            max=254, error="Ensure this field has no more than {max} characters."
        ),
    )
    password = StrictString(
        required=True,
        min_length=1,
        max_length=100_000,
        trim=False,
        metadata={"minLength": 8, "maxLength": 128},
    )

    @validates_schema
    def _check(self, data: dict[str, Any], **kwargs: Any) -> None:
        username = data.get("username")
        errors: dict[str, list[str]] = {}
        if isinstance(username, str) and not USERNAME_RE.match(username):
            errors["username"] = [
                "Enter a valid username: letters, digits and @/./+/-/_ characters only."
            ]
        password = data.get("password")
        if isinstance(password, str) and isinstance(username, str):
            problems = password_problems(password, username)
            if problems:
                errors["password"] = problems
        if errors:
            raise ValidationError(errors)


class UserSchema(Schema):
    id = fields.Integer()
    username = fields.String()
    email = fields.String()


class MeSchema(UserSchema):
    is_admin = fields.Boolean()


class LoginSchema(Schema):
    username = StrictString(required=True, max_length=150, trim=False)
    password = StrictString(required=True, max_length=100_000, trim=False)


class RefreshSchema(Schema):
    refresh = StrictString(required=True, max_length=4096, trim=True)


class TokenPairSchema(Schema):
    access = fields.String()
    refresh = fields.String()


class ErrorSchema(Schema):
    detail = fields.String()
    errors = fields.Dict(keys=fields.String(), values=fields.List(fields.String()))


# --- handlers --------------------------------------------------------------------------------

routes = web.RouteTableDef()


@docs(
    tags=["Auth"],
    summary="Create an account",
    responses={201: {"description": "created"}, 400: {"description": "invalid input"}},
)
@request_schema(SignupSchema)
@response_schema(UserSchema, 201)
@routes.post("/api/auth/signup/")
async def signup(request: web.Request) -> web.Response:
    data = await parse_body(request, SignupSchema())
    settings = request.app[appkeys.SETTINGS]
    user = await create_user(
        request.app[appkeys.PG_POOL],
        data["username"],
        data["email"],
        data["password"],
        settings.bcrypt_rounds,
    )
    if user is None:
        raise InvalidInput(errors={"username": ["A user with that username already exists."]})
    return json_response(
        {"id": user["id"], "username": user["username"], "email": user["email"]}, status=201
    )


@docs(
    tags=["Auth"],
    summary="Log in: an access and a refresh token",
    responses={200: {"description": "tokens"}, 401: {"description": "wrong credentials"}},
)
@request_schema(LoginSchema)
@response_schema(TokenPairSchema, 200)
@routes.post("/api/auth/login/")
async def login_view(request: web.Request) -> web.Response:
    data = await parse_body(request, LoginSchema())
    pair = await login(
        request.app[appkeys.PG_POOL],
        request.app[appkeys.TOKENS],
        data["username"],
        data["password"],
        request.app[appkeys.SETTINGS].bcrypt_rounds,
    )
    return json_response(pair)


@docs(
    tags=["Auth"],
    summary="Rotate a refresh token into a new pair",
    responses={200: {"description": "tokens"}, 401: {"description": "invalid refresh token"}},
)
@request_schema(RefreshSchema)
@response_schema(TokenPairSchema, 200)
@routes.post("/api/auth/token/refresh/")
async def refresh_view(request: web.Request) -> web.Response:
    data = await parse_body(request, RefreshSchema())
    pair = await refresh(request.app[appkeys.PG_POOL], request.app[appkeys.TOKENS], data["refresh"])
    return json_response(pair)


@docs(
    tags=["Auth"],
    summary="The current user",
    security=[{"Bearer": []}],
    responses={200: {"description": "the user"}, 401: {"description": "not authenticated"}},
)
@response_schema(MeSchema, 200)
@routes.get("/api/auth/me/")
async def me(request: web.Request) -> web.Response:
    principal = require_user(request)
    row = await request.app[appkeys.PG_POOL].fetchrow(SELECT_ME, principal.user_id)
    if row is None or not row["is_active"]:
        raise Unauthorized("User is inactive or does not exist.")
    return json_response(
        {
            "id": row["id"],
            "username": row["username"],
            "email": row["email"],
            "is_admin": row["is_admin"],
        }
    )
