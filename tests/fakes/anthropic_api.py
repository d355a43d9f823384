"""A fake Anthropic Messages API on loopback, for driving the real Claude Code CLI in tests.

The server speaks just enough of the Messages API for ``claude -p``: streaming replies as
server-sent events (``message_start``, ``content_block_*``, ``message_delta`` with usage,
``message_stop``), non-streaming JSON replies (the CLI's fallback after a stalled stream)
and error replies in the standard ``{"type": "error", ...}`` shape. The protocol facts are
in ``/work/shared/reference/claude-cli-against-fake-api.md``.

One server serves many tests at once: each :class:`Scenario` gets its own base URL
``http://127.0.0.1:<port>/s/<scenario-id>`` (the CLI keeps the path prefix), its own
script of turns and its own request log.

A scenario is a list of turns. Every API call takes the next turn; when the script runs
out the last turn repeats (so ``[rate_limited()]`` means "429 forever"). A stalled stream
is followed by the CLI's non-streaming fallback for the same turn, which gets the stall's
``fallback`` reply (or no answer at all when ``fallback`` is ``None``).

Example::

    from tests.fakes.anthropic_api import FakeAnthropic, edit, text, write

    def test_claude_writes_a_file(tmp_path):
        with FakeAnthropic.start() as api:
            scenario = api.scenario(
                [write("hello.txt", "hi\\n"), edit("hello.txt", "hi", "hello"), text("Done.")]
            )
            env = scenario.env()  # ANTHROPIC_BASE_URL, ANTHROPIC_API_KEY, quiet-traffic switch
            ...  # run `claude -p ... --output-format stream-json --verbose` with env, cwd=tmp_path
            assert len(scenario.requests) == 3
            assert scenario.requests[-1].tool_results()  # the Edit's result went back

Relative ``file_path`` inputs of tool calls are resolved against the working directory the
CLI reports in its request, so scripts need not know the worktree path in advance.

Or use the :func:`fake_anthropic` pytest fixture (one server per test)::

    from tests.fakes.anthropic_api import fake_anthropic  # noqa: F401  (re-export the fixture)
"""

from __future__ import annotations

import contextlib
import json
import re
import threading
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar
from urllib.parse import urlsplit

import pytest

__all__ = [
    "ApiError",
    "Disconnect",
    "FakeAnthropic",
    "Held",
    "RecordedRequest",
    "Reply",
    "Scenario",
    "Stall",
    "Text",
    "ToolUse",
    "Turn",
    "api_error",
    "bash",
    "disconnect",
    "edit",
    "fake_anthropic",
    "held",
    "overloaded",
    "rate_limited",
    "reply",
    "stall",
    "text",
    "tool_use",
    "unauthorized",
    "write",
]

#: the API key the helpers hand to the CLI; any string works, the server does not check it
FAKE_API_KEY = "sk-test-fake"
#: the longest a stalled stream or a withheld fallback keeps its socket open
MAX_STALL_SECONDS = 120.0

_PRIMARY_CWD = re.compile(r"Primary working directory:\s*(\S+)")
_PATH_KEYS = ("file_path", "notebook_path", "path")


# --- the script ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Text:
    """A text block of an assistant reply."""

    text: str


@dataclass(frozen=True)
class ToolUse:
    """A tool call. A relative ``file_path`` is resolved against the CLI's working directory."""

    name: str
    input: Mapping[str, Any]


@dataclass(frozen=True)
class Reply:
    """One assistant message. ``stop_reason`` defaults to ``tool_use`` when it calls a tool."""

    blocks: tuple[Text | ToolUse, ...]
    input_tokens: int = 100
    output_tokens: int = 20
    cache_read_tokens: int = 0
    cache_creation_tokens: int = 0
    stop_reason: str | None = None


@dataclass(frozen=True)
class ApiError:
    """An error reply: ``status`` with ``{"type": "error", "error": {type, message}}``."""

    status: int
    error_type: str
    message: str
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Stall:
    """Send the first ``after_events`` SSE events of ``reply``, then go silent (socket open).

    The CLI's non-streaming fallback for this turn gets ``fallback``; ``None`` withholds it
    (the request is read and never answered).
    """

    reply: Reply
    after_events: int = 4
    fallback: Reply | None = None


