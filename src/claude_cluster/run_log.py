"""A task's event log as people read it: one :class:`LogItem` per stored event, and a
:class:`RunTally` per run (messages, tool calls, turns, fix rounds, cost so far).

"So far" (:class:`RoundSums`) is the same arithmetic for the dashboard, the task page and
the issue's progress comment: the turns and dollars of the run's finished agent rounds
(``runner_finished``) plus those of the round in progress (its newest ``round_progress``,
an estimate; ignored once that round has finished, whose own figure replaces it).

The dashboard's live view and ``claude-cluster task logs`` both render these, so the two
show the same structure: assistant text, tool calls collapsed with their input, tool
results cut to a preview with the rest behind "show more", test output, fix rounds, cost.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

#: a tool result or test output longer than this shows a preview and "show more"
PREVIEW_CHARS = 600
PREVIEW_LINES = 10

#: the kind of event → how it is drawn (the CSS class and the CLI's style)
_STYLES = {
    "assistant_text": "assistant",
    "tool_use": "tool",
    "tool_result": "result",
    "tests": "tests",
    "phase": "phase",
    "runner_finished": "cost",
    "result": "cost",
    "usage": "cost",
    "round_progress": "cost",
    "delivered": "delivered",
    "pull_request": "delivered",
}


@dataclass(frozen=True)
class LogItem:
    id: int
    run_id: int | None
    kind: str
    #: assistant, tool, result, tests, phase, fix, cost, delivered, error, notice
    style: str
    #: the one line shown always
    title: str
    #: the text shown below it (a preview when ``more`` is set)
    body: str = ""
    #: the rest of a long text, behind "show more"
    more: str = ""
    #: a tool call's input, collapsed
    detail: str = ""
    level: str = "info"
    timestamp: str = ""
    #: dollars this event adds to the run's cost so far
    cost_usd: float = 0.0
    #: model turns this event adds (an agent round that finished)
    turns: int = 0
    #: the agent round (0: the first turn, then fix rounds) a ``runner_finished`` or
    #: ``round_progress`` is about
    fix_round: int | None = None
    #: a ``round_progress``: the turns and dollars of its round so far (they replace the
    #: round's earlier progress, and the round's ``runner_finished`` replaces them)
    live_turns: int = 0
    live_cost_usd: float = 0.0
    #: the live dollars are the agent's estimate from the tokens, not the CLI's figure
    estimate: bool = False


def _preview(text: str) -> tuple[str, str]:
    lines = text.splitlines()
    if len(text) <= PREVIEW_CHARS and len(lines) <= PREVIEW_LINES:
        return text, ""
    cut = min(PREVIEW_CHARS, len("\n".join(lines[:PREVIEW_LINES])))
    return text[:cut], text[cut:]


def _tool_summary(name: str, tool_input: Any) -> str:
    """``Bash: pytest -q`` / ``Edit: src/app.py``: the argument people look for first."""
    if isinstance(tool_input, Mapping):
        for key in ("command", "file_path", "path", "pattern", "url", "description"):
            value = tool_input.get(key)
            if isinstance(value, str) and value:
                first = value.splitlines()[0] if value.splitlines() else value
                return f"{name}: {first[:120]}"
    return name


def log_item(event: Mapping[str, Any]) -> LogItem:
    """The readable form of one event (as stored: ``details``, or as sent: ``data``)."""
    kind = str(event.get("kind", ""))
    details = event.get("details") or event.get("data") or {}
    if not isinstance(details, Mapping):
        details = {}
    message = str(event.get("message") or "")
    level = str(event.get("level") or "info")
    timestamp = event.get("timestamp") or event.get("ts") or ""
    base: dict[str, Any] = {
        "id": int(event.get("id") or 0),
        "run_id": event.get("run_id"),
        "kind": kind,
        "level": level,
        "timestamp": timestamp if isinstance(timestamp, str) else timestamp.isoformat(),
    }
    style = _STYLES.get(kind, "error" if level == "error" else "notice")
    if kind == "assistant_text":
        return LogItem(**base, style=style, title="assistant", body=message)
    if kind == "tool_use":
        name = str(details.get("name") or message or "tool")
        tool_input = details.get("input", {})
        return LogItem(
            **base,
            style=style,
            title=_tool_summary(name, tool_input),
            detail=json.dumps(tool_input, indent=2, ensure_ascii=False, default=str),
        )
    if kind == "tool_result":
        body, more = _preview(message)
        title = "tool error" if details.get("is_error") else "tool result"
        return LogItem(**base, style=style, title=title, body=body, more=more)
    if kind == "tests":
        body, more = _preview(str(details.get("output_tail") or ""))
        command = details.get("command")
        title = f"tests: {message}" + (f" ({command})" if command else "")
        return LogItem(**base, style=style, title=title, body=body, more=more)
    if kind == "phase" and details.get("phase") == "fix":
        return LogItem(**base, style="fix", title=message)
    if kind == "round_progress":
        live = round_progress_of(details)
        approx = "~" if details.get("estimate") is not False else ""
        if live is None:  # an older stored report may lack a figure: show what it has
            turns, cost = details.get("num_turns"), _number(details.get("cost_usd"))
            parts = [_turns(turns)] if type(turns) is int and 0 <= turns < 10**9 else []
            parts += [f"{approx}${cost:.4f}"] if cost is not None else []
            figures = f"{', '.join(parts)} so far" if parts else "no figures yet"
            return LogItem(**base, style="notice", title=f"agent round in progress: {figures}")
        fix_round, live_turns, live_cost, estimate = live
        return LogItem(
            **base,
            style=style,
            title=(
                f"agent round in progress: {_turns(live_turns)}, {approx}${live_cost:.4f} so far"
            ),
            fix_round=fix_round,
            live_turns=live_turns,
            live_cost_usd=live_cost,
            estimate=estimate,
        )
    if kind in ("runner_finished", "usage"):
        cost = details.get("cost_usd")
        turns = details.get("num_turns")
        parts = [message] if message and kind == "usage" else []
        if isinstance(cost, int | float):
            parts.append(f"${cost:.4f}")
        if turns:
            parts.append(f"{turns} turns")
        title = ("agent round finished: " if kind == "runner_finished" else "usage: ") + (
            ", ".join(parts) or "no figures"
        )
        return LogItem(
            **base,
            style=style,
            title=title,
            cost_usd=float(cost) if isinstance(cost, int | float) and kind != "usage" else 0.0,
            turns=int(turns) if isinstance(turns, int) and kind == "runner_finished" else 0,
            fix_round=_round_of(details) if kind == "runner_finished" else None,
        )
    name = kind.replace("_", " ")
    if "\n" not in message and len(message) <= 200:  # a notice reads as one line
        return LogItem(**base, style=style, title=f"{name}: {message}" if message else name)
    body, more = _preview(message)
    return LogItem(**base, style=style, title=name, body=body, more=more)


def _turns(turns: int) -> str:
    return f"{turns} turn{'' if turns == 1 else 's'}"


def _round_of(details: Mapping[str, Any]) -> int:
    fix_round = details.get("fix_round")
    return fix_round if type(fix_round) is int and fix_round >= 0 else 0


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if 0 <= number < 1e9 else None  # also refuses NaN and infinity


def round_progress_of(details: Mapping[str, Any]) -> tuple[int, int, float, bool] | None:
    """(round, turns, dollars, estimated) of a ``round_progress`` event; None when its
    figures are not non-negative numbers (the API refuses those; stored events are read
    the same careful way)."""
    turns, cost = details.get("num_turns"), _number(details.get("cost_usd"))
    if type(turns) is not int or not 0 <= turns < 10**9 or cost is None:
        return None
    return _round_of(details), turns, cost, details.get("estimate") is not False


@dataclass
class RoundSums:
    """A run's turns and dollars so far. Feed its ``runner_finished`` and
    ``round_progress`` events to :meth:`add`, oldest first."""

    finished_turns: int = 0
    finished_cost_usd: float = 0.0
    #: rounds whose ``runner_finished`` has been seen
    finished: set[int] = field(default_factory=set)
    #: the round in progress: (round, turns, dollars, estimated), from its newest report
    live: tuple[int, int, float, bool] | None = None
    #: any figure was added (a run without one has nothing "so far")
    seen: bool = False

    def add(self, kind: str, details: Mapping[str, Any]) -> None:
        if kind == "runner_finished":
            self.seen = True
            cost, turns = _number(details.get("cost_usd")), details.get("num_turns")
            self.finished_cost_usd += cost or 0.0
            if type(turns) is int and 0 < turns < 10**9:
                self.finished_turns += turns
            fix_round = _round_of(details)
            self.finished.add(fix_round)
            if self.live is not None and self.live[0] == fix_round:
                self.live = None  # the round's own figure replaces the estimate
        elif kind == "round_progress":
            live = round_progress_of(details)
            if live is not None and live[0] not in self.finished:
                self.seen = True
                self.live = live  # newer reports of a round replace older ones

    @property
    def turns(self) -> int:
        return self.finished_turns + (self.live[1] if self.live else 0)

    @property
    def cost_usd(self) -> float:
        return self.finished_cost_usd + (self.live[2] if self.live else 0.0)

    @property
    def estimated(self) -> bool:
        """Part of :attr:`cost_usd` is the agent's estimate for the round in progress."""
        return self.live is not None and self.live[3]


