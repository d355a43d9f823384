"""The run's only way out of its sandbox: an egress proxy and a model API gateway.

One :class:`RunGateway` per run listens on a Unix socket that the sandbox binds in (see
:mod:`claude_cluster.agent.sandbox`); inside, ``http://127.0.0.1:<port>`` reaches it. It
speaks HTTP/1.1 and answers two kinds of request:

* ``CONNECT host:port`` (``HTTPS_PROXY``): tunnelled when the host is on the run's
  :class:`DomainAllowlist` (per repository; default only the model API's host), otherwise
  refused with 403. The first refusal of a host is an ``egress_refused`` run event naming
  it; later ones are only counted (a package manager retrying would otherwise flood the
  run's events), and :meth:`RunGateway.close` reports the counts of the hosts refused
  more than once in one ``egress_refused_summary`` event;
* anything else is the model API (``ANTHROPIC_BASE_URL`` points here): the request must
  carry the run's own token (``x-api-key`` or ``Authorization: Bearer``), which the gateway
  swaps for the agent's real credential before forwarding it upstream. The response is
  streamed back unchanged (chunk by chunk) while its ``usage`` is counted; the run's cost
  is estimated from it, and once it reaches the run's budget every further request is
  refused (the CLI then stops even if it would not have stopped itself). 429 and 529
  answers are reported as ``api_backpressure`` events with their ``retry-after``.

The run token is random, known only to the run, accepted only on this run's socket and
only until :meth:`RunGateway.close`; the real credential never enters the sandbox.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import secrets
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from claude_cluster.logging import get_logger

__all__ = ["DomainAllowlist", "GatewayUsage", "RunGateway", "model_price", "usage_cost"]

log = get_logger(__name__)

#: (kind, message, data, level) → a run event
EventCallback = Callable[[str, str, dict[str, Any], str], None]

_HEAD_LIMIT = 64 * 1024
_BODY_LIMIT = 64 * 1024 * 1024
_HOP_BY_HOP = frozenset(
    {
        "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
        "trailer", "trailers", "transfer-encoding", "upgrade", "host", "content-length",
        "accept-encoding", "x-api-key", "authorization", "proxy-connection",
    }
)  # fmt: skip
#: the model API endpoints a run may call with the agent's credential
_MODEL_PATHS = frozenset({"/v1/messages", "/v1/messages/count_tokens", "/v1/models"})
_RESPONSE_DROP = frozenset(
    {"connection", "keep-alive", "transfer-encoding", "content-length", "proxy-connection"}
)
#: US dollars per million tokens (input, output); cache reads cost 0.1× input, cache
#: writes 1.25× input. An estimate for the budget cut-off; the CLI's own figure is reported.
_PRICES = (("opus", 5.0, 25.0), ("sonnet", 3.0, 15.0), ("haiku", 1.0, 5.0))
_UNKNOWN_PRICE = (5.0, 25.0)


def model_price(model: str) -> tuple[float, float]:
    """(input, output) dollars per million tokens for ``model`` (unknown: the dearest)."""
    lowered = model.lower()
    for family, price_in, price_out in _PRICES:
        if family in lowered:
            return price_in, price_out
    return _UNKNOWN_PRICE


def usage_cost(model: str, usage: Mapping[str, int]) -> float:
    """Estimated dollars of one model response's ``usage`` (Messages API field names) at
    :func:`model_price`. The gateway's budget cut-off and the agent's cost of a round in
    progress both use it; the CLI's own figure, when it reports one, is the real one."""
    price_in, price_out = model_price(model)
    fresh = usage.get("input_tokens", 0)
    read = usage.get("cache_read_input_tokens", 0)
    created = usage.get("cache_creation_input_tokens", 0)
    out = usage.get("output_tokens", 0)
    return (
        fresh * price_in + read * price_in * 0.1 + created * price_in * 1.25 + out * price_out
    ) / 1e6


@dataclass(frozen=True)
class DomainAllowlist:
    """Hosts a run may open a tunnel to: ``host``, ``*.domain`` or either with ``:port``.

    Without a port only 443 is allowed.
    """

    entries: tuple[str, ...] = ()

    @classmethod
    def of(cls, entries: Iterable[str]) -> DomainAllowlist:
        return cls(tuple(e.strip().lower() for e in entries if e.strip()))

    def allows(self, host: str, port: int) -> bool:
        host = host.lower().rstrip(".")
        for entry in self.entries:
            name, _, entry_port = entry.partition(":")
            if port != (int(entry_port) if entry_port.isdigit() else 443):
                continue
            if name == host or (name.startswith("*.") and host.endswith(name[1:])):
                return True
        return False


