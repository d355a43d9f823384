"""Structured JSON logs (structlog). Every line carries ``service`` and whatever context is
bound: ``task_id``, ``run_id``, ``agent_id``, ``repository``, ``issue``."""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

import structlog

_SECRET_KEYS = ("token", "secret", "password", "api_key", "authorization")


def _redact(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Never log a secret, even if a caller binds one by mistake."""
    for key in list(event):
        if any(part in key.lower() for part in _SECRET_KEYS):
            event[key] = "[redacted]"
    return event


def configure(level: str = "INFO", *, service: str, log_file: Path | None = None) -> None:
    stream = sys.stderr if log_file is None else log_file.open("a", encoding="utf-8")
    logging.basicConfig(level=level.upper(), stream=stream, format="%(message)s", force=True)
    # httpx logs every request at INFO; the services log what matters themselves
    logging.getLogger("httpx").setLevel(max(logging.WARNING, logging.getLevelName(level.upper())))
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _redact,
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.WriteLoggerFactory(file=stream),
        cache_logger_on_first_use=False,
    )
    structlog.contextvars.bind_contextvars(service=service)


def get_logger(name: str) -> Any:
    return structlog.get_logger(name)
