"""Bad input on every endpoint: always a 4xx with the contract's JSON error, never a 500.

The tables below pair each endpoint that reads a body with a valid body, and each of its fields
with a kind; every kind has its list of bad values. A bad request must change nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import aiohttp
import asyncpg
import pytest

from tests.conftest import Api, RedisServer, make_show

PASSWORD = "correct-horse-9"
UNKNOWN_IDS = [
    "999999",
    "abc",
    "99999999999999999999",
    "9223372036854775808",
    "9223372036854775807",
    "0",
    "-1",
    "1.5",
    "1e3",
    "0x1",
    "²",
    "١",
    "１",
    "%00",
    "%20",
    "1%20",
    "+1",
]


def assert_error(
    status: int, body: Any, expected: int | set[int], field: str | None = None
) -> None:
    """The contract's error: the status, {"detail": str}, and field errors when they apply."""
    allowed = expected if isinstance(expected, set) else {expected}
    assert status in allowed, (status, body)
    assert isinstance(body, dict), body
    assert isinstance(body.get("detail"), str) and body["detail"], body
    if field is not None:
        errors = body.get("errors")
        assert isinstance(errors, dict) and field in errors, body
        messages = errors[field]
        assert isinstance(messages, list) and messages, body
        assert all(isinstance(m, str) and m for m in messages), body
    if "errors" in body:
        assert isinstance(body["errors"], dict), body


@dataclass
class World:
    user: str  # access token of alice, a plain user
    admin: str  # access token of root, an admin
    refresh: str  # a refresh token of alice
    user_id: int
    movie: int
    show: int

    def ids(self) -> dict[str, int]:
        return {"user": self.user_id, "movie": self.movie, "show": self.show}


@pytest.fixture
async def world(http: Api, pg: asyncpg.Pool) -> World:
    user = await http.user("alice")
    admin = await http.admin(pg, "root")
    status, tokens = await http.post(
        "/api/auth/login/", json={"username": "alice", "password": PASSWORD}
    )
    assert status == 200
    show = await make_show(pg, total_seats=10)
    return World(
        user=user,
        admin=admin,
        refresh=tokens["refresh"],
        user_id=await pg.fetchval("SELECT id FROM users WHERE username = 'alice'"),
        movie=await pg.fetchval("SELECT movie_id FROM shows WHERE id = $1", show),
        show=show,
    )


async def snapshot(pg: asyncpg.Pool, http: Api, world: World) -> tuple[Any, ...]:
    """What a refused request must leave as it was."""
    status, show = await http.get(f"/api/shows/{world.show}/")
    assert status == 200
    return (
        [
            tuple(r)
            for r in await pg.fetch(
                "SELECT id, username, email, is_active, is_admin FROM users ORDER BY id"
            )
        ],
        [tuple(r) for r in await pg.fetch("SELECT * FROM movies ORDER BY id")],
        [tuple(r) for r in await pg.fetch("SELECT * FROM shows ORDER BY id")],
        await pg.fetchval("SELECT count(*) FROM refresh_tokens WHERE used_at IS NULL"),
        show,
    )


# --- the table of endpoints with a body -----------------------------------------------------


@dataclass
class Endpoint:
    name: str
    method: str
    path: str  # with {user}, {movie}, {show} placeholders
    role: str | None  # None, "user" or "admin"
    base: dict[str, Any]  # a valid body ({movie} is replaced by the movie's id)
    fields: dict[str, str]  # field -> kind
    required: tuple[str, ...] = ()
    ok: int = 200
    # (field, value) -> expected status, where it is not 400
    special: dict[tuple[str, str], int | set[int]] = field(default_factory=dict)

    def url(self, world: World, **overrides: str) -> str:
        return self.path.format(**{**{k: str(v) for k, v in world.ids().items()}, **overrides})

    def token(self, world: World) -> str | None:
        return {None: None, "user": world.user, "admin": world.admin}[self.role]

    def body(self, world: World) -> dict[str, Any]:
        return {
            k: world.movie if v == "{movie}" else world.refresh if v == "{refresh}" else v
            for k, v in self.base.items()
        }