@dataclass
class GatewayUsage:
    """What the run's model requests used, from the responses' ``usage``."""

    requests: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_creation_tokens: int = 0
    cost_usd: float = 0.0

    def add(self, model: str, usage: dict[str, int]) -> None:
        self.input_tokens += usage.get("input_tokens", 0)
        self.output_tokens += usage.get("output_tokens", 0)
        self.cache_read_tokens += usage.get("cache_read_input_tokens", 0)
        self.cache_creation_tokens += usage.get("cache_creation_input_tokens", 0)
        self.cost_usd += usage_cost(model, usage)


@dataclass
class _UsageReader:
    """Reads ``usage`` out of a streamed (SSE) or JSON Messages API response as it passes."""

    model: str
    streaming: bool
    usage: dict[str, int] = field(default_factory=dict)
    _buffer: bytes = b""

    def feed(self, chunk: bytes) -> None:
        self._buffer += chunk
        if not self.streaming:
            return
        if b"\n" not in chunk:
            return
        *lines, self._buffer = self._buffer.split(b"\n")
        for line in lines:
            # only message_start and message_delta carry usage: parse nothing else
            if line.startswith(b"data:") and b'"message_' in line:
                self._event(line[5:])

    def finish(self) -> dict[str, int]:
        if not self.streaming:
            self._message(self._buffer)
        elif self._buffer.startswith(b"data:"):
            self._event(self._buffer[5:])
        return self.usage

    def _event(self, data: bytes) -> None:
        try:
            event = json.loads(data)
        except ValueError:
            return
        if event.get("type") == "message_start":
            self._message_dict(event.get("message") or {})
        elif event.get("type") == "message_delta":
            self._usage(event.get("usage") or {})

    def _message(self, body: bytes) -> None:
        with contextlib.suppress(ValueError, AttributeError):
            self._message_dict(json.loads(body))

    def _message_dict(self, message: dict[str, Any]) -> None:
        self.model = str(message.get("model") or self.model)
        self._usage(message.get("usage") or {})

    def _usage(self, usage: dict[str, Any]) -> None:
        for key, value in usage.items():
            if isinstance(value, int):
                self.usage[key] = value  # the counts are cumulative within a message


