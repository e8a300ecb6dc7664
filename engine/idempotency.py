"""Idempotency-Key on writes: a retried request replays the first answer instead of running again.

Applied per handler with `@idempotent(auth)`, never as a global middleware: a request without the
header costs one header lookup and no Redis round trip. With the header, the caller is
authenticated first (a bad token is 401 and nothing is recorded), then the key, scoped to the
user, is claimed atomically with an in-progress marker that expires by itself (a crashed API
process does not wedge the key). The marker carries a fingerprint of the request (method, path
and raw body): the same key for a different request is 400, a repeat while the first one runs is
409 with Retry-After. Once the handler has answered, its status, Content-Type and body replace
the marker for 24 hours; a server error (5xx, or an exception) releases the key instead, so a
retry runs for real. 4xx answers are kept: they are the answer to that request.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import logging
import re
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import hdrs, web
from aiohttp_apispec import headers_schema
from marshmallow import Schema, fields

from engine import appkeys, keys
from engine.auth import Principal
from engine.errors import DomainError, InvalidInput, error_body
from engine.jsonutil import json_response

log = logging.getLogger(__name__)

HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"
# Far longer than a request runs; one that outlives its marker sends its answer but does not
# keep it (settle_request only replaces its own marker).
MARKER_TTL_S = 60
ANSWER_TTL_S = 24 * 3600
RETRY_AFTER_S = 1
# Printable ASCII (space to tilde), 1-255 characters.
_VALID_KEY = re.compile(r"[\x20-\x7e]{1,255}")
_RUNNING = b"running"
_DONE = b"done"


class IdempotencyHeaderSchema(Schema):
    """The header in the OpenAPI document."""

    idempotency_key = fields.String(
        data_key=HEADER,
        required=False,
        metadata={
            "minLength": 1,
            "maxLength": 255,
            "description": (
                "Optional, 1-255 printable ASCII characters, per user, kept 24 h. A retry with"
                " the same key and body replays the first answer; another request with it is"
                " 400; a repeat while the first still runs is 409 with Retry-After."
            ),
        },
    )


# Documents the header on a route; put it above the route's body @request_schema, so that the
# body stays the first parameter.
idempotency_header = headers_schema(IdempotencyHeaderSchema)

Handler = Callable[[web.Request], Awaitable[web.Response]]
Auth = Callable[[web.Request], Principal | Awaitable[Principal]]


@dataclass(frozen=True, slots=True)
class Answer:
    """A stored answer to replay."""

    fingerprint: bytes
    status: int
    content_type: str
    body: bytes

    def encode(self) -> bytes:
        head = b"\n".join(
            (_DONE, self.fingerprint, str(self.status).encode(), self.content_type.encode())
        )
        return head + b"\n" + self.body

    def response(self) -> web.Response:
        headers = {REPLAYED_HEADER: "true"}
        if self.content_type:
            headers[hdrs.CONTENT_TYPE] = self.content_type
        return web.Response(status=self.status, body=self.body or None, headers=headers)


def fingerprint(method: str, path: str, body: bytes) -> bytes:
    """sha256 (hex) of the request: method and path cannot hold a newline, so this is exact."""
    digest = hashlib.sha256(f"{method}\n{path}\n".encode())
    digest.update(body)
    return digest.hexdigest().encode()


def marker(request_fingerprint: bytes) -> bytes:
    """The in-progress marker of one request: its fingerprint, and a token of its own."""
    return b"\n".join((_RUNNING, request_fingerprint, uuid.uuid4().hex.encode()))


def parse(value: bytes) -> tuple[bytes, Answer | None]:
    """(fingerprint, the stored answer or None while the first request runs) of a key's value."""
    if value.startswith(_RUNNING + b"\n"):
        return value.split(b"\n", 2)[1], None
    _, fp, status, content_type, body = value.split(b"\n", 4)
    return fp, Answer(fp, int(status), content_type.decode(), body)


def client_key(request: web.Request) -> str:
    """The Idempotency-Key header, validated."""
    values = request.headers.getall(HEADER)
    if len(values) != 1 or not _VALID_KEY.fullmatch(values[0]):
        raise InvalidInput(
            f"The {HEADER} header must be 1-255 printable ASCII characters, given once."
        )
    return values[0]


def in_progress() -> web.Response:
    response = json_response(
        error_body(f"The first request with this {HEADER} is still in progress; retry shortly."),
        status=409,
    )
    response.headers[hdrs.RETRY_AFTER] = str(RETRY_AFTER_S)
    return response


def mismatch() -> InvalidInput:
    return InvalidInput(
        f"This {HEADER} was already used for a different request (method, path or body);"
        " use a new key for a new request."
    )


def idempotent(auth: Auth) -> Callable[[Handler], Handler]:
    """Make a write handler honour the Idempotency-Key header; `auth` gives the caller (and
    raises 401/403 before anything is recorded)."""

    def decorate(handler: Handler) -> Handler:
        @functools.wraps(handler)
        async def wrapper(request: web.Request) -> web.Response:
            if HEADER not in request.headers:
                return await handler(request)
            principal = auth(request)
            if inspect.isawaitable(principal):
                principal = await principal
            return await run_once(request, handler, principal.user_id)

        return wrapper

    return decorate


async def run_once(request: web.Request, handler: Handler, user_id: int) -> web.Response:
    """Run the handler at most once per (user, key); replay its answer on a repeat."""
    redis_key = keys.idempotency(user_id, client_key(request))
    body = await request.read()
    fp = fingerprint(request.method, request.raw_path, body)
    mine = marker(fp)
    scripts = request.app[appkeys.SEATS].scripts
    held = await scripts.claim_request(keys=[redis_key], args=[mine, MARKER_TTL_S])
    if held is not None:
        held_fp, answer = parse(held)
        if held_fp != fp:
            raise mismatch()
        return in_progress() if answer is None else answer.response()

    async def settle(answer: bytes) -> None:
        args: list[bytes | int] = [mine, answer, ANSWER_TTL_S]
        if not await scripts.settle_request(keys=[redis_key], args=args):
            log.warning("idempotency: a request of user %s outlived its marker", user_id)

    try:
        response = await handler(request)
    except DomainError as exc:
        if exc.status >= 500:
            await release(settle)
            raise
        # The same JSON error the error middleware would send, kept as this request's answer.
        response = json_response(error_body(exc.detail, exc.errors), status=exc.status)
    except BaseException:
        await release(settle)
        raise
    stored = response.body
    if response.status >= 500 or not isinstance(stored, bytes | None):
        await release(settle)
        return response
    answer = Answer(fp, response.status, response.headers.get(hdrs.CONTENT_TYPE, ""), stored or b"")
    try:
        await settle(answer.encode())
    except Exception:
        # The work is done: the client gets its answer; a retry within the marker's lifetime
        # is 409, after it the request runs again.
        log.warning("idempotency: could not store an answer for user %s", user_id, exc_info=True)
    return response


async def release(settle: Callable[[bytes], Awaitable[None]]) -> None:
    """Free the key after a server error; if Redis is away too, the marker expires by itself."""
    try:
        await settle(b"")
    except Exception:
        log.warning("idempotency: could not release a key", exc_info=True)
