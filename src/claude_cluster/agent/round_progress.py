"""The turns and cost of the agent round in progress, reported while it runs.

An agent round (one run of the agent CLI: the first turn on the issue, or a fix round)
reports its real cost and turns only when it ends, in ``runner_finished``; the CLI's own
cost arrives only in its final ``result`` line. A round can last many minutes, so
:class:`RoundMeter` watches the runner's events in between and makes a ``round_progress``
event of what the round has used so far:

- **claude**: every assistant line carries its message's ``usage``
  (:class:`~claude_cluster.runners.claude_stream.MessageUsage`); the meter keeps the newest
  per message, counts the messages as turns and prices the tokens with the gateway's list
  prices (:func:`~claude_cluster.agent.gateway.usage_cost`). The CLI writes a message's
  usage as of its start (its output tokens are not counted yet), so this is a lower bound;
  a sandboxed run's gateway counts every finished model response whole, and the larger of
  the two figures is reported. Either way it is an **estimate** (``estimate: true``),
  which the coordinator shows as "~$0.12";
- **aider**: its ``usage`` lines carry aider's own running cost and call count, reported
  as they are (``estimate: false``);
- **codex** reports no cost and its usage only when its turn ends: nothing to report.

Throttled: at most one event per ``interval`` seconds (:data:`ROUND_PROGRESS_INTERVAL`),
and only when the figures changed. The meter has no timer of its own: it is asked after
every event of the runner, so it can never report after the round's ``runner_finished``
(which the agent queues once the runner has returned), and a figure held back by the
throttle goes out with the next event of the round.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from claude_cluster.agent.gateway import usage_cost
from claude_cluster.domain.wire import (
    MAX_ROUND_COST_USD,
    MAX_ROUND_TURNS,
    ROUND_PROGRESS,
)
from claude_cluster.runners.base import EventKind, RunnerEvent

__all__ = ["ROUND_PROGRESS", "ROUND_PROGRESS_INTERVAL", "RoundMeter"]

#: seconds between two ``round_progress`` events of one round. The issue's comment is
#: edited at most every ``GITHUB_PROGRESS_INTERVAL`` (10 s) and the dashboard polls every
#: 5 s, so a faster beat would show nothing more; at this one an hour-long round adds at
#: most 720 events, and the coordinator keeps only the newest of each run.
ROUND_PROGRESS_INTERVAL = 5.0
#: a new message without an id (an older CLI) is counted under this prefix
_ANONYMOUS = "\x00anonymous-"


@dataclass
class RoundMeter:
    """What one agent round has used so far, from its runner's events.

    Args:
        fix_round: the round's number in the run (0: the first turn), as
            ``runner_finished`` names it.
        interval: the shortest time between two reports.
        clock: monotonic seconds (tests pass their own).
        spent: the run gateway's dollars so far (all of the run's rounds), when the run
            has a gateway; the meter counts what it adds from now on.
    """

    fix_round: int
    interval: float = ROUND_PROGRESS_INTERVAL
    clock: Callable[[], float] = time.monotonic
    spent: Callable[[], float] | None = None
    _spent_before: float = field(init=False, default=0.0)
    #: message id → (model, newest usage)
    _messages: dict[str, tuple[str, dict[str, int]]] = field(init=False, default_factory=dict)
    #: the runner's own running figures (turns, dollars), when it reports them
    _own: tuple[int, float] | None = field(init=False, default=None)
    _reported: tuple[int, float] | None = field(init=False, default=None)
    _last_at: float = field(init=False, default=-math.inf)

    def __post_init__(self) -> None:
        self._spent_before = self.spent() if self.spent is not None else 0.0

    def observe(self, event: RunnerEvent) -> bool:
        """Take in one runner event; True when it is the meter's alone (not forwarded:
        the CLI repeats a message's usage on each of its lines)."""
        data = event.data
        if event.kind == EventKind.MODEL_USAGE:
            key = data.get("message_id")
            if not isinstance(key, str) or not key:
                key = f"{_ANONYMOUS}{len(self._messages)}"
            counts = {k: v for k, v in data.items() if type(v) is int and v >= 0}
            self._messages[key] = (str(data.get("model") or ""), counts)
            return True
        if event.kind == EventKind.USAGE:
            turns, cost = data.get("num_turns"), data.get("cost_usd")
            if type(turns) is int and isinstance(cost, int | float) and not isinstance(cost, bool):
                self._own = (max(0, turns), max(0.0, float(cost)))
        return False

    def figures(self) -> tuple[int, float, bool] | None:
        """(turns, dollars, estimated) so far; None before the first model call."""
        if self._own is not None:
            return self._own[0], self._own[1], False
        if not self._messages:
            return None
        cost = sum(usage_cost(model, usage) for model, usage in self._messages.values())
        if self.spent is not None:
            cost = max(cost, self.spent() - self._spent_before)
        return len(self._messages), cost, True

    def due(self) -> dict[str, Any] | None:
        """The ``round_progress`` data to report now, or None (nothing new, or too soon)."""
        figures = self.figures()
        if figures is None:
            return None
        turns, cost, estimated = figures
        # within the bounds the coordinator takes (an event it refused would hold up the
        # run's reports): far above any real round
        turns, cost = min(turns, MAX_ROUND_TURNS), min(cost, MAX_ROUND_COST_USD)
        if (turns, round(cost, 6)) == self._reported:
            return None
        now = self.clock()
        if now - self._last_at < self.interval:
            return None
        self._last_at = now
        self._reported = (turns, round(cost, 6))
        return {
            "fix_round": self.fix_round,
            "num_turns": turns,
            "cost_usd": round(cost, 6),
            "estimate": estimated,
        }

    @staticmethod
    def message(data: dict[str, Any]) -> str:
        """The event's line in the run's log."""
        turns = data["num_turns"]
        approx = "~" if data["estimate"] else ""
        return (
            f"agent round so far: {turns} turn{'' if turns == 1 else 's'}, "
            f"{approx}${data['cost_usd']:.4f}"
        )
