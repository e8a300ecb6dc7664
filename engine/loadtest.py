"""The load-test harness: `python -m engine loadtest`.

Drives any server that speaks the contract (../shared/CONTRACT.md) by base URL (http:// only).
Users are signed up and logged in before the clock starts; the catalog is created through the
admin API (--admin-user/--admin-password) or given (--show). Setup and verification use aiohttp;
the measured part uses a lean HTTP/1.1 client on asyncio transports (`Connection`): each of the
--concurrency worker coroutines owns one keep-alive connection and pulls from one request budget
(--requests) or runs until a deadline (--duration). Every request is recorded in flat arrays
(completion time, latency, kind, status: 19 bytes a request), so a million-request run fits in
a few tens of MB.

Before the clock, the client's own ceiling is measured against a trivial HTTP responder in a
separate process (`python -m engine.loadtest --trivial-server PORT`), so the figures say whether
the run was limited by the client rather than by the server.

After the run it verifies, through the API (and PostgreSQL with --database-url), that no seat was
sold twice and that the counts agree. Exit codes: 1 when an invariant is broken (the problems are
printed); 2 when the run cannot be trusted to say so: a configuration refused, a setup that
failed, a check that could not be made (PostgreSQL or the API unreachable after the run), or a
run that was not clean (requests that got no answer, or an answer the scenario does not expect,
such as a 500); 130 when interrupted (Ctrl-C); else 0. A login answered 503 with Retry-After is
the server turning a caller away by design: counted apart ("turned away"), not as an error.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import gc
import importlib.util
import inspect
import json
import math
import os
import random
import signal
import sys
import time
from array import array
from bisect import bisect_left
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NamedTuple, TextIO, cast
from urllib.parse import urlsplit

import aiohttp
import asyncpg
import orjson

from engine.jsonutil import dumps

PASSWORD_PREFIX = "lt-pass-"
# Access tokens are renewed this long before they expire, during and after a run.
TOKEN_MARGIN_S = 60.0
TOKEN_CHECK_EVERY_S = 5.0
# Setup requests answered 503 are tried this many times in all.
SETUP_TRIES = 5
SCENARIOS = ("flash", "spread", "mixed", "login")
DEFAULT_SEATS = {"flash": 1000, "spread": 200, "mixed": 200, "login": 0}
DEFAULT_SHOWS = {"flash": 1, "spread": 50, "mixed": 10, "login": 0}
# The run may be limited by the client when it used this share of a core, or reached this share
# of the rate the same client reaches against a trivial endpoint.
CLIENT_CPU_WARNING = 0.8
CLIENT_CEILING_WARNING = 0.7
REQUEST_TIMEOUT_S = 30.0
# After a request that got no answer, its worker waits this long, doubling up to the most while
# none come (a server that is down is not hammered by a reconnect loop); any answer resets it.
BACKOFF_FIRST_S = 0.05
BACKOFF_MAX_S = 1.0
# The verification after the run (beyond waiting for persistence to drain) ends within this.
VERIFY_DEADLINE_S = 120.0
# The longest one poll of GET /health/ready may take past the drain's own deadline.
LAG_POLL_TIMEOUT_S = 5.0
# The contract's bounds: total_seats 1-10000; --duration at most a day.
MAX_SEATS = 10_000
MAX_DURATION_S = 86_400.0
PLOT_MISSING = "error: --plot needs matplotlib: pip install 'booking-engine[plot]'"

# Request kinds, stored as their index in the per-request `kind` array.
KINDS = ("book", "login", "browse", "cancel")
BOOK, LOGIN, BROWSE, CANCEL = range(len(KINDS))


@dataclass
class Config:
    url: str
    scenario: str = "flash"
    requests: int | None = None
    duration: float | None = None
    concurrency: int = 50
    users: int = 50
    seed: int = 1
    admin_user: str | None = None
    admin_password: str | None = None
    shows: list[int] = field(default_factory=list)
    own_shows: bool = False
    seats: int | None = None
    show_count: int | None = None
    auth_url: str | None = None
    database_url: str | None = None
    json_path: str | None = None
    progress: bool = True
    lag_deadline_s: float = 30.0
    verify_deadline_s: float = VERIFY_DEADLINE_S
    out: TextIO | None = None
    plot_path: str | None = None
    # Measure the client's own ceiling (a separate trivial server process) before the clock.
    client_ceiling: bool = True
    ceiling_seconds: float = 2.0
    # Called with "start" and "stop" around the measured part, then "drained" once PostgreSQL
    # holds every 201, just before verifying (make bench reads the processes' CPU time there;
    # a test may tamper there, awaited if it returns an awaitable).
    on_clock: Callable[[str], Awaitable[None] | None] | None = None


# --- the lean HTTP/1.1 client ------------------------------------------------------------------


class BadResponse(Exception):
    """The server's answer is not HTTP/1.x this client can read."""


MAX_HEAD = 64 * 1024
_JSON_BODY_HEAD = b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n"
# The longest a worker waits on a 503's Retry-After before its next request.
MAX_RETRY_AFTER_S = 5.0
IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS", b"PUT", b"DELETE"})


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int
    prefix: bytes  # the base URL's path, without the trailing slash
    host_line: bytes  # b"Host: ...\r\n"


def parse_endpoint(url: str) -> Endpoint:
    """An http:// base URL; ValueError for anything else (https is not supported)."""
    parts = urlsplit(url)
    if parts.scheme != "http":
        raise ValueError(f"{url!r} is not an http:// URL (https is not supported)")
    if not parts.hostname:
        raise ValueError(f"{url!r}: no host")
    if "@" in parts.netloc:
        raise ValueError(f"{url!r}: no user:password@ in the URL (the harness logs in itself)")
    if parts.query or parts.fragment or url.endswith(("?", "#")):
        # paths are appended to the base URL: a query or fragment would swallow them
        raise ValueError(f"{url!r}: a base URL has no query (?) or fragment (#)")
    try:
        port = parts.port
    except ValueError:  # not a number, or above 65535
        port = 0
    if port == 0:
        raise ValueError(f"{url!r}: the port must be a number from 1 to 65535")
    return Endpoint(
        host=parts.hostname,
        port=port or 80,
        prefix=parts.path.rstrip("/").encode(),
        host_line=b"Host: " + parts.netloc.encode("idna") + b"\r\n",
    )


def _header(head: bytes, name: bytes) -> bytes | None:
    """The value of header `name` in a lower-cased response head (first occurrence)."""
    i = head.find(b"\r\n" + name + b":")
    if i < 0:
        return None
    start = i + len(name) + 3
    end = head.find(b"\r\n", start)
    return head[start : end if end >= 0 else len(head)].strip()


