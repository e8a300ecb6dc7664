"""Idempotency-Key on book, cancel and admin writes: a retry replays the first answer."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
from arq.connections import ArqRedis
from multidict import CIMultiDict

from engine import keys
from engine.idempotency import ANSWER_TTL_S, HEADER
from tests.conftest import Api, make_show


def key(value: str) -> dict[str, str]:
    return {HEADER: value}


async def book(
    http: Api, token: str, show: int, seat: Any, idem: str | None = None
) -> tuple[int, Any]:
    return await http.post(
        f"/api/shows/{show}/book/",
        token=token,
        json={"seat_number": seat},
        headers=key(idem) if idem is not None else None,
    )


async def raw_post(
    http: Api, path: str, token: str | None, body: bytes, headers: dict[str, str]
) -> tuple[int, bytes, dict[str, str]]:
    """Status, exact body bytes and headers, for comparing answers byte for byte."""
    hdrs = {"Content-Type": "application/json", **headers}
    if token:
        hdrs["Authorization"] = f"Bearer {token}"
    async with http.session.post(path, data=body, headers=hdrs) as resp:
        return resp.status, await resp.read(), dict(resp.headers)


async def user_id(http: Api, token: str) -> int:
    status, body = await http.get("/api/auth/me/", token=token)
    assert status == 200, body
    return int(body["id"])


async def bookings_in_pg(pg: asyncpg.Pool, show: int) -> list[asyncpg.Record]:
    return list(await pg.fetch("SELECT * FROM bookings WHERE show_id = $1", show))


async def test_replay_gives_the_same_answer_and_books_once(
    http: Api, pg: asyncpg.Pool, drain: Any
) -> None:
    token = await http.user()
    show = await make_show(pg)
    path = f"/api/shows/{show}/book/"
    first = await raw_post(http, path, token, b'{"seat_number": "3"}', key("k-1"))
    again = await raw_post(http, path, token, b'{"seat_number": "3"}', key("k-1"))
    assert first[0] == again[0] == 201
    assert first[1] == again[1]
    assert first[2]["Content-Type"] == again[2]["Content-Type"]
    assert again[2].get("Idempotent-Replayed") == "true"
    assert "Idempotent-Replayed" not in first[2]
    await drain()
    rows = await bookings_in_pg(pg, show)
    assert len(rows) == 1 and rows[0]["seat_number"] == "3"


async def test_without_the_header_nothing_changes(http: Api, pg: asyncpg.Pool, redis: ArqRedis):
    token = await http.user()
    show = await make_show(pg)
    assert (await book(http, token, show, "1"))[0] == 201
    assert (await book(http, token, show, "1"))[0] == 409
    assert [k async for k in redis.scan_iter(match="idempotency:*")] == []


async def test_concurrent_requests_with_one_key_book_once(
    http: Api, pg: asyncpg.Pool, drain: Any
) -> None:
    token = await http.user()
    show = await make_show(pg)
    results = await asyncio.gather(*(book(http, token, show, "5", "same") for _ in range(20)))
    created = [body for status, body in results if status == 201]
    busy = [body for status, body in results if status == 409]
    assert len(created) + len(busy) == 20, results
    assert created, results
    assert all(body == created[0] for body in created)
    assert all("still in progress" in body["detail"] for body in busy)
    await drain()
    rows = await bookings_in_pg(pg, show)
    assert len(rows) == 1 and rows[0]["id"] == created[0]["id"]


async def test_in_progress_is_409_with_retry_after(
    http: Api, pg: asyncpg.Pool, redis: ArqRedis
) -> None:
    """A request still running (its marker is there): a repeat waits, it does not run again."""
    token = await http.user()
    show = await make_show(pg)
    path = f"/api/shows/{show}/book/"
    status, _, _ = await raw_post(http, path, token, b'{"seat_number": "1"}', key("slow"))
    assert status == 201
    # Make the stored answer look like a request that is still running.
    redis_key = keys.idempotency(await user_id(http, token), "slow")
    stored = await redis.get(redis_key)
    fp = stored.split(b"\n")[1]
    await redis.set(redis_key, b"running\n" + fp + b"\ntoken", ex=60)
    status, body, headers = await raw_post(http, path, token, b'{"seat_number": "1"}', key("slow"))
    assert status == 409
    assert headers["Retry-After"] == "1"
    assert b"still in progress" in body


async def test_same_key_for_another_request_is_400(http: Api, pg: asyncpg.Pool) -> None:
    token = await http.user()
    show = await make_show(pg)
    other = await make_show(pg, title="Alien")
    assert (await book(http, token, show, "1", "k"))[0] == 201
    status, body = await book(http, token, show, "2", "k")
    assert status == 400 and "different request" in body["detail"], body
    status, body = await book(http, token, other, "1", "k")  # another path
    assert status == 400 and "different request" in body["detail"], body
    # The first answer is still there to replay.
    assert (await book(http, token, show, "1", "k"))[0] == 201


async def test_keys_are_per_user(http: Api, pg: asyncpg.Pool, drain: Any) -> None:
    alice, bob = await http.user("alice"), await http.user("bob")
    show = await make_show(pg)
    status_a, body_a = await book(http, alice, show, "1", "shared")
    status_b, body_b = await book(http, bob, show, "2", "shared")
    assert (status_a, status_b) == (201, 201)
    assert body_a["id"] != body_b["id"]
    # Bob repeating Alice's exact request runs it for Bob: the seat is Alice's, so 409.
    status, body = await book(http, bob, show, "1", "other")
    assert status == 409, body
    await drain()
    assert len(await bookings_in_pg(pg, show)) == 2


async def test_a_4xx_answer_is_kept(http: Api, pg: asyncpg.Pool) -> None:
    alice, bob = await http.user("alice"), await http.user("bob")
    show = await make_show(pg)
    assert (await book(http, alice, show, "1"))[0] == 201
    first = await book(http, bob, show, "1", "taken")
    assert first[0] == 409, first
    # Alice frees the seat; Bob's retry with the same key still gets the first answer.
    status, mine = await http.get("/api/my-bookings/", token=alice)
    assert (await http.post(f"/api/bookings/{mine['results'][0]['id']}/cancel/", token=alice))[
        0
    ] == 200
    assert await book(http, bob, show, "1", "taken") == first
    # A new key is a new request.
    assert (await book(http, bob, show, "1", "taken-2"))[0] == 201


async def test_cancel_with_a_key_replays(http: Api, pg: asyncpg.Pool, drain: Any) -> None:
    token = await http.user()
    show = await make_show(pg)
    _, booking = await book(http, token, show, "4")
    path = f"/api/bookings/{booking['id']}/cancel/"
    first = await http.post(path, token=token, headers=key("c-1"))
    again = await http.post(path, token=token, headers=key("c-1"))
    assert first[0] == 200 and first == again
    assert first[1]["status"] == "cancelled"
    await drain()
    rows = await bookings_in_pg(pg, show)
    assert [r["status"] for r in rows] == ["cancelled"]


async def test_admin_create_movie_with_a_key_creates_one(http: Api, pg: asyncpg.Pool) -> None:
    admin = await http.admin(pg)
    movie = {"title": "Alien", "duration_minutes": 117}
    results = [
        await http.post("/api/admin/movies/", token=admin, json=movie, headers=key("m"))
        for _ in range(3)
    ]
    assert results[0][0] == 201 and all(r == results[0] for r in results)
    assert await pg.fetchval("SELECT count(*) FROM movies WHERE title = 'Alien'") == 1
    # Admin cancel and delete replay as well (a 204 without a body included).
    movie_id = results[0][1]["id"]
    first = await http.delete(f"/api/admin/movies/{movie_id}/", token=admin, headers=key("d"))
    again = await http.delete(f"/api/admin/movies/{movie_id}/", token=admin, headers=key("d"))
    assert first[0] == again[0] == 204
    assert (await http.delete(f"/api/admin/movies/{movie_id}/", token=admin))[0] == 404


async def test_stored_keys_expire(http: Api, pg: asyncpg.Pool, redis: ArqRedis) -> None:
    token = await http.user()
    show = await make_show(pg)
    assert (await book(http, token, show, "1", "ttl-ok"))[0] == 201
    assert (await book(http, token, show, "99", "ttl-400"))[0] == 400
    uid = await user_id(http, token)
    stored = [k async for k in redis.scan_iter(match="idempotency:*")]
    assert sorted(stored) == sorted(
        k.encode() for k in (keys.idempotency(uid, "ttl-ok"), keys.idempotency(uid, "ttl-400"))
    )
    for k in stored:
        assert 0 < await redis.ttl(k) <= ANSWER_TTL_S


async def test_a_server_error_releases_the_key(
    http: Api, pg: asyncpg.Pool, redis: ArqRedis
) -> None:
    """A 503 (Redis refusing the seat script here) is not kept: the retry runs for real."""
    token = await http.user()
    show = await make_show(pg)
    uid = await user_id(http, token)
    # A show whose Redis state is corrupt makes the claim fail with a server error.
    await redis.set(keys.show_keys(show)[0], "not a hash")
    status, _ = await book(http, token, show, "1", "retry")
    assert status >= 500
    assert await redis.exists(keys.idempotency(uid, "retry")) == 0
    await redis.delete(keys.show_keys(show)[0])
    status, body = await book(http, token, show, "1", "retry")
    assert status == 201, body


async def test_invalid_keys_are_400(http: Api, pg: asyncpg.Pool, redis: ArqRedis) -> None:
    token = await http.user()
    show = await make_show(pg)
    for bad in ("", "   ", "x" * 256, "x" * 300, "clé", "tab\there"):
        status, body = await book(http, token, show, "1", bad)
        assert status == 400 and HEADER in body["detail"], (bad, status, body)
    status, body = await book(http, token, show, "1", "x" * 255)
    assert status == 201, body
    # Twice in one request is refused too.
    hdrs = {"Content-Type": "application/json", "Authorization": f"Bearer {token}"}
    multi = CIMultiDict(hdrs)
    multi.add(HEADER, "a")
    multi.add(HEADER, "b")
    async with http.session.post(
        f"/api/shows/{show}/book/", data=b'{"seat_number": "2"}', headers=multi
    ) as resp:
        assert resp.status == 400


async def test_no_token_is_401_and_nothing_is_stored(
    http: Api, pg: asyncpg.Pool, redis: ArqRedis
) -> None:
    show = await make_show(pg)
    status, _ = await book(http, "", show, "1", "anon")
    assert status == 401
    status, _ = await book(http, "not-a-token", show, "1", "anon")
    assert status == 401
    status, _ = await http.post(
        "/api/admin/movies/",
        json={"title": "Alien", "duration_minutes": 117},
        headers=key("anon"),
    )
    assert status == 401
    # A user who is no admin: 403, and not kept either.
    token = await http.user()
    status, _ = await http.post(
        "/api/admin/movies/",
        token=token,
        json={"title": "Alien", "duration_minutes": 117},
        headers=key("anon"),
    )
    assert status == 403
    # An invalid key with no token: 401 wins.
    status, _ = await book(http, "", show, "1", "x" * 300)
    assert status == 401
    assert [k async for k in redis.scan_iter(match="idempotency:*")] == []


async def test_the_header_is_documented(http: Api) -> None:
    status, doc = await http.get("/schema/")
    assert status == 200
    writes = [
        ("/api/shows/{id}/book/", "post"),
        ("/api/bookings/{id}/cancel/", "post"),
        ("/api/admin/movies/", "post"),
        ("/api/admin/movies/{id}/", "patch"),
        ("/api/admin/movies/{id}/", "delete"),
        ("/api/admin/shows/", "post"),
        ("/api/admin/shows/{id}/", "patch"),
        ("/api/admin/shows/{id}/", "delete"),
        ("/api/admin/bookings/{id}/cancel/", "post"),
        ("/api/admin/users/{id}/", "patch"),
    ]
    for path, method in writes:
        params = doc["paths"][path][method]["parameters"]
        assert any(p["in"] == "header" and p["name"] == HEADER for p in params), (path, method)
    # The other parameters are still there.
    book_params = {p["in"] for p in doc["paths"]["/api/shows/{id}/book/"]["post"]["parameters"]}
    assert {"path", "body", "header"} <= book_params
