"""OpenAPI (Swagger 2.0) document built by aiohttp-apispec from the routes' decorators, and the
Swagger UI (served from the installed package, so it works offline) and ReDoc pages."""

from __future__ import annotations

import copy
import warnings
from pathlib import Path
from typing import Any

import aiohttp_apispec
from aiohttp import web
from aiohttp_apispec.aiohttp_apispec import AiohttpApiSpec
from jinja2 import Template
from marshmallow.warnings import RemovedInMarshmallow4Warning

from engine import appkeys
from engine.jsonutil import json_response

SCHEMA_URL = "/schema/"
SWAGGER_STATIC = "/static/swagger"
SWAGGER_STATIC_DIR = Path(aiohttp_apispec.__file__).parent / "static"
TAGS = [
    {"name": "Auth", "description": "Sign up, log in, refresh tokens"},
    {"name": "Movies", "description": "The catalog"},
    {"name": "Shows", "description": "Shows and their free seats"},
    {"name": "Bookings", "description": "Book, cancel, your bookings"},
    {"name": "Admin", "description": "For admins: movies, shows, bookings, users"},
    {"name": "Operations", "description": "Probes for orchestrators"},
]
ERROR_DEFINITION = {
    "type": "object",
    "properties": {
        "detail": {"type": "string"},
        "errors": {
            "type": "object",
            "description": "field -> messages, for invalid input",
            "additionalProperties": {"type": "array", "items": {"type": "string"}},
        },
    },
    "required": ["detail"],
}
ERROR_RESPONSES = {
    "400": "invalid input",
    "401": "no or bad token",
    "403": "not allowed",
    "404": "unknown route or id",
}
REDOC_PAGE = """<!DOCTYPE html>
<html><head><title>Booking engine API</title><meta charset="utf-8"/></head>
<body><redoc spec-url="{url}"></redoc>
<script src="https://cdn.redoc.ly/redoc/latest/bundles/redoc.standalone.js"></script>
</body></html>"""


def build_openapi(app: web.Application) -> dict[str, Any]:
    """The Swagger 2.0 document of every documented route of the app."""
    spec = AiohttpApiSpec(
        url=None,
        app=None,
        title="Ticket booking engine",
        version="1.0.0",
        info={"description": "Redis-backed, high-throughput ticket booking API."},
        securityDefinitions={
            "Bearer": {
                "type": "apiKey",
                "name": "Authorization",
                "in": "header",
                "description": 'JWT access token: "Bearer <access>"',
            }
        },
        tags=TAGS,
        consumes=["application/json"],
        produces=["application/json"],
    )
    for route in app.router.routes():
        if route.method in ("HEAD", "OPTIONS", "*"):
            continue
        documented = getattr(route.handler, "__apispec__", None)
        path = route.resource.canonical if route.resource is not None else None
        if documented is None or not path:
            continue
        # aiohttp-apispec consumes the data it is given: pass a copy, so that every app built
        # in this process (tests build many) gets the whole document.
        spec._update_paths(merged_responses(copy.deepcopy(documented)), route.method.lower(), path)
    return polish(spec.swagger_dict())


def merged_responses(documented: dict[str, Any]) -> dict[str, Any]:
    """@docs(responses={201: ...}) keys by int, @response_schema(..., 201) by str: left apart,
    the description would replace the schema in the document. Merge them under the str key."""
    responses: dict[Any, Any] = documented.get("responses", {})
    for code in [c for c in responses if isinstance(c, int)]:
        responses.setdefault(str(code), {}).update(responses.pop(code))
    return documented


def polish(doc: dict[str, Any]) -> dict[str, Any]:
    """What aiohttp-apispec leaves out or gets wrong: every operation answers something
    (Swagger 2.0 requires a response), ids are 64-bit integers, path ids are integers, and the
    contract's error responses are documented with their shape."""
    doc["definitions"]["Error"] = ERROR_DEFINITION
    for definition in doc["definitions"].values():
        for name, prop in definition.get("properties", {}).items():
            if prop.get("type") == "integer" and (name == "id" or name.endswith("_id")):
                prop["format"] = "int64"
    error_ref = {"$ref": "#/definitions/Error"}
    for operations in doc["paths"].values():
        for operation in operations.values():
            responses = operation.setdefault("responses", {})
            if not responses:
                responses["200"] = {"description": "OK"}
            params = operation.get("parameters", [])
            wanted = set()
            for param in params:
                if param.get("in") == "path":
                    param.update(type="integer", format="int64", minimum=1)
                    wanted.add("404")
                elif param.get("in") in ("body", "query"):
                    wanted.add("400")
            if operation.get("security"):
                wanted |= {"401", "403"} if "Admin" in operation.get("tags", []) else {"401"}
            for code in sorted(wanted):
                responses.setdefault(code, {"description": ERROR_RESPONSES[code]})
            for code, response in responses.items():
                if code.startswith(("4", "5")):
                    response.setdefault("schema", error_ref)
    return doc


async def schema_view(request: web.Request) -> web.Response:
    return json_response(request.app[appkeys.OPENAPI])


_swagger_page: str | None = None


async def swagger_view(request: web.Request) -> web.Response:
    global _swagger_page
    if _swagger_page is None:
        template = Template((SWAGGER_STATIC_DIR / "index.html").read_text())
        _swagger_page = template.render(path=SCHEMA_URL, static=SWAGGER_STATIC)
    return web.Response(text=_swagger_page, content_type="text/html")


async def redoc_view(request: web.Request) -> web.Response:
    return web.Response(text=REDOC_PAGE.format(url=SCHEMA_URL), content_type="text/html")


def setup_docs(app: web.Application) -> None:
    app.router.add_get(SCHEMA_URL, schema_view)
    app.router.add_get("/swagger/", swagger_view)
    app.router.add_get("/redoc/", redoc_view)
    app.router.add_static(SWAGGER_STATIC, SWAGGER_STATIC_DIR)

    async def on_startup(app: web.Application) -> None:
        with warnings.catch_warnings():
            # apispec 3 (the newest aiohttp-apispec allows) reads marshmallow 3's deprecated
            # field attributes; the document it builds is right.
            warnings.simplefilter("ignore", RemovedInMarshmallow4Warning)
            app[appkeys.OPENAPI] = build_openapi(app)

    app.on_startup.append(on_startup)
