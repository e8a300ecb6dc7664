"""Structured logs: one JSON object per line, so one booking can be followed from the request
(request_id, booking_id) to the worker's job that wrote its row."""

from __future__ import annotations

import logging
import time
from typing import Any

import orjson

# Attributes every LogRecord has; anything else passed through `extra=` is a field of the line.
_STANDARD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                line[key] = value
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(line, default=str).decode()


def setup_logging(level: str, *, json_lines: bool = True) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(
        JsonFormatter()
        if json_lines
        else logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(getattr(logging, level, logging.INFO))
    if level != "DEBUG":
        # arq logs a line per job (a persistence job runs every 100 ms under load); our tasks log
        # what they did instead.
        logging.getLogger("arq.worker").setLevel(logging.WARNING)
        logging.getLogger("arq.jobs").setLevel(logging.WARNING)
    logging.getLogger("pgserver").setLevel(logging.WARNING)
