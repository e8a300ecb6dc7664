"""Auth as a client sees it: signup, login, refresh rotation, me, and every way a token is wrong."""

from __future__ import annotations

import asyncio
import base64
import json
import threading
import time
import uuid
import warnings
from collections.abc import Callable
from typing import Any

import asyncpg
import bcrypt
import jwt
import pytest
from jwt.warnings import InsecureKeyLengthWarning

from engine import auth
from engine.errors import Unauthorized, Unavailable
from engine.settings import Settings
from tests.conftest import Api, make_show

SIGNUP = "/api/auth/signup/"
LOGIN = "/api/auth/login/"
REFRESH = "/api/auth/token/refresh/"
ME = "/api/auth/me/"
PASSWORD = "correct-horse-9"
LEEWAY_S = 10


def assert_error(status: int, body: Any, expected: int, field: str | None = None) -> None:
    """The contract's error shape: {"detail": str} and, for field errors, {"errors": {...}}."""
    assert status == expected, body
    assert isinstance(body, dict), body
    assert isinstance(body.get("detail"), str) and body["detail"], body
    if field is not None:
        errors = body.get("errors")
        assert isinstance(errors, dict) and field in errors, body
        messages = errors[field]
        assert isinstance(messages, list) and messages, body
        assert all(isinstance(m, str) and m for m in messages), body


async def signup(
    http: Api, username: str = "alice", password: str = PASSWORD, email: str | None = None
) -> tuple[int, Any]:
    return await http.post(
        SIGNUP,
        json={
            "username": username,
            "email": f"{username}@example.com" if email is None else email,
            "password": password,
        },
    )


async def login(http: Api, username: str = "alice", password: str = PASSWORD) -> tuple[int, Any]:
    return await http.post(LOGIN, json={"username": username, "password": password})


async def pair(http: Api, username: str = "alice", password: str = PASSWORD) -> dict[str, str]:
    """Sign up and log in; the {access, refresh} pair."""
    status, body = await signup(http, username, password)
    assert status == 201, body
    status, body = await login(http, username, password)
    assert status == 200, body
    return body


def claims_of(token: str) -> dict[str, Any]:
    return jwt.decode(token, options={"verify_signature": False})


def sign(claims: dict[str, Any], secret: str, algorithm: str = "HS256") -> str:
    with warnings.catch_warnings():
        # The right secret, the wrong algorithm: PyJWT warns that it is short for HS512.
        warnings.simplefilter("ignore", InsecureKeyLengthWarning)
        return jwt.encode(claims, secret, algorithm=algorithm)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


NONE_HEADER = b64url(b'{"alg":"none","typ":"JWT"}')


# --- signup ----------------------------------------------------------------------------------


async def test_signup_returns_the_user_without_secrets(http: Api, pg: asyncpg.Pool) -> None:
    status, body = await signup(http, "alice")
    assert status == 201, body
    assert set(body) == {"id", "username", "email"}
    assert body["username"] == "alice" and body["email"] == "alice@example.com"
    assert isinstance(body["id"], int) and 0 < body["id"] < 2**53
    row = await pg.fetchrow("SELECT * FROM users WHERE id = $1", body["id"])
    assert row["username"] == "alice" and row["is_active"] and not row["is_admin"]
    assert PASSWORD not in row["password_hash"]
    assert row["password_hash"].startswith("$2")


async def test_signup_taken_username_is_400(http: Api, pg: asyncpg.Pool) -> None:
    assert (await signup(http, "alice"))[0] == 201
    status, body = await signup(http, "alice", "another-pass-1", "other@example.com")
    assert_error(status, body, 400, "username")
    assert await pg.fetchval("SELECT count(*) FROM users") == 1


async def test_concurrent_signups_of_one_username_create_one_user(
    http: Api, pg: asyncpg.Pool
) -> None:
    results = await asyncio.gather(
        *(signup(http, "alice", email=f"a{i}@example.com") for i in range(10))
    )
    assert sorted(status for status, _ in results) == [201] + [400] * 9, results
    for status, body in results:
        if status == 400:
            assert_error(status, body, 400, "username")
    assert await pg.fetchval("SELECT count(*) FROM users") == 1