class _ResponseReader(asyncio.Protocol):
    """Reads the answer to one request at a time off a keep-alive connection."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self.open = True  # False once the server ended the connection or it was lost
        self.keep_alive = True
        self.no_body = False  # the request was HEAD
        self.got_bytes = False  # some of the answer to the current request arrived
        self.retry_after: float | None = None  # of the last answer, in seconds
        self._new_response()

    def _new_response(self) -> None:
        self.status = 0
        self._retry_after: float | None = None
        self.length = -1
        self.chunked = False
        self.trailers = False
        self.until_close = False
        self.body = bytearray()

    def start(self, waiter: asyncio.Future[tuple[int, bytes]], no_body: bool) -> None:
        self.waiter, self.no_body, self.got_bytes = waiter, no_body, False

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have its methods
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if self.waiter is not None:
            self.got_bytes = True
            self._parse(eof=False)

    def eof_received(self) -> bool:
        self.open = False
        self._end(None)
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.open = False
        self._end(exc)

    def _end(self, exc: Exception | None) -> None:
        """The connection ended: the answer is complete (its body delimited by the end) or the
        request failed mid-flight."""
        if self.waiter is not None and exc is None:
            self._parse(eof=True)
        if self.waiter is not None:
            self._fail(exc or ConnectionResetError("the server closed the connection mid-answer"))

    def time_out(self, seconds: float) -> None:
        self._fail(TimeoutError(f"no answer within {seconds:g} s"))

    # parsing

    def _fail(self, exc: BaseException) -> None:
        waiter, self.waiter = self.waiter, None
        self.open = False
        if self.transport is not None and not self.transport.is_closing():
            self.transport.abort()
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)

    def _parse(self, eof: bool) -> None:
        try:
            body = self._read(eof)
        except (ValueError, BadResponse) as exc:
            self._fail(exc if isinstance(exc, BadResponse) else BadResponse(str(exc)))
            return
        if body is None:
            return
        waiter, status = self.waiter, self.status
        self.waiter = None
        self.retry_after = self._retry_after
        self._new_response()
        if not self.keep_alive:
            self.open = False
            if self.transport is not None:
                self.transport.close()
        if waiter is not None and not waiter.done():
            waiter.set_result((status, body))

    def _read(self, eof: bool) -> bytes | None:
        """The body once the whole answer is in the buffer, else None."""
        buf = self.buf
        while self.status == 0:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > MAX_HEAD:
                    raise BadResponse("response head over 64 KiB")
                return None
            head = bytes(buf[:end]).lower()  # names are case-insensitive; no value we read isn't
            del buf[: end + 4]
            self._read_head(head)
        if self.chunked:
            return self._read_chunks()
        if self.until_close:
            if not eof:
                return None
            body = bytes(buf)
            buf.clear()
            return body
        if len(buf) < self.length:
            return None
        body = bytes(buf[: self.length])
        del buf[: self.length]
        return body

    def _read_head(self, head: bytes) -> None:
        line_end = head.find(b"\r\n")
        first = head if line_end < 0 else head[:line_end]
        version, _, rest = first.partition(b" ")
        if not version.startswith(b"http/1."):
            raise BadResponse(f"not an HTTP/1.x status line: {first[:80]!r}")
        status = int(rest[:3])
        if not 100 <= status <= 999:
            raise BadResponse(f"status {status}")
        if status < 200:
            return  # an interim answer (100 Continue): the real one follows
        connection = _header(head, b"connection")
        if version == b"http/1.0":
            self.keep_alive = connection is not None and b"keep-alive" in connection
        else:
            self.keep_alive = connection is None or b"close" not in connection
        self.status = status
        retry_after = _header(head, b"retry-after")
        if retry_after is not None and retry_after.strip().isdigit():
            self._retry_after = float(retry_after)
        if self.no_body or status in (204, 304):
            self.length = 0
            return
        encoding = _header(head, b"transfer-encoding")
        if encoding is not None and b"chunked" in encoding:
            self.chunked = True
            return
        length = _header(head, b"content-length")
        if length is not None:
            self.length = int(length)
            if self.length < 0:
                raise BadResponse(f"Content-Length {self.length}")
        else:  # delimited by the end of the connection
            self.until_close = True
            self.keep_alive = False

    def _read_chunks(self) -> bytes | None:
        buf = self.buf
        while True:
            nl = buf.find(b"\r\n")
            if nl < 0:
                if len(buf) > MAX_HEAD:
                    raise BadResponse("chunk size line over 64 KiB")
                return None
            if self.trailers:  # after the last chunk: trailer lines up to an empty one
                del buf[: nl + 2]
                if nl == 0:
                    return bytes(self.body)
                continue
            size = int(bytes(buf[:nl]).split(b";", 1)[0], 16)
            if size < 0:
                raise BadResponse(f"chunk size {size}")
            if size == 0:
                del buf[: nl + 2]
                self.trailers = True
                continue
            end = nl + 2 + size
            if len(buf) < end + 2:
                return None
            if buf[end : end + 2] != b"\r\n":
                raise BadResponse("chunk data not followed by CRLF")
            self.body += buf[nl + 2 : end]
            del buf[: end + 2]


class Connection:
    """One persistent HTTP/1.1 connection, one request at a time, reconnected when needed.

    A connection the server closed (`Connection: close`, an idle timeout, a body delimited by
    the close) is replaced before the next request is written. A request that fails once
    written raises (ConnectionResetError, TimeoutError after REQUEST_TIMEOUT_S, BadResponse,
    ...), except an idempotent one on a reused connection that got no byte of an answer, which
    is sent once more on a fresh connection (what browsers and aiohttp do).
    """

    def __init__(self, endpoint: Endpoint, timeout: float = REQUEST_TIMEOUT_S) -> None:
        self.endpoint = endpoint
        self.timeout = timeout
        self.connects = 0
        self._reader: _ResponseReader | None = None

    def message(self, method: bytes, path: str, headers: bytes, body: bytes | None) -> bytes:
        """The request's bytes; `headers` are whole lines (b"Name: value\\r\\n")."""
        start = b"%s %s HTTP/1.1\r\n%s%s" % (
            method,
            self.endpoint.prefix + path.encode(),
            self.endpoint.host_line,
            headers,
        )
        if body is None and method in (b"GET", b"HEAD"):
            return start + b"\r\n"
        body = body or b""
        return start + _JSON_BODY_HEAD % len(body) + body

    async def request(
        self, method: bytes, path: str, headers: bytes = b"", body: bytes | None = None
    ) -> tuple[int, bytes]:
        """(status, body bytes). `headers` are whole lines: b"Name: value\\r\\n"."""
        msg = self.message(method, path, headers, body)
        reader = self._reader
        reused = reader is not None and reader.open and not reader.buf
        if reader is None or not reused:
            reader = await self._connect()
        try:
            return await self._exchange(reader, msg, method)
        except ConnectionError:
            self.close(abort=True)
            if not (reused and not reader.got_bytes and method in IDEMPOTENT):
                raise
        except BaseException:
            self.close(abort=True)
            raise
        try:
            return await self._exchange(await self._connect(), msg, method)
        except BaseException:
            self.close(abort=True)
            raise

    async def _connect(self) -> _ResponseReader:
        self.close(abort=True)
        loop = asyncio.get_running_loop()
        _, reader = await asyncio.wait_for(
            loop.create_connection(_ResponseReader, self.endpoint.host, self.endpoint.port),
            self.timeout,
        )
        self._reader = reader
        self.connects += 1
        return reader

    async def _exchange(
        self, reader: _ResponseReader, msg: bytes, method: bytes
    ) -> tuple[int, bytes]:
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[tuple[int, bytes]] = loop.create_future()
        reader.start(waiter, no_body=method == b"HEAD")
        assert reader.transport is not None
        reader.transport.write(msg)
        timer = loop.call_later(self.timeout, reader.time_out, self.timeout)
        try:
            return await waiter
        finally:
            timer.cancel()

    @property
    def retry_after(self) -> float | None:
        """The Retry-After of the last answer, in seconds (a delay; a date is not read)."""
        return self._reader.retry_after if self._reader is not None else None

    def close(self, abort: bool = False) -> None:
        reader, self._reader = self._reader, None
        if reader is not None and reader.transport is not None:
            reader.open = False
            reader.transport.abort() if abort else reader.transport.close()


# --- per-request records -------------------------------------------------------------------------


class Recorder:
    """One entry a request, in flat arrays: completion time (s since the start of the clock),
    latency (s), kind (index in KINDS), status (0: no answer)."""

    def __init__(self) -> None:
        self.done = array("d")
        self.latency = array("d")
        self.kind = array("B")
        self.status = array("H")

    def __len__(self) -> int:
        return len(self.latency)

    def add(self, done: float, latency: float, kind: int, status: int) -> None:
        self.done.append(done)
        self.latency.append(latency)
        self.kind.append(kind)
        self.status.append(status)


@dataclass
class Show:
    id: int
    total_seats: int
    labels: list[str]
    owned: bool  # created by this run, or declared as used by this run only (--own-shows)

    @property
    def book_path(self) -> str:
        return f"/api/shows/{self.id}/book/"


@dataclass
class User:
    id: int
    name: str
    token: str
    bookings: list[tuple[int, int, str]] = field(default_factory=list)  # (id, show, seat)
    password: str = ""
    refresh: str = ""

    def __post_init__(self) -> None:
        self.set_tokens(self.token, self.refresh)
        self.login_body = dumps({"username": self.name, "password": self.password})

    def set_tokens(self, access: str, refresh: str) -> None:
        self.token, self.refresh = access, refresh
        self.auth = f"Authorization: Bearer {access}\r\n".encode()
        self.expires = token_expiry(access)


def token_expiry(token: str) -> float:
    """The `exp` of a JWT (read, not verified: the server verifies it); inf if it has none."""
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        return float(claims["exp"])
    except (IndexError, ValueError, KeyError, TypeError):
        return float("inf")


@dataclass
class Stats:
    errors: Counter[str] = field(default_factory=Counter)  # "kind status" or "kind Exception"
    booked: int = 0
    conflicts: int = 0
    cancels: int = 0
    logins: int = 0
    turned_away: int = 0  # logins answered 503 with Retry-After: shed by design, not errors
    # Per show, the books and the cancels whose outcome is unknown (no answer, a 5xx, a 201
    # without a booking id): each makes the show's booked count uncertain by one.
    unknown_books: Counter[int] = field(default_factory=Counter)
    unknown_cancels: Counter[int] = field(default_factory=Counter)
    uncertain: set[int] = field(default_factory=set)  # booking ids whose cancel is unknown
    rejected_seats: dict[int, str] = field(default_factory=dict)  # show -> a seat answered 400
    # (booking id, show, seat, user id) for every 201, and the ids cancelled with a 200
    sold: list[tuple[int, int, str, int]] = field(default_factory=list)
    cancelled: set[int] = field(default_factory=set)
    health_latencies: list[float] = field(default_factory=list)
    health_errors: int = 0
    timeline: list[dict[str, float]] = field(default_factory=list)


class SetupError(RuntimeError):
    pass


# What a request outside the clock may end in: an answer other than the contract's (refused,
# or without the fields it promises), or none.
OFF_CLOCK_ERRORS = (SetupError, aiohttp.ClientError, OSError, KeyError, TypeError, ValueError)


def seat_count(show: Any, show_id: int) -> int:
    """A show's total_seats as the server gave it, if the contract allows it (1-10000): a run
    must not try to label 10**12 seats."""
    given = show.get("total_seats") if isinstance(show, dict) else None
    total = _positive_int(given)
    if total is None or total > MAX_SEATS:
        raise SetupError(
            f"show {show_id}: the server gave total_seats {_excerpt(given)}, not a number of "
            f"seats from 1 to {MAX_SEATS}"
        )
    return total