@dataclass(frozen=True)
class Disconnect:
    """Send the first ``after_events`` SSE events of ``reply``, then drop the connection."""

    reply: Reply
    after_events: int = 4


@dataclass(frozen=True)
class Held:
    """Answer ``reply`` only once the scenario is released (a slow model turn): the CLI
    waits for its answer meanwhile, so a test can look at what the run shows mid-round."""

    reply: Reply


Turn = Reply | ApiError | Stall | Disconnect | Held


def reply(*blocks: Text | ToolUse | str, **usage: Any) -> Reply:
    """An assistant message from blocks; plain strings become text blocks."""
    return Reply(tuple(Text(b) if isinstance(b, str) else b for b in blocks), **usage)


def text(message: str, **usage: Any) -> Reply:
    """A final text answer (``stop_reason: end_turn``)."""
    return reply(Text(message), **usage)


def tool_use(name: str, tool_input: Mapping[str, Any], say: str = "", **usage: Any) -> Reply:
    """A turn that calls one tool, optionally preceded by a sentence."""
    blocks: list[Text | ToolUse] = [Text(say)] if say else []
    return reply(*blocks, ToolUse(name, dict(tool_input)), **usage)


def write(path: str, content: str, **usage: Any) -> Reply:
    """A turn that calls ``Write`` (``path`` may be relative to the CLI's cwd)."""
    return tool_use(
        "Write", {"file_path": path, "content": content}, say=f"I'll write {path}.", **usage
    )


def edit(path: str, old: str, new: str, **usage: Any) -> Reply:
    """A turn that calls ``Edit``. The CLI wants the file read or written first in the session."""
    tool_input = {"file_path": path, "old_string": old, "new_string": new}
    return tool_use("Edit", tool_input, say=f"I'll edit {path}.", **usage)


def bash(command: str, **usage: Any) -> Reply:
    """A turn that calls ``Bash`` in the CLI's cwd."""
    tool_input = {"command": command, "description": "Run a command"}
    return tool_use("Bash", tool_input, say="I'll run a command.", **usage)


def api_error(status: int, error_type: str, message: str, **headers: str) -> ApiError:
    """Any error reply; keyword arguments become response headers (``_`` → ``-``)."""
    return ApiError(
        status, error_type, message, {k.replace("_", "-"): v for k, v in headers.items()}
    )


def rate_limited(
    retry_after: float | None = 1,
    message: str = "Rate limited (fake)",
    *,
    resets_at: int | None = None,
    limit_type: str = "five_hour",
) -> ApiError:
    """A 429 ``rate_limit_error``, with a ``retry-after`` header unless ``None``.

    With ``resets_at`` (epoch seconds) it also sends the subscription rate-limit headers;
    a CLI logged in with an OAuth token (``Scenario.env(oauth=True)``) then emits a
    ``rate_limit_event`` carrying ``resetsAt``. With an API key the CLI ignores them.
    """
    headers = {} if retry_after is None else {"retry-after": f"{retry_after:g}"}
    if resets_at is not None:
        headers |= {
            "anthropic-ratelimit-unified-status": "rejected",
            "anthropic-ratelimit-unified-reset": str(resets_at),
            "anthropic-ratelimit-unified-representative-claim": limit_type,
        }
    return ApiError(429, "rate_limit_error", message, headers)


def overloaded(message: str = "Overloaded") -> ApiError:
    """A 529 ``overloaded_error``."""
    return ApiError(529, "overloaded_error", message)


def unauthorized(message: str = "invalid x-api-key") -> ApiError:
    """A 401 ``authentication_error``."""
    return ApiError(401, "authentication_error", message)


def held(reply_: Reply) -> Held:
    """A turn answered only after :meth:`Scenario.release`. See :class:`Held`."""
    return Held(reply_)


def stall(
    reply_: Reply | None = None, *, after_events: int = 4, fallback: Reply | None = None
) -> Stall:
    """A stream that goes silent mid-message. See :class:`Stall`."""
    return Stall(reply_ or text("This stream will stall."), after_events, fallback)


def disconnect(reply_: Reply | None = None, *, after_events: int = 4) -> Disconnect:
    """A stream whose connection drops mid-message. See :class:`Disconnect`."""
    return Disconnect(reply_ or text("This stream will break."), after_events)