@pytest.mark.parametrize(
    "email",
    [
        "not-an-email",
        "alice@",
        "@example.com",
        "alice@@example.com",
        "alice example@example.com",
        "",
        "   ",
        "a" * 64 + "@" + "b" * 63 + "." + "c" * 63 + "." + "d" * 58 + ".com",  # 255 chars
        "x" * 10_000 + "@example.com",
    ],
    ids=["plain", "no-domain", "no-local", "two-at", "space", "empty", "blank", "255", "10k"],
)
async def test_signup_bad_email_is_400(http: Api, pg: asyncpg.Pool, email: str) -> None:
    status, body = await signup(http, "alice", email=email)
    assert_error(status, body, 400, "email")
    assert await pg.fetchval("SELECT count(*) FROM users") == 0


async def test_signup_email_of_254_characters_is_accepted(http: Api) -> None:
    email = "a" * 64 + "@" + "b" * 63 + "." + "c" * 63 + "." + "d" * 57 + ".com"
    assert len(email) == 254
    status, body = await signup(http, "alice", email=email)
    assert status == 201, body
    assert body["email"] == email


@pytest.mark.parametrize(
    ("username", "password"),
    [
        ("alice", "short7!"),
        ("alice", "a1b2c3d"),
        ("alice", "12345678901234"),
        ("alice", "0" * 128),
        ("longusername", "longusername"),
        ("alice", "x" * 129),
        ("alice", "x" * 10_000),
        ("alice", ""),
    ],
    ids=["7-chars", "7-mixed", "all-digits", "128-digits", "username", "129", "10k", "empty"],
)
async def test_signup_weak_or_oversized_password_is_400(
    http: Api, pg: asyncpg.Pool, username: str, password: str
) -> None:
    status, body = await signup(http, username, password)
    assert_error(status, body, 400, "password")
    assert await pg.fetchval("SELECT count(*) FROM users") == 0


@pytest.mark.parametrize(
    "username",
    ["", "bad name", "bad/name", "bad!", "semi;colon", "tab\tname", "new\nline", "a" * 151],
    ids=["empty", "space", "slash", "bang", "semicolon", "tab", "newline", "151"],
)
async def test_signup_bad_username_is_400(http: Api, pg: asyncpg.Pool, username: str) -> None:
    status, body = await signup(http, username, email="someone@example.com")
    assert_error(status, body, 400, "username")
    assert await pg.fetchval("SELECT count(*) FROM users") == 0


@pytest.mark.parametrize(
    "username", ["a", "a" * 150, "a.b@c+d-e_f", "Zoë_2"], ids=["1", "150", "symbols", "unicode"]
)
async def test_signup_username_bounds_are_accepted(http: Api, username: str) -> None:
    status, body = await signup(http, username, email="someone@example.com")
    assert status == 201, body
    assert body["username"] == username
    status, body = await login(http, username)
    assert status == 200, body


@pytest.mark.parametrize("password", ["abcdefg8", "p" * 128], ids=["8", "128"])
async def test_signup_password_bounds_are_accepted(http: Api, password: str) -> None:
    await pair(http, "alice", password)


async def test_signup_missing_fields_are_400_each(http: Api) -> None:
    status, body = await http.post(SIGNUP, json={})
    assert_error(status, body, 400)
    assert {"username", "email", "password"} <= set(body["errors"])


async def test_long_password_every_character_counts(http: Api) -> None:
    """bcrypt reads 72 bytes; the engine must not let the rest of a long password go unchecked."""
    password = "p" * 99 + "A"
    other = "p" * 99 + "B"
    tokens = await pair(http, "alice", password)
    assert set(tokens) == {"access", "refresh"}
    status, body = await login(http, "alice", other)
    assert_error(status, body, 401)
    status, body = await login(http, "alice", password[:72])
    assert_error(status, body, 401)
    assert (await login(http, "alice", password))[0] == 200


async def test_unicode_password_works_and_every_character_counts(http: Api) -> None:
    # 4-byte characters: 40 of them are 160 bytes, far past bcrypt's 72.
    password = "pässwörd-🎟️-" + "🎬" * 40
    await pair(http, "alice", password)
    status, body = await login(http, "alice", password[:-1] + "🎭")
    assert_error(status, body, 401)
    assert (await login(http, "alice", password))[0] == 200


