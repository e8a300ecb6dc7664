"""Request parsing: JSON bodies through marshmallow schemas, query parameters, pagination."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any, TypeVar
from urllib.parse import urlencode

import orjson
from aiohttp import web
from marshmallow import Schema, ValidationError, fields

from engine.errors import InvalidInput, NotFound

MAX_DB_ID = 2**63 - 1
DEFAULT_PAGE_SIZE = 10
MAX_PAGE_SIZE = 100
T = TypeVar("T")


class StrictInteger(fields.Integer):
    """An integer that is a JSON number: no strings, no booleans, no floats."""

    default_error_messages = {"invalid": "A valid integer is required."}

    def __init__(self, *, minimum: int, maximum: int, **kwargs: Any) -> None:
        super().__init__(strict=True, **kwargs)
        self.minimum = minimum
        self.maximum = maximum
        self.metadata.setdefault("minimum", minimum)
        self.metadata.setdefault("maximum", maximum)

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.make_error("invalid")
        if not self.minimum <= value <= self.maximum:
            raise ValidationError(f"Must be between {self.minimum} and {self.maximum}.")
        return value


class StrictString(fields.String):
    """A string with a length range, trimmed of surrounding white space."""

    def __init__(self, *, min_length: int = 1, max_length: int, trim: bool = True, **kw: Any):
        super().__init__(**kw)
        self.min_length = min_length
        self.max_length = max_length
        self.trim = trim
        self.metadata.setdefault("minLength", min_length)
        self.metadata.setdefault("maxLength", max_length)

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> str:
        if not isinstance(value, str):
            raise self.make_error("invalid")
        text = value.strip() if self.trim else value
        if "\x00" in text:
            raise ValidationError("Null characters are not allowed.")
        if len(text) < self.min_length:
            raise ValidationError("This field may not be blank.")
        if len(text) > self.max_length:
            raise ValidationError(
                f"Ensure this field has no more than {self.max_length} characters."
            )
        return text


class AwareDateTime(fields.DateTime):
    """ISO 8601 with an offset (Z or ±hh:mm); naive input is refused; stored in UTC."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> datetime:
        return parse_aware_datetime(value)

    def _serialize(self, value: Any, attr: str | None, obj: Any, **kwargs: Any) -> str | None:
        return None if value is None else iso_utc(value)


# Seconds and up to six fractional digits are optional; the offset is Z or ±hh:mm. Anything
# finer (a seventh digit, an offset with seconds) would be cut silently: refused instead.
_ISO_DATETIME = re.compile(
    r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}(:\d{2}(\.\d{1,6})?)?([Zz]|[+-]\d{2}:\d{2})?\Z"
)


def parse_aware_datetime(value: Any) -> datetime:
    if not isinstance(value, str) or len(value) > 64 or not _ISO_DATETIME.match(value.strip()):
        raise ValidationError(
            "Enter an ISO 8601 date and time with an offset, e.g. 2030-01-01T20:00:00+01:00."
        )
    try:
        moment = datetime.fromisoformat(value.strip())
    except ValueError:
        raise ValidationError("Enter an ISO 8601 date and time with an offset.") from None
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValidationError("The date and time must carry an offset (Z or ±hh:mm).")
    try:
        moment = moment.astimezone(UTC)
    except OverflowError:  # e.g. 9999-12-31T23:00-05:00 is in the year 10000 in UTC
        raise ValidationError("The year must be between 1970 and 9999.") from None
    if not 1970 <= moment.year <= 9999:
        raise ValidationError("The year must be between 1970 and 9999.")
    return moment