# --- what the server saw -------------------------------------------------------------------


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the server received it (headers with lower-case names).

    ``headers`` keeps one value per name; ``header_lines`` every header line in order, so a
    header sent twice (a credential beside another) is seen.
    """

    method: str
    path: str
    query: str
    headers: Mapping[str, str]
    body: Mapping[str, Any]
    received_at: float
    header_lines: tuple[tuple[str, str], ...] = ()

    @property
    def stream(self) -> bool:
        return bool(self.body.get("stream"))

    @property
    def messages(self) -> list[dict[str, Any]]:
        return list(self.body.get("messages", []))

    @property
    def session_id(self) -> str | None:
        """The CLI's session id (the ``X-Claude-Code-Session-Id`` header)."""
        return self.headers.get("x-claude-code-session-id")

    @property
    def cwd(self) -> str | None:
        """The working directory the CLI announces in its environment message."""
        system = self.body.get("system", [])
        system_texts = [system] if isinstance(system, str) else [b.get("text", "") for b in system]
        for chunk in [*self.texts(), *system_texts]:
            match = _PRIMARY_CWD.search(chunk)
            if match:
                return match.group(1)
        return None

    def texts(self) -> list[str]:
        """Every text block of every message, in order (prompts, answers, reminders)."""
        found: list[str] = []
        for message in self.messages:
            content = message.get("content")
            if isinstance(content, str):
                found.append(content)
                continue
            found.extend(b.get("text", "") for b in content or [] if b.get("type") == "text")
        return found

    def tool_results(self) -> list[dict[str, Any]]:
        """Every ``tool_result`` block sent back to the model, in order."""
        return [
            block
            for message in self.messages
            if isinstance(message.get("content"), list)
            for block in message["content"]
            if block.get("type") == "tool_result"
        ]


# --- scenarios and the server --------------------------------------------------------------


class Scenario:
    """A scripted conversation with its own base URL and request log. Made by the server."""

    def __init__(self, server: FakeAnthropic, scenario_id: str, turns: Sequence[Turn]) -> None:
        if not turns:
            raise ValueError("a scenario needs at least one turn")
        self.id = scenario_id
        self.base_url = f"{server.url}/s/{scenario_id}"
        self.turns: tuple[Turn, ...] = tuple(turns)
        self.requests: list[RecordedRequest] = []
        self.released = threading.Event()
        #: a :class:`Held` turn has been asked for and waits for :meth:`release`
        self.held = threading.Event()
        self._lock = threading.Lock()
        self._next = 0
        self._pending_fallback: Stall | None = None

    def env(self, api_key: str = FAKE_API_KEY, *, oauth: bool = False) -> dict[str, str]:
        """The variables that point the CLI at this scenario and keep it off the network.

        Args:
            api_key: the credential to send; the server accepts anything.
            oauth: send it as a subscription token (``CLAUDE_CODE_OAUTH_TOKEN``, a Bearer
                header) instead of ``ANTHROPIC_API_KEY``.
        """
        credential = "CLAUDE_CODE_OAUTH_TOKEN" if oauth else "ANTHROPIC_API_KEY"
        return {
            "ANTHROPIC_BASE_URL": self.base_url,
            credential: api_key,
            "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        }

    @property
    def messages_requests(self) -> list[RecordedRequest]:
        """Only the ``POST .../v1/messages`` calls (the agent turns)."""
        return [r for r in self.requests if r.method == "POST" and r.path.endswith("/messages")]

    def release(self) -> None:
        """End every stall and withheld fallback of this scenario now."""
        self.released.set()

    def _take(self, streaming: bool) -> tuple[int, Turn | None]:
        """The turn for the next call; ``None`` means "withhold the answer"."""
        with self._lock:
            if not streaming and self._pending_fallback is not None:
                stalled, self._pending_fallback = self._pending_fallback, None
                return self._next - 1, stalled.fallback
            index = min(self._next, len(self.turns) - 1)
            self._next += 1
            turn = self.turns[index]
            self._pending_fallback = turn if isinstance(turn, Stall) and streaming else None
            return index, turn

    def _record(self, request: RecordedRequest) -> None:
        with self._lock:
            self.requests.append(request)


class FakeAnthropic:
    """The server. Use :meth:`start` as a context manager; it binds a free loopback port."""

    def __init__(self) -> None:
        self._httpd = _Server(("127.0.0.1", 0), _Handler)
        self._httpd.fake = self
        host, port = self._httpd.server_address[:2]
        self.url = f"http://{host!s}:{port}"
        self.scenarios: dict[str, Scenario] = {}
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @classmethod
    @contextlib.contextmanager
    def start(cls) -> Iterator[FakeAnthropic]:
        """Serve in a background thread for the duration of the ``with`` block."""
        server = cls()
        server._thread.start()
        try:
            yield server
        finally:
            server.close()

    def scenario(self, turns: Sequence[Turn], scenario_id: str | None = None) -> Scenario:
        """Register a script and return it; its ``base_url`` routes calls to it."""
        scenario_id = scenario_id or uuid.uuid4().hex[:12]
        if scenario_id in self.scenarios:
            raise ValueError(f"scenario {scenario_id!r} exists already")
        scenario = Scenario(self, scenario_id, turns)
        self.scenarios[scenario_id] = scenario
        return scenario

    @property
    def requests(self) -> list[RecordedRequest]:
        """Every request of every scenario, in arrival order."""
        every = [r for s in self.scenarios.values() for r in s.requests]
        return sorted(every, key=lambda r: r.received_at)

    def close(self) -> None:
        """Release all stalls, stop serving and close the listening socket."""
        for scenario in self.scenarios.values():
            scenario.release()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)