# --- login -----------------------------------------------------------------------------------


async def test_login_returns_an_access_and_a_refresh_token(http: Api, settings: Settings) -> None:
    status, user = await signup(http, "alice")
    assert status == 201
    status, body = await login(http, "alice")
    assert status == 200, body
    assert set(body) == {"access", "refresh"}
    access = jwt.decode(body["access"], settings.jwt_secret, algorithms=["HS256"])
    refresh = jwt.decode(body["refresh"], settings.jwt_secret, algorithms=["HS256"])
    assert access["typ"] == "access" and refresh["typ"] == "refresh"
    assert access["sub"] == refresh["sub"] == str(user["id"])
    assert access["exp"] < refresh["exp"]


async def test_login_wrong_password_and_unknown_user_are_the_same_401(http: Api) -> None:
    assert (await signup(http, "alice"))[0] == 201
    wrong_status, wrong = await login(http, "alice", "wrong-password-1")
    assert_error(wrong_status, wrong, 401)
    unknown_status, unknown = await login(http, "nobody", PASSWORD)
    assert_error(unknown_status, unknown, 401)
    # No hint of which usernames exist.
    assert wrong == unknown
    assert_error(*await login(http, "ALICE"), 401)


async def test_unknown_username_costs_a_full_bcrypt_check(
    pg: asyncpg.Pool, settings: Settings
) -> None:
    """Login must spend as long on an unknown username as on a known one (no user enumeration
    by timing), whatever the configured bcrypt cost."""
    rounds = 12
    started = time.perf_counter()
    hashed = await asyncio.to_thread(bcrypt.hashpw, b"calibrate", bcrypt.gensalt(rounds))
    one_check = time.perf_counter() - started
    assert hashed
    tokens = auth.TokenService(settings.jwt_secret, 60, 600, LEEWAY_S)
    with pytest.raises(Unauthorized):  # warm any lazily built dummy hash
        await auth.login(pg, tokens, "nobody", PASSWORD, rounds)
    started = time.perf_counter()
    with pytest.raises(Unauthorized):
        await auth.login(pg, tokens, "nobody", PASSWORD, rounds)
    assert time.perf_counter() - started > one_check / 3


async def test_inactive_user_is_refused_login_and_refresh_at_once(
    http: Api, pg: asyncpg.Pool
) -> None:
    tokens = await pair(http, "alice")
    await pg.execute("UPDATE users SET is_active = false WHERE username = 'alice'")
    assert_error(*await login(http, "alice"), 401)
    assert_error(*await http.post(REFRESH, json={"refresh": tokens["refresh"]}), 401)
    # Active again: the same refresh token was never spent, so it works.
    await pg.execute("UPDATE users SET is_active = true WHERE username = 'alice'")
    status, body = await http.post(REFRESH, json={"refresh": tokens["refresh"]})
    assert status == 200, body


async def test_login_with_a_wrong_password_for_an_inactive_user_is_401(
    http: Api, pg: asyncpg.Pool
) -> None:
    await pair(http, "alice")
    await pg.execute("UPDATE users SET is_active = false WHERE username = 'alice'")
    assert_error(*await login(http, "alice", "wrong-password-1"), 401)


# --- refresh ---------------------------------------------------------------------------------


async def test_refresh_rotates_the_pair(http: Api, settings: Settings) -> None:
    first = await pair(http, "alice")
    status, second = await http.post(REFRESH, json={"refresh": first["refresh"]})
    assert status == 200, second
    assert set(second) == {"access", "refresh"}
    assert second["refresh"] != first["refresh"] and second["access"] != first["access"]
    assert claims_of(second["access"])["sub"] == claims_of(first["access"])["sub"]
    status, me = await http.get(ME, token=second["access"])
    assert status == 200 and me["username"] == "alice"
    # The spent token is refused from now on; the new one works once.
    assert_error(*await http.post(REFRESH, json={"refresh": first["refresh"]}), 401)
    status, third = await http.post(REFRESH, json={"refresh": second["refresh"]})
    assert status == 200, third
    assert_error(*await http.post(REFRESH, json={"refresh": second["refresh"]}), 401)