def row_name(index: int) -> str:
    """A, B, ... Z, AA, AB, ...: the contract's row letters."""
    name = ""
    index += 1
    while index:
        index, rest = divmod(index - 1, 26)
        name = chr(ord("A") + rest) + name
    return name


def seat_labels(show: dict[str, Any], total: int) -> list[str]:
    """The contract's labels of a show's `total` seats: A1... when it gives rows and
    seats_per_row that make up that total, else "1".."N"."""
    rows, per_row = _positive_int(show.get("rows")), _positive_int(show.get("seats_per_row"))
    if rows and per_row and rows * per_row == total:
        return [f"{row_name(r)}{c}" for r in range(rows) for c in range(1, per_row + 1)]
    return [str(i) for i in range(1, total + 1)]


def percentile(sorted_values: Any, p: float) -> float:
    if not sorted_values:
        return 0.0
    index = min(len(sorted_values) - 1, max(0, int(round(p / 100 * len(sorted_values) + 0.5)) - 1))
    return float(sorted_values[index])


PERCENTILE_BINS = 1 << 16


def percentiles(values: Sequence[float], ps: Sequence[float]) -> dict[float, float]:
    """`percentile(sorted(values), p)` for each p, exactly, without sorting a copy of all the
    values (a million latencies sorted are 32 MB of float objects): one pass counts them into
    PERCENTILE_BINS bins, a second keeps only the bins that hold a wanted rank."""
    n = len(values)
    if n <= 100_000:
        ordered = sorted(values)
        return {p: percentile(ordered, p) for p in ps}
    lo, hi = min(values), max(values)
    if hi == lo:
        return {p: float(lo) for p in ps}
    scale = (PERCENTILE_BINS - 1) / (hi - lo)
    counts = Counter(int((v - lo) * scale) for v in values)
    ranks = sorted((min(n - 1, max(0, int(round(p / 100 * n + 0.5)) - 1)), p) for p in ps)
    wanted: dict[int, list[tuple[int, float]]] = defaultdict(list)  # bin -> (rank in it, p)
    below = 0
    for b in sorted(counts):
        while ranks and ranks[0][0] < below + counts[b]:
            rank, p = ranks.pop(0)
            wanted[b].append((rank - below, p))
        below += counts[b]
    members: dict[int, list[float]] = defaultdict(list)
    for v in values:
        b = int((v - lo) * scale)
        if b in wanted:
            members[b].append(v)
    found: dict[float, float] = {}
    for b, asks in wanted.items():
        ordered = sorted(members[b])
        for rank, p in asks:
            found[p] = float(ordered[rank])
    return found


async def _json(resp: aiohttp.ClientResponse) -> Any:
    text = await resp.text()
    try:
        return json.loads(text) if text else None
    except ValueError:
        return text


def _loads(body: bytes) -> Any:
    try:
        return orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        return None


def _integer(value: Any) -> int | None:
    """A JSON integer as the server gave it (not a bool, which Python counts as one), else
    None."""
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _positive_int(value: Any) -> int | None:
    """An id as the contract gives it (a positive integer), else None."""
    number = _integer(value)
    return number if number is not None and number >= 1 else None


def booking_record(booking: Any, show_id: int, seat: str) -> tuple[int, int, str] | None:
    """(booking id, show, seat) of a 201's body; None when it names no booking id."""
    if not isinstance(booking, dict) or (booking_id := _positive_int(booking.get("id"))) is None:
        return None
    label = booking.get("seat_number", seat)
    return booking_id, show_id, str(label) if isinstance(label, str | int) else seat


def _excerpt(value: Any) -> str:
    """A server's odd answer, short enough for one line."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


class _Conns:
    """A worker's own connections: the API, and the auth service when it is elsewhere."""

    def __init__(self, api: Endpoint, auth: Endpoint) -> None:
        self.api = Connection(api)
        self.auth = self.api if auth == api else Connection(auth)
        self.backoff = 0.0  # s, the wait after the last request that got no answer; 0: none

    def close(self) -> None:
        self.api.close()
        self.auth.close()


