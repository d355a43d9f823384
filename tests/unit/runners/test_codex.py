"""The codex runner against a fake ``codex`` printing the documented JSONL shapes.

Codex is not installed here; the fake prints what ``codex exec --json`` prints (see the
CLI reference notes, section B.1) and records its argv and cwd.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from claude_cluster.domain.states import ErrorCategory
from claude_cluster.runners.base import EventKind
from claude_cluster.runners.codex import CodexRunner
from tests.unit.runners.helpers import Recorder, make_script, make_spec

THREAD = "0199a213-81c0-7800-8aa1-bbab2a035a53"
STARTED = [{"type": "thread.started", "thread_id": THREAD}, {"type": "turn.started"}]
COMMAND = {"id": "item_1", "type": "command_execution", "command": "bash -lc 'pytest -q'"}
SUCCESSFUL_TURN = [
    *STARTED,
    {"type": "item.started", "item": {**COMMAND, "status": "in_progress"}},
    {
        "type": "item.completed",
        "item": {**COMMAND, "aggregated_output": "1 passed", "exit_code": 0, "status": "completed"},
    },
    {
        "type": "item.completed",
        "item": {
            "id": "item_2",
            "type": "file_change",
            "status": "completed",
            "changes": [{"path": "calc.py", "kind": "update"}],
        },
    },
    {"type": "item.completed", "item": {"id": "item_3", "type": "reasoning", "text": "hm"}},
    {
        "type": "item.completed",
        "item": {"id": "item_4", "type": "agent_message", "text": "Fixed it."},
    },
    {
        "type": "turn.completed",
        "usage": {
            "input_tokens": 17232,
            "cached_input_tokens": 12928,
            "cache_write_input_tokens": 0,
            "output_tokens": 6,
            "reasoning_output_tokens": 0,
        },
    },
]


def fake_codex(
    tmp_path: Path, events: list[object], exit_code: int = 0, then: str = ""
) -> CodexRunner:
    """A codex that records its argv, prints ``events`` as JSONL, runs ``then``, exits."""
    script = make_script(
        tmp_path,
        "codex",
        f"""
        import json, os, sys, time
        with open({str(tmp_path / "argv.json")!r}, "w") as f:
            json.dump({{"argv": sys.argv[1:], "cwd": os.getcwd()}}, f)
        for event in json.loads({json.dumps(events)!r}):
            print(json.dumps(event), flush=True)
        {then}
        sys.exit({exit_code})
        """,
    )
    return CodexRunner(cli_path=str(script), kill_grace=1.0)


async def test_a_successful_turn(tmp_path: Path) -> None:
    runner = fake_codex(tmp_path, SUCCESSFUL_TURN)
    events = Recorder()
    outcome = await runner.run(make_spec(tmp_path, model="gpt-5-codex"), events)

    assert outcome.succeeded, outcome.message
    assert outcome.message == "Fixed it."
    assert outcome.session_id == THREAD
    assert (outcome.input_tokens, outcome.cache_read_tokens, outcome.output_tokens) == (
        17232,
        12928,
        6,
    )
    assert outcome.num_turns == 1 and outcome.cost_usd == 0  # codex reports no cost
    assert events.kinds() == [
        EventKind.SESSION_STARTED,
        EventKind.TOOL_USE,
        EventKind.TOOL_RESULT,
        EventKind.TOOL_USE,
        EventKind.SYSTEM,
        EventKind.ASSISTANT_TEXT,
        EventKind.USAGE,
    ]
    assert events.of(EventKind.TOOL_RESULT)[0].message == "1 passed"
    assert events.of(EventKind.TOOL_USE)[1].message == "update calc.py"
    recorded = json.loads((tmp_path / "argv.json").read_text())
    assert recorded["argv"] == [
        "exec",
        "--json",
        "--full-auto",
        "--skip-git-repo-check",
        "--model",
        "gpt-5-codex",
        "--",
        "Fix the bug.",
    ]
    assert recorded["cwd"] == str(tmp_path / "worktree")


async def test_resume_passes_the_thread_id(tmp_path: Path) -> None:
    runner = fake_codex(tmp_path, SUCCESSFUL_TURN)
    await runner.run(make_spec(tmp_path, prompt="-x again", resume_session_id=THREAD), Recorder())
    argv = json.loads((tmp_path / "argv.json").read_text())["argv"]
    assert argv[-4:] == ["resume", THREAD, "--", "-x again"]


@pytest.mark.parametrize(
    ("failure", "category"),
    [
        (
            {
                "type": "turn.failed",
                "error": {"message": "unexpected status 429 Too Many Requests"},
            },
            ErrorCategory.RATE_LIMITED,
        ),
        (
            {"type": "error", "message": "unexpected status 401 Unauthorized: invalid api key"},
            ErrorCategory.AUTH_ERROR,
        ),
        (
            {
                "type": "turn.failed",
                "error": {"message": "stream disconnected: 503 Service Unavailable"},
            },
            ErrorCategory.OVERLOADED,
        ),
        (
            {"type": "turn.failed", "error": {"message": "sandbox denied the command"}},
            ErrorCategory.EXECUTION_ERROR,
        ),
    ],
)
async def test_failures_are_classified_from_their_message(
    tmp_path: Path, failure: dict[str, object], category: ErrorCategory
) -> None:
    events = Recorder()
    outcome = await fake_codex(tmp_path, [*STARTED, failure], exit_code=1).run(
        make_spec(tmp_path), events
    )
    assert outcome.error_category is category
    assert outcome.exit_code == 1
    assert events.of(EventKind.API_ERROR)


async def test_an_error_followed_by_a_completed_turn_is_a_success(tmp_path: Path) -> None:
    reconnect = {"type": "error", "message": "Reconnecting... 1/5"}
    outcome = await fake_codex(tmp_path, [*STARTED, reconnect, *SUCCESSFUL_TURN[2:]]).run(
        make_spec(tmp_path), Recorder()
    )
    assert outcome.succeeded, outcome.message


async def test_a_hang_after_the_turn_is_cut_short(tmp_path: Path) -> None:
    runner = fake_codex(tmp_path, SUCCESSFUL_TURN, then="time.sleep(60)")
    events = Recorder()
    outcome = await runner.run(make_spec(tmp_path, result_grace=0.3), events)
    assert outcome.succeeded
    assert events.of(EventKind.WATCHDOG)[0].data["reason"] == "after_terminal"


async def test_exiting_without_a_turn_is_a_crash(tmp_path: Path) -> None:
    outcome = await fake_codex(tmp_path, STARTED).run(make_spec(tmp_path), Recorder())
    assert outcome.error_category is ErrorCategory.CRASH


async def test_a_silent_codex_stalls(tmp_path: Path) -> None:
    runner = fake_codex(tmp_path, STARTED, then="time.sleep(60)")
    outcome = await runner.run(make_spec(tmp_path, idle_timeout=0.5), Recorder())
    assert outcome.error_category is ErrorCategory.STALL
    assert outcome.session_id == THREAD


async def test_a_missing_codex_is_a_runner_error(tmp_path: Path) -> None:
    runner = CodexRunner(cli_path=str(tmp_path / "no-codex"))
    outcome = await runner.run(make_spec(tmp_path), Recorder())
    assert outcome.error_category is ErrorCategory.RUNNER_ERROR