async def test_concurrent_refreshes_with_one_token_succeed_once(http: Api) -> None:
    tokens = await pair(http, "alice")
    results = await asyncio.gather(
        *(http.post(REFRESH, json={"refresh": tokens["refresh"]}) for _ in range(10))
    )
    statuses = sorted(status for status, _ in results)
    assert statuses == [200] + [401] * 9, results


async def test_refresh_keeps_the_admin_right(http: Api, pg: asyncpg.Pool) -> None:
    await http.admin(pg, "root")
    status, tokens = await login(http, "root")
    assert status == 200
    status, body = await http.post(REFRESH, json={"refresh": tokens["refresh"]})
    assert status == 200
    status, me = await http.get(ME, token=body["access"])
    assert status == 200 and me["is_admin"] is True


def _refresh_failures(tokens: dict[str, str], secret: str) -> dict[str, str]:
    """Refresh tokens that must each be refused with 401."""
    good = claims_of(tokens["refresh"])
    head, payload, signature = tokens["refresh"].split(".")
    now = int(time.time())
    forged_payload = b64url(json.dumps({**good, "sub": "999999"}).encode())
    return {
        "access-token": tokens["access"],
        "tampered-signature": f"{head}.{payload}.{signature[:10]}"
        + ("A" if signature[10] != "A" else "B")
        + signature[11:],
        "tampered-payload": f"{head}.{forged_payload}.{signature}",
        "expired": sign({**good, "iat": now - 3600, "exp": now - LEEWAY_S - 20}, secret),
        "other-secret": sign(good, "another-secret-that-is-long-enough"),
        "unknown-jti": sign({**good, "jti": str(uuid.uuid4())}, secret),
        "jti-not-uuid": sign({**good, "jti": "not-a-uuid"}, secret),
        "no-typ": sign({k: v for k, v in good.items() if k != "typ"}, secret),
        "other-user": sign({**good, "sub": str(int(good["sub"]) + 1000)}, secret),
        "hs512": sign(good, secret, "HS512"),
        "alg-none": f"{NONE_HEADER}.{payload}.",
        "garbage": "not-a-token",
        "two-segments": f"{head}.{payload}",
    }


REFRESH_FAILURES = [
    "access-token",
    "tampered-signature",
    "tampered-payload",
    "expired",
    "other-secret",
    "unknown-jti",
    "jti-not-uuid",
    "no-typ",
    "other-user",
    "hs512",
    "alg-none",
    "garbage",
    "two-segments",
]


@pytest.mark.parametrize("failure", REFRESH_FAILURES)
async def test_refresh_refuses_bad_tokens(http: Api, settings: Settings, failure: str) -> None:
    tokens = await pair(http, "alice")
    bad = _refresh_failures(tokens, settings.jwt_secret)[failure]
    assert_error(*await http.post(REFRESH, json={"refresh": bad}), 401)
    # The genuine refresh token was not spent by the failed attempt.
    status, body = await http.post(REFRESH, json={"refresh": tokens["refresh"]})
    assert status == 200, body


async def test_refresh_token_is_not_an_access_token(http: Api, pg: asyncpg.Pool) -> None:
    tokens = await pair(http, "alice")
    show = await make_show(pg)
    assert_error(*await http.get(ME, token=tokens["refresh"]), 401)
    assert_error(
        *await http.post(
            f"/api/shows/{show}/book/", token=tokens["refresh"], json={"seat_number": 1}
        ),
        401,
    )


# --- me and every token failure on protected endpoints ---------------------------------------


async def test_me(http: Api, pg: asyncpg.Pool) -> None:
    tokens = await pair(http, "alice")
    status, body = await http.get(ME, token=tokens["access"])
    assert status == 200, body
    user_id = await pg.fetchval("SELECT id FROM users WHERE username = 'alice'")
    assert body == {
        "id": user_id,
        "username": "alice",
        "email": "alice@example.com",
        "is_admin": False,
    }
    admin = await http.admin(pg, "root")
    status, body = await http.get(ME, token=admin)
    assert status == 200 and body["is_admin"] is True and body["username"] == "root"


