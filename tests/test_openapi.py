"""The OpenAPI (Swagger 2.0) document, the Swagger UI (offline) and ReDoc pages."""

from __future__ import annotations

import re
from typing import Any

from openapi_spec_validator import OpenAPIV2SpecValidator

from tests.conftest import Api

# (method, path, tag, request body fields or None, success status, needs a token)
ROUTES: list[tuple[str, str, str, set[str] | None, str, bool]] = [
    ("post", "/api/auth/signup/", "Auth", {"username", "email", "password"}, "201", False),
    ("post", "/api/auth/login/", "Auth", {"username", "password"}, "200", False),
    ("post", "/api/auth/token/refresh/", "Auth", {"refresh"}, "200", False),
    ("get", "/api/auth/me/", "Auth", None, "200", True),
    ("get", "/api/movies/", "Movies", None, "200", False),
    ("get", "/api/movies/{id}/shows/", "Movies", None, "200", False),
    ("get", "/api/shows/{id}/", "Shows", None, "200", False),
    ("post", "/api/shows/{id}/book/", "Bookings", {"seat_number"}, "201", True),
    ("post", "/api/bookings/{id}/cancel/", "Bookings", None, "200", True),
    ("get", "/api/my-bookings/", "Bookings", None, "200", True),
    ("get", "/api/admin/movies/", "Admin", None, "200", True),
    ("post", "/api/admin/movies/", "Admin", {"title", "duration_minutes"}, "201", True),
    ("get", "/api/admin/movies/{id}/", "Admin", None, "200", True),
    ("patch", "/api/admin/movies/{id}/", "Admin", {"title", "duration_minutes"}, "200", True),
    ("delete", "/api/admin/movies/{id}/", "Admin", None, "204", True),
    ("get", "/api/admin/shows/", "Admin", None, "200", True),
    (
        "post",
        "/api/admin/shows/",
        "Admin",
        {"movie_id", "screen_name", "date_time", "total_seats", "rows", "seats_per_row"},
        "201",
        True,
    ),
    ("get", "/api/admin/shows/{id}/", "Admin", None, "200", True),
    (
        "patch",
        "/api/admin/shows/{id}/",
        "Admin",
        {"movie_id", "screen_name", "date_time", "total_seats", "rows", "seats_per_row"},
        "200",
        True,
    ),
    ("delete", "/api/admin/shows/{id}/", "Admin", None, "204", True),
    ("get", "/api/admin/bookings/", "Admin", None, "200", True),
    ("post", "/api/admin/bookings/{id}/cancel/", "Admin", None, "200", True),
    ("get", "/api/admin/users/", "Admin", None, "200", True),
    ("patch", "/api/admin/users/{id}/", "Admin", {"is_active", "is_admin"}, "200", True),
]
SHOW_FIELDS = {"id", "movie", "screen_name", "date_time", "total_seats", "available_seats"}
BOOKING_FIELDS = {"id", "show", "seat_number", "status", "created_at"}
PAGE_FIELDS = {"count", "next", "previous", "results"}


async def fetch_schema(http: Api) -> dict[str, Any]:
    status, doc = await http.get("/schema/")
    assert status == 200, doc
    assert isinstance(doc, dict)
    return doc