class Harness:
    def __init__(self, cfg: Config, session: aiohttp.ClientSession) -> None:
        self.cfg = cfg
        self.session = session
        self.url = cfg.url.rstrip("/")
        self.auth_url = (cfg.auth_url or cfg.url).rstrip("/")
        self.api_endpoint = parse_endpoint(self.url)
        self.auth_endpoint = parse_endpoint(self.auth_url)
        self.rng = random.Random(cfg.seed)
        self.users: list[User] = []
        self.shows: list[Show] = []
        self.shows_by_id: dict[int, Show] = {}
        self.untried: list[tuple[Show, str]] = []
        self.stats = Stats()
        self.rec = Recorder()
        self.t0 = 0.0
        self.remaining = cfg.requests
        self.deadline = 0.0
        self.admin_token: str | None = None
        self.notes: list[str] = []
        self.unverified: list[str] = []  # checks that could not be made (and why)

    # --- setup ----------------------------------------------------------------------------

    async def _post(self, base: str, path: str, body: Any, token: str | None = None) -> Any:
        """A request outside the clock (setup, token renewal). A 503 (a busy server hashing
        passwords, say) is retried after its Retry-After, a few times."""
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        for attempt in range(SETUP_TRIES):
            async with self.session.post(base + path, json=body, headers=headers) as resp:
                data = await _json(resp)
                if resp.status in (200, 201):
                    return data
                if resp.status != 503 or attempt == SETUP_TRIES - 1:
                    raise SetupError(f"POST {path} answered {resp.status}: {data}")
                wait = resp.headers.get("Retry-After", "1")
            await asyncio.sleep(float(wait) if wait.isdigit() else 1.0)

    async def login(self, name: str, password: str) -> str:
        return (await self.login_pair(name, password))[0]

    async def login_pair(self, name: str, password: str) -> tuple[str, str]:
        body = await self._post(
            self.auth_url, "/api/auth/login/", {"username": name, "password": password}
        )
        return str(body["access"]), str(body.get("refresh", ""))

    async def refresh_tokens(self) -> None:
        """Renew the access tokens that expire within TOKEN_MARGIN_S (a run longer than their
        lifetime must not turn into 401s): by refresh token, or by logging in again."""
        due = [u for u in self.users if u.expires - time.time() < TOKEN_MARGIN_S]
        sem = asyncio.Semaphore(8)

        async def renew(user: User) -> None:
            async with sem:
                try:
                    body = await self._post(
                        self.auth_url, "/api/auth/token/refresh/", {"refresh": user.refresh}
                    )
                    user.set_tokens(str(body["access"]), str(body.get("refresh", user.refresh)))
                except (SetupError, aiohttp.ClientError, OSError, KeyError, TypeError):
                    user.set_tokens(*await self.login_pair(user.name, user.password))

        await asyncio.gather(*(renew(u) for u in due))

    async def keep_tokens_fresh(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.refresh_tokens()
            except OFF_CLOCK_ERRORS as exc:
                self.notes.append(f"could not renew access tokens: {exc}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), TOKEN_CHECK_EVERY_S)

    async def make_users(self) -> None:
        suffix = os.urandom(3).hex()
        # Signup and login hash passwords (bcrypt): a few at a time keeps the server answering.
        sem = asyncio.Semaphore(max(1, min(self.cfg.concurrency, 8)))

        async def one(i: int) -> User:
            name = f"lt{self.cfg.seed}-{suffix}-{i}"
            password = PASSWORD_PREFIX + suffix
            async with sem:
                body = await self._post(
                    self.auth_url,
                    "/api/auth/signup/",
                    {"username": name, "email": f"{name}@example.com", "password": password},
                )
                access, refresh = await self.login_pair(name, password)
            return User(int(body["id"]), name, access, password=password, refresh=refresh)

        self.users = list(await asyncio.gather(*(one(i) for i in range(self.cfg.users))))

    async def serves_catalog(self) -> bool:
        """Whether the server has the contract's catalog (a 404 for a show then means no such
        show, not a server that only books, like make bench's ceiling)."""
        async with self.session.get(f"{self.url}/api/movies/") as resp:
            await resp.read()
            return resp.status == 200

    async def make_catalog(self) -> None:
        cfg = self.cfg
        if cfg.scenario == "login":
            return
        seats = cfg.seats or DEFAULT_SEATS[cfg.scenario]
        if cfg.shows:
            unknown: list[int] = []
            for show_id in cfg.shows:
                labels = [str(i) for i in range(1, seats + 1)]
                async with self.session.get(f"{self.url}/api/shows/{show_id}/") as resp:
                    if resp.status == 200:
                        labels = await self.existing_labels(show_id, await _json(resp))
                    else:
                        unknown.append(show_id)
                self.shows.append(Show(show_id, len(labels), labels, cfg.own_shows))
            if unknown and await self.serves_catalog():
                raise SetupError(f"no such show: {', '.join(map(str, unknown))}")
            if unknown:
                self.notes.append(
                    f"GET /api/shows/{{id}}/ not served for {len(unknown)} show(s): assumed "
                    f"{seats} seats each"
                )
        else:
            if not (cfg.admin_user and cfg.admin_password):
                raise SetupError("give --admin-user/--admin-password or --show ids")
            self.admin_token = await self.login(cfg.admin_user, cfg.admin_password)
            count = cfg.show_count or DEFAULT_SHOWS[cfg.scenario]
            movie = await self._post(
                self.url,
                "/api/admin/movies/",
                {"title": f"Load test {cfg.seed}-{os.urandom(3).hex()}", "duration_minutes": 120},
                self.admin_token,
            )
            when = (datetime.now(UTC) + timedelta(days=30)).isoformat()
            for n in range(count):
                body = await self._post(
                    self.url,
                    "/api/admin/shows/",
                    {
                        "movie_id": movie["id"],
                        "screen_name": f"Screen {n + 1}",
                        "date_time": when,
                        "total_seats": seats,
                    },
                    self.admin_token,
                )
                created = _positive_int(body.get("id") if isinstance(body, dict) else None)
                if created is None:
                    raise SetupError(f"POST /api/admin/shows/ answered {_excerpt(body)}: no id")
                total = seat_count(body, created)
                self.shows.append(Show(created, total, seat_labels(body, total), True))
        self.shows_by_id = {show.id: show for show in self.shows}
        self.untried = [(show, label) for show in self.shows for label in show.labels]
        self.rng.shuffle(self.untried)

    async def existing_labels(self, show_id: int, public: Any) -> list[str]:
        """The seat labels of a --show: "1".."N", or A1... when the show has rows of seats (the
        public shape does not say; the admin one does, read when an admin was given)."""
        total = seat_count(public, show_id)
        if "rows" in public or not (self.cfg.admin_user and self.cfg.admin_password):
            return seat_labels(public, total)
        try:
            if self.admin_token is None:
                self.admin_token = await self.login(self.cfg.admin_user, self.cfg.admin_password)
            headers = {"Authorization": f"Bearer {self.admin_token}"}
            url = f"{self.url}/api/admin/shows/{show_id}/"
            async with self.session.get(url, headers=headers) as resp:
                admin = await _json(resp)
        except OFF_CLOCK_ERRORS as exc:  # the admin is a help here, not a need
            self.notes.append(f"show {show_id}: its layout not read as the admin: {exc}")
            return seat_labels(public, total)
        return seat_labels(
            admin if resp.status == 200 and isinstance(admin, dict) else public, total
        )

    # --- the run --------------------------------------------------------------------------

    def take(self) -> bool:
        if self.remaining is not None:
            if self.remaining <= 0:
                return False
            self.remaining -= 1
            return True
        return time.monotonic() < self.deadline

    async def request(
        self,
        conns: _Conns,
        kind: int,
        method: bytes,
        path: str,
        headers: bytes = b"",
        body: bytes | None = None,
    ) -> tuple[int | None, bytes]:
        """One measured request on the worker's own connection: (status or None, body)."""
        conn = conns.auth if kind == LOGIN else conns.api
        started = time.perf_counter()
        status: int | None = None
        data = b""
        try:
            status, data = await conn.request(method, path, headers, body)
        except (OSError, BadResponse) as exc:  # TimeoutError and ConnectionError are OSErrors
            self.stats.errors[f"{KINDS[kind]} {type(exc).__name__}"] += 1
        now = time.perf_counter()
        self.rec.add(now - self.t0, now - started, kind, status or 0)
        if status is None:
            # A server that is down refuses at once: without a pause this worker would spin,
            # and the run would be a million refused connections.
            conns.backoff = min(BACKOFF_MAX_S, conns.backoff * 2) or BACKOFF_FIRST_S
            await asyncio.sleep(self.within_run(conns.backoff))
            return status, data
        conns.backoff = 0.0
        if status == 503 and conn.retry_after:
            # As a well-behaved client does: this worker waits as told before its next request
            # (a login storm would otherwise turn into a loop of 503s), within the run's time.
            await asyncio.sleep(self.within_run(min(conn.retry_after, MAX_RETRY_AFTER_S)))
        return status, data

    def within_run(self, wait: float) -> float:
        """`wait`, cut at the deadline of a --duration run."""
        if self.cfg.duration is None:
            return wait
        return min(wait, max(0.0, self.deadline - time.monotonic()))

    async def book(self, conns: _Conns, user: User, show: Show, seat: str) -> None:
        status, data = await self.request(
            conns, BOOK, b"POST", show.book_path, user.auth, dumps({"seat_number": seat})
        )
        if status == 201:
            record = booking_record(_loads(data), show.id, seat)
            if record is None:
                # Booked, the server says, but not a booking this run can follow.
                self.stats.errors["book 201 without a booking id"] += 1
                self.stats.unknown_books[show.id] += 1
                return
            self.stats.booked += 1
            self.stats.sold.append((*record, user.id))
            user.bookings.append(record)
        elif status == 409:
            self.stats.conflicts += 1
        elif status is None or status >= 500:
            self.stats.unknown_books[show.id] += 1
            if status is not None:
                self.stats.errors[f"book {status}"] += 1
        else:
            if status == 400:  # "not a seat of this show": its seats are labelled otherwise
                self.stats.rejected_seats.setdefault(show.id, seat)
            self.stats.errors[f"book {status}"] += 1

    def pick_untried(self) -> tuple[Show, str]:
        if self.untried:
            return self.untried.pop()
        show = self.rng.choice(self.shows)
        return show, self.rng.choice(show.labels)

    async def one(self, conns: _Conns) -> None:
        cfg, rng = self.cfg, self.rng
        user = rng.choice(self.users)
        if cfg.scenario == "flash":
            show = self.shows[0]
            await self.book(conns, user, show, rng.choice(show.labels))
        elif cfg.scenario == "spread":
            await self.book(conns, user, *self.pick_untried())
        elif cfg.scenario == "login":
            status, _ = await self.request(
                conns, LOGIN, b"POST", "/api/auth/login/", b"", user.login_body
            )
            if status == 200:
                self.stats.logins += 1
            elif status == 503 and conns.auth.retry_after is not None:
                self.stats.turned_away += 1  # the server shedding a login storm, as designed
            elif status is not None:
                self.stats.errors[f"login {status}"] += 1
        else:  # mixed
            r = rng.random()
            if r < 0.80:
                if rng.random() < 0.5:
                    path = "/api/movies/"
                else:
                    path = f"/api/shows/{rng.choice(self.shows).id}/"
                status, _ = await self.request(conns, BROWSE, b"GET", path)
                if status is not None and status != 200:
                    self.stats.errors[f"browse {status}"] += 1
            elif r < 0.95 or not user.bookings:
                await self.book(conns, user, *self.pick_untried())
            else:
                booking = user.bookings.pop(rng.randrange(len(user.bookings)))
                booking_id, show_id, seat = booking
                status, _ = await self.request(
                    conns, CANCEL, b"POST", f"/api/bookings/{booking_id}/cancel/", user.auth
                )
                if status == 200:
                    self.stats.cancels += 1
                    self.stats.cancelled.add(booking_id)
                    if self.take():  # re-book the seat just freed
                        await self.book(conns, user, self.shows_by_id[show_id], seat)
                elif status is None or status >= 500:
                    # Cancelled or not: the booking is not offered for cancelling again.
                    self.stats.unknown_cancels[show_id] += 1
                    self.stats.uncertain.add(booking_id)
                    if status is not None:
                        self.stats.errors[f"cancel {status}"] += 1
                else:
                    user.bookings.append(booking)
                    self.stats.errors[f"cancel {status}"] += 1

    async def worker(self) -> None:
        conns = _Conns(self.api_endpoint, self.auth_endpoint)
        try:
            while self.take():
                await self.one(conns)
        finally:
            conns.close()

    async def health_probe(self, stop: asyncio.Event) -> None:
        timeout = aiohttp.ClientTimeout(total=10)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while not stop.is_set():
                started = time.perf_counter()
                try:
                    async with session.get(f"{self.url}/health/live") as resp:
                        await resp.read()
                        if resp.status != 200:
                            self.stats.health_errors += 1
                except (aiohttp.ClientError, TimeoutError, OSError):
                    self.stats.health_errors += 1
                self.stats.health_latencies.append(time.perf_counter() - started)
                try:
                    await asyncio.wait_for(stop.wait(), 0.1)
                except TimeoutError:
                    pass

    async def progress(self, stop: asyncio.Event) -> None:
        """Once a second: a timeline point, and the live line on stderr."""
        last_n, last_t, p99 = 0, self.t0, 0.0
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), 1.0)
            except TimeoutError:
                pass
            now = time.perf_counter()
            n = len(self.rec)
            rate = (n - last_n) / max(now - last_t, 1e-9)
            if n > last_n:  # p99 of the last second's answers; the previous one if none came
                p99 = percentile(sorted(self.rec.latency[last_n:n]), 99) * 1000
            last_n, last_t = n, now
            errors = sum(self.stats.errors.values())
            self.stats.timeline.append(
                {"t": round(now - self.t0, 3), "rps": round(rate, 1), "p99_ms": round(p99, 2)}
            )
            if self.cfg.progress:
                done = (
                    f"logins: {self.stats.logins}"
                    if self.cfg.scenario == "login"
                    else f"201: {self.stats.booked}  409: {self.stats.conflicts}"
                )
                print(
                    f"[{now - self.t0:6.1f}s] {rate:8.0f} req/s  {done}  errors: {errors}"
                    f"  p99 last second: {p99:.1f} ms",
                    file=sys.stderr,
                    flush=True,
                )

    async def clock(self, event: str) -> None:
        if self.cfg.on_clock and inspect.isawaitable(called := self.cfg.on_clock(event)):
            await called

    async def run_clock(self) -> tuple[float, float]:
        """The measured part; returns (wall seconds, client CPU seconds)."""
        stop = asyncio.Event()
        # What the set-up made (users, shows, seat labels) is out of the cyclic collector's
        # reach while the clock runs: a full collection of it would pause every request in
        # flight for tens of ms, and show up as the server's latency.
        gc.collect()
        gc.freeze()
        await self.clock("start")
        cpu0, self.t0 = time.process_time(), time.perf_counter()
        if self.cfg.duration is not None:
            self.deadline = time.monotonic() + self.cfg.duration
        side = [
            asyncio.create_task(self.progress(stop)),
            asyncio.create_task(self.keep_tokens_fresh(stop)),
        ]
        if self.cfg.scenario == "login":
            side.append(asyncio.create_task(self.health_probe(stop)))
        try:
            await asyncio.gather(*(self.worker() for _ in range(self.cfg.concurrency)))
        except BaseException:  # interrupted: the side tasks end with the run
            for task in side:
                task.cancel()
            raise
        finally:
            gc.unfreeze()
        wall, cpu = time.perf_counter() - self.t0, time.process_time() - cpu0
        await self.clock("stop")
        stop.set()
        await asyncio.gather(*side)
        return wall, cpu

    # --- after the run --------------------------------------------------------------------

    async def after_run(self, problems: list[str], checked: list[str]) -> Drain:
        """Wait for persistence to drain, then verify, into `problems` and `checked`; bounded in
        time (a server that stops answering must not keep the figures from being printed):
        what did not finish is reported as not verified."""
        drain = Drain(None, None, None, False)
        if self.cfg.scenario != "login":
            try:  # its own deadline, and the one poll in flight when it passes
                async with asyncio.timeout(self.cfg.lag_deadline_s + LAG_POLL_TIMEOUT_S):
                    drain = await self.persistence_lag()
            except TimeoutError:
                self.notes.append("GET /health/ready did not answer in time")
        await self.clock("drained")
        limit = self.cfg.verify_deadline_s
        try:
            async with asyncio.timeout(limit):
                try:
                    await self.refresh_tokens()  # the run may have outlived them
                except OFF_CLOCK_ERRORS as exc:
                    self.notes.append(f"could not renew access tokens after the run: {exc}")
                await self.verify(problems, checked)
        except TimeoutError:
            self.unverified.append(f"the verification did not finish within {limit:g} s")
        return drain

    async def persistence_lag(self) -> Drain:
        """Until GET /health/ready reports no pending records (within cfg.lag_deadline_s), or
        does not report them at all."""
        t0 = time.monotonic()
        pending: int | None = None
        oldest: float | None = None
        while True:
            now_pending: Any = None
            try:
                async with self.session.get(
                    f"{self.url}/health/ready",
                    timeout=aiohttp.ClientTimeout(total=LAG_POLL_TIMEOUT_S),
                ) as resp:
                    body = await _json(resp)
                    if resp.status == 404:
                        return Drain(None, None, None, False)
                    if isinstance(body, dict):
                        now_pending = body.get("pending_records")
                        lag = body.get("persistence_lag_s")
                        if isinstance(lag, int | float) and not isinstance(lag, bool):
                            oldest = float(lag)
            except (aiohttp.ClientError, OSError):  # TimeoutError is an OSError
                pass
            elapsed = time.monotonic() - t0
            if _integer(now_pending) is not None:
                pending = now_pending
                if pending == 0:
                    return Drain(elapsed, 0, oldest, True)
            if pending is None and elapsed > 2:
                return Drain(None, None, None, False)
            if elapsed > self.cfg.lag_deadline_s:
                return Drain(None, pending, oldest, pending is not None)
            await asyncio.sleep(0.05)

    def expected_booked(self) -> dict[int, int]:
        per_show: dict[int, int] = defaultdict(int)
        for booking_id, show_id, _seat, _user in self.stats.sold:
            if booking_id not in self.stats.cancelled:
                per_show[show_id] += 1
        return per_show

    def booked_bounds(self) -> dict[int, Bounds]:
        """Per show, the fewest and the most seats booked now by the client's records: 201s
        minus successful cancels, less the cancels and plus the books whose outcome is
        unknown (either may have happened)."""
        expected = self.expected_booked()
        unknown_books, unknown_cancels = self.stats.unknown_books, self.stats.unknown_cancels
        return {
            show.id: Bounds(
                expected[show.id] - unknown_cancels[show.id],
                expected[show.id] + unknown_books[show.id],
            )
            for show in self.shows
        }

    async def verify(self, problems: list[str], checked: list[str]) -> None:
        """Append the broken invariants to `problems` and what was checked to `checked`."""
        sold = self.stats.sold
        ids = Counter(b[0] for b in sold)
        for booking_id, n in ids.items():
            if n > 1:
                problems.append(f"booking id {booking_id} was answered 201 {n} times")
        live: dict[tuple[int, str], list[int]] = defaultdict(list)
        for booking_id, show_id, seat, _user in sold:
            # A booking whose cancel has an unknown outcome is not known to hold its seat;
            # PostgreSQL's check below still counts every booked row.
            if booking_id not in self.stats.cancelled and booking_id not in self.stats.uncertain:
                live[(show_id, seat)].append(booking_id)
        for (show_id, seat), held in sorted(live.items()):
            if len(held) > 1:
                problems.append(
                    f"seat {seat} of show {show_id} is in {len(held)} 201s not cancelled "
                    f"(bookings {', '.join(map(str, held))}): sold twice"
                )
        checked.append("no seat in two 201s (client records)")
        bounds = self.booked_bounds()
        for show in self.shows:
            if bounds[show.id].low > show.total_seats:
                problems.append(
                    f"show {show.id}: {bounds[show.id].low} bookings for {show.total_seats} seats"
                )
        for check in (self.verify_my_bookings, self.verify_available):
            try:
                await check(bounds, problems, checked)
            except (aiohttp.ClientError, OSError) as exc:  # TimeoutError is an OSError
                self.unverified.append(
                    f"could not check through the API ({self.url}): {str(exc) or repr(exc)}"
                )
            except Unverifiable as exc:
                self.unverified.append(str(exc))
        if self.cfg.database_url:
            try:
                await self.verify_database(bounds, problems, checked)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                # Not a broken invariant, but not verified either: say so, and exit 2.
                self.unverified.append(
                    f"could not check in PostgreSQL ({self.cfg.database_url}): {exc}"
                )

    def expected_status(self, booking_id: int) -> str | None:
        """What a booking of this run must be now: "booked", "cancelled", or None when its
        cancel's outcome is unknown (either)."""
        if booking_id in self.stats.cancelled:
            return "cancelled"
        return None if booking_id in self.stats.uncertain else "booked"

    async def my_bookings(self, user: User, first: bool) -> list[tuple[int, int, str]] | None:
        """(id, show, status) of every booking in a user's my-bookings, all pages; None when
        the server does not serve it (a 404 for the very first page asked). Unverifiable when
        the answer is not the contract's pages, or their `next` links loop."""
        url: str | None = f"{self.url}/api/my-bookings/?page_size=100"
        read: set[str] = set()
        found: list[tuple[int, int, str]] = []
        while url:
            if url in read:
                raise Unverifiable(f"GET /api/my-bookings/: the next link {url} loops back")
            read.add(url)
            headers = {"Authorization": f"Bearer {user.token}"}
            async with self.session.get(url, headers=headers) as resp:
                if resp.status == 404 and first:
                    return None
                if resp.status != 200:
                    raise Unverifiable(f"GET /api/my-bookings/ answered {resp.status}")
                page = await _json(resp)
            results = page.get("results") if isinstance(page, dict) else None
            if not isinstance(results, list):
                raise Unverifiable(
                    f"GET /api/my-bookings/ answered {_excerpt(page)}, not a page of bookings"
                )
            for booking in results:
                found.append(my_booking(booking))
            url = page.get("next")
            if url is not None and not (isinstance(url, str) and results):
                raise Unverifiable(f"GET /api/my-bookings/: an odd next link {_excerpt(url)}")
            first = False
        return found

    async def verify_my_bookings(
        self, bounds: dict[int, Bounds], problems: list[str], checked: list[str]
    ) -> None:
        if not self.users or self.cfg.scenario == "login":
            return
        api_booked: dict[int, int] = defaultdict(int)
        seen: dict[int, str] = {}
        for n, user in enumerate(self.users):
            mine = await self.my_bookings(user, first=n == 0)
            if mine is None:
                self.notes.append("GET /api/my-bookings/ not served: not checked")
                return
            for booking_id, show_id, status in mine:
                seen[booking_id] = status
                if status == "booked":
                    api_booked[show_id] += 1
        for booking_id, show_id, seat, _user in self.stats.sold:
            want = self.expected_status(booking_id)
            if booking_id not in seen or (want is not None and seen[booking_id] != want):
                problems.append(
                    f"booking {booking_id} (show {show_id}, seat {seat}) is "
                    f"{seen.get(booking_id, 'missing')} in my-bookings, expected "
                    f"{want or 'booked or cancelled'}"
                )
        for show in self.shows:
            if api_booked[show.id] not in bounds[show.id]:
                problems.append(
                    f"show {show.id}: my-bookings has {api_booked[show.id]} booked, but 201s "
                    f"minus successful cancels = {bounds[show.id]}"
                )
        checked.append("per show, booked in my-bookings == 201s - cancels")

    async def verify_available(
        self, bounds: dict[int, Bounds], problems: list[str], checked: list[str]
    ) -> None:
        owned = [s for s in self.shows if s.owned]
        if not owned:
            return
        for show in owned:
            async with self.session.get(f"{self.url}/api/shows/{show.id}/") as resp:
                if resp.status != 200:
                    self.notes.append(
                        f"GET /api/shows/{show.id}/ answered {resp.status}: "
                        "available_seats not checked"
                    )
                    return
                body = await _json(resp)
            available = _integer(body.get("available_seats") if isinstance(body, dict) else None)
            if available is None:
                raise Unverifiable(
                    f"GET /api/shows/{show.id}/ answered {_excerpt(body)}: no available_seats"
                )
            free = bounds[show.id].left_of(show.total_seats)
            if available not in free:
                problems.append(
                    f"show {show.id}: available_seats {available}, but total {show.total_seats}"
                    f" - booked {bounds[show.id]} = {free}"
                )
        checked.append("available_seats == total_seats - booked (shows this run owns)")

    async def verify_database(
        self, bounds: dict[int, Bounds], problems: list[str], checked: list[str]
    ) -> None:
        show_ids = [s.id for s in self.shows]
        conn = await asyncpg.connect(self.cfg.database_url)
        try:
            rows = await conn.fetch(
                "SELECT id, show_id, seat_number, status, user_id FROM bookings"
                " WHERE show_id = ANY($1::bigint[])",
                show_ids,
            )
        finally:
            await conn.close()
        by_id = {int(r["id"]): r for r in rows}
        for booking_id, show_id, seat, user_id in self.stats.sold:
            row = by_id.get(booking_id)
            want = self.expected_status(booking_id)
            if row is None:
                problems.append(f"PostgreSQL: booking {booking_id} (a 201) has no row")
            elif (int(row["show_id"]), row["seat_number"], int(row["user_id"])) != (
                show_id,
                seat,
                user_id,
            ) or (want is not None and row["status"] != want):
                problems.append(
                    f"PostgreSQL: booking {booking_id} is show {row['show_id']} seat "
                    f"{row['seat_number']} {row['status']} user {row['user_id']}, expected show "
                    f"{show_id} seat {seat} {want or 'booked or cancelled'} user {user_id}"
                )
        held: Counter[tuple[int, str]] = Counter(
            (int(r["show_id"]), r["seat_number"]) for r in rows if r["status"] == "booked"
        )
        for (show_id, seat), n in sorted(held.items()):
            if n > 1:
                problems.append(f"PostgreSQL: seat {seat} of show {show_id} has {n} booked rows")
        ours = {u.id for u in self.users}
        for show in self.shows:
            booked_rows = [
                r for r in rows if r["status"] == "booked" and int(r["show_id"]) == show.id
            ]
            n = len(booked_rows if show.owned else [r for r in booked_rows if r["user_id"] in ours])
            if n not in bounds[show.id]:
                problems.append(
                    f"PostgreSQL: show {show.id} has {n} booked rows, the API {bounds[show.id]}"
                )
        checked.append("PostgreSQL: every 201 a row, no seat booked twice, booked rows per show")


