"""Claude Code's ``--output-format stream-json`` lines as typed events.

:func:`parse_line` turns one stdout line into zero or more events (an ``assistant`` line
can carry several content blocks, a ``user`` line several tool results). It is lenient on
purpose: the shapes drift between CLI versions, so unknown line types and fields are
ignored and missing fields get defaults; a line that is not JSON becomes
:class:`PlainOutput`. :class:`StreamSummary` keeps what the outcome depends on (the
session id, the ``result`` line, the last API error, retry and rate-limit notices), and
:func:`runner_event` turns an event into the :class:`RunnerEvent` the coordinator stores.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from claude_cluster.runners.base import EventKind, RunnerEvent, clip

__all__ = [
    "ApiErrorNotice",
    "ApiRetry",
    "AssistantText",
    "MessageUsage",
    "PermissionDenied",
    "PlainOutput",
    "RateLimit",
    "Result",
    "SessionInit",
    "StreamEvent",
    "StreamSummary",
    "SystemNotice",
    "ToolCall",
    "ToolResult",
    "parse_line",
    "runner_event",
]


@dataclass(frozen=True)
class SessionInit:
    """``system/init``: the CLI started a session."""

    session_id: str | None
    model: str | None
    cwd: str | None
    tools: tuple[str, ...]
    permission_mode: str | None
    cli_version: str | None


@dataclass(frozen=True)
class AssistantText:
    """A text block of an assistant message."""

    text: str
    message_id: str | None


@dataclass(frozen=True)
class MessageUsage:
    """The ``usage`` an assistant line carries for its message (one model call).

    The CLI writes one line per content block, each repeating the message's id and its
    usage so far, so a consumer keeps the newest usage per ``message_id``; the number of
    distinct messages is the number of model calls (turns) of the run so far."""

    message_id: str | None
    model: str | None
    #: the Messages API's counts: ``input_tokens``, ``output_tokens``,
    #: ``cache_read_input_tokens``, ``cache_creation_input_tokens`` (non-negative ints)
    usage: dict[str, int]


@dataclass(frozen=True)
class ToolCall:
    """A ``tool_use`` block of an assistant message."""

    tool_use_id: str | None
    name: str
    input: dict[str, Any]


@dataclass(frozen=True)
class ToolResult:
    """A ``tool_result`` block sent back to the model."""

    tool_use_id: str | None
    content: str
    is_error: bool


@dataclass(frozen=True)
class ApiErrorNotice:
    """The CLI's synthetic assistant message after an API failure (top-level ``error``).

    ``error`` is one of ``authentication_failed``, ``billing_error``, ``rate_limit``,
    ``invalid_request``, ``server_error``, ``unknown``.
    """

    error: str
    text: str


@dataclass(frozen=True)
class ApiRetry:
    """``system/api_retry``: the CLI will retry an API call after ``retry_delay_ms``."""

    attempt: int
    max_retries: int | None
    retry_delay_ms: float | None
    error_status: int | None
    error: str | None


@dataclass(frozen=True)
class RateLimit:
    """``rate_limit_event`` (subscription logins): ``resets_at`` is epoch seconds."""

    status: str | None
    resets_at: float | None
    limit_type: str | None


@dataclass(frozen=True)
class PermissionDenied:
    """``system/permission_denied``: the CLI refused a tool call."""

    tool_name: str | None
    data: dict[str, Any]


@dataclass(frozen=True)
class SystemNotice:
    """Any other ``system`` line (``status``, ``compact_boundary``, ``task_*``, hooks, ...)."""

    subtype: str | None
    data: dict[str, Any]


@dataclass(frozen=True)
class Result:
    """The final ``result`` line: the run's verdict, cost and usage."""

    subtype: str
    is_error: bool
    api_error_status: int | None
    terminal_reason: str | None
    text: str | None
    errors: tuple[str, ...]
    cost_usd: float
    num_turns: int
    session_id: str | None
    input_tokens: int
    output_tokens: int
    cache_read_tokens: int
    cache_creation_tokens: int
    permission_denials: tuple[dict[str, Any], ...]

    @property
    def description(self) -> str:
        """The CLI's own words: the result text, else its error list."""
        return self.text or "; ".join(self.errors) or self.subtype


@dataclass(frozen=True)
class PlainOutput:
    """A line that is not a JSON object (the CLI should not print these; keep them)."""

    text: str


StreamEvent = (
    SessionInit
    | AssistantText
    | MessageUsage
    | ToolCall
    | ToolResult
    | ApiErrorNotice
    | ApiRetry
    | RateLimit
    | PermissionDenied
    | SystemNotice
    | Result
    | PlainOutput
)


