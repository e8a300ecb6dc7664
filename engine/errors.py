"""Domain errors, and the one place where they become the contract's JSON errors."""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import redis.exceptions
from aiohttp import web

from engine import appkeys
from engine.jsonutil import json_response

log = logging.getLogger("engine.http")

REQUEST_ID_HEADER = "X-Request-ID"


class DomainError(Exception):
    """An expected failure with an HTTP status in the contract."""

    status = 400
    detail = "bad request"

    def __init__(self, detail: str | None = None, *, errors: dict[str, list[str]] | None = None):
        super().__init__(detail or self.detail)
        self.detail = detail or self.detail
        self.errors = errors


class Unauthorized(DomainError):
    status = 401
    detail = "Authentication credentials were not provided or are invalid."


class Forbidden(DomainError):
    status = 403
    detail = "You do not have permission to perform this action."


class NotFound(DomainError):
    status = 404
    detail = "Not found."


class InvalidInput(DomainError):
    status = 400
    detail = "Invalid input."


class Conflict(DomainError):
    status = 409
    detail = "Conflict."


class BodyTimeout(DomainError):
    """The client's fault, not a dependency's: it announced a body it did not send in time."""

    status = 408
    detail = "The request body did not arrive in full in time."


class Unavailable(DomainError):
    status = 503
    detail = "A dependency is unavailable; retry shortly."
    retry_after_s = 2


def error_body(detail: str, errors: dict[str, list[str]] | None = None) -> dict[str, object]:
    body: dict[str, object] = {"detail": detail}
    if errors:
        body["errors"] = errors
    return body


# A dependency that is down or restarting: 503, not 500. redis-py's and asyncpg's connection
# errors are not builtin ConnectionError/OSError subclasses.
DEPENDENCY_ERRORS: tuple[type[BaseException], ...] = (
    ConnectionError,
    OSError,
    TimeoutError,
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    asyncpg.PostgresConnectionError,
    # A connection that dies inside a transaction surfaces as "the connection is closed", or,
    # when PostgreSQL terminates it mid-query, as "cannot switch to state ...".
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    asyncpg.OperatorInterventionError,
    asyncpg.InsufficientResourcesError,
)

REQUEST_DEADLINE_S = 8.0


class RequestDeadlines:
    """A dependency that stops answering is a 503 within the deadline, however many requests
    queue for its connections; never a request that hangs. One watchdog task per process
    rather than a timer per request (`asyncio.timeout` costs ~5% of a booking's CPU): a request
    still running `limit_s` after it started is cancelled within `tick_s` more."""

    def __init__(self, limit_s: float, tick_s: float = 0.25) -> None:
        self.limit_s = limit_s
        self.tick_s = tick_s
        # In start order, so in deadline order: the watchdog stops at the first one not due.
        self._running: dict[asyncio.Task[Any], float] = {}
        self._expired: set[asyncio.Task[Any]] = set()
        self._watchdog: asyncio.Task[None] | None = None

    def enter(self) -> asyncio.Task[Any]:
        task = asyncio.current_task()
        assert task is not None
        loop = task.get_loop()
        if self._watchdog is None or self._watchdog.done() or self._watchdog.get_loop() is not loop:
            self._watchdog = loop.create_task(self._watch())
        self._running[task] = loop.time() + self.limit_s
        return task

    def leave(self, task: asyncio.Task[Any]) -> bool:
        """Done with the request; whether the watchdog cancelled it (the CancelledError is ours,
        and is taken back)."""
        self._running.pop(task, None)
        if task not in self._expired:
            return False
        self._expired.discard(task)
        task.uncancel()
        return True

    async def _watch(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.tick_s)
            now = loop.time()
            for task, deadline in list(self._running.items()):
                if deadline > now:
                    break
                del self._running[task]
                self._expired.add(task)
                task.cancel()


deadlines = RequestDeadlines(REQUEST_DEADLINE_S)

_HTTP_DETAILS = {
    404: "Not found.",
    405: "Method not allowed.",
    413: "Request body is too large.",
}


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# Request ids: 32 hex digits like a UUID's, a random prefix per process and a counter (a uuid4
# per request costs a system call).
_ID_PREFIX = uuid.uuid4().hex[:20]
_id_counter = itertools.count(1)


def _new_id() -> str:
    return f"{_ID_PREFIX}{next(_id_counter) & 0xFFFFFFFFFFFF:012x}"


access_log = logging.getLogger("engine.access")


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every answer in the contract's shape, with a request id; one JSON log line a request."""
    incoming = request.headers.get(REQUEST_ID_HEADER, "")
    request_id = incoming if 0 < len(incoming) <= 64 and incoming.isprintable() else _new_id()
    started = time.perf_counter()
    response = await _respond(request, handler, request_id)
    if access_log.isEnabledFor(logging.INFO):
        access_log.info(
            "%s %s %s",
            request.method,
            request.path,
            response.status,
            extra={
                "request_id": request_id,
                "status": response.status,
                "ms": round((time.perf_counter() - started) * 1000, 2),
                # Set by handlers that know them, to follow a booking to its row.
                "user_id": request.get(appkeys.USER_ID),
                "booking_id": request.get(appkeys.BOOKING_ID),
            },
        )
    return response


async def _respond(request: web.Request, handler: Handler, request_id: str) -> web.StreamResponse:
    task = deadlines.enter()
    try:
        try:
            response = await handler(request)
        except asyncio.CancelledError:
            if deadlines.leave(task):
                if not request.content.is_eof():  # still waiting for the body it announced
                    raise BodyTimeout() from None
                raise TimeoutError(f"no answer within {REQUEST_DEADLINE_S} s") from None
            raise
        finally:
            deadlines.leave(task)
    except DomainError as exc:
        response = json_response(error_body(exc.detail, exc.errors), status=exc.status)
        if isinstance(exc, Unavailable):
            response.headers["Retry-After"] = str(exc.retry_after_s)
        elif isinstance(exc, BodyTimeout):
            response.force_close()  # the rest of that body must not be read as a request
    except web.HTTPException as exc:
        if exc.status < 400:  # the 308 to the slashed path: JSON like every other answer
            response = json_response(
                {"detail": f"Moved to {exc.headers.get('Location', '')}"}, status=exc.status
            )
            response.headers.update(
                {
                    k: v
                    for k, v in exc.headers.items()
                    if k.lower() not in ("content-type", "content-length")
                }
            )
            response.headers[REQUEST_ID_HEADER] = request_id
            return response
        status = exc.status
        if status == 413:
            status = 400  # the contract answers oversized input with 400
        detail = _HTTP_DETAILS.get(exc.status) or exc.reason
        response = json_response(error_body(detail), status=status)
        if exc.status == 405:
            allow = exc.headers.get("Allow")
            if allow:
                response.headers["Allow"] = allow
    except DEPENDENCY_ERRORS as exc:
        log.warning("dependency unavailable request_id=%s error=%r", request_id, exc)
        response = json_response(error_body(Unavailable.detail), status=503)
        response.headers["Retry-After"] = str(Unavailable.retry_after_s)
    except Exception:
        log.exception(
            "unexpected error request_id=%s %s %s", request_id, request.method, request.path
        )
        response = json_response(
            error_body(f"Internal server error (request id {request_id})."), status=500
        )
    response.headers[REQUEST_ID_HEADER] = request_id
    return response
