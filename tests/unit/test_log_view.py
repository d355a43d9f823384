"""``task logs`` draws the dashboard's log items on a terminal: folded tool input, result
previews, and model output shown as text (never as Rich markup)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from rich.console import Console

from claude_cluster.cli.log_view import render
from claude_cluster.run_log import log_item

EVENTS = [
    {"id": 1, "run_id": 3, "kind": "assistant_text", "timestamp": "2026-12-04T10:00:01+00:00",
     "message": "I will [bold red]fix[/bold red] it"},
    {"id": 2, "run_id": 3, "kind": "tool_use", "timestamp": "2026-12-04T10:00:02+00:00",
     "message": "Bash", "details": {"name": "Bash", "input": {"command": "pytest -q"}}},
    {"id": 3, "run_id": 3, "kind": "tool_result", "timestamp": "2026-12-04T10:00:03+00:00",
     "message": "\n".join(f"line {i}" for i in range(30))},
]  # fmt: skip


def _text(full: bool) -> str:
    console = Console(record=True, width=100, color_system=None)
    for event in EVENTS:
        console.print(render(log_item(event), full=full))
    return console.export_text()


def test_previews_and_folded_inputs() -> None:
    text = _text(full=False)
    assert "10:00:01 run 3  assistant" in text
    assert "I will [bold red]fix[/bold red] it" in text  # model text is not markup
    assert "▸ Bash: pytest -q" in text and '"command"' not in text
    assert "line 9" in text and "line 29" not in text
    assert "more characters (--full shows them)" in text


def test_full_shows_everything() -> None:
    text = _text(full=True)
    assert '"command": "pytest -q"' in text and "line 29" in text
    assert "--full shows" not in text


def _line(kind: str, details: object) -> str:
    console = Console(record=True, width=100, color_system=None)
    event = {"id": 9, "run_id": 3, "kind": kind, "timestamp": "2026-12-04T10:00:09+00:00",
             "message": "agent round so far", "details": details}  # fmt: skip
    console.print(render(log_item(event)))
    return console.export_text().rstrip("\n")


def test_the_round_in_progress_reads_as_a_sentence() -> None:
    details = {"fix_round": 1, "num_turns": 2, "cost_usd": 0.04, "estimate": True}
    line = _line("round_progress", details)
    assert line == "10:00:09 run 3  agent round in progress: 2 turns, ~$0.0400 so far"
    exact = {**details, "num_turns": 1, "estimate": False}  # the CLI's own figure
    assert _line("round_progress", exact).endswith("in progress: 1 turn, $0.0400 so far")


@pytest.mark.parametrize(
    ("details", "shown"),
    [
        ({"num_turns": 4, "cost_usd": 0.12}, "4 turns, ~$0.1200 so far"),  # no estimate flag
        ({"num_turns": 4}, "4 turns so far"),
        ({"cost_usd": 0.12, "estimate": False}, "$0.1200 so far"),
        ({"num_turns": "4", "cost_usd": float("nan")}, "no figures yet"),
        ({}, "no figures yet"),
        (["not", "a", "mapping"], "no figures yet"),
    ],
)
def test_an_older_round_report_with_missing_figures(details: object, shown: str) -> None:
    assert _line("round_progress", details) == f"10:00:09 run 3  agent round in progress: {shown}"


def test_shell_completion_is_installable() -> None:
    shown = subprocess.run(
        [sys.executable, "-m", "claude_cluster", "--show-completion", "bash"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert shown.returncode == 0, shown.stderr[-3000:]
    assert "_CLAUDE_CLUSTER_COMPLETE" in shown.stdout