def _auth_headers(mode: str, access: str, secret: str) -> dict[str, str]:
    """An Authorization header (or none) for each way a token can be wrong."""
    good = claims_of(access)
    head, payload, signature = access.split(".")
    now = int(time.time())

    def without(claim: str) -> dict[str, Any]:
        return {k: v for k, v in good.items() if k != claim}

    bearer = {
        "bearer-only": "Bearer",
        "bearer-space": "Bearer ",
        "wrong-scheme": f"Token {access}",
        "basic": "Basic YWxpY2U6Y29ycmVjdC1ob3JzZS05",
        "no-scheme": access,
        "malformed": "Bearer not-a-jwt",
        "two-segments": f"Bearer {head}.{payload}",
        "garbage-segments": "Bearer a.b.c",
        "non-ascii": "Bearer é.é.é",
        "tampered-signature": f"Bearer {head}.{payload}.{signature[:10]}"
        + ("A" if signature[10] != "A" else "B")
        + signature[11:],
        "tampered-payload": "Bearer "
        + f"{head}.{b64url(json.dumps({**good, 'sub': '999999', 'adm': True}).encode())}"
        + f".{signature}",
        "expired": "Bearer "
        + sign({**good, "iat": now - 3600, "exp": now - LEEWAY_S - 20}, secret),
        "other-secret": "Bearer " + sign(good, "another-secret-that-is-long-enough"),
        "alg-none": f"Bearer {NONE_HEADER}.{payload}.",
        "hs512": "Bearer " + sign(good, secret, "HS512"),
        "typ-refresh": "Bearer " + sign({**good, "typ": "refresh"}, secret),
        "no-typ": "Bearer " + sign(without("typ"), secret),
        "no-exp": "Bearer " + sign(without("exp"), secret),
        "no-sub": "Bearer " + sign(without("sub"), secret),
        "sub-not-a-number": "Bearer " + sign({**good, "sub": "alice"}, secret),
        "sub-an-integer": "Bearer " + sign({**good, "sub": 1}, secret),
        "sub-arabic-digit": "Bearer " + sign({**good, "sub": "١"}, secret),
        "sub-superscript": "Bearer " + sign({**good, "sub": "²"}, secret),
        "sub-above-int64": "Bearer " + sign({**good, "sub": "9" * 20}, secret),
        "sub-zero": "Bearer " + sign({**good, "sub": "0"}, secret),
        "not-yet-valid": "Bearer " + sign({**good, "nbf": now + 3600}, secret),
        "two-tokens": f"Bearer {access} {access}",
    }
    return {} if mode == "none" else {"Authorization": bearer[mode]}


TOKEN_FAILURES = [
    "none",
    "bearer-only",
    "bearer-space",
    "wrong-scheme",
    "basic",
    "no-scheme",
    "malformed",
    "two-segments",
    "garbage-segments",
    "non-ascii",
    "tampered-signature",
    "tampered-payload",
    "expired",
    "other-secret",
    "alg-none",
    "hs512",
    "typ-refresh",
    "no-typ",
    "no-exp",
    "no-sub",
    "sub-not-a-number",
    "sub-an-integer",
    "sub-arabic-digit",
    "sub-superscript",
    "sub-above-int64",
    "sub-zero",
    "not-yet-valid",
    "two-tokens",
]


@pytest.mark.parametrize("mode", TOKEN_FAILURES)
async def test_bad_token_on_me_is_401(http: Api, settings: Settings, mode: str) -> None:
    tokens = await pair(http, "alice")
    headers = _auth_headers(mode, tokens["access"], settings.jwt_secret)
    assert_error(*await http.get(ME, headers=headers), 401)
    # The genuine token still works.
    assert (await http.get(ME, token=tokens["access"]))[0] == 200