class RunGateway:
    """The gateway of one run.

    Args:
        socket_path: where to listen (bound into the sandbox).
        upstream: the real model API base URL (``ANTHROPIC_BASE_URL`` of the agent).
        credential: ``("x-api-key", key)`` or ``("authorization", "Bearer <oauth>")``.
        allow: hosts the run may tunnel to.
        budget_usd: refuse model requests once the estimated cost reaches this.
        on_event: receives run events (refused hosts, back-pressure, budget).
    """

    def __init__(
        self,
        socket_path: Path,
        *,
        upstream: str,
        credential: tuple[str, str] | None,
        allow: DomainAllowlist,
        budget_usd: float | None = None,
        on_event: EventCallback | None = None,
    ) -> None:
        self.socket_path = socket_path
        self.upstream = upstream.rstrip("/")
        self.credential = credential
        self.allow = allow
        self.budget_usd = budget_usd
        self.on_event: EventCallback = on_event if on_event is not None else (lambda *_: None)
        self.token = "cc-run-" + secrets.token_urlsafe(32)
        self.usage = GatewayUsage()
        #: refused connection attempts per host, in the order first refused
        self.refused: dict[str, int] = {}
        self.over_budget = False
        self.backpressure: list[tuple[int, float | None]] = []
        self._server: asyncio.Server | None = None
        self._client: httpx.AsyncClient | None = None
        self._open = False
        self._summarised = False
        self._connections: set[asyncio.Task[Any]] = set()

    async def start(self) -> None:
        self.socket_path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(connect=30, read=900, write=60, pool=30), trust_env=False
        )
        self._server = await asyncio.start_unix_server(
            self._serve, path=str(self.socket_path), limit=_HEAD_LIMIT
        )
        self._open = True

    @property
    def refused_hosts(self) -> list[str]:
        """Each refused host once, in the order first refused."""
        return list(self.refused)

    async def close(self) -> None:
        """Revoke the run token and stop serving (open tunnels are cut); report how often
        each host refused more than once was tried."""
        self._open = False
        if self._server is not None:
            self._server.close()
        for task in list(self._connections):
            task.cancel()
        if self._connections:
            await asyncio.gather(*self._connections, return_exceptions=True)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
        if self._client is not None:
            await self._client.aclose()
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()
        self._report_refusals()

    def _report_refusals(self) -> None:
        repeated = {host: count for host, count in self.refused.items() if count > 1}
        if not repeated or self._summarised:
            return
        self._summarised = True
        self.on_event(
            "egress_refused_summary",
            "refused connections, by host: "
            + ", ".join(f"{host} ({count} times)" for host, count in repeated.items()),
            {"refused": repeated},
            "warning",
        )

    def sandbox_env(self, port: int) -> dict[str, str]:
        """What the run's processes get: the gateway as base URL and proxy, the run token."""
        base = f"http://127.0.0.1:{port}"
        env = {
            "ANTHROPIC_BASE_URL": base,
            "HTTPS_PROXY": base,
            "https_proxy": base,
            "HTTP_PROXY": base,
            "http_proxy": base,
            "NO_PROXY": "127.0.0.1,localhost",
            "no_proxy": "127.0.0.1,localhost",
        }
        if self.credential is not None and self.credential[0] == "authorization":
            env["CLAUDE_CODE_OAUTH_TOKEN"] = self.token
        else:
            env["ANTHROPIC_API_KEY"] = self.token
        return env

    # --- serving -------------------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            await self._one(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        except Exception as exc:  # a broken request must not take the gateway down
            log.warning("gateway_request_failed", error=str(exc))
        finally:
            self._connections.discard(task)
            with contextlib.suppress(Exception):
                writer.close()

    async def _one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        request_line, *header_lines = head.decode("latin-1").split("\r\n")
        method, target, _version = [*request_line.split(" "), "", ""][:3]
        headers: list[tuple[str, str]] = []
        for line in header_lines:
            if ":" in line:
                name, value = line.split(":", 1)
                headers.append((name.strip(), value.strip()))
        if method.upper() == "CONNECT":
            await self._tunnel(target, reader, writer)
            return
        if target.startswith(("http://", "https://")):
            parts = urlsplit(target)
            if parts.hostname not in ("127.0.0.1", "localhost"):
                self._refuse(parts.hostname or target, parts.port or 80)
                await _respond(writer, 403, "plain HTTP is not proxied; use HTTPS (CONNECT)")
                return
            target = parts.path + (f"?{parts.query}" if parts.query else "")
        await self._model_request(method, target, headers, reader, writer)

    def _refuse(self, host: str, port: int) -> None:
        count = self.refused.get(host, 0) + 1
        self.refused[host] = count
        if count > 1:
            return  # counted; the summary at close() reports the total
        self.on_event(
            "egress_refused",
            f"refused a connection to {host}:{port}: not on the repository's allowlist",
            {"host": host, "port": port},
            "warning",
        )

    async def _tunnel(
        self, target: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        host, _, port_text = target.rpartition(":")
        host = host.strip("[]")
        port = int(port_text) if port_text.isdigit() else 0
        if not self._open or not host or not self.allow.allows(host, port):
            self._refuse(host or target, port)
            await _respond(writer, 403, f"{host}:{port} is not on this run's allowlist")
            return
        try:
            up_reader, up_writer = await asyncio.wait_for(asyncio.open_connection(host, port), 30)
        except (OSError, TimeoutError) as exc:
            await _respond(writer, 502, f"cannot reach {host}:{port}: {exc}")
            return
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        await writer.drain()
        try:
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        finally:
            up_writer.close()

    async def _model_request(
        self,
        method: str,
        target: str,
        headers: Sequence[tuple[str, str]],
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        lookup = {name.lower(): value for name, value in headers}
        body = await _read_body(reader, lookup)
        presented = lookup.get("x-api-key") or lookup.get("authorization", "").removeprefix(
            "Bearer "
        )
        if not self._open or not hmac.compare_digest(presented.encode(), self.token.encode()):
            await _respond(
                writer, 401, "not a valid token of a running run", "authentication_error"
            )
            return
        if urlsplit(target).path not in _MODEL_PATHS or not target.startswith("/"):
            # the real credential goes only to the model endpoints, and only to the upstream
            # host: a target like "@evil.example/" must never become part of the authority
            await _respond(writer, 403, "only the Messages API is reachable through the gateway")
            return
        if self.credential is None:
            await _respond(writer, 503, "the agent has no model API credential", "api_error")
            return
        if self.budget_usd is not None and self.usage.cost_usd >= self.budget_usd:
            self._budget_spent()
            await _respond(
                writer,
                400,
                f"the run's budget of ${self.budget_usd:g} is spent "
                f"(${self.usage.cost_usd:.4f} by the gateway's count)",
            )
            return
        forwarded = [(n, v) for n, v in headers if n.lower() not in _HOP_BY_HOP]
        forwarded += [(self.credential[0], self.credential[1]), ("accept-encoding", "identity")]
        model, streaming = _request_model(body)
        counter = _UsageReader(model=model, streaming=streaming)
        assert self._client is not None
        request = self._client.build_request(
            method, self.upstream + target, headers=forwarded, content=body
        )
        try:
            response = await self._client.send(request, stream=True)
        except httpx.HTTPError as exc:
            await _respond(writer, 502, f"the model API is unreachable: {exc}", "api_error")
            return
        try:
            self.usage.requests += 1
            if response.status_code in (429, 529):
                self._backpressure(response)
            status_line = f"HTTP/1.1 {response.status_code} {response.reason_phrase}\r\n"
            kept = [(n, v) for n, v in response.headers.items() if n.lower() not in _RESPONSE_DROP]
            head = status_line + "".join(f"{n}: {v}\r\n" for n, v in kept)
            head += "transfer-encoding: chunked\r\nconnection: close\r\n\r\n"
            writer.write(head.encode("latin-1"))
            async for chunk in response.aiter_raw():
                counter.feed(chunk)
                writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                await writer.drain()
            writer.write(b"0\r\n\r\n")
            await writer.drain()
        finally:
            await response.aclose()
            if response.status_code < 300:
                self.usage.add(counter.model, counter.finish())

    def _budget_spent(self) -> None:
        if not self.over_budget:
            self.over_budget = True
            self.on_event(
                "budget_exceeded",
                f"the gateway cut the run off: ${self.usage.cost_usd:.4f} spent of "
                f"${self.budget_usd:g}",
                {"cost_usd": self.usage.cost_usd, "budget_usd": self.budget_usd},
                "warning",
            )

    def _backpressure(self, response: httpx.Response) -> None:
        retry_after: float | None = None
        with contextlib.suppress(ValueError):
            retry_after = float(response.headers.get("retry-after", ""))
        self.backpressure.append((response.status_code, retry_after))
        self.on_event(
            "api_backpressure",
            f"the model API answered {response.status_code}"
            + (f", retry after {retry_after:g}s" if retry_after is not None else ""),
            {"status": response.status_code, "retry_after": retry_after},
            "warning",
        )


def _request_model(body: bytes) -> tuple[str, bool]:
    try:
        parsed = json.loads(body or b"{}")
    except ValueError:
        return "", False
    if not isinstance(parsed, dict):
        return "", False
    return str(parsed.get("model") or ""), bool(parsed.get("stream"))


async def _read_body(reader: asyncio.StreamReader, headers: dict[str, str]) -> bytes:
    if "chunked" in headers.get("transfer-encoding", "").lower():
        parts: list[bytes] = []
        total = 0
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0].strip() or b"0", 16)
            if size == 0:
                await reader.readuntil(b"\r\n")
                return b"".join(parts)
            total += size
            if total > _BODY_LIMIT:
                raise ConnectionError("request body too large")
            parts.append(await reader.readexactly(size))
            await reader.readexactly(2)
    length = int(headers.get("content-length") or 0)
    if length > _BODY_LIMIT:
        raise ConnectionError("request body too large")
    return await reader.readexactly(length) if length else b""


async def _respond(
    writer: asyncio.StreamWriter,
    status: int,
    message: str,
    error_type: str = "invalid_request_error",
) -> None:
    """An answer in the Messages API's error shape (readable by the CLI and by curl)."""
    body = json.dumps({"type": "error", "error": {"type": error_type, "message": message}}).encode()
    reason = {400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 502: "Bad Gateway"}
    writer.write(
        f"HTTP/1.1 {status} {reason.get(status, 'Error')}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n".encode()
        + body
    )
    with contextlib.suppress(ConnectionError):
        await writer.drain()


async def _pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
    try:
        while chunk := await source.read(64 * 1024):
            sink.write(chunk)
            await sink.drain()
    except ConnectionError:
        pass
    finally:
        with contextlib.suppress(Exception):
            sink.write_eof()