@pytest.fixture
def fake_anthropic() -> Iterator[FakeAnthropic]:
    """A running :class:`FakeAnthropic` for one test."""
    with FakeAnthropic.start() as server:
        yield server


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # a stalled handler must never keep the test process alive
    fake: FakeAnthropic


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, like the real API; SSE goes out chunked
    # TCP_NODELAY, as real API front ends set it: otherwise each small SSE write on a
    # kept-alive connection waits for the client's delayed ACK (40 ms)
    disable_nagle_algorithm = True
    server: _Server
    _scenario_path: ClassVar[re.Pattern[str]] = re.compile(r"^/s/([^/]+)(/.*)$")

    def log_message(self, format: str, *args: Any) -> None:
        """Stay quiet: pytest shows stderr of failing tests and this would drown it."""

    def do_HEAD(self) -> None:
        # Without the nonessential-traffic switch the CLI probes ``HEAD /api/hello``.
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_GET(self) -> None:
        self._read_and_route("GET")

    def do_POST(self) -> None:
        self._read_and_route("POST")

    def _read_and_route(self, method: str) -> None:
        split = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else {}
        except json.JSONDecodeError:
            body = {}
        match = self._scenario_path.match(split.path)
        scenario = self.server.fake.scenarios.get(match.group(1)) if match else None
        if match is None or scenario is None:
            self._send_error(ApiError(404, "not_found_error", f"no fake scenario at {split.path}"))
            return
        request = RecordedRequest(
            method=method,
            path=match.group(2),
            query=split.query,
            headers={k.lower(): v for k, v in self.headers.items()},
            body=body,
            received_at=time.monotonic(),
            header_lines=tuple((k.lower(), v) for k, v in self.headers.items()),
        )
        scenario._record(request)
        endpoint = request.path
        if method == "POST" and endpoint == "/v1/messages":
            self._messages(scenario, request)
        elif endpoint == "/v1/messages/count_tokens":
            self._send_json(200, {"input_tokens": 100})
        elif endpoint == "/v1/models":
            self._send_json(200, {"data": [], "has_more": False})
        else:
            self._send_error(ApiError(404, "not_found_error", f"the fake has no {endpoint}"))

    def _messages(self, scenario: Scenario, request: RecordedRequest) -> None:
        streaming = request.stream
        _, turn = scenario._take(streaming)
        model = str(request.body.get("model", "claude-fake"))
        cwd = request.cwd
        if isinstance(turn, Held):
            scenario.held.set()
            scenario.released.wait(MAX_STALL_SECONDS)
            turn = turn.reply
        if turn is None:  # a withheld fallback: read, never answered
            self._hold(scenario)
        elif isinstance(turn, ApiError):
            self._send_error(turn)
        elif not streaming:
            message_reply = turn if isinstance(turn, Reply) else turn.reply
            self._send_json(200, _message_json(message_reply, model, cwd))
        elif isinstance(turn, Reply):
            self._send_sse(_sse_events(turn, model, cwd))
        else:
            events = _sse_events(turn.reply, model, cwd)[: turn.after_events]
            self._send_sse(events, finish=False)
            if isinstance(turn, Stall):
                self._hold(scenario)
            self.close_connection = True

    def _hold(self, scenario: Scenario) -> None:
        """Keep the socket open and silent until the scenario is released (or the cap)."""
        scenario.released.wait(MAX_STALL_SECONDS)
        self.close_connection = True

    def _send_json(self, status: int, payload: Mapping[str, Any], **headers: str) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("request-id", f"req_{uuid.uuid4().hex[:24]}")
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def _send_error(self, error: ApiError) -> None:
        payload = {"type": "error", "error": {"type": error.error_type, "message": error.message}}
        self._send_json(error.status, payload, **dict(error.headers))

    def _send_sse(self, events: Sequence[tuple[str, dict[str, Any]]], finish: bool = True) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("request-id", f"req_{uuid.uuid4().hex[:24]}")
        self.end_headers()
        try:
            for name, data in events:
                chunk = f"event: {name}\ndata: {json.dumps(data)}\n\n".encode()
                self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                self.wfile.flush()
            if finish:
                self.wfile.write(b"0\r\n\r\n")
                self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):  # the CLI went away: nothing to do
            self.close_connection = True