class Unverifiable(Exception):
    """A check that cannot be made: the server's answer is not the contract's."""


class Drain(NamedTuple):
    """How persistence drained after the run, as GET /health/ready reported it."""

    seconds: float | None  # until pending_records was 0; None if it was not seen to be
    pending: int | None  # the last pending_records reported
    oldest_s: float | None  # the last persistence_lag_s: age of the oldest unpersisted 201
    reported: bool  # whether /health/ready reports pending_records at all


class Bounds(NamedTuple):
    """The fewest and the most of something, both included: exact when equal."""

    low: int
    high: int

    def __contains__(self, n: object) -> bool:
        return isinstance(n, int) and self.low <= n <= self.high

    def left_of(self, total: int) -> Bounds:
        """total - this."""
        return Bounds(total - self.high, total - self.low)

    def __str__(self) -> str:
        if self.low == self.high:
            return str(self.low)
        return f"{self.low} to {self.high} (outcomes of {self.high - self.low} unknown)"


def my_booking(booking: Any) -> tuple[int, int, str]:
    """(id, show id, status) of a booking in my-bookings; Unverifiable if it lacks one."""
    fields = booking if isinstance(booking, dict) else {}
    show = fields.get("show")
    booking_id = _positive_int(fields.get("id"))
    show_id = _positive_int(show.get("id")) if isinstance(show, dict) else None
    status = fields.get("status")
    if booking_id is None or show_id is None or not isinstance(status, str):
        raise Unverifiable(
            f"GET /api/my-bookings/ listed {_excerpt(booking)}: not a booking with an id, a "
            "show and a status"
        )
    return booking_id, show_id, status