ENDPOINTS = [
    Endpoint(
        "signup",
        "POST",
        "/api/auth/signup/",
        None,
        {"username": "newbie", "email": "newbie@example.com", "password": "another-pass-1"},
        {"username": "str", "email": "str", "password": "str"},
        ("username", "email", "password"),
        ok=201,
    ),
    Endpoint(
        "login",
        "POST",
        "/api/auth/login/",
        None,
        {"username": "alice", "password": PASSWORD},
        {"username": "str", "password": "str"},
        ("username", "password"),
        special={("password", "huge"): {400, 401}},
    ),
    Endpoint(
        "refresh",
        "POST",
        "/api/auth/token/refresh/",
        None,
        {"refresh": "{refresh}"},
        {"refresh": "str"},
        ("refresh",),
    ),
    Endpoint(
        "book",
        "POST",
        "/api/shows/{show}/book/",
        "user",
        {"seat_number": "1"},
        {"seat_number": "seat"},
        ("seat_number",),
        ok=201,
    ),
    Endpoint(
        "create-movie",
        "POST",
        "/api/admin/movies/",
        "admin",
        {"title": "Arrival", "duration_minutes": 116},
        {"title": "str", "duration_minutes": "minutes"},
        ("title", "duration_minutes"),
        ok=201,
    ),
    Endpoint(
        "create-show",
        "POST",
        "/api/admin/shows/",
        "admin",
        {
            "movie_id": "{movie}",
            "screen_name": "Screen 2",
            "date_time": "2031-01-01T20:00:00+02:00",
            "total_seats": 10,
        },
        {
            "movie_id": "id",
            "screen_name": "str",
            "date_time": "datetime",
            "total_seats": "seats",
            "rows": "rows",
            "seats_per_row": "per_row",
        },
        ("movie_id", "screen_name", "date_time", "total_seats"),
        ok=201,
    ),
    Endpoint(
        "patch-movie",
        "PATCH",
        "/api/admin/movies/{movie}/",
        "admin",
        {"title": "Arrival 2"},
        {"title": "str", "duration_minutes": "minutes"},
    ),
    Endpoint(
        "patch-show",
        "PATCH",
        "/api/admin/shows/{show}/",
        "admin",
        {"screen_name": "Screen 3"},
        {
            "movie_id": "id",
            "screen_name": "str",
            "date_time": "datetime",
            "total_seats": "seats",
            "rows": "rows",
            "seats_per_row": "per_row",
        },
    ),
    Endpoint(
        "patch-user",
        "PATCH",
        "/api/admin/users/{user}/",
        "admin",
        {"is_active": True},
        {"is_active": "bool", "is_admin": "bool"},
    ),
]
BY_NAME = {e.name: e for e in ENDPOINTS}

WRONG_TYPES: list[tuple[str, Any]] = [
    ("null", None),
    ("true", True),
    ("false", False),
    ("object", {"a": 1}),
    ("list", [1]),
    ("empty-list", []),
]
STRING_BAD = WRONG_TYPES + [
    ("int", 123),
    ("float", 1.5),
    ("empty", ""),
    ("nul-char", "ab\x00cd1234"),
    ("huge", "x" * 10_000),
]
INT_BAD = WRONG_TYPES + [
    ("string", "12"),
    ("word", "abc"),
    ("empty", ""),
    ("float", 1.5),
    ("whole-float", 12.0),
    ("zero", 0),
    ("minus-one", -1),
    ("absurd", 10**30),
    ("above-int64", 2**63),
    ("below-int64", -(2**63) - 1),
    ("huge-string", "9" * 10_000),
]
BAD_VALUES: dict[str, list[tuple[str, Any]]] = {
    "str": STRING_BAD,
    "id": INT_BAD + [("unknown", 999_999), ("int64-max", 2**63 - 1)],
    "minutes": INT_BAD + [("1001", 1001)],
    "seats": INT_BAD + [("10001", 10_001)],
    "rows": INT_BAD + [("53", 53)],
    "per_row": INT_BAD + [("201", 201)],
    "bool": WRONG_TYPES[:1]
    + WRONG_TYPES[3:]
    + [("string", "true"), ("one", 1), ("zero", 0), ("yes", "yes"), ("float", 1.0)],
    "datetime": WRONG_TYPES
    + [
        ("naive", "2031-01-01T20:00:00"),
        ("date-only", "2031-01-01"),
        ("unparseable", "next tuesday"),
        ("month-13", "2031-13-01T20:00:00Z"),
        ("feb-30", "2031-02-30T20:00:00Z"),
        ("hour-25", "2031-01-01T25:00:00Z"),
        ("offset-25h", "2031-01-01T20:00:00+25:00"),
        ("epoch-int", 1_900_000_000),
        ("empty", ""),
        ("huge", "2031-01-01T20:00:00Z" + " " * 10_000),
        ("year-10000-utc", "9999-12-31T23:00:00-05:00"),
        ("year-0-utc", "0001-01-01T00:00:00+01:00"),
        ("year-1", "0001-01-01T00:00:00Z"),
    ],
    "seat": WRONG_TYPES
    + [
        ("float", 1.5),
        ("whole-float", 1.0),
        ("empty", ""),
        ("blank", "   "),
        ("huge", "x" * 10_000),
        ("absurd", 10**30),
        ("above-int64", 2**63),
        ("minus-one", -1),
        ("zero", 0),
        ("not-in-show", "11"),
        ("row-label", "A1"),
        ("separator", "1|2"),
        ("comma", "1,2"),
        ("nul-char", "1\x00"),
    ],
}