def iso_utc(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


_JSON_TYPES = ("application/json",)


async def read_json(request: web.Request) -> Any:
    """The request body as JSON; anything else (form data, malformed JSON) is a 400."""
    raw = await request.read()
    if not raw.strip():
        raise InvalidInput("The body must be a JSON object.")
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        ctype = request.content_type
        if ctype in _JSON_TYPES or ctype.endswith("+json"):
            raise InvalidInput("Malformed JSON.") from None
        # Form data and the like are never read as such: the API speaks JSON only.
        raise InvalidInput("The body must be JSON (Content-Type: application/json).") from None


async def parse_body(request: web.Request, schema: Schema) -> dict[str, Any]:
    """Validate a JSON object body with a marshmallow schema (unknown fields are ignored)."""
    data = await read_json(request)
    return validate(schema, data)


def validate(schema: Schema, data: Any) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise InvalidInput("The body must be a JSON object.")
    try:
        result = schema.load(data, unknown="exclude")
    except ValidationError as exc:
        raise InvalidInput("Invalid input.", errors=_flatten(exc.messages)) from None
    assert isinstance(result, dict)
    return result


def _flatten(messages: Any) -> dict[str, list[str]]:
    if isinstance(messages, dict):
        out: dict[str, list[str]] = {}
        for key, value in messages.items():
            if isinstance(value, list):
                out[str(key)] = [str(v) for v in value]
            elif isinstance(value, dict):
                out[str(key)] = [str(v) for v in _flatten(value).values()]
            else:
                out[str(key)] = [str(value)]
        return out
    return {"non_field_errors": [str(messages)]}


# ASCII digits only: str.isdigit() also takes "²" (which int() refuses) and "١" (read as 1).
_DIGITS_RE = re.compile(r"[0-9]+")


def db_id(raw: str) -> int | None:
    """A positive id that fits PostgreSQL's bigint, or None."""
    if not _DIGITS_RE.fullmatch(raw) or len(raw) > 19:
        return None
    value = int(raw)
    return value if 1 <= value <= MAX_DB_ID else None


def path_id(request: web.Request, name: str = "id") -> int:
    """An id from the path; non-numeric or above 2^63-1 is an unknown id (404)."""
    value = db_id(request.match_info.get(name, ""))
    if value is None:
        raise NotFound()
    return value


def query_id(request: web.Request, name: str) -> int | None:
    """An optional id filter from the query string; a malformed one is 400."""
    raw = request.query.get(name)
    if raw is None:
        return None
    value = db_id(raw)
    if value is None:
        raise InvalidInput(errors={name: ["A valid positive integer is required."]})
    return value


# Any page beyond this is past the end of any list; the bound keeps OFFSET within bigint.
MAX_PAGE = 10**12


class Page:
    """?page=N&page_size=M as the reference: default 10, above 100 clamped, below 1 a 400."""

    def __init__(self, request: web.Request) -> None:
        self.request = request
        self.number = self._read("page", 1, MAX_PAGE)
        self.size = self._read("page_size", DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)

    def _read(self, name: str, default: int, cap: int) -> int:
        """A positive integer, however many digits (clamped to cap); otherwise a 400."""
        raw = self.request.query.get(name)
        if raw is None:
            return default
        digits = raw.strip()
        if not _DIGITS_RE.fullmatch(digits) or not digits.strip("0"):
            raise InvalidInput(errors={name: ["Must be a positive integer."]})
        significant = digits.lstrip("0")
        return cap if len(significant) > len(str(cap)) else min(int(significant), cap)

    @property
    def offset(self) -> int:
        return (self.number - 1) * self.size

    def body(self, count: int, results: list[Any]) -> dict[str, Any]:
        """The paginated body; a page past the end is 404 (an empty first page is fine)."""
        if self.number > 1 and self.offset >= count:
            raise NotFound("Invalid page.")
        has_next = self.offset + len(results) < count
        return {
            "count": count,
            "next": self._url(self.number + 1) if has_next else None,
            "previous": self._url(self.number - 1) if self.number > 1 else None,
            "results": results,
        }

    def _url(self, number: int) -> str:
        query = [(k, v) for k, v in self.request.query.items() if k != "page"]
        if number > 1:
            query.append(("page", str(number)))
        url = self.request.url.with_query(None)
        return f"{url}?{urlencode(query)}" if query else str(url)
