"""The fake Anthropic API itself, over real HTTP (no CLI): routing, shapes, scripting."""

from __future__ import annotations

import json
import threading
import time

import httpx
import pytest

from tests.fakes.anthropic_api import (
    FakeAnthropic,
    overloaded,
    rate_limited,
    reply,
    stall,
    text,
    write,
)

SYSTEM_CWD = {"role": "system", "content": "# Environment\nPrimary working directory: /srv/ws\n"}


def body(stream: bool, messages: list[dict[str, object]] | None = None) -> dict[str, object]:
    return {"model": "claude-test", "stream": stream, "messages": messages or [SYSTEM_CWD]}


def sse_events(response: httpx.Response) -> list[tuple[str, dict[str, object]]]:
    events = []
    for chunk in response.text.strip().split("\n\n"):
        name, data = chunk.split("\n")
        events.append((name.removeprefix("event: "), json.loads(data.removeprefix("data: "))))
    return events


def test_streaming_turns_in_order_then_the_last_repeats(fake_api: FakeAnthropic) -> None:
    scenario = fake_api.scenario([write("hello.txt", "hi\n"), text("Done.")])
    url = f"{scenario.base_url}/v1/messages?beta=true"
    with httpx.Client() as client:
        first = client.post(url, json=body(True), headers={"x-api-key": "k"})
        second = client.post(url, json=body(True))
        third = client.post(url, json=body(True))

    assert first.headers["content-type"] == "text/event-stream"
    events = sse_events(first)
    assert [name for name, _ in events] == [
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_stop",
        "ping",
        "content_block_start",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    tool_json = events[6][1]["delta"]["partial_json"]  # type: ignore[index]
    # the relative path is resolved against the cwd the request announced
    assert json.loads(tool_json) == {"file_path": "/srv/ws/hello.txt", "content": "hi\n"}
    assert events[8][1]["delta"] == {"stop_reason": "tool_use", "stop_sequence": None}
    assert events[0][1]["message"]["model"] == "claude-test"  # type: ignore[index]
    assert sse_events(second)[-2][1]["delta"]["stop_reason"] == "end_turn"  # type: ignore[index]
    assert sse_events(third)[2][1]["delta"]["text"] == "Done."  # type: ignore[index]

    assert [r.stream for r in scenario.requests] == [True, True, True]
    assert scenario.requests[0].headers["x-api-key"] == "k"
    assert scenario.requests[0].cwd == "/srv/ws"
    assert scenario.requests[0].query == "beta=true"


def test_non_streaming_replies_are_json(fake_api: FakeAnthropic) -> None:
    scenario = fake_api.scenario([reply("Thinking.", text("x").blocks[0], output_tokens=7)])
    response = httpx.post(f"{scenario.base_url}/v1/messages", json=body(False))
    message = response.json()
    assert message["type"] == "message"
    assert [b["text"] for b in message["content"]] == ["Thinking.", "x"]
    assert message["usage"]["output_tokens"] == 7
    assert message["stop_reason"] == "end_turn"


def test_errors_have_the_api_shape_and_headers(fake_api: FakeAnthropic) -> None:
    scenario = fake_api.scenario(
        [rate_limited(retry_after=7, resets_at=1_900_000_000), overloaded()]
    )
    url = f"{scenario.base_url}/v1/messages"
    limited = httpx.post(url, json=body(True))
    busy = httpx.post(url, json=body(True))
    assert limited.status_code == 429
    assert limited.headers["retry-after"] == "7"
    assert limited.headers["anthropic-ratelimit-unified-reset"] == "1900000000"
    assert limited.json()["error"]["type"] == "rate_limit_error"
    assert (busy.status_code, busy.json()["error"]["type"]) == (529, "overloaded_error")


def test_scenarios_are_routed_by_path_prefix(fake_api: FakeAnthropic) -> None:
    one = fake_api.scenario([text("one")])
    two = fake_api.scenario([text("two")], scenario_id="second")
    assert two.base_url.endswith("/s/second")
    httpx.post(f"{two.base_url}/v1/messages", json=body(False))
    assert (len(one.requests), len(two.requests)) == (0, 1)
    unknown = httpx.post(f"{fake_api.url}/s/nope/v1/messages", json=body(False))
    assert unknown.status_code == 404
    assert fake_api.requests == two.requests
    with pytest.raises(ValueError, match="exists"):
        fake_api.scenario([text("again")], scenario_id="second")


def test_a_stall_keeps_the_socket_open_and_the_fallback_answers(fake_api: FakeAnthropic) -> None:
    scenario = fake_api.scenario([stall(fallback=text("Recovered.")), text("Next turn.")])
    url = f"{scenario.base_url}/v1/messages"
    received: list[str] = []
    broken: list[Exception] = []

    def read_stream() -> None:
        try:
            with httpx.stream("POST", url, json=body(True), timeout=10) as response:
                for chunk in response.iter_text():
                    received.append(chunk)
        except httpx.RemoteProtocolError as exc:  # released: the stream ends unfinished
            broken.append(exc)

    reader = threading.Thread(target=read_stream)
    reader.start()
    time.sleep(0.5)
    assert reader.is_alive()  # still waiting for the rest of the stream
    assert "message_start" in "".join(received)
    assert "message_stop" not in "".join(received)

    # the CLI's non-streaming fallback gets the stall's reply; the next call the next turn
    fallback = httpx.post(url, json=body(False)).json()
    assert fallback["content"][0]["text"] == "Recovered."
    assert httpx.post(url, json=body(False)).json()["content"][0]["text"] == "Next turn."

    scenario.release()
    reader.join(timeout=5)
    assert not reader.is_alive()
    assert broken


def test_a_withheld_fallback_never_answers(fake_api: FakeAnthropic) -> None:
    scenario = fake_api.scenario([stall()])
    url = f"{scenario.base_url}/v1/messages"
    with httpx.stream("POST", url, json=body(True), timeout=10) as response:
        assert response.status_code == 200  # headers and the first events arrived
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(url, json=body(False), timeout=0.5)
    scenario.release()