def field_cases() -> list[Any]:
    cases = []
    for endpoint in ENDPOINTS:
        for name, kind in endpoint.fields.items():
            for label, value in BAD_VALUES[kind]:
                cases.append(
                    pytest.param(
                        endpoint.name, name, label, value, id=f"{endpoint.name}-{name}-{label}"
                    )
                )
    return cases


async def test_base_bodies_are_valid(http: Api, world: World) -> None:
    """The table's valid bodies work, so that each bad case differs from success by one thing."""
    for endpoint in ENDPOINTS:
        status, body = await http.call(
            endpoint.method,
            endpoint.url(world),
            token=endpoint.token(world),
            json=endpoint.body(world),
        )
        assert status == endpoint.ok, (endpoint.name, body)


@pytest.mark.parametrize(("endpoint", "name", "label", "value"), field_cases())
async def test_bad_field_value_is_400(
    http: Api, pg: asyncpg.Pool, world: World, endpoint: str, name: str, label: str, value: Any
) -> None:
    ep = BY_NAME[endpoint]
    body = {**ep.body(world), name: value}
    before = await snapshot(pg, http, world)
    status, answer = await http.call(ep.method, ep.url(world), token=ep.token(world), json=body)
    expected = ep.special.get((name, label), 400)
    assert_error(status, answer, expected, name if expected == 400 else None)
    assert await snapshot(pg, http, world) == before


@pytest.mark.parametrize(
    ("endpoint", "name"),
    [pytest.param(e.name, f, id=f"{e.name}-{f}") for e in ENDPOINTS for f in e.required],
)
async def test_missing_required_field_is_400(
    http: Api, pg: asyncpg.Pool, world: World, endpoint: str, name: str
) -> None:
    ep = BY_NAME[endpoint]
    body = {k: v for k, v in ep.body(world).items() if k != name}
    before = await snapshot(pg, http, world)
    status, answer = await http.call(ep.method, ep.url(world), token=ep.token(world), json=body)
    assert_error(status, answer, 400, name)
    assert await snapshot(pg, http, world) == before


@pytest.mark.parametrize("endpoint", [e.name for e in ENDPOINTS if e.method == "PATCH"])
async def test_patch_with_an_empty_object_changes_nothing(
    http: Api, pg: asyncpg.Pool, world: World, endpoint: str
) -> None:
    ep = BY_NAME[endpoint]
    before = await snapshot(pg, http, world)
    status, body = await http.call(ep.method, ep.url(world), token=ep.token(world), json={})
    assert status == 200, body
    assert await snapshot(pg, http, world) == before


async def test_unknown_fields_are_ignored(http: Api, pg: asyncpg.Pool, world: World) -> None:
    status, body = await http.post(
        "/api/admin/movies/",
        token=world.admin,
        json={"title": "Arrival", "duration_minutes": 116, "id": 5, "extra": {"x": [1]}},
    )
    assert status == 201, body
    assert body["title"] == "Arrival" and body["id"] != 5


# --- layouts: rows and seats_per_row go together ---------------------------------------------


@pytest.mark.parametrize(
    ("changes", "field_name"),
    [
        ({"rows": 2}, "seats_per_row"),
        ({"seats_per_row": 5}, "seats_per_row"),
        ({"rows": 52, "seats_per_row": 200}, "seats_per_row"),
        ({"rows": 2, "seats_per_row": 5, "total_seats": 11}, "total_seats"),
    ],
    ids=["rows-alone", "per-row-alone", "over-10000", "total-mismatch"],
)
@pytest.mark.parametrize("endpoint", ["create-show", "patch-show"])
async def test_bad_layout_is_400(
    http: Api,
    pg: asyncpg.Pool,
    world: World,
    endpoint: str,
    changes: dict[str, int],
    field_name: str,
) -> None:
    ep = BY_NAME[endpoint]
    body = {**ep.body(world), **changes}
    if endpoint == "create-show" and "total_seats" not in changes:
        del body["total_seats"]
    before = await snapshot(pg, http, world)
    status, answer = await http.call(ep.method, ep.url(world), token=ep.token(world), json=body)
    assert_error(status, answer, 400, field_name)
    assert await snapshot(pg, http, world) == before


async def test_create_show_without_any_layout_is_400(
    http: Api, pg: asyncpg.Pool, world: World
) -> None:
    ep = BY_NAME["create-show"]
    body = {k: v for k, v in ep.body(world).items() if k != "total_seats"}
    status, answer = await http.post(ep.url(world), token=world.admin, json=body)
    assert_error(status, answer, 400, "total_seats")


# --- whole bodies that are not a JSON object -------------------------------------------------