def parse_line(line: str) -> list[StreamEvent]:
    """The events in one stdout line; ``[]`` for line types this module does not know."""
    try:
        obj = json.loads(line)
    except ValueError:
        return [PlainOutput(line)]
    if not isinstance(obj, dict):
        return [PlainOutput(line)]
    kind = obj.get("type")
    if kind == "system":
        return [_system(obj)]
    if kind == "assistant":
        return _assistant(obj)
    if kind == "user":
        return _tool_results(obj)
    if kind == "rate_limit_event":
        info = _dict(obj.get("rate_limit_info"))
        return [
            RateLimit(_str(info, "status"), _num(info, "resetsAt"), _str(info, "rateLimitType"))
        ]
    if kind == "result":
        return [_result(obj)]
    return []  # stream_event, future types: not needed for the outcome


@dataclass
class StreamSummary:
    """What the outcome needs from a run's stream. Feed every event to :meth:`add`."""

    session_id: str | None = None
    result: Result | None = None
    api_error: ApiErrorNotice | None = None
    last_retry: ApiRetry | None = None
    rate_limit: RateLimit | None = None

    def add(self, event: StreamEvent) -> None:
        if isinstance(event, SessionInit) and event.session_id:
            self.session_id = event.session_id
        elif isinstance(event, Result):
            self.result = event
            self.session_id = event.session_id or self.session_id
        elif isinstance(event, ApiErrorNotice):
            self.api_error = event
        elif isinstance(event, ApiRetry):
            self.last_retry = event
        elif isinstance(event, RateLimit):
            self.rate_limit = event


def runner_event(event: StreamEvent) -> RunnerEvent:
    """The coordinator-facing form of a stream event (long texts clipped)."""
    data: dict[str, Any]
    match event:
        case SessionInit():
            return RunnerEvent(
                EventKind.SESSION_STARTED,
                f"session {event.session_id} on {event.model}",
                {
                    "session_id": event.session_id,
                    "model": event.model,
                    "cwd": event.cwd,
                    "tools": list(event.tools),
                    "permission_mode": event.permission_mode,
                    "cli_version": event.cli_version,
                },
            )
        case AssistantText():
            return RunnerEvent(EventKind.ASSISTANT_TEXT, clip(event.text))
        case MessageUsage():
            data = {"message_id": event.message_id, "model": event.model, **event.usage}
            return RunnerEvent(EventKind.MODEL_USAGE, "", data, "debug")
        case ToolCall():
            data = {
                "tool_use_id": event.tool_use_id,
                "name": event.name,
                "input": _clipped(event.input),
            }
            return RunnerEvent(EventKind.TOOL_USE, event.name, data)
        case ToolResult():
            data = {"tool_use_id": event.tool_use_id, "is_error": event.is_error}
            level = "warning" if event.is_error else "info"
            return RunnerEvent(EventKind.TOOL_RESULT, clip(event.content), data, level)
        case ApiErrorNotice():
            return RunnerEvent(
                EventKind.API_ERROR, clip(event.text), {"error": event.error}, "error"
            )
        case ApiRetry():
            data = {
                "attempt": event.attempt,
                "max_retries": event.max_retries,
                "retry_delay_ms": event.retry_delay_ms,
                "error_status": event.error_status,
                "error": event.error,
            }
            message = (
                f"API call failed ({event.error_status or event.error}), retry {event.attempt}"
            )
            return RunnerEvent(EventKind.API_RETRY, message, data, "warning")
        case RateLimit():
            data = {"status": event.status, "resets_at": event.resets_at, "type": event.limit_type}
            level = "info" if event.status == "allowed" else "warning"
            return RunnerEvent(EventKind.RATE_LIMIT, f"rate limit {event.status}", data, level)
        case PermissionDenied():
            data = {"tool_name": event.tool_name, **_clipped(event.data)}
            return RunnerEvent(
                EventKind.PERMISSION_DENIED, f"denied {event.tool_name}", data, "warning"
            )
        case SystemNotice():
            return RunnerEvent(EventKind.SYSTEM, event.subtype or "", _clipped(event.data), "debug")
        case Result():
            data = {
                "subtype": event.subtype,
                "is_error": event.is_error,
                "api_error_status": event.api_error_status,
                "terminal_reason": event.terminal_reason,
                "cost_usd": event.cost_usd,
                "num_turns": event.num_turns,
                "input_tokens": event.input_tokens,
                "output_tokens": event.output_tokens,
                "cache_read_tokens": event.cache_read_tokens,
                "cache_creation_tokens": event.cache_creation_tokens,
            }
            level = "error" if event.is_error else "info"
            return RunnerEvent(EventKind.RESULT, clip(event.description), data, level)
        case PlainOutput():
            return RunnerEvent(EventKind.OUTPUT, clip(event.text))


# --- line shapes ---------------------------------------------------------------------------