# --- wire format ---------------------------------------------------------------------------


def _resolved_input(tool: ToolUse, cwd: str | None) -> dict[str, Any]:
    resolved = dict(tool.input)
    for key in _PATH_KEYS:
        value = resolved.get(key)
        if cwd and isinstance(value, str) and not value.startswith("/"):
            resolved[key] = f"{cwd.rstrip('/')}/{value}"
    return resolved


def _stop_reason(turn: Reply) -> str:
    if turn.stop_reason:
        return turn.stop_reason
    return "tool_use" if any(isinstance(b, ToolUse) for b in turn.blocks) else "end_turn"


def _usage(turn: Reply, output_tokens: int) -> dict[str, int]:
    return {
        "input_tokens": turn.input_tokens,
        "output_tokens": output_tokens,
        "cache_creation_input_tokens": turn.cache_creation_tokens,
        "cache_read_input_tokens": turn.cache_read_tokens,
    }


def _message_json(turn: Reply, model: str, cwd: str | None) -> dict[str, Any]:
    content: list[dict[str, Any]] = []
    for block in turn.blocks:
        if isinstance(block, Text):
            content.append({"type": "text", "text": block.text})
        else:
            tool_id = f"toolu_{uuid.uuid4().hex[:24]}"
            resolved = _resolved_input(block, cwd)
            content.append(
                {"type": "tool_use", "id": tool_id, "name": block.name, "input": resolved}
            )
    return {
        "id": f"msg_{uuid.uuid4().hex[:24]}",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": _stop_reason(turn),
        "stop_sequence": None,
        "usage": _usage(turn, turn.output_tokens),
    }


def _sse_events(turn: Reply, model: str, cwd: str | None) -> list[tuple[str, dict[str, Any]]]:
    """The SSE sequence for one message, shaped like the real API's."""
    message = _message_json(turn, model, cwd)
    start = {**message, "content": [], "stop_reason": None, "usage": _usage(turn, 1)}
    events: list[tuple[str, dict[str, Any]]] = [
        ("message_start", {"type": "message_start", "message": start})
    ]
    for index, block in enumerate(message["content"]):
        if block["type"] == "text":
            opening = {"type": "text", "text": ""}
            delta = {"type": "text_delta", "text": block["text"]}
        else:
            opening = {"type": "tool_use", "id": block["id"], "name": block["name"], "input": {}}
            delta = {"type": "input_json_delta", "partial_json": json.dumps(block["input"])}
        events += [
            (
                "content_block_start",
                {"type": "content_block_start", "index": index, "content_block": opening},
            ),
            (
                "content_block_delta",
                {"type": "content_block_delta", "index": index, "delta": delta},
            ),
            ("content_block_stop", {"type": "content_block_stop", "index": index}),
        ]
        if index == 0:
            events.append(("ping", {"type": "ping"}))
    events += [
        (
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": message["stop_reason"], "stop_sequence": None},
                "usage": {"output_tokens": turn.output_tokens},
            },
        ),
        ("message_stop", {"type": "message_stop"}),
    ]
    return events
