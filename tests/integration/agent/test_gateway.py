"""The run gateway over its real Unix socket: the model API with the token swap, the
usage count and back-pressure, the egress allowlist (CONNECT), and the run token's end."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from claude_cluster.agent.daemon import gateway_config
from claude_cluster.agent.gateway import DomainAllowlist, RunGateway
from tests.fakes.anthropic_api import (
    FakeAnthropic,
    Scenario,
    api_error,
    overloaded,
    rate_limited,
    text,
)
from tests.support.agents import agent_settings

pytestmark = pytest.mark.timeout(30)

REAL_KEY = "sk-ant-real-key-for-the-gateway-test"
REAL_OAUTH = "sk-ant-oat01-real-subscription-token-for-the-gateway-test"
BODY = {"model": "claude-sonnet-4-5", "max_tokens": 10, "stream": True, "messages": []}


class Events(list[tuple[str, str, dict[str, Any], str]]):
    def __call__(self, kind: str, message: str, data: dict[str, Any], level: str) -> None:
        self.append((kind, message, data, level))

    def kinds(self) -> list[str]:
        return [e[0] for e in self]


@pytest.fixture
def events() -> Events:
    return Events()


async def started(tmp_path: Path, scenario: Scenario, events: Events, **kw: Any) -> RunGateway:
    gateway = RunGateway(
        tmp_path / "gw.sock",
        upstream=scenario.base_url,
        credential=("x-api-key", REAL_KEY),
        allow=kw.pop("allow", DomainAllowlist()),
        on_event=events,
        **kw,
    )
    await gateway.start()
    return gateway


def client(gateway: RunGateway) -> httpx.AsyncClient:
    transport = httpx.AsyncHTTPTransport(uds=str(gateway.socket_path))
    return httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:3128", timeout=10)


@pytest.fixture
async def gateway_and_api(
    tmp_path: Path, fake_api: FakeAnthropic, events: Events
) -> AsyncIterator[tuple[RunGateway, Scenario]]:
    scenario = fake_api.scenario([text("hello", input_tokens=1000, output_tokens=50)])
    gateway = await started(tmp_path, scenario, events, budget_usd=1.0)
    yield gateway, scenario
    await gateway.close()


async def test_the_run_token_is_swapped_for_the_real_key_and_usage_counted(
    gateway_and_api: tuple[RunGateway, Scenario],
) -> None:
    gateway, scenario = gateway_and_api
    async with client(gateway) as http:
        answer = await http.post(
            "/v1/messages?beta=true", json=BODY, headers={"x-api-key": gateway.token}
        )
    assert answer.status_code == 200 and "hello" in answer.text
    assert "message_stop" in answer.text, "the stream came through whole"
    [seen] = scenario.messages_requests
    assert credentials_sent(seen.header_lines) == [("x-api-key", REAL_KEY)]
    assert gateway.token not in str(seen.header_lines)
    usage = gateway.usage
    assert (usage.requests, usage.input_tokens, usage.output_tokens) == (1, 1000, 50)
    assert usage.cost_usd == pytest.approx((1000 * 3 + 50 * 15) / 1e6)


def credentials_sent(header_lines: tuple[tuple[str, str], ...]) -> list[tuple[str, str]]:
    """Every credential header upstream received, repeats included."""
    return [(n, v) for n, v in header_lines if n in ("x-api-key", "authorization")]


async def test_an_oauth_login_reaches_upstream_as_its_bearer_and_never_as_the_run_token(
    tmp_path: Path, fake_api: FakeAnthropic, events: Events
) -> None:
    """CLAUDE_CODE_OAUTH_TOKEN instead of ANTHROPIC_API_KEY: the run gets a run token in
    the same variable, the CLI sends it as a Bearer, upstream gets only the real Bearer."""
    scenario = fake_api.scenario([text("hello", input_tokens=10, output_tokens=5)])
    settings = agent_settings(
        "http://127.0.0.1:9",
        tmp_path / "ws",
        anthropic_api_key=None,
        claude_code_oauth_token=REAL_OAUTH,
        anthropic_base_url=scenario.base_url,
    )
    config = gateway_config(settings)
    gateway = RunGateway(
        tmp_path / "gw.sock",
        upstream=config.upstream,
        credential=config.credential,
        allow=DomainAllowlist(),
        on_event=events,
    )
    await gateway.start()
    try:
        env = gateway.sandbox_env(3128)
        assert env["CLAUDE_CODE_OAUTH_TOKEN"] == gateway.token and "ANTHROPIC_API_KEY" not in env
        assert REAL_OAUTH not in str(env)
        async with client(gateway) as http:
            answer = await http.post(
                "/v1/messages?beta=true",
                json=BODY,
                headers={
                    "authorization": f"Bearer {env['CLAUDE_CODE_OAUTH_TOKEN']}",
                    "anthropic-beta": "oauth-2025-04-20",
                },
            )
            # the run token sent as an API key is the run's too: still only the real Bearer
            as_key = await http.post(
                "/v1/messages", json=BODY, headers={"x-api-key": gateway.token}
            )
        assert answer.status_code == 200 and "hello" in answer.text
        assert as_key.status_code == 200
        first, second = scenario.messages_requests
        for seen in (first, second):
            assert credentials_sent(seen.header_lines) == [
                ("authorization", f"Bearer {REAL_OAUTH}")
            ]
            assert gateway.token not in str(seen.header_lines)
        assert first.headers["anthropic-beta"] == "oauth-2025-04-20", "the CLI's beta goes on"
        assert gateway.usage.requests == 2 and gateway.usage.output_tokens == 10
    finally:
        await gateway.close()


async def test_a_wrong_token_and_the_token_after_the_run_are_refused(
    gateway_and_api: tuple[RunGateway, Scenario],
) -> None:
    gateway, scenario = gateway_and_api
    async with client(gateway) as http:
        wrong = await http.post("/v1/messages", json=BODY, headers={"x-api-key": REAL_KEY})
        assert wrong.status_code == 401
        assert wrong.json()["error"]["type"] == "authentication_error"
    await gateway.close()
    with pytest.raises(httpx.TransportError):
        async with client(gateway) as http:
            await http.post("/v1/messages", json=BODY, headers={"x-api-key": gateway.token})
    assert scenario.messages_requests == [], "nothing reached the model API"


async def test_the_real_key_goes_only_to_the_model_endpoints_of_the_upstream(
    gateway_and_api: tuple[RunGateway, Scenario],
) -> None:
    gateway, scenario = gateway_and_api
    reader, writer = await asyncio.open_unix_connection(str(gateway.socket_path))
    # a target that would turn the upstream host into user-info of another authority
    writer.write(
        f"POST @evil.example/v1/messages HTTP/1.1\r\nx-api-key: {gateway.token}\r\n"
        "content-length: 2\r\n\r\n{}".encode()
    )
    await writer.drain()
    head = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    assert head.startswith(b"HTTP/1.1 403")
    async with client(gateway) as http:
        other = await http.post(
            "/v1/organizations/usage", json={}, headers={"x-api-key": gateway.token}
        )
    assert other.status_code == 403
    assert scenario.requests == [], "nothing left the gateway"


async def test_429_is_reported_as_backpressure_with_its_retry_after(
    tmp_path: Path, fake_api: FakeAnthropic, events: Events
) -> None:
    scenario = fake_api.scenario([rate_limited(retry_after=7)])
    gateway = await started(tmp_path, scenario, events)
    try:
        async with client(gateway) as http:
            answer = await http.post(
                "/v1/messages", json=BODY, headers={"x-api-key": gateway.token}
            )
        assert answer.status_code == 429 and answer.headers["retry-after"] == "7"
        assert gateway.backpressure == [(429, 7.0)]
        assert events[0][0] == "api_backpressure" and events[0][2]["retry_after"] == 7.0
    finally:
        await gateway.close()


async def test_529_is_reported_as_backpressure_with_its_retry_after(
    tmp_path: Path, fake_api: FakeAnthropic, events: Events
) -> None:
    scenario = fake_api.scenario(
        [api_error(529, "overloaded_error", "Overloaded", retry_after="12"), overloaded()]
    )
    gateway = await started(tmp_path, scenario, events)
    try:
        async with client(gateway) as http:
            busy = await http.post("/v1/messages", json=BODY, headers={"x-api-key": gateway.token})
            again = await http.post("/v1/messages", json=BODY, headers={"x-api-key": gateway.token})
        assert busy.status_code == 529 and busy.headers["retry-after"] == "12"
        assert busy.json()["error"]["type"] == "overloaded_error", "the answer passes unchanged"
        assert again.status_code == 529
        assert gateway.backpressure == [(529, 12.0), (529, None)]
        assert events.kinds() == ["api_backpressure", "api_backpressure"]
        assert [e[2] for e in events] == [
            {"status": 529, "retry_after": 12.0},
            {"status": 529, "retry_after": None},
        ]
        assert "529, retry after 12s" in events[0][1] and events[0][3] == "warning"
        assert gateway.usage.cost_usd == 0, "an overloaded answer costs nothing"
    finally:
        await gateway.close()


@contextmanager
def hello_server(body: bytes) -> Iterator[int]:
    """A plain HTTP server on the host's loopback answering ``body``; yields its port."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield httpd.server_address[1]
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


