"""Parsing stream-json lines recorded from the real CLI (tests/fixtures/stream-json)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from claude_cluster.runners.base import EventKind
from claude_cluster.runners.claude_stream import (
    ApiErrorNotice,
    ApiRetry,
    AssistantText,
    MessageUsage,
    PermissionDenied,
    PlainOutput,
    RateLimit,
    Result,
    SessionInit,
    StreamEvent,
    StreamSummary,
    SystemNotice,
    ToolCall,
    ToolResult,
    parse_line,
    runner_event,
)

FIXTURES = Path(__file__).parents[2] / "fixtures" / "stream-json"


def events_of(name: str) -> list[StreamEvent]:
    lines = (FIXTURES / f"{name}.jsonl").read_text().splitlines()
    return [event for line in lines for event in parse_line(line)]


def summary_of(name: str) -> StreamSummary:
    summary = StreamSummary()
    for event in events_of(name):
        summary.add(event)
    return summary


def test_a_write_edit_run_in_order() -> None:
    events = [e for e in events_of("write-edit") if not isinstance(e, MessageUsage)]
    assert [type(e) for e in events] == [
        SessionInit,
        AssistantText,
        ToolCall,
        ToolResult,
        AssistantText,
        ToolCall,
        ToolResult,
        AssistantText,
        Result,
    ]
    init = events[0]
    assert isinstance(init, SessionInit)
    assert init.cwd == "/work/repo"
    assert init.permission_mode == "bypassPermissions"
    assert "Write" in init.tools
    assert init.cli_version and init.session_id
    write = events[2]
    assert isinstance(write, ToolCall)
    assert (write.name, write.input["file_path"]) == ("Write", "/work/repo/hello.txt")
    edit_result = events[6]
    assert isinstance(edit_result, ToolResult)
    assert "updated successfully" in edit_result.content and not edit_result.is_error


def test_the_result_line_carries_cost_usage_and_session() -> None:
    summary = summary_of("write-edit")
    result = summary.result
    assert result is not None
    assert (result.subtype, result.is_error, result.terminal_reason) == (
        "success",
        False,
        "completed",
    )
    assert result.cost_usd == pytest.approx(0.0024)
    assert (result.input_tokens, result.output_tokens, result.num_turns) == (300, 60, 3)
    assert (result.cache_read_tokens, result.cache_creation_tokens) == (0, 0)
    assert result.text == "Done."
    assert summary.session_id == result.session_id


def test_an_api_failure_is_a_synthetic_message_and_an_error_result() -> None:
    events = events_of("rate-limited")
    notice = next(e for e in events if isinstance(e, ApiErrorNotice))
    assert notice.error == "rate_limit"
    assert "429" in notice.text
    result = events[-1]
    assert isinstance(result, Result)
    # the CLI keeps subtype "success" for API failures: is_error and the status tell
    assert (result.subtype, result.is_error, result.api_error_status) == ("success", True, 429)
    assert not any(isinstance(e, AssistantText) for e in events)


def test_retries_rate_limits_and_denials() -> None:
    retry = next(e for e in events_of("rate-limit-once") if isinstance(e, ApiRetry))
    assert (retry.attempt, retry.error_status, retry.error) == (1, 429, "rate_limit")
    assert retry.retry_delay_ms and retry.retry_delay_ms >= 1000

    limit = next(e for e in events_of("rate-limited-oauth") if isinstance(e, RateLimit))
    assert (limit.status, limit.limit_type) == ("rejected", "five_hour")
    assert limit.resets_at and limit.resets_at > 1_700_000_000

    events = events_of("bash-denied")
    denied = next(e for e in events if isinstance(e, PermissionDenied))
    assert denied.tool_name == "Bash"
    result = events[-1]
    assert isinstance(result, Result)
    assert [d["tool_name"] for d in result.permission_denials] == ["Bash"]


def test_max_turns_and_budget_results() -> None:
    max_turns = summary_of("max-turns").result
    assert max_turns and max_turns.subtype == "error_max_turns" and max_turns.text is None
    assert max_turns.description == "Reached maximum number of turns (1)"
    budget = summary_of("budget").result
    assert budget and budget.subtype == "error_max_budget_usd"
    assert budget.cost_usd == pytest.approx(1.8)


@pytest.mark.parametrize(
    "line",
    [
        '{"type":"stream_event","event":{"type":"content_block_delta"}}',
        '{"type":"some_future_type","x":1}',
        '{"no_type":true}',
    ],
)
def test_unknown_line_types_are_ignored(line: str) -> None:
    assert parse_line(line) == []


@pytest.mark.parametrize("line", ["plain text", "[1, 2]", '"a string"', "{broken"])
def test_non_object_lines_are_kept_as_plain_output(line: str) -> None:
    assert parse_line(line) == [PlainOutput(line)]


def test_unknown_fields_and_blocks_are_ignored() -> None:
    line = json.dumps(
        {
            "type": "assistant",
            "brand_new_field": {"x": 1},
            "message": {
                "id": "msg_1",
                "content": [
                    {"type": "thinking", "thinking": "hmm"},
                    {"type": "text", "text": "Hello", "citations": []},
                    {"type": "tool_use", "id": "t1", "name": "Bash", "input": {"command": "ls"}},
                    {"type": "mystery"},
                ],
            },
        }
    )
    assert parse_line(line) == [
        AssistantText("Hello", "msg_1"),
        ToolCall("t1", "Bash", {"command": "ls"}),
    ]


def test_missing_and_mistyped_fields_get_defaults() -> None:
    (result,) = parse_line('{"type":"result","is_error":"yes","num_turns":"2","usage":null}')
    assert isinstance(result, Result)
    assert (result.is_error, result.num_turns, result.cost_usd, result.input_tokens) == (
        False,
        0,
        0.0,
        0,
    )
    assert result.session_id is None and result.permission_denials == ()


def test_tool_result_content_blocks_are_joined() -> None:
    line = json.dumps(
        {
            "type": "user",
            "message": {
                "content": [
                    {
                        "type": "tool_result",
                        "tool_use_id": "t1",
                        "is_error": True,
                        "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
                    }
                ]
            },
        }
    )
    assert parse_line(line) == [ToolResult("t1", "a\nb", True)]


def test_other_system_lines_become_notices() -> None:
    (notice,) = parse_line('{"type":"system","subtype":"compact_boundary","trigger":"auto"}')
    assert notice == SystemNotice("compact_boundary", {"trigger": "auto"})
    assert runner_event(notice).level == "debug"


def test_runner_events_clip_long_texts() -> None:
    event = runner_event(ToolCall("t1", "Write", {"file_path": "a", "content": "x" * 10_000}))
    assert event.kind == EventKind.TOOL_USE
    assert len(event.data["input"]["content"]) < 4100
    assert event.data["input"]["file_path"] == "a"


def test_every_recorded_line_maps_to_a_runner_event() -> None:
    for path in sorted(FIXTURES.glob("*.jsonl")):
        for event in events_of(path.stem):
            converted = runner_event(event)
            assert converted.kind in set(EventKind)
            json.dumps(converted.data)  # events travel as JSON to the coordinator


def test_assistant_lines_carry_their_messages_usage_for_the_round_in_progress() -> None:
    usages = [e for e in events_of("write-edit") if isinstance(e, MessageUsage)]
    # one line per content block, each repeating its message's id and usage so far
    assert len(usages) == 5
    assert len({u.message_id for u in usages}) == 3  # the result's num_turns
    first = usages[0]
    assert first.model == "claude-opus-5-5"
    assert first.usage == {
        "input_tokens": 100,
        "output_tokens": 1,  # as of the message's start: the result has the final count
        "cache_read_input_tokens": 0,
        "cache_creation_input_tokens": 0,
    }
    event = runner_event(first)
    assert event.kind == EventKind.MODEL_USAGE == "model_usage"
    assert event.data["message_id"] == first.message_id and event.data["input_tokens"] == 100


def test_a_usage_of_strange_numbers_counts_nothing_negative() -> None:
    line = {
        "type": "assistant",
        "message": {
            "id": "m1",
            "model": "claude-sonnet-4-5",
            "content": [{"type": "text", "text": "hi"}],
            "usage": {"input_tokens": -5, "output_tokens": "many", "cache_read_input_tokens": 7},
        },
    }
    (text, usage) = parse_line(json.dumps(line))
    assert isinstance(text, AssistantText) and isinstance(usage, MessageUsage)
    assert usage.usage == {
        "input_tokens": 0,
        "output_tokens": 0,
        "cache_read_input_tokens": 7,
        "cache_creation_input_tokens": 0,
    }
    no_usage = {**line, "message": {**line["message"], "usage": {}}}  # type: ignore[dict-item]
    assert [type(e) for e in parse_line(json.dumps(no_usage))] == [AssistantText]