def resolve(doc: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    """Follow a local $ref (the only kind the document uses)."""
    while "$ref" in schema:
        ref = schema["$ref"]
        assert ref.startswith("#/definitions/"), ref
        schema = doc["definitions"][ref.removeprefix("#/definitions/")]
    return schema


def all_refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [r for v in node.values() for r in all_refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in all_refs(v)]
    return []


async def test_schema_is_valid_swagger_2(http: Api) -> None:
    doc = await fetch_schema(http)
    assert doc["swagger"] == "2.0"
    assert doc["info"]["title"] and doc["info"]["version"]
    errors = [f"{list(e.path)}: {e.message}" for e in OpenAPIV2SpecValidator(doc).iter_errors()]
    assert errors == []


async def test_schema_structure_by_hand(http: Api) -> None:
    """What the validator checks, checked again without it: an answer for every operation,
    path templates declared as path parameters, and every $ref resolvable."""
    doc = await fetch_schema(http)
    for path, operations in doc["paths"].items():
        assert path.startswith("/")
        templated = set(re.findall(r"{(\w+)}", path))
        for method, op in operations.items():
            assert method in {"get", "put", "post", "delete", "options", "head", "patch"}
            assert op["responses"], (method, path)
            for code, response in op["responses"].items():
                assert code == "default" or re.fullmatch(r"[1-5]\d\d", code), code
                assert isinstance(response.get("description"), str), (method, path, code)
            params = op.get("parameters", [])
            assert all(p["in"] in {"query", "header", "path", "formData", "body"} for p in params)
            declared = {p["name"] for p in params if p["in"] == "path"}
            assert declared == templated, (method, path)
            assert all(p["required"] is True for p in params if p["in"] == "path")
            assert sum(p["in"] == "body" for p in params) <= 1
            assert all("schema" in p for p in params if p["in"] == "body")
            assert all("type" in p for p in params if p["in"] != "body")
    for ref in all_refs(doc):
        assert ref.startswith("#/definitions/"), ref
        assert ref.removeprefix("#/definitions/") in doc["definitions"], ref


async def test_schema_lists_every_route_of_the_contract(http: Api) -> None:
    doc = await fetch_schema(http)
    paths = doc["paths"]
    for method, path, tag, _, _, _ in ROUTES:
        assert path in paths, path
        assert method in paths[path], (method, path)
        assert paths[path][method]["tags"] == [tag], (method, path)
        assert paths[path][method].get("summary"), (method, path)
    # Nothing documented that the contract does not have, and every API path keeps its slash.
    documented = {(m, p) for p, ops in paths.items() for m in ops}
    expected = {(m, p) for m, p, *_ in ROUTES}
    extra = {(m, p) for m, p in documented - expected if not p.startswith("/health/")}
    assert extra == set()
    assert all(p.endswith("/") for p in paths if p.startswith("/api/"))
    tags = {t["name"] for t in doc["tags"]}
    assert {"Auth", "Movies", "Shows", "Bookings", "Admin"} <= tags


async def test_request_bodies_are_documented(http: Api) -> None:
    doc = await fetch_schema(http)
    for method, path, _, fields, _, _ in ROUTES:
        op = doc["paths"][path][method]
        bodies = [p for p in op.get("parameters", []) if p["in"] == "body"]
        if fields is None:
            assert bodies == [], (method, path)
            continue
        assert len(bodies) == 1, (method, path)
        schema = resolve(doc, bodies[0]["schema"])
        assert schema["type"] == "object"
        assert set(schema["properties"]) == fields, (method, path)
    signup = resolve(doc, doc["paths"]["/api/auth/signup/"]["post"]["parameters"][0]["schema"])
    assert set(signup["required"]) == {"username", "email", "password"}
    assert signup["properties"]["password"]["minLength"] == 8
    show = resolve(
        doc,
        next(
            p["schema"]
            for p in doc["paths"]["/api/admin/shows/"]["post"]["parameters"]
            if p["in"] == "body"
        ),
    )
    assert set(show["required"]) == {"movie_id", "screen_name", "date_time"}
    assert show["properties"]["date_time"]["format"] == "date-time"
    assert show["properties"]["total_seats"]["maximum"] == 10000
    assert show["properties"]["rows"]["maximum"] == 52
    patch = resolve(
        doc,
        next(
            p["schema"]
            for p in doc["paths"]["/api/admin/shows/{id}/"]["patch"]["parameters"]
            if p["in"] == "body"
        ),
    )
    assert not patch.get("required")
    users = resolve(doc, doc["paths"]["/api/admin/users/{id}/"]["patch"]["parameters"][0]["schema"])
    assert all(p["type"] == "boolean" for p in users["properties"].values())


async def test_response_schemas_are_documented(http: Api) -> None:
    doc = await fetch_schema(http)
    for method, path, _, _, success, _ in ROUTES:
        responses = doc["paths"][path][method]["responses"]
        assert success in responses, (method, path, sorted(responses))
        if success == "204":
            assert "schema" not in responses[success]
        else:
            assert "schema" in responses[success], (method, path)
            assert resolve(doc, responses[success]["schema"])["properties"]

    def props(method: str, path: str, status: str) -> dict[str, Any]:
        schema = doc["paths"][path][method]["responses"][status]["schema"]
        return dict(resolve(doc, schema)["properties"])

    assert set(props("get", "/api/shows/{id}/", "200")) == SHOW_FIELDS
    movie = resolve(doc, props("get", "/api/shows/{id}/", "200")["movie"])
    assert set(movie["properties"]) == {"id", "title", "duration_minutes"}
    assert set(props("post", "/api/shows/{id}/book/", "201")) == BOOKING_FIELDS
    assert set(props("post", "/api/bookings/{id}/cancel/", "200")) == BOOKING_FIELDS
    assert set(props("post", "/api/auth/login/", "200")) == {"access", "refresh"}
    assert set(props("post", "/api/auth/signup/", "201")) == {"id", "username", "email"}
    assert set(props("get", "/api/auth/me/", "200")) == {"id", "username", "email", "is_admin"}
    for path in ("/api/movies/", "/api/movies/{id}/shows/", "/api/my-bookings/"):
        assert set(props("get", path, "200")) == PAGE_FIELDS
    page = props("get", "/api/my-bookings/", "200")
    item = resolve(doc, page["results"]["items"])
    assert set(item["properties"]) == BOOKING_FIELDS
    status = item["properties"]["status"]
    assert status["enum"] == ["booked", "cancelled"]
    # Ids reach 2^53: not 32-bit integers.
    assert item["properties"]["id"]["format"] == "int64"
    # Errors carry their shape.
    err = doc["paths"]["/api/shows/{id}/book/"]["post"]["responses"]["409"]["schema"]
    assert "detail" in resolve(doc, err)["properties"]


async def test_bearer_security(http: Api) -> None:
    doc = await fetch_schema(http)
    bearer = doc["securityDefinitions"]["Bearer"]
    assert bearer == {
        "type": "apiKey",
        "name": "Authorization",
        "in": "header",
        "description": bearer["description"],
    }
    assert "Bearer" in bearer["description"]
    for method, path, _, _, _, needs_token in ROUTES:
        op = doc["paths"][path][method]
        if needs_token:
            assert op.get("security") == [{"Bearer": []}], (method, path)
            assert "401" in op["responses"], (method, path)
        else:
            assert not op.get("security"), (method, path)


async def test_path_ids_are_integers(http: Api) -> None:
    doc = await fetch_schema(http)
    for path, operations in doc["paths"].items():
        for op in operations.values():
            for param in op.get("parameters", []):
                if param["in"] == "path":
                    assert param["type"] == "integer", path
                    assert param["minimum"] == 1


async def test_schema_needs_no_token_and_is_stable(http: Api) -> None:
    first = await fetch_schema(http)
    second = await fetch_schema(http)
    assert first == second
    status, _ = await http.get("/schema", allow_redirects=False)
    assert status == 308


async def test_swagger_page_works_offline(http: Api) -> None:
    status, page = await http.get("/swagger/")
    assert status == 200
    assert isinstance(page, str) and "<html" in page.lower()
    assert "/schema/" in page
    assets = re.findall(r'<(?:script|link)[^>]*?(?:src|href)="([^"]+)"', page)
    assert any(a.endswith(".js") for a in assets) and any(a.endswith(".css") for a in assets)
    for asset in assets:
        # Served by the app itself: no CDN, no other host.
        assert asset.startswith("/static/"), asset
        async with http.session.get(asset) as resp:
            body = await resp.read()
            assert resp.status == 200, asset
            assert len(body) > 100, asset
            if asset.endswith(".js"):
                assert "javascript" in resp.content_type, (asset, resp.content_type)
            if asset.endswith(".css"):
                assert resp.content_type == "text/css", asset


async def test_redoc_page(http: Api) -> None:
    status, page = await http.get("/redoc/")
    assert status == 200
    assert isinstance(page, str) and "<html" in page.lower()
    assert 'spec-url="/schema/"' in page
    assert "redoc" in page.lower()
