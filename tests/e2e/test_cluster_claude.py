"""The whole cluster doing real work: coordinator + two agent daemons (real processes) with
the real Claude Code CLI against the fake Anthropic API, on a local repository whose
``test_calc.py`` fails until ``calc.py`` is fixed."""

from __future__ import annotations

import os
import signal
import time

import pytest

from tests.e2e.conftest import Cluster
from tests.fakes.anthropic_api import FakeAnthropic, edit, stall, text, tool_use
from tests.support.agents import CALC_FIXED, branch_file, branches
from tests.support.processes import children_of, kill_groups

pytestmark = [pytest.mark.claude, pytest.mark.timeout(150)]

TITLE = "add() subtracts instead of adding"
DESCRIPTION = "calc.add(2, 3) returns -1; test_calc.py fails."


def read_calc() -> object:
    return tool_use("Read", {"file_path": "calc.py"}, say="Let me look at calc.py.")


def test_the_branch_holds_the_fix_and_the_run_reports_real_figures(
    cluster: Cluster, fake_api: FakeAnthropic
) -> None:
    scenario = fake_api.scenario(
        [read_calc(), edit("calc.py", "a - b", "a + b"), text("Fixed add().")]  # type: ignore[list-item]
    )
    cluster.start_agent("agent-a", scenario)
    cluster.start_agent("agent-b", scenario)

    task = cluster.submit(1, TITLE, DESCRIPTION)
    done = cluster.wait_task(task["id"], {"completed", "failed", "review"})

    assert done["status"] == "completed", cluster.runs(task["id"])
    [run] = cluster.runs(task["id"])
    assert run["status"] == "succeeded"
    assert (run["tests_passed"], run["tests_failed"], run["tests_ok"]) == (2, 0, True)
    assert run["cost_usd"] > 0 and run["input_tokens"] == 300 and run["output_tokens"] > 0
    assert run["num_turns"] == 3 and run["session_id"]
    assert branch_file(cluster.origin, run["branch"], "calc.py") == CALC_FIXED
    assert sorted(branches(cluster.origin)) == sorted(["main", run["branch"]])
    prompt = scenario.messages_requests[0].texts()
    assert any("# GitHub Issue Resolution" in t and TITLE in t for t in prompt)


def test_a_fix_round_resumes_the_session_with_the_failing_output(
    cluster: Cluster, fake_api: FakeAnthropic
) -> None:
    scenario = fake_api.scenario(
        [
            read_calc(),
            edit("calc.py", "a - b", "a + b if a else 1"),  # still wrong for add(0, 0)
            text("Fixed, I think."),
            read_calc(),
            edit("calc.py", "a + b if a else 1", "a + b"),
            text("Now add(0, 0) works too."),
        ]  # type: ignore[list-item]
    )
    cluster.start_agent("agent-a", scenario)
    cluster.start_agent("agent-b", scenario)

    task = cluster.submit(2, TITLE, DESCRIPTION)
    done = cluster.wait_task(task["id"], {"completed", "failed", "review"})

    assert done["status"] == "completed", cluster.runs(task["id"])
    [run] = cluster.runs(task["id"])
    assert run["fix_rounds"] == 1 and run["tests_passed"] == 2 and run["tests_failed"] == 0
    assert run["num_turns"] == 6
    sessions = {r.session_id for r in scenario.messages_requests}
    assert sessions == {run["session_id"]}, "the fix round resumed the same session"
    fix_turn = scenario.messages_requests[3].texts()
    assert any("fix round 1 of 2" in t and "test_add_zero" in t for t in fix_turn)
    assert branch_file(cluster.origin, run["branch"], "calc.py") == CALC_FIXED


def test_an_agent_killed_mid_run_hands_the_task_to_the_other(
    cluster: Cluster, fake_api: FakeAnthropic
) -> None:
    stuck = fake_api.scenario([read_calc(), stall()])  # type: ignore[list-item]
    working = fake_api.scenario(
        [read_calc(), edit("calc.py", "a - b", "a + b"), text("Fixed add().")]  # type: ignore[list-item]
    )
    doomed = cluster.start_agent("agent-a", stuck)
    task = cluster.submit(3, TITLE, DESCRIPTION)

    deadline = time.monotonic() + 60
    while len(stuck.messages_requests) < 2:  # the second turn is the one that stalls
        assert time.monotonic() < deadline, doomed.output()[-3000:]
        time.sleep(0.1)
    cluster.start_agent("agent-b", working)
    orphans = children_of(doomed.proc.pid)  # the CLI, in its own process group
    assert orphans, "the agent runs the CLI as a child"
    os.kill(doomed.proc.pid, signal.SIGKILL)
    try:
        done = cluster.wait_task(task["id"], {"completed", "failed", "review"}, timeout=90)
    finally:
        kill_groups(orphans)  # kill -9 leaves them to the service manager; here: to us
        stuck.release()

    assert done["status"] == "completed", cluster.runs(task["id"])
    runs = cluster.runs(task["id"])
    assert [(r["agent_id"], r["status"]) for r in runs] == [
        ("agent-a", "lost"),
        ("agent-b", "succeeded"),
    ]
    assert [r["attempt"] for r in runs] == [1, 2]
    assert runs[1]["tests_passed"] == 2 and runs[1]["cost_usd"] > 0
    assert sorted(branches(cluster.origin)) == sorted(["main", runs[1]["branch"]])
    assert branch_file(cluster.origin, runs[1]["branch"], "calc.py") == CALC_FIXED