# --- the client's own ceiling ------------------------------------------------------------------

TRIVIAL_BODY = b'{"ok":true}'
TRIVIAL_RESPONSE = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
    % (len(TRIVIAL_BODY), TRIVIAL_BODY)
)


class _TrivialHttp(asyncio.Protocol):
    """Answers every request with TRIVIAL_RESPONSE, keep-alive (pipelining included)."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have its methods
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        answers = 0
        while True:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                break
            length = _header(bytes(buf[:end]).lower(), b"content-length")
            size = end + 4 + (int(length) if length else 0)
            if len(buf) < size:
                break
            del buf[:size]
            answers += 1
        if answers and self.transport is not None:
            self.transport.write(TRIVIAL_RESPONSE * answers)


def serve_trivial(port: int) -> None:
    """Serve TRIVIAL_RESPONSE on 127.0.0.1:port (0: a free one) until SIGTERM or SIGINT; the
    port is the first line on stdout."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(_TrivialHttp, "127.0.0.1", port, backlog=4096)
        print(server.sockets[0].getsockname()[1], flush=True)
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        server.close()

    try:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    except ImportError:  # pragma: no cover - optional speed-up
        pass
    asyncio.run(main())


@dataclass
class Ceiling:
    rps: float
    cpu_share: float  # of one core, this process only
    requests: int
    errors: int


async def measure_client_ceiling(concurrency: int, seconds: float = 2.0) -> Ceiling:
    """The request rate this client reaches at `concurrency` against a trivial endpoint served
    by a separate process, doing the per-request work of a flash run (random pick, JSON body,
    bearer token, the record, the JSON answer parsed)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "engine.loadtest",
        "--trivial-server",
        "0",
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        # Out of the terminal's process group: Ctrl-C reaches only the harness, which stops it
        # (a child still starting Python when the SIGINT came died with a fatal error). Not
        # process_group=0: uvloop refuses it.
        start_new_session=True,
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 15)
        if not line.strip().isdigit():
            raise OSError(f"the trivial server did not start (exit code {proc.returncode})")
        endpoint = parse_endpoint(f"http://127.0.0.1:{int(line)}")
        return await _drive_trivial(endpoint, concurrency, seconds)
    finally:
        if proc.returncode is None:
            proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), 5)
        except TimeoutError:
            proc.kill()
            await proc.wait()


async def _drive_trivial(endpoint: Endpoint, concurrency: int, seconds: float) -> Ceiling:
    rng = random.Random(1)
    rec = Recorder()
    auth = b"Authorization: Bearer " + b"x" * 160 + b"\r\n"  # about a real access token
    errors = 0

    async def worker(stop_at: float) -> None:
        nonlocal errors
        conn = Connection(endpoint)
        try:
            while (started := time.perf_counter()) < stop_at:
                body = dumps({"seat_number": str(rng.randint(1, 1000))})
                try:
                    status, data = await conn.request(b"POST", "/api/shows/1/book/", auth, body)
                    _loads(data)
                except (OSError, BadResponse):
                    status = 0
                    errors += 1
                now = time.perf_counter()
                rec.add(now - t0, now - started, BOOK, status)
        finally:
            conn.close()

    cpu0, t0 = time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker(t0 + seconds) for _ in range(concurrency)))
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    done = len(rec) - errors
    return Ceiling(done / wall if wall else 0.0, cpu / wall if wall else 0.0, done, errors)


# --- the plot ----------------------------------------------------------------------------------


class Bucket(NamedTuple):
    start: float  # s since the start of the clock
    requests_per_s: float
    bookings_per_s: float  # 201s
    p50_ms: float
    p90_ms: float
    p99_ms: float


def time_buckets(rec: Recorder, wall: float, success: int = 201) -> tuple[float, list[Bucket]]:
    """(bucket width, the buckets) of the run by completion time: max(0.25 s, run / 60) wide;
    `success` is the status counted as the run's successes (a booking's 201, a login's 200)."""
    width = max(0.25, wall / 60)
    count = max(1, math.ceil(wall / width))
    nan = float("nan")
    buckets = []
    first = 0
    for i in range(count):
        # records are appended as answers complete, so `done` is sorted: a bucket is a slice
        end = len(rec) if i == count - 1 else bisect_left(rec.done, (i + 1) * width, first)
        lat = sorted(rec.latency[first:end])
        booked = rec.status[first:end].count(success)
        # the last bucket may be cut short by the end of the run
        span = min(width, wall - i * width) if wall > i * width else width
        p = [percentile(lat, q) * 1000 if lat else nan for q in (50, 90, 99)]
        buckets.append(Bucket(i * width, len(lat) / span, booked / span, *p))
        first = end
    return width, buckets