BODIES: list[tuple[str, bytes, str | None]] = [
    ("truncated", b'{"title": ', "application/json"),
    ("single-quotes", b"{'title': 'x'}", "application/json"),
    ("trailing-comma", b'{"title": "x",}', "application/json"),
    ("nan", b'{"title": NaN}', "application/json"),
    ("infinity", b'{"duration_minutes": 1e400}', "application/json"),
    ("not-utf8", b'{"title": "\xff\xfe"}', "application/json"),
    ("lone-surrogate", b'{"title": "\\ud800"}', "application/json"),
    ("two-documents", b"{}{}", "application/json"),
    ("array", b"[]", "application/json"),
    ("array-of-object", b'[{"title": "x"}]', "application/json"),
    ("string", b'"hello"', "application/json"),
    ("number", b"42", "application/json"),
    ("null", b"null", "application/json"),
    ("true", b"true", "application/json"),
    ("empty", b"", "application/json"),
    ("blank", b"   \n", "application/json"),
    ("no-content-type", b"", None),
    ("deep-nesting", b"[" * 10_000 + b"]" * 10_000, "application/json"),
    ("deep-object", b'{"a":' * 2000 + b"1" + b"}" * 2000, "application/json"),
    ("form", b"username=alice&password=correct-horse-9", "application/x-www-form-urlencoded"),
    ("text", b"seat_number=1", "text/plain"),
    ("oversized", b'{"title": "' + b"x" * (70 * 1024) + b'"}', "application/json"),
    ("oversized-garbage", b"x" * (200 * 1024), "application/octet-stream"),
]


@pytest.mark.parametrize(("label", "raw", "ctype"), BODIES, ids=[b[0] for b in BODIES])
@pytest.mark.parametrize("endpoint", [e.name for e in ENDPOINTS])
async def test_body_that_is_not_a_json_object_is_400(
    http: Api,
    pg: asyncpg.Pool,
    world: World,
    endpoint: str,
    label: str,
    raw: bytes,
    ctype: str | None,
) -> None:
    ep = BY_NAME[endpoint]
    before = await snapshot(pg, http, world)
    headers = {"Content-Type": ctype} if ctype else {}
    status, body = await http.call(
        ep.method, ep.url(world), token=ep.token(world), data=raw, headers=headers
    )
    assert_error(status, body, 400)
    assert await snapshot(pg, http, world) == before


async def test_form_encoded_signup_is_400(http: Api, pg: asyncpg.Pool) -> None:
    """A form (as aiohttp encodes a dict) is not read as such: the API speaks JSON only."""
    status, body = await http.post(
        "/api/auth/signup/",
        data={"username": "bob", "email": "bob@example.com", "password": "another-pass-1"},
    )
    assert_error(status, body, 400)
    assert await pg.fetchval("SELECT count(*) FROM users") == 0


async def test_multipart_body_is_400(http: Api, world: World) -> None:
    form = aiohttp.FormData()
    form.add_field("title", "Arrival")
    form.add_field("duration_minutes", "116")
    status, body = await http.post("/api/admin/movies/", token=world.admin, data=form)
    assert_error(status, body, 400)


# --- ids in paths ----------------------------------------------------------------------------

ID_ROUTES: list[tuple[str, str, str | None, dict[str, Any] | None]] = [
    ("GET", "/api/shows/{id}/", None, None),
    ("GET", "/api/movies/{id}/shows/", None, None),
    ("POST", "/api/shows/{id}/book/", "user", {"seat_number": "1"}),
    ("POST", "/api/bookings/{id}/cancel/", "user", None),
    ("GET", "/api/admin/movies/{id}/", "admin", None),
    ("PATCH", "/api/admin/movies/{id}/", "admin", {"title": "X"}),
    ("DELETE", "/api/admin/movies/{id}/", "admin", None),
    ("GET", "/api/admin/shows/{id}/", "admin", None),
    ("PATCH", "/api/admin/shows/{id}/", "admin", {"screen_name": "X"}),
    ("DELETE", "/api/admin/shows/{id}/", "admin", None),
    ("PATCH", "/api/admin/users/{id}/", "admin", {"is_active": False}),
    ("POST", "/api/admin/bookings/{id}/cancel/", "admin", None),
]


@pytest.mark.parametrize("raw_id", UNKNOWN_IDS)
@pytest.mark.parametrize(
    ("method", "path", "role", "json"), ID_ROUTES, ids=[f"{r[0]}{r[1]}" for r in ID_ROUTES]
)
async def test_unknown_or_non_numeric_id_is_404(
    http: Api,
    pg: asyncpg.Pool,
    world: World,
    method: str,
    path: str,
    role: str | None,
    json: dict[str, Any] | None,
    raw_id: str,
) -> None:
    """Unknown, non-numeric, non-ASCII-digit and out-of-range ids are all unknown: 404.

    Id 1 exists as a user, movie and show here, so "١" or "１" read as 1 would be a bug.
    """
    token = {None: None, "user": world.user, "admin": world.admin}[role]
    before = await snapshot(pg, http, world)
    status, body = await http.call(method, path.format(id=raw_id), token=token, json=json)
    assert_error(status, body, 404)
    assert await snapshot(pg, http, world) == before


