"""Logging set-up: ``--log-level`` and ``--log-format text|json``."""

from __future__ import annotations

import json
import logging
import sys
import time


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out)


def setup(level: str = "info", fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


class RateLimited:
    """Log a recurring failure at most once per ``period`` seconds, with the count."""

    def __init__(self, logger: logging.Logger, period: float = 60.0) -> None:
        self._logger = logger
        self._period = period
        self._last = -1e18
        self._suppressed = 0

    def log(self, level: int, msg: str, *args: object) -> None:
        now = time.monotonic()
        if now - self._last >= self._period:
            extra = f" ({self._suppressed} more since the last report)" if self._suppressed else ""
            self._logger.log(level, msg + extra, *args)
            self._last = now
            self._suppressed = 0
        else:
            self._suppressed += 1

    def warning(self, msg: str, *args: object) -> None:
        self.log(logging.WARNING, msg, *args)
