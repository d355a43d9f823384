"""The command runner: any executable, never a shell, task in the environment."""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import sys
from pathlib import Path

import pytest

from claude_cluster.domain.states import ErrorCategory
from claude_cluster.errors import ConfigError
from claude_cluster.runners.base import EventKind, get_runner
from claude_cluster.runners.command import CommandRunner
from tests.unit.runners.helpers import Recorder, make_script, make_spec

RESULT = {
    "type": "result",
    "subtype": "success",
    "is_error": False,
    "result": "did it",
    "total_cost_usd": 0.5,
    "num_turns": 3,
    "session_id": "sess-1",
    "usage": {"input_tokens": 10, "output_tokens": 5, "cache_read_input_tokens": 2},
}


def python_command(code: str, *args: str) -> str:
    return shlex.join([sys.executable, "-c", code, *args])


async def test_the_task_is_in_the_environment_and_the_result_line_reports_cost(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GITHUB_TOKEN", "ghp_not_for_children")
    script = make_script(
        tmp_path,
        "agent",
        f"""
        import json, os
        print("working on it")
        keys = ["CLAUDE_CLUSTER_PROMPT", "CLAUDE_CLUSTER_MAX_TURNS", "TASK_ID"]
        keys += ["GITHUB_TOKEN", "HOME"]
        seen = {{k: os.environ.get(k) for k in keys}}
        print(json.dumps({{"type": "env", **seen, "cwd": os.getcwd()}}))
        print(json.dumps({RESULT!r}))
        """,
    )
    spec = make_spec(tmp_path, prompt="Fix #7", max_turns=4, env={"TASK_ID": "7"})
    events = Recorder()
    outcome = await CommandRunner(str(script)).run(spec, events)

    assert outcome.succeeded, outcome.message
    assert (outcome.cost_usd, outcome.num_turns, outcome.session_id) == (0.5, 3, "sess-1")
    assert (outcome.input_tokens, outcome.output_tokens, outcome.cache_read_tokens) == (10, 5, 2)
    assert outcome.message == "did it"
    assert events.kinds() == [EventKind.OUTPUT, EventKind.OUTPUT, EventKind.RESULT]
    seen = json.loads(events.events[1].message)
    assert seen == {
        "type": "env",
        "CLAUDE_CLUSTER_PROMPT": "Fix #7",
        "CLAUDE_CLUSTER_MAX_TURNS": "4",
        "TASK_ID": "7",
        "GITHUB_TOKEN": None,
        "HOME": str(tmp_path / "home"),
        "cwd": str(spec.cwd),
    }


async def test_never_through_a_shell(tmp_path: Path) -> None:
    command = python_command("import sys; print(sys.argv[1:])", "$HOME", ";", "rm -rf x", "*")
    events = Recorder()
    outcome = await CommandRunner(command).run(make_spec(tmp_path), events)
    assert outcome.succeeded
    assert outcome.message == "['$HOME', ';', 'rm -rf x', '*']"


async def test_a_failing_command(tmp_path: Path) -> None:
    command = python_command("import sys; sys.stderr.write('tests failed\\n'); sys.exit(2)")
    events = Recorder()
    outcome = await CommandRunner(command).run(make_spec(tmp_path), events)
    assert outcome.error_category is ErrorCategory.EXECUTION_ERROR
    assert outcome.exit_code == 2
    assert "tests failed" in outcome.message
    assert events.of(EventKind.OUTPUT)[0].data == {"stream": "stderr"}


@pytest.mark.parametrize(
    ("limits", "category"),
    [
        ({"idle_timeout": 0.3}, ErrorCategory.STALL),
        ({"wall_timeout": 0.5, "idle_timeout": 5.0}, ErrorCategory.TIMEOUT),
    ],
)
async def test_watchdogs(tmp_path: Path, limits: dict[str, float], category: ErrorCategory) -> None:
    command = python_command("import time\nwhile True: print('.', flush=True); time.sleep(0.1)")
    if category is ErrorCategory.STALL:
        command = python_command("import time; time.sleep(30)")
    events = Recorder()
    outcome = await CommandRunner(command, kill_grace=0.5).run(
        make_spec(tmp_path, **limits), events
    )
    assert outcome.error_category is category
    assert events.of(EventKind.WATCHDOG)


async def test_cancelling_stops_the_command(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    command = python_command(
        "import os, sys, time; open(sys.argv[1], 'w').write(str(os.getpid())); time.sleep(60)",
        str(pid_file),
    )
    task = asyncio.create_task(CommandRunner(command).run(make_spec(tmp_path), Recorder()))
    while not pid_file.exists() or not pid_file.read_text():
        await asyncio.sleep(0.02)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    with pytest.raises(ProcessLookupError):
        os.kill(int(pid_file.read_text()), 0)


async def test_a_missing_executable_is_a_runner_error(tmp_path: Path) -> None:
    outcome = await CommandRunner("no-such-agent --go").run(make_spec(tmp_path), Recorder())
    assert outcome.error_category is ErrorCategory.RUNNER_ERROR
    assert "no-such-agent" in outcome.message


@pytest.mark.parametrize("command", ["", "   ", "agent 'unterminated"])
def test_a_bad_command_is_a_config_error(command: str) -> None:
    with pytest.raises(ConfigError, match="AGENT_COMMAND"):
        get_runner("command", command=command)