def plot_available() -> bool:
    return importlib.util.find_spec("matplotlib") is not None


def write_plot(path: str, rec: Recorder, wall: float, title: str, success: int = 201) -> None:
    """Throughput and latency percentiles over time, two stacked panels, as a PNG; `success`
    as in time_buckets."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    width, buckets = time_buckets(rec, wall, success)
    t = [b.start + width / 2 for b in buckets]
    fig = Figure(figsize=(10, 7), layout="constrained")
    FigureCanvasAgg(fig)
    top, bottom = fig.subplots(2, 1, sharex=True)
    top.plot(t, [b.requests_per_s for b in buckets], label="requests/s", marker=".")
    # dashed: where every answer is a success (spread), it runs on top of requests/s
    top.plot(t, [b.bookings_per_s for b in buckets], "--", label=f"{success} answers/s", marker=".")
    top.set_ylabel("per second")
    top.set_ylim(bottom=0)
    top.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0))
    top.grid(alpha=0.3)
    for name in ("p50_ms", "p90_ms", "p99_ms"):
        bottom.plot(t, [getattr(b, name) for b in buckets], label=name[:3], marker=".")
    bottom.set_ylabel("latency (ms)")
    bottom.set_xlabel(f"seconds since the start of the clock ({width:.2f} s buckets)")
    bottom.set_ylim(bottom=0)
    bottom.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0))
    bottom.grid(alpha=0.3)
    fig.suptitle(title)
    fig.savefig(path, format="png", dpi=100)


# --- figures -----------------------------------------------------------------------------------


def summarise(
    h: Harness, wall: float, cpu: float, drain: Drain | None, ceiling: Ceiling | None = None
) -> dict[str, Any]:
    rec = h.rec
    n = len(rec)
    unknown_books = sum(h.stats.unknown_books.values())
    unknown_cancels = sum(h.stats.unknown_cancels.values())
    wanted = (50, 90, 99, 99.9)
    found = percentiles(rec.latency, wanted)
    ms = {f"p{p}_ms".replace(".", "_"): round(found[p] * 1000, 2) for p in wanted}
    slowest = max(rec.latency) if n else 0.0
    pairs = Counter(zip(rec.kind, rec.status, strict=True))
    by_kind: Counter[str] = Counter()
    for (k, _s), c in pairs.items():
        by_kind[KINDS[k]] += c
    statuses = Counter({f"{KINDS[k]} {s}": c for (k, s), c in pairs.items() if s})
    health = sorted(h.stats.health_latencies)
    # What a password check costs the caller who got one: the latency of the 200 logins.
    logged_in = sorted(
        lat
        for lat, kind, status in zip(rec.latency, rec.kind, rec.status, strict=True)
        if kind == LOGIN and status == 200
    )
    rps = n / wall if wall else 0.0
    cpu_share = cpu / wall if wall else 0.0
    used = rps / ceiling.rps if ceiling and ceiling.rps else None
    return {
        "scenario": h.cfg.scenario,
        "url": h.url,
        "concurrency": h.cfg.concurrency,
        "users": len(h.users),
        "shows": len(h.shows),
        "seats": sum(s.total_seats for s in h.shows),
        "seed": h.cfg.seed,
        "requests": n,
        "wall_s": round(wall, 3),
        "requests_per_s": round(rps, 1),
        "bookings_201": h.stats.booked,
        "bookings_per_s": round(h.stats.booked / wall, 1) if wall else 0.0,
        "conflicts_409": h.stats.conflicts,
        "cancels_200": h.stats.cancels,
        "logins_200": h.stats.logins,
        "logins_per_s": round(h.stats.logins / wall, 1) if wall else 0.0,
        "login_200_p50_ms": round(percentile(logged_in, 50) * 1000, 2) if logged_in else None,
        "login_200_p99_ms": round(percentile(logged_in, 99) * 1000, 2) if logged_in else None,
        "errors": sum(h.stats.errors.values()),
        "no_answer": rec.status.count(0),
        "turned_away_503": h.stats.turned_away,
        "unknown_outcomes": unknown_books + unknown_cancels,
        "unknown_books": unknown_books,
        "unknown_cancels": unknown_cancels,
        "errors_by_status": dict(sorted(h.stats.errors.items())),
        "statuses": dict(sorted(statuses.items())),
        "by_kind": dict(sorted(by_kind.items())),
        **ms,
        "max_ms": round(slowest * 1000, 2),
        "client_cpu_s": round(cpu, 3),
        "client_cpu_share": round(cpu_share, 3),
        "client_ceiling_rps": round(ceiling.rps, 1) if ceiling else None,
        "client_ceiling_cpu_share": round(ceiling.cpu_share, 3) if ceiling else None,
        "client_ceiling_share_used": round(used, 3) if used is not None else None,
        "client_limited": bool(
            cpu_share >= CLIENT_CPU_WARNING or (used is not None and used >= CLIENT_CEILING_WARNING)
        ),
        "persistence_lag_s": round(drain.seconds, 3)
        if drain and drain.seconds is not None
        else None,
        "persistence_drained": bool(drain and drain.seconds is not None),
        "persistence_reported": bool(drain and drain.reported),
        "persistence_pending": drain.pending if drain else None,
        "persistence_oldest_s": drain.oldest_s if drain else None,
        "persistence_deadline_s": h.cfg.lag_deadline_s,
        "health_live_p50_ms": round(percentile(health, 50) * 1000, 2) if health else None,
        "health_live_p99_ms": round(percentile(health, 99) * 1000, 2) if health else None,
        "health_live_errors": h.stats.health_errors,
        "timeline": h.stats.timeline,
    }


def ceiling_line(ceiling: Ceiling, concurrency: int) -> str:
    return (
        f"client ceiling: {ceiling.rps:.0f} req/s at concurrency {concurrency} against a trivial"
        f" endpoint (client CPU {ceiling.cpu_share * 100:.0f}% of a core)"
    )


def print_table(fig: dict[str, Any], out: TextIO) -> None:
    rows: list[tuple[str, str]] = [
        ("scenario", f"{fig['scenario']} against {fig['url']}"),
        (
            "concurrency / users / shows / seats in all",
            (f"{fig['concurrency']} / {fig['users']} / {fig['shows']} / {fig['seats']}"),
        ),
        ("requests", f"{fig['requests']} in {fig['wall_s']:.2f} s"),
        ("requests/s", f"{fig['requests_per_s']:.0f}"),
    ]
    if fig["scenario"] == "login":
        rows.append(
            ("successful logins (200)", f"{fig['logins_200']}  ({fig['logins_per_s']:.1f}/s)")
        )
        rows.append(("turned away (503 with Retry-After)", str(fig["turned_away_503"])))
        if fig["login_200_p50_ms"] is not None:
            rows.append(
                (
                    "latency of the 200s p50 / p99",
                    f"{fig['login_200_p50_ms']:.1f} / {fig['login_200_p99_ms']:.1f} ms",
                )
            )
    else:
        rows += [
            (
                "successful bookings (201)",
                f"{fig['bookings_201']}  ({fig['bookings_per_s']:.0f}/s)",
            ),
            ("conflicts (409)", str(fig["conflicts_409"])),
            ("successful cancels (200)", str(fig["cancels_200"])),
            (
                "outcomes unknown (no answer, 5xx)",
                f"{fig['unknown_outcomes']}  ({fig['unknown_books']} books, "
                f"{fig['unknown_cancels']} cancels)",
            ),
        ]
    rows += [
        (
            "errors",
            f"{fig['errors']}"
            + (
                "  (" + ", ".join(f"{k}: {v}" for k, v in fig["errors_by_status"].items()) + ")"
                if fig["errors"]
                else ""
            ),
        ),
        ("requests with no answer", str(fig["no_answer"])),
        (
            "latency p50 / p90 / p99 / p99.9 / max",
            f"{fig['p50_ms']:.1f} / {fig['p90_ms']:.1f} / {fig['p99_ms']:.1f} / "
            f"{fig['p99_9_ms']:.1f} / {fig['max_ms']:.1f} ms",
        ),
        ("client CPU", f"{fig['client_cpu_share'] * 100:.0f}% of one core"),
    ]
    if fig.get("client_ceiling_rps") is not None:
        rows.append(
            (
                "client ceiling (trivial endpoint)",
                f"{fig['client_ceiling_rps']:.0f} req/s, client CPU "
                f"{fig['client_ceiling_cpu_share'] * 100:.0f}% of one core",
            )
        )
    if fig.get("client_ceiling_share_used") is not None:
        rows.append(
            ("share of the client ceiling used", f"{fig['client_ceiling_share_used'] * 100:.0f}%")
        )
    if fig["health_live_p50_ms"] is not None:
        rows.append(
            (
                "GET /health/live during the run",
                f"p50 {fig['health_live_p50_ms']:.1f} ms, p99 {fig['health_live_p99_ms']:.1f} ms,"
                f" {fig['health_live_errors']} errors",
            )
        )
    if fig["scenario"] != "login":
        rows.append(("persistence lag after the run", persistence_line(fig)))
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}", file=out)
    if fig["client_limited"]:
        why = []
        if fig["client_cpu_share"] >= CLIENT_CPU_WARNING:
            why.append(f"the client used {fig['client_cpu_share'] * 100:.0f}% of a core")
        used = fig.get("client_ceiling_share_used")
        if used is not None and used >= CLIENT_CEILING_WARNING:
            why.append(f"the run reached {used * 100:.0f}% of the client's ceiling")
        print(
            f"WARNING: {' and '.join(why)}: this run may be limited by the client, not the server",
            file=out,
        )


def persistence_line(fig: dict[str, Any]) -> str:
    """How persistence drained after the run, in the figures' words."""
    if fig["persistence_drained"]:
        return f"{fig['persistence_lag_s']:.2f} s until pending_records = 0"
    if not fig["persistence_reported"]:
        return "persistence lag not reported (GET /health/ready gives no pending_records)"
    oldest = fig["persistence_oldest_s"]
    return (
        f"persistence did not drain within {fig['persistence_deadline_s']:g} s: "
        f"{fig['persistence_pending']} pending "
        f"(lag {f'{oldest:.1f} s' if oldest is not None else 'not reported'})"
    )