@pytest.mark.parametrize("mode", TOKEN_FAILURES)
async def test_bad_token_on_book_is_401_and_books_nothing(
    http: Api, pg: asyncpg.Pool, settings: Settings, mode: str
) -> None:
    tokens = await pair(http, "alice")
    show = await make_show(pg, total_seats=3)
    headers = _auth_headers(mode, tokens["access"], settings.jwt_secret)
    status, body = await http.post(
        f"/api/shows/{show}/book/", headers=headers, json={"seat_number": "1"}
    )
    assert_error(status, body, 401)
    status, body = await http.get(f"/api/shows/{show}/")
    assert status == 200 and body["available_seats"] == 3
    status, body = await http.post(
        f"/api/shows/{show}/book/", token=tokens["access"], json={"seat_number": "1"}
    )
    assert status == 201, body


async def test_undecodable_header_bytes_are_401(server: str) -> None:
    """Bytes that are not UTF-8 in the Authorization header: 401, not 500."""
    host, port = server.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(
            b"GET /api/auth/me/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
            b"Authorization: Bearer \xff\xfe.\xff.\xff\r\n\r\n"
        )
        await writer.drain()
        response = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
        await writer.wait_closed()
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 401"), response
    assert b"x-request-id" in head.lower()
    assert isinstance(json.loads(body)["detail"], str)


async def test_token_expired_within_the_leeway_still_works(http: Api, settings: Settings) -> None:
    tokens = await pair(http, "alice")
    now = int(time.time())
    recent = sign(
        {**claims_of(tokens["access"]), "iat": now - 600, "exp": now - 5}, settings.jwt_secret
    )
    status, body = await http.get(ME, token=recent)
    assert status == 200, body
    assert body["username"] == "alice"


async def test_lowercase_bearer_scheme_is_accepted(http: Api) -> None:
    tokens = await pair(http, "alice")
    status, body = await http.get(ME, headers={"Authorization": f"bearer {tokens['access']}"})
    assert status == 200, body


async def test_admin_right_is_checked_at_each_request(http: Api, pg: asyncpg.Pool) -> None:
    """Revoked: a valid token without the right is 403; deactivated: the token is refused."""
    admin = await http.admin(pg, "root")
    assert (await http.get("/api/admin/users/", token=admin))[0] == 200
    await pg.execute("UPDATE users SET is_admin = false WHERE username = 'root'")
    assert_error(*await http.get("/api/admin/users/", token=admin), 403)
    await pg.execute("UPDATE users SET is_admin = true, is_active = false WHERE username = 'root'")
    assert_error(*await http.get("/api/admin/users/", token=admin), 401)


async def test_token_of_a_deleted_user_is_401_on_me(http: Api, pg: asyncpg.Pool) -> None:
    tokens = await pair(http, "alice")
    await pg.execute("DELETE FROM refresh_tokens")
    await pg.execute("DELETE FROM users WHERE username = 'alice'")
    assert_error(*await http.get(ME, token=tokens["access"]), 401)


# --- bcrypt off the event loop ---------------------------------------------------------------


async def test_bcrypt_does_not_block_the_event_loop(http: Api, pg: asyncpg.Pool) -> None:
    """Logins against a costly hash run while health probes keep answering promptly.

    The test server shares this event loop. Were bcrypt run on it, the ten logins' checks would
    run one after the other on the loop and a probe would wait behind several of them (many
    times `one_check`); off the loop, probes answer in milliseconds while the checks run.
    """
    rounds = 12
    started = time.perf_counter()
    hashed = await asyncio.to_thread(auth.hash_password_sync, PASSWORD, rounds)
    one_check = time.perf_counter() - started
    for i in range(10):
        await pg.execute(
            "INSERT INTO users (username, email, password_hash) VALUES ($1, $2, $3)",
            f"slow{i}",
            f"slow{i}@example.com",
            hashed,
        )

    logins = [asyncio.create_task(login(http, f"slow{i}")) for i in range(10)]
    latencies: list[float] = []
    # Probes spaced 10 ms apart, while the logins (ten checks) are in flight.
    while len(latencies) < 50 and not all(t.done() for t in logins):
        await asyncio.sleep(0.01)
        started = time.perf_counter()
        status, body = await http.get("/health/live")
        latencies.append(time.perf_counter() - started)
        assert status == 200, body
    results = await asyncio.gather(*logins)
    assert [status for status, _ in results] == [200] * 10
    assert len(latencies) >= 10, (latencies, one_check)
    assert max(latencies) < 3 * one_check, (latencies, one_check)