async def connect(gateway: RunGateway, target: str) -> tuple[bytes, asyncio.StreamReader, Any]:
    reader, writer = await asyncio.open_unix_connection(str(gateway.socket_path))
    writer.write(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    return head, reader, writer


async def test_an_unlisted_host_is_refused_and_reported_a_listed_one_tunnelled(
    tmp_path: Path, fake_api: FakeAnthropic, events: Events
) -> None:
    with hello_server(b"allowed server says hi") as port:
        allowed = f"127.0.0.1:{port}"
        scenario = fake_api.scenario([text("unused")])
        gateway = await started(
            tmp_path, scenario, events, allow=DomainAllowlist.of([allowed, "*.pypi.org"])
        )
        try:
            head, _, writer = await connect(gateway, "evil.example.com:443")
            writer.close()
            assert head.startswith(b"HTTP/1.1 403")
            assert gateway.refused_hosts == ["evil.example.com"]
            assert events.kinds() == ["egress_refused"] and "evil.example.com" in events[0][1]

            head, reader, writer = await connect(gateway, allowed)
            assert head.startswith(b"HTTP/1.1 200")
            writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            await writer.drain()
            body = await asyncio.wait_for(reader.read(), 5)
            writer.close()
            assert b"allowed server says hi" in body
        finally:
            await gateway.close()


async def test_a_host_refused_again_and_again_is_reported_once_then_counted_at_the_end(
    tmp_path: Path, fake_api: FakeAnthropic, events: Events
) -> None:
    """A package manager retrying a blocked index (uv tries seven times) makes one
    ``egress_refused`` event per host while the run lasts, and one summary with the counts
    when the gateway closes: nothing lost, nothing repeated."""
    gateway = await started(tmp_path, fake_api.scenario([text("unused")]), events)
    try:
        for target in ["pypi.org:443"] * 7 + ["evil.example.com:443", "pypi.org:8443"]:
            head, _, writer = await connect(gateway, target)
            writer.close()
            assert head.startswith(b"HTTP/1.1 403")
        assert events.kinds() == ["egress_refused", "egress_refused"]
        assert [e[2]["host"] for e in events] == ["pypi.org", "evil.example.com"]
        assert gateway.refused == {"pypi.org": 8, "evil.example.com": 1}
        assert gateway.refused_hosts == ["pypi.org", "evil.example.com"]
    finally:
        await gateway.close()
    await gateway.close()  # a second close adds nothing

    assert events.kinds() == ["egress_refused", "egress_refused", "egress_refused_summary"]
    _, message, data, level = events[-1]
    assert data == {"refused": {"pypi.org": 8}} and level == "warning"
    assert "pypi.org (8 times)" in message and "evil.example.com" not in message


async def test_a_run_refused_nothing_twice_gets_no_summary(
    tmp_path: Path, fake_api: FakeAnthropic, events: Events
) -> None:
    gateway = await started(tmp_path, fake_api.scenario([text("unused")]), events)
    try:
        head, _, writer = await connect(gateway, "evil.example.com:443")
        writer.close()
        assert head.startswith(b"HTTP/1.1 403")
    finally:
        await gateway.close()
    assert events.kinds() == ["egress_refused"]


def test_the_allowlist_matches_hosts_wildcards_and_ports() -> None:
    allow = DomainAllowlist.of(["api.anthropic.com", "*.pypi.org", "registry.npmjs.org:8443"])
    assert allow.allows("api.anthropic.com", 443)
    assert allow.allows("files.pypi.org", 443) and not allow.allows("pypi.org.evil.com", 443)
    assert not allow.allows("api.anthropic.com", 80)
    assert allow.allows("registry.npmjs.org", 8443) and not allow.allows("registry.npmjs.org", 443)
    assert not allow.allows("evilpypi.org", 443)