def unclean(fig: dict[str, Any]) -> str | None:
    """Why the run was not clean (its figures are not the server's answers to what was asked
    of it), or None: requests that got no answer, answers the scenario does not expect."""
    why = []
    if fig["no_answer"]:
        why.append(f"{fig['no_answer']} requests got no answer")
    answered = {
        k: v for k, v in fig["errors_by_status"].items() if k.split(" ", 1)[1][:1].isdigit()
    }
    if answered:
        listed = ", ".join(f"{k}: {v}" for k, v in answered.items())
        why.append(f"{sum(answered.values())} unexpected answers ({listed})")
    return "; ".join(why) or None


def unwritable(path: str) -> str | None:
    """Why a file cannot be written at this path (checked before the run), or None. The file
    is opened for appending (and removed again if that created it): permission bits alone say
    nothing to root, nor about /proc or a read-only file system."""
    target = Path(path)
    if target.is_dir():
        return "is a directory"
    parent = target.parent
    if not parent.is_dir():
        return f"no such directory {str(parent)!r}"
    existed = target.exists()
    try:
        with target.open("a"):
            pass
    except OSError as exc:
        return exc.strerror or "not writable"
    if not existed:
        with contextlib.suppress(OSError):
            target.unlink()
    return None


def out_of_range(checks: Iterable[tuple[str, int | None, int, int]]) -> str | None:
    """The first of (option, value, least, most) whose value is outside its range, said as
    the refusal; options not given (None) pass."""
    for name, value, least, most in checks:
        if value is not None and value < least:
            return f"{name} must be at least {least:,}"
        if value is not None and value > most:
            return f"{name} must be at most {most:,}"
    return None


def config_problem(cfg: Config) -> str | None:
    """Why this configuration cannot run (before anything is sent), or None."""
    if cfg.scenario not in SCENARIOS:
        return f"unknown scenario {cfg.scenario!r}"
    if (cfg.requests is None) == (cfg.duration is None):
        return "give exactly one of --requests and --duration"
    if cfg.duration is not None and not cfg.duration > 0:
        return "--duration must be more than 0 seconds"
    if cfg.duration is not None and not cfg.duration <= MAX_DURATION_S:  # inf included
        return f"--duration must be at most {MAX_DURATION_S:.0f} seconds (a day)"
    if cfg.seats is not None and cfg.seats > MAX_SEATS:
        return f"--seats must be at most {MAX_SEATS} (the contract's bound on total_seats)"
    problem = out_of_range(
        [
            ("--concurrency", cfg.concurrency, 1, 10_000),
            ("--requests", cfg.requests, 1, 100_000_000),
            ("--users", cfg.users, 1, 100_000),
            ("--shows", cfg.show_count, 1, 10_000),
            ("--seats", cfg.seats, 1, MAX_SEATS),
        ]
    )
    if problem:
        return problem
    for url in (cfg.url, cfg.auth_url):
        if url is not None:
            try:
                parse_endpoint(url)
            except ValueError as exc:
                return str(exc)
    if cfg.plot_path and not plot_available():
        return PLOT_MISSING.removeprefix("error: ")
    for name, path in (("--json", cfg.json_path), ("--plot", cfg.plot_path)):
        if path:
            problem = unwritable(path)
            if problem:
                return f"{name} {path}: {problem}"
    return None


async def run(cfg: Config) -> tuple[int, dict[str, Any]]:
    """The harness, in-process: (exit code, figures). Prints the table to cfg.out.

    Exit code 2 when the configuration is unusable, the setup failed, a check could not be
    made (PostgreSQL or the API unreachable after the run, say) or the run was not clean
    (requests without an answer, answers the scenario does not expect), 1 when an invariant is
    broken (whatever else), else 0. (Ctrl-C: `python -m engine` says "interrupted", exit 130.)"""
    problem = config_problem(cfg)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2, {}
    return await _run(cfg, cfg.out or sys.stdout)


async def _run(cfg: Config, out: TextIO) -> tuple[int, dict[str, Any]]:
    connector = aiohttp.TCPConnector(limit=cfg.concurrency, keepalive_timeout=60)
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        h = Harness(cfg, session)
        try:
            await h.make_users()
            await h.make_catalog()
        except SetupError as exc:
            print(f"error: setting up the run failed: {exc}", file=sys.stderr)
            return 2, {}
        except (aiohttp.ClientError, OSError) as exc:
            print(f"error: setting up the run failed: {str(exc) or repr(exc)}", file=sys.stderr)
            return 2, {}
        except (KeyError, TypeError, ValueError) as exc:
            print(
                "error: setting up the run failed: an answer without the contract's fields "
                f"({exc!r})",
                file=sys.stderr,
            )
            return 2, {}
        ceiling: Ceiling | None = None
        if cfg.client_ceiling:
            try:
                ceiling = await measure_client_ceiling(cfg.concurrency, cfg.ceiling_seconds)
                print(ceiling_line(ceiling, cfg.concurrency), file=out, flush=True)
            except OSError as exc:
                h.notes.append(f"client ceiling not measured: {exc}")
        wall, cpu = await h.run_clock()
        problems: list[str] = []
        checked: list[str] = []
        drain = await h.after_run(problems, checked)
    fig = summarise(h, wall, cpu, drain, ceiling)
    fig["verified"] = checked
    fig["problems"] = problems
    fig["notes"] = h.notes
    fig["unverified"] = h.unverified
    not_clean = unclean(fig)
    fig["clean"] = not_clean is None
    code = 1 if problems else 2 if h.unverified or not_clean else 0
    if cfg.plot_path:
        title = f"{cfg.scenario} against {h.url}, concurrency {cfg.concurrency}"
        try:
            success = 200 if cfg.scenario == "login" else 201
            await asyncio.to_thread(write_plot, cfg.plot_path, h.rec, wall, title, success)
            h.notes.append(f"plot written to {cfg.plot_path}")
        except OSError as exc:
            print(f"error: writing the plot failed: {exc}", file=sys.stderr)
            code = code or 2
    for show_id, seat in sorted(h.stats.rejected_seats.items()):
        labels = h.shows_by_id[show_id].labels
        print(
            f"error: show {show_id} answered 400 to seat {seat!r}: its seats are not labelled "
            f"as this run assumed ({labels[0]} to {labels[-1]}); give --admin-user/"
            "--admin-password so that its rows can be read, or another show",
            file=sys.stderr,
        )
    print_table(fig, out)
    for note in h.notes:
        print(f"note: {note}", file=out)
    if problems:
        print(f"INVARIANTS BROKEN ({len(problems)}):", file=out)
        for p in problems[:50]:
            print(f"  - {p}", file=out)
    else:
        print("verified: " + "; ".join(checked), file=out)
    for what in dict.fromkeys(h.unverified):  # each reason once
        print(f"NOT VERIFIED: {what}", file=out)
    if not_clean:
        print(f"NOT CLEAN: {not_clean}", file=out)
    if cfg.json_path:
        try:
            await asyncio.to_thread(Path(cfg.json_path).write_text, json.dumps(fig, indent=2))
        except OSError as exc:
            print(f"error: writing --json {cfg.json_path} failed: {exc}", file=sys.stderr)
            code = code or 2
    return code, fig


def main(argv: list[str] | None = None) -> int:
    """`python -m engine.loadtest --trivial-server PORT`: the endpoint of the client ceiling."""
    parser = argparse.ArgumentParser(prog="python -m engine.loadtest")
    parser.add_argument(
        "--trivial-server",
        type=int,
        metavar="PORT",
        required=True,
        help="answer every request on 127.0.0.1:PORT with a fixed 200 JSON body, keep-alive, "
        "until SIGTERM (0: a free port, printed on stdout)",
    )
    args = parser.parse_args(argv)
    serve_trivial(args.trivial_server)
    return 0


if __name__ == "__main__":
    sys.exit(main())