async def test_password_helpers_run_off_the_event_loop() -> None:
    """hash_password and check_password run bcrypt in a thread of their own, not the loop's."""
    threads: list[str] = []
    real_hash, real_check = auth.hash_password_sync, auth.check_password_sync

    def spy(fn: Callable[..., Any]) -> Callable[..., Any]:
        def wrapped(*args: Any) -> Any:
            threads.append(threading.current_thread().name)
            return fn(*args)

        return wrapped

    work = auth.PasswordWork()
    hashed = await work.run(spy(real_hash), PASSWORD, 4)
    assert await work.run(spy(real_check), PASSWORD, hashed)
    assert not await work.run(spy(real_check), "wrong-password", hashed)
    assert len(threads) == 3 and all(name.startswith("bcrypt") for name in threads), threads
    assert threading.current_thread().name not in threads
    # The module's helpers go through the same gate.
    assert await auth.check_password(PASSWORD, await auth.hash_password(PASSWORD, 4))


async def test_password_work_turns_away_what_it_could_not_start_in_time() -> None:
    """With one thread and hashes of 0.2 s, a caller who would wait over 0.3 s for it is
    answered at once with Unavailable (a 503), and the ones within the bound all run."""
    work = auth.PasswordWork(max_wait_s=0.3, workers=1)
    await work.run(time.sleep, 0.2)  # measures a hash: 0.2 s
    started = time.perf_counter()
    calls = [asyncio.create_task(work.run(time.sleep, 0.2)) for _ in range(6)]
    done = await asyncio.gather(*calls, return_exceptions=True)
    turned_away = [r for r in done if isinstance(r, Unavailable)]
    # The first runs at once, the second waits 0.2 s for it: within the bound; the others would
    # wait 0.4 s or more.
    assert done[:2] == [None, None], done
    assert len(turned_away) == 4, done
    assert time.perf_counter() - started < 0.6
    assert work.expected_wait_s() == 0
    await work.run(time.sleep, 0.01)  # and it takes work again once the queue is gone


async def test_a_login_storm_beyond_the_cores_is_answered_promptly(
    http: Api, pg: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """30 logins at once against a costly hash on one bcrypt thread: each is answered within
    about the bound (a 200, or a 503 with Retry-After at once), none waits for the request
    deadline, and every 200 is a real token pair."""
    rounds = 12
    hashed = await asyncio.to_thread(auth.hash_password_sync, PASSWORD, rounds)
    for i in range(30):
        await pg.execute(
            "INSERT INTO users (username, email, password_hash) VALUES ($1, $2, $3)",
            f"storm{i}",
            f"storm{i}@example.com",
            hashed,
        )
    work = auth.PasswordWork(max_wait_s=0.5, workers=1)
    monkeypatch.setattr(auth, "passwords", work)
    status, _ = await login(http, "storm0")  # measures a hash
    assert status == 200

    async def timed_login(i: int) -> tuple[int, Any, str | None, float]:
        started = time.perf_counter()
        async with http.session.post(
            LOGIN, json={"username": f"storm{i}", "password": PASSWORD}
        ) as resp:
            body = await resp.json()
            return resp.status, body, resp.headers.get("Retry-After"), time.perf_counter() - started

    results = await asyncio.gather(*(timed_login(i) for i in range(30)))
    ok = [r for r in results if r[0] == 200]
    busy = [r for r in results if r[0] == 503]
    assert len(ok) + len(busy) == 30, [r[:2] for r in results]
    assert ok and busy, [r[0] for r in results]
    assert all(set(body) == {"access", "refresh"} for _, body, _, _ in ok)
    assert all(retry == "2" and "busy" in body["detail"] for _, body, retry, _ in busy)
    one_hash = work._hash_s
    # A 503 costs no hash: far sooner than the requests that waited for theirs.
    assert max(took for *_, took in busy) < one_hash, (busy, one_hash)
    assert max(took for *_, took in results) < work.max_wait_s + 3 * one_hash