def _system(obj: dict[str, Any]) -> StreamEvent:
    subtype = _str(obj, "subtype")
    if subtype == "init":
        tools = obj.get("tools")
        return SessionInit(
            session_id=_str(obj, "session_id"),
            model=_str(obj, "model"),
            cwd=_str(obj, "cwd"),
            tools=tuple(str(t) for t in tools) if isinstance(tools, list) else (),
            permission_mode=_str(obj, "permissionMode"),
            cli_version=_str(obj, "claude_code_version"),
        )
    if subtype == "api_retry":
        return ApiRetry(
            attempt=_int(obj, "attempt"),
            max_retries=_opt_int(obj, "max_retries"),
            retry_delay_ms=_num(obj, "retry_delay_ms"),
            error_status=_opt_int(obj, "error_status"),
            error=_str(obj, "error"),
        )
    data = {k: v for k, v in obj.items() if k not in ("type", "subtype", "uuid", "session_id")}
    if subtype == "permission_denied":
        return PermissionDenied(_str(obj, "tool_name"), data)
    return SystemNotice(subtype, data)


def _assistant(obj: dict[str, Any]) -> list[StreamEvent]:
    message = _dict(obj.get("message"))
    blocks = [b for b in _list(message.get("content")) if isinstance(b, dict)]
    error = obj.get("error")
    if isinstance(error, str) and error:
        # The CLI's synthetic message after an API failure: its text is the error.
        text = " ".join(str(b.get("text", "")) for b in blocks if b.get("type") == "text")
        return [ApiErrorNotice(error, text)]
    events: list[StreamEvent] = []
    for block in blocks:
        if block.get("type") == "text":
            events.append(AssistantText(str(block.get("text", "")), _str(message, "id")))
        elif block.get("type") == "tool_use":
            events.append(
                ToolCall(_str(block, "id"), str(block.get("name", "")), _dict(block.get("input")))
            )
    counts = _dict(message.get("usage"))
    usage = {key: max(0, _int(counts, key)) for key in _USAGE_KEYS}
    if any(usage.values()):
        events.append(MessageUsage(_str(message, "id"), _str(message, "model"), usage))
    return events  # thinking and future block types are not forwarded


#: the token counts of a message's ``usage`` that its cost depends on
_USAGE_KEYS = (
    "input_tokens",
    "output_tokens",
    "cache_read_input_tokens",
    "cache_creation_input_tokens",
)


def _tool_results(obj: dict[str, Any]) -> list[StreamEvent]:
    message = _dict(obj.get("message"))
    return [
        ToolResult(
            _str(b, "tool_use_id"), _content_text(b.get("content")), b.get("is_error") is True
        )
        for b in _list(message.get("content"))
        if isinstance(b, dict) and b.get("type") == "tool_result"
    ]


def _result(obj: dict[str, Any]) -> Result:
    usage = _dict(obj.get("usage"))
    errors = obj.get("errors")
    denials = obj.get("permission_denials")
    text = obj.get("result")
    return Result(
        subtype=str(obj.get("subtype") or ""),
        is_error=obj.get("is_error") is True,
        api_error_status=_opt_int(obj, "api_error_status"),
        terminal_reason=_str(obj, "terminal_reason"),
        text=text if isinstance(text, str) else None,
        errors=tuple(str(e) for e in errors) if isinstance(errors, list) else (),
        cost_usd=_num(obj, "total_cost_usd") or 0.0,
        num_turns=_int(obj, "num_turns"),
        session_id=_str(obj, "session_id"),
        input_tokens=_int(usage, "input_tokens"),
        output_tokens=_int(usage, "output_tokens"),
        cache_read_tokens=_int(usage, "cache_read_input_tokens"),
        cache_creation_tokens=_int(usage, "cache_creation_input_tokens"),
        permission_denials=tuple(d for d in denials if isinstance(d, dict))
        if isinstance(denials, list)
        else (),
    )


def _content_text(content: Any) -> str:
    """A tool result's content: a string, or a list of blocks whose texts we join."""
    if isinstance(content, str):
        return content
    parts = [str(b.get("text", "")) for b in _list(content) if isinstance(b, dict)]
    return "\n".join(p for p in parts if p)


def _clipped(value: dict[str, Any]) -> dict[str, Any]:
    """A copy with long strings clipped (tool inputs can hold whole files)."""
    return {k: clip(v) if isinstance(v, str) else v for k, v in value.items()}


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _str(obj: dict[str, Any], key: str) -> str | None:
    value = obj.get(key)
    return value if isinstance(value, str) else None


def _num(obj: dict[str, Any], key: str) -> float | None:
    value = obj.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _opt_int(obj: dict[str, Any], key: str) -> int | None:
    value = _num(obj, key)
    return None if value is None else int(value)


def _int(obj: dict[str, Any], key: str) -> int:
    return _opt_int(obj, key) or 0