# --- routes and methods ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/nope"),
        ("GET", "/nope/"),
        ("GET", "/api/"),
        ("GET", "/api/shows/"),
        ("GET", "/api/nope/"),
        ("POST", "/api/nope/"),
        ("GET", "/api/shows/1/book/extra/"),
        ("GET", "/api/admin/"),
        ("GET", "/api/auth/"),
        ("GET", "/%ff/"),
        ("GET", "/api/movies/1/shows/x/"),
    ],
)
async def test_unknown_route_is_json_404(http: Api, world: World, method: str, path: str) -> None:
    status, body = await http.call(method, path, token=world.admin)
    assert_error(status, body, 404)


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("GET", "/api/auth/signup/", "POST"),
        ("GET", "/api/auth/login/", "POST"),
        ("PUT", "/api/auth/me/", "GET"),
        ("DELETE", "/api/auth/me/", "GET"),
        ("POST", "/api/movies/", "GET"),
        ("GET", "/api/shows/{show}/book/", "POST"),
        ("DELETE", "/api/shows/{show}/", "GET"),
        ("PUT", "/api/admin/movies/{movie}/", "PATCH"),
        ("DELETE", "/api/admin/movies/", "POST"),
        ("POST", "/api/admin/users/{user}/", "PATCH"),
        ("POST", "/health/live", "GET"),
    ],
)
async def test_wrong_method_is_json_405(
    http: Api, world: World, method: str, path: str, allowed: str
) -> None:
    url = path.format(**world.ids())
    async with http.session.request(
        method, url, json={}, headers={"Authorization": f"Bearer {world.admin}"}
    ) as resp:
        assert resp.status == 405
        assert resp.content_type == "application/json"
        body = await resp.json()
        assert allowed in resp.headers.get("Allow", "")
        assert resp.headers.get("X-Request-ID")
    assert_error(resp.status, body, 405)


@pytest.mark.parametrize(
    ("method", "path", "query"),
    [
        ("POST", "/api/auth/signup", ""),
        ("POST", "/api/auth/login", ""),
        ("GET", "/api/auth/me", ""),
        ("GET", "/api/movies", "?page=1&page_size=5"),
        ("GET", "/api/shows/{show}", ""),
        ("POST", "/api/shows/{show}/book", ""),
        ("PATCH", "/api/admin/movies/{movie}", ""),
        ("DELETE", "/api/admin/shows/{show}", ""),
        ("GET", "/api/shows/abc", ""),
    ],
)
async def test_path_without_slash_is_308_to_the_slashed_path(
    http: Api, world: World, method: str, path: str, query: str
) -> None:
    url = path.format(**world.ids()) + query
    async with http.session.request(method, url, json={}, allow_redirects=False) as resp:
        assert resp.status == 308
        assert resp.headers["Location"] == path.format(**world.ids()) + "/" + query
        assert resp.headers.get("X-Request-ID")


async def test_redirect_keeps_method_and_body(http: Api, pg: asyncpg.Pool, world: World) -> None:
    body = {"username": "bob", "email": "bob@example.com", "password": "another-pass-1"}
    status, answer = await http.post("/api/auth/signup", json=body, allow_redirects=False)
    assert status == 308
    # Followed by the client: the POST and its body reach the slashed path.
    status, answer = await http.post("/api/auth/signup", json=body)
    assert status == 201, answer
    assert answer["username"] == "bob"
    status, answer = await http.patch(
        f"/api/admin/movies/{world.movie}", token=world.admin, json={"title": "Renamed"}
    )
    assert status == 200, answer
    assert answer["title"] == "Renamed"
    status, answer = await http.post(
        f"/api/shows/{world.show}/book", token=world.user, json={"seat_number": "3"}
    )
    assert status == 201, answer
    assert answer["seat_number"] == "3"


async def test_unknown_path_without_slash_is_404_not_a_redirect(http: Api) -> None:
    async with http.session.get("/api/nope", allow_redirects=False) as resp:
        assert resp.status == 404
        assert (await resp.json())["detail"]


async def test_health_probes_have_no_trailing_slash(http: Api) -> None:
    for path in ("/health/live", "/health/ready"):
        status, body = await http.get(path, allow_redirects=False)
        assert status == 200, body


# --- pagination and query parameters ---------------------------------------------------------