@dataclass
class RunTally:
    """What a run has done so far, as its events tell it."""

    messages: int = 0
    tool_calls: int = 0
    fix_rounds: int = 0
    tests: str = ""
    rounds: RoundSums = field(default_factory=RoundSums)

    @property
    def turns(self) -> int:
        return self.rounds.turns

    @property
    def cost_usd(self) -> float:
        return self.rounds.cost_usd

    @property
    def estimated(self) -> bool:
        return self.rounds.estimated

    def add(self, item: LogItem) -> None:
        if item.kind == "assistant_text":
            self.messages += 1
        elif item.kind == "tool_use":
            self.tool_calls += 1
        elif item.style == "fix":
            self.fix_rounds += 1
        elif item.kind == "tests":
            self.tests = item.title.removeprefix("tests: ")
        elif item.kind == "runner_finished":
            details = {"cost_usd": item.cost_usd, "num_turns": item.turns}
            self.rounds.add(item.kind, {**details, "fix_round": item.fix_round or 0})
        elif item.kind == "round_progress" and item.fix_round is not None:
            details = {"num_turns": item.live_turns, "cost_usd": item.live_cost_usd}
            self.rounds.add(
                item.kind, {**details, "fix_round": item.fix_round, "estimate": item.estimate}
            )


def tally(items: Iterable[LogItem]) -> dict[int, RunTally]:
    """One :class:`RunTally` per run id."""
    tallies: dict[int, RunTally] = {}
    for item in items:
        if item.run_id is not None:
            tallies.setdefault(int(item.run_id), RunTally()).add(item)
    return tallies
