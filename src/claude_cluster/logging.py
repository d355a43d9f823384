"""Structured logs (structlog). Every line carries ``service`` and whatever context is
bound: ``task_id``, ``run_id``, ``agent_id``, ``repository``, ``issue``.

``LOG_FORMAT`` picks the rendering: ``json`` (one JSON object a line, for machines and
files), ``console`` (one readable line per event) or ``color`` (the same with colours,
which ``claude-cluster up`` asks for on a terminal).

Logging never fails its caller: a log stream that cannot be written (the reader of a pipe
went away, the disk is full) loses the line, not the signal handler or the shutdown that
logged it."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from collections.abc import MutableMapping
from pathlib import Path
from typing import IO, Any, TextIO, cast

import structlog
from structlog.typing import Processor

_SECRET_KEYS = ("token", "secret", "password", "api_key", "authorization")


def _redact(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Never log a secret, even if a caller binds one by mistake."""
    for key in list(event):
        if any(part in key.lower() for part in _SECRET_KEYS):
            event[key] = "[redacted]"
    return event


_SHORT_SERVICE = {"coordinator": "coord", "claude-cluster-agent": "agent"}


def _service_first(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """On a console the process is the line's first word, not a trailing ``service=``."""
    service = str(event.pop("service", ""))
    if service:
        event["event"] = f"{_SHORT_SERVICE.get(service, service):<5} {event.get('event', '')}"
    return event


def _renderer(fmt: str) -> Any:
    if fmt == "json":
        return structlog.processors.JSONRenderer()
    return structlog.dev.ConsoleRenderer(
        colors=fmt == "color", exception_formatter=structlog.dev.plain_traceback, sort_keys=False
    )


class NeverFails:
    """A text stream whose ``write`` and ``flush`` never raise.

    A closed pipe (``BrokenPipeError``), a full disk or a closed file (``ValueError``)
    drops what was written. Logging happens in signal handlers and shutdown paths, which
    must run to their end whatever becomes of the log. A pipe whose reader is gone stays
    gone: its descriptor is pointed at ``/dev/null`` (as the Python documentation advises
    for SIGPIPE), so the bytes still buffered do not fail every later flush and the exit.
    """

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream
        self.dropped = 0  #: writes lost so far

    def write(self, text: str) -> int:
        try:
            return self.stream.write(text)
        except (OSError, ValueError) as exc:
            self._failed(exc)
            return len(text)

    def flush(self) -> None:
        try:
            self.stream.flush()
        except (OSError, ValueError) as exc:
            self._failed(exc)

    def _failed(self, exc: Exception) -> None:
        self.dropped += 1
        if isinstance(exc, BrokenPipeError):
            with contextlib.suppress(OSError, ValueError):
                devnull = os.open(os.devnull, os.O_WRONLY)
                try:
                    os.dup2(devnull, self.stream.fileno())
                finally:
                    os.close(devnull)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)


def configure(
    level: str = "INFO", *, service: str, log_file: Path | None = None, fmt: str = "json"
) -> None:
    opened = sys.stderr if log_file is None else log_file.open("a", encoding="utf-8")
    stream = cast(TextIO, NeverFails(opened))
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso" if fmt == "json" else "%H:%M:%S", utc=True),
        _redact,
    ]
    finish: list[Processor] = (
        [structlog.processors.format_exc_info, _renderer(fmt)]
        if fmt == "json"
        else [_service_first, _renderer(fmt)]
    )
    # Other libraries' logging (uvicorn, alembic) goes out in the same format.
    handler = logging.StreamHandler(stream)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *finish],
        )
    )
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
    # httpx logs every request at INFO; the services log what matters themselves
    logging.getLogger("httpx").setLevel(max(logging.WARNING, logging.getLevelName(level.upper())))
    structlog.configure(
        processors=[*shared, *finish],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.WriteLoggerFactory(file=stream),
        cache_logger_on_first_use=False,
    )
    structlog.contextvars.bind_contextvars(service=service)


def get_logger(name: str) -> Any:
    return structlog.get_logger(name)


class Every:
    """Let one log line through per ``seconds`` for each key; counts the ones held back.

    ``if (held := limiter.due(key)) is not None: log.warning(..., suppressed=held)``
    """

    def __init__(self, seconds: float, *, max_keys: int = 1024) -> None:
        self._clock = time.monotonic
        self.seconds = seconds
        self._max_keys = max_keys
        self._last: dict[str, tuple[float, int]] = {}

    def due(self, key: str) -> int | None:
        """None while the key is quiet; else how many lines were held back since."""
        now = self._clock()
        last, held = self._last.get(key, (float("-inf"), 0))
        if now - last < self.seconds:
            self._last[key] = (last, held + 1)
            return None
        if len(self._last) >= self._max_keys and key not in self._last:
            self._last.clear()
        self._last[key] = (now, 0)
        return held