LISTS: list[tuple[str, str | None]] = [
    ("/api/movies/", None),
    ("/api/movies/{movie}/shows/", None),
    ("/api/my-bookings/", "user"),
    ("/api/admin/movies/", "admin"),
    ("/api/admin/shows/", "admin"),
    ("/api/admin/bookings/", "admin"),
    ("/api/admin/users/", "admin"),
]
BAD_PAGES = [
    ("page", "0"),
    ("page", "-1"),
    ("page", "abc"),
    ("page", ""),
    ("page", "1.5"),
    ("page", "1e3"),
    ("page", "0x10"),
    ("page", "²"),
    ("page", "00"),
    ("page_size", "0"),
    ("page_size", "-5"),
    ("page_size", "abc"),
    ("page_size", ""),
    ("page_size", "2.5"),
    ("page_size", "0" * 30),
]


@pytest.mark.parametrize(("param", "value"), BAD_PAGES, ids=[f"{p}={v}" for p, v in BAD_PAGES])
@pytest.mark.parametrize(("path", "role"), LISTS, ids=[p for p, _ in LISTS])
async def test_bad_page_parameter_is_400(
    http: Api, world: World, path: str, role: str | None, param: str, value: str
) -> None:
    token = {None: None, "user": world.user, "admin": world.admin}[role]
    url = path.format(**world.ids())
    async with http.session.get(
        url, params={param: value}, headers={"Authorization": f"Bearer {token}"} if token else {}
    ) as resp:
        body = await resp.json()
        status = resp.status
    assert_error(status, body, 400, param)


@pytest.mark.parametrize(("path", "role"), LISTS, ids=[p for p, _ in LISTS])
async def test_page_past_the_end_is_404_and_huge_values_are_no_500(
    http: Api, world: World, path: str, role: str | None
) -> None:
    token = {None: None, "user": world.user, "admin": world.admin}[role]
    url = path.format(**world.ids())
    status, body = await http.get(url, token=token)
    assert status == 200, body
    assert set(body) == {"count", "next", "previous", "results"}
    for query in (
        "?page=2",
        "?page=1000000",
        "?page=9223372036854775807",
        "?page=99999999999999999999",
        "?page=" + "9" * 5000,
    ):
        assert_error(*await http.get(url + query, token=token), 404)
    for query in ("?page_size=1000", "?page_size=99999999999999999999", "?page_size=" + "9" * 5000):
        status, body = await http.get(url + query, token=token)
        assert status == 200, body


async def test_page_size_is_clamped_to_100_and_links_keep_the_query(
    http: Api, pg: asyncpg.Pool, world: World
) -> None:
    await pg.executemany(
        "INSERT INTO movies (title, duration_minutes) VALUES ($1, 100)",
        [(f"Movie {i:03}",) for i in range(104)],
    )  # 105 movies with the world's
    status, body = await http.get("/api/movies/?page_size=1000")
    assert status == 200, body
    assert body["count"] == 105 and len(body["results"]) == 100
    assert body["previous"] is None
    assert body["next"].startswith("http://") and "page=2" in body["next"]
    assert "page_size=1000" in body["next"]
    status, body = await http.get("/api/movies/?page_size=1000&page=2")
    assert status == 200, body
    assert len(body["results"]) == 5 and body["next"] is None
    assert "page_size=1000" in body["previous"]
    assert_error(*await http.get("/api/movies/?page_size=1000&page=3"), 404)
    status, body = await http.get("/api/movies/?page_size=99999999999999999999")
    assert status == 200 and len(body["results"]) == 100


async def test_empty_first_page_is_200(http: Api, pg: asyncpg.Pool, world: World) -> None:
    status, body = await http.get("/api/my-bookings/", token=world.user)
    assert status == 200, body
    assert body == {"count": 0, "next": None, "previous": None, "results": []}
    assert_error(*await http.get("/api/my-bookings/?page=2", token=world.user), 404)


@pytest.mark.parametrize(
    ("path", "param"),
    [
        ("/api/movies/{movie}/shows/?from=next%20tuesday", "from"),
        ("/api/movies/{movie}/shows/?from=2031-01-01T20:00:00", "from"),
        ("/api/movies/{movie}/shows/?from=2031-01-01", "from"),
        ("/api/movies/{movie}/shows/?from=", "from"),
        ("/api/movies/{movie}/shows/?from=9999-12-31T23:00:00-05:00", "from"),
        ("/api/movies/{movie}/shows/?from=0001-01-01T00:00:00%2B01:00", "from"),
        ("/api/admin/shows/?movie=abc", "movie"),
        ("/api/admin/shows/?movie=0", "movie"),
        ("/api/admin/shows/?movie=-1", "movie"),
        ("/api/admin/shows/?movie=99999999999999999999", "movie"),
        ("/api/admin/shows/?movie=%C2%B2", "movie"),
        ("/api/admin/bookings/?show=abc", "show"),
        ("/api/admin/bookings/?user=1.5", "user"),
        ("/api/admin/bookings/?status=pending", "status"),
        ("/api/admin/bookings/?status=", "status"),
    ],
)
async def test_bad_query_parameter_is_400(http: Api, world: World, path: str, param: str) -> None:
    status, body = await http.get(path.format(**world.ids()), token=world.admin)
    assert_error(status, body, 400, param)


async def test_from_with_an_offset_filters_shows(http: Api, world: World) -> None:
    url = f"/api/movies/{world.movie}/shows/"
    status, body = await http.get(url + "?from=2000-01-01T00:00:00%2B02:00")
    assert status == 200 and body["count"] == 1, body
    status, body = await http.get(url + "?from=2999-01-01T00:00:00Z")
    assert status == 200 and body["count"] == 0, body


# --- which error wins: 401 -> 403 -> 404 -> 400 -> 409 ---------------------------------------


@pytest.mark.parametrize("endpoint", [e.name for e in ENDPOINTS if e.role])
async def test_no_token_wins_over_bad_body_and_unknown_id(
    http: Api, world: World, endpoint: str
) -> None:
    ep = BY_NAME[endpoint]
    for url in (ep.url(world), ep.url(world, show="999999", movie="abc", user="0")):
        for raw in (b"{not json", b'{"title": "' + b"x" * (100 * 1024) + b'"}'):
            status, body = await http.call(ep.method, url, data=raw)
            assert_error(status, body, 401)
        status, body = await http.call(
            ep.method,
            url,
            json={"seat_number": {}, "title": 5},
            headers={"Authorization": "Bearer x"},
        )
        assert_error(status, body, 401)


@pytest.mark.parametrize("endpoint", [e.name for e in ENDPOINTS if e.role == "admin"])
async def test_non_admin_gets_403_before_404_and_400(
    http: Api, pg: asyncpg.Pool, world: World, endpoint: str
) -> None:
    ep = BY_NAME[endpoint]
    before = await snapshot(pg, http, world)
    for url in (ep.url(world), ep.url(world, show="999999", movie="abc", user="0")):
        assert_error(*await http.call(ep.method, url, token=world.user, data=b"[1, 2"), 403)
        assert_error(*await http.call(ep.method, url, token=world.user, json=ep.body(world)), 403)
    assert await snapshot(pg, http, world) == before


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/api/admin/movies/"),
        ("GET", "/api/admin/movies/{movie}/"),
        ("DELETE", "/api/admin/movies/{movie}/"),
        ("GET", "/api/admin/shows/?movie=abc"),
        ("DELETE", "/api/admin/shows/{show}/"),
        ("GET", "/api/admin/bookings/?page=0"),
        ("POST", "/api/admin/bookings/999999/cancel/"),
        ("GET", "/api/admin/users/?page_size=abc"),
    ],
)
async def test_admin_reads_and_deletes_are_401_then_403(
    http: Api, world: World, method: str, path: str
) -> None:
    url = path.format(**world.ids())
    assert_error(*await http.call(method, url), 401)
    assert_error(*await http.call(method, url, token=world.user), 403)


@pytest.mark.parametrize(
    ("endpoint", "overrides"),
    [
        ("book", {"show": "999999"}),
        ("book", {"show": "abc"}),
        ("patch-movie", {"movie": "999999"}),
        ("patch-show", {"show": "99999999999999999999"}),
        ("patch-user", {"user": "999999"}),
    ],
)
async def test_unknown_id_wins_over_bad_body(
    http: Api, world: World, endpoint: str, overrides: dict[str, str]
) -> None:
    ep = BY_NAME[endpoint]
    url = ep.url(world, **overrides)
    for raw in (b"{not json", b"[]", b'{"seat_number": {}, "title": 5, "is_active": "no"}', b""):
        status, body = await http.call(
            ep.method,
            url,
            token=ep.token(world),
            data=raw,
            headers={"Content-Type": "application/json"},
        )
        assert_error(status, body, 404)


async def test_bad_seat_wins_over_conflicts(http: Api, pg: asyncpg.Pool, world: World) -> None:
    """400 (no such seat, bad body) comes before 409 (taken, full, started)."""
    full = await make_show(pg, total_seats=1, title="Tiny")
    status, body = await http.post(
        f"/api/shows/{full}/book/", token=world.user, json={"seat_number": "1"}
    )
    assert status == 201, body
    assert_error(
        *await http.post(f"/api/shows/{full}/book/", token=world.user, json={"seat_number": "1"}),
        409,
    )
    for seat in ("2", "", {"x": 1}):
        status, body = await http.post(
            f"/api/shows/{full}/book/", token=world.user, json={"seat_number": seat}
        )
        assert_error(status, body, 400, "seat_number")
    started = await make_show(pg, total_seats=5, starts_in=timedelta(hours=-1), title="Old")
    assert_error(
        *await http.post(
            f"/api/shows/{started}/book/", token=world.user, json={"seat_number": "1"}
        ),
        409,
    )
    for seat in ("6", None, True):
        status, body = await http.post(
            f"/api/shows/{started}/book/", token=world.user, json={"seat_number": seat}
        )
        assert_error(status, body, 400, "seat_number")


async def test_bad_patch_wins_over_a_conflicting_shrink(
    http: Api, pg: asyncpg.Pool, world: World
) -> None:
    status, body = await http.post(
        f"/api/shows/{world.show}/book/", token=world.user, json={"seat_number": "5"}
    )
    assert status == 201, body
    url = f"/api/admin/shows/{world.show}/"
    assert_error(*await http.patch(url, token=world.admin, json={"total_seats": 2}), 409)
    assert_error(
        *await http.patch(url, token=world.admin, json={"total_seats": 2, "screen_name": ""}),
        400,
        "screen_name",
    )


# --- every response carries a request id -----------------------------------------------------


async def test_every_response_carries_a_request_id(http: Api, world: World) -> None:
    user = {"Authorization": f"Bearer {world.user}"}
    admin = {"Authorization": f"Bearer {world.admin}"}
    signup = {"username": "bob", "email": "bob@example.com", "password": "another-pass-1"}
    requests: list[tuple[str, str, dict[str, Any]]] = [
        ("GET", "/health/live", {}),
        ("GET", "/health/ready", {}),
        ("GET", "/api/movies/", {}),
        ("GET", "/schema/", {}),
        ("GET", "/swagger/", {}),
        ("GET", "/api/auth/me/", {"headers": user}),
        ("POST", "/api/auth/signup/", {"json": signup}),
        ("POST", "/api/auth/signup/", {"json": {}}),
        ("POST", "/api/auth/login/", {"json": {"username": "alice", "password": "wrong-pass"}}),
        ("GET", "/api/admin/users/", {"headers": user}),
        ("GET", "/api/nope/", {}),
        ("DELETE", "/api/movies/", {}),
        ("GET", "/api/movies", {"allow_redirects": False}),
        ("POST", "/api/auth/signup/", {"data": b"x" * (100 * 1024)}),
        ("DELETE", f"/api/admin/movies/{world.movie}/", {"headers": admin}),
    ]
    seen: set[str] = set()
    for method, path, kw in requests:
        async with http.session.request(method, path, **kw) as resp:
            await resp.read()
            request_id = resp.headers.get("X-Request-ID")
            assert request_id, (method, path, resp.status)
            assert resp.status < 500, (method, path, resp.status)
            seen.add(request_id)
    assert len(seen) == len(requests)


async def test_a_sane_incoming_request_id_is_kept(http: Api) -> None:
    async with http.session.get("/api/movies/", headers={"X-Request-ID": "trace-42"}) as resp:
        assert resp.headers["X-Request-ID"] == "trace-42"
    async with http.session.get("/api/movies/", headers={"X-Request-ID": "x" * 500}) as resp:
        assert resp.headers["X-Request-ID"] and resp.headers["X-Request-ID"] != "x" * 500


# --- a dependency that is down: 503 with Retry-After, never 500 ------------------------------


async def test_redis_down_is_503_with_retry_after(
    http: Api, world: World, redis_server: RedisServer | None
) -> None:
    if redis_server is None:
        pytest.skip("Redis is external (REDIS_URL): not stoppable from here")
    url = f"/api/shows/{world.show}/book/"
    redis_server.stop()
    try:
        for method, path, kw in (
            ("POST", url, {"json": {"seat_number": "1"}}),
            ("GET", f"/api/shows/{world.show}/", {}),
        ):
            async with http.session.request(
                method, path, headers={"Authorization": f"Bearer {world.user}"}, **kw
            ) as resp:
                body = await resp.json()
                assert resp.status == 503, body
                assert int(resp.headers["Retry-After"]) > 0
                assert resp.headers.get("X-Request-ID")
            assert_error(resp.status, body, 503)
        # Refusals that need no Redis still come first.
        assert_error(*await http.post(url, json={"seat_number": "1"}), 401)
        assert_error(*await http.post("/api/shows/abc/book/", token=world.user, json={}), 404)
    finally:
        redis_server.start()
    status, body = await http.post(url, token=world.user, json={"seat_number": "1"})
    assert status == 201, body


async def test_redis_down_bad_body_is_still_400(
    http: Api, world: World, redis_server: RedisServer | None
) -> None:
    """400 comes before 503: whether the show exists is PostgreSQL's to say."""
    if redis_server is None:
        pytest.skip("Redis is external (REDIS_URL): not stoppable from here")
    redis_server.stop()
    try:
        status, body = await http.post(
            f"/api/shows/{world.show}/book/", token=world.user, data=b"[1"
        )
        unknown = await http.post("/api/shows/999999/book/", token=world.user, data=b"[1")
    finally:
        redis_server.start()
    assert_error(*unknown, 404)
    assert_error(status, body, 400)
