"""The agent's report of the round in progress: turns and estimated cost, throttled."""

from __future__ import annotations

import pytest

from claude_cluster.agent.gateway import usage_cost
from claude_cluster.agent.round_progress import RoundMeter
from claude_cluster.domain.wire import RoundProgressData
from claude_cluster.runners.base import EventKind, RunnerEvent


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def usage(message_id: str, input_tokens: int, output_tokens: int = 1) -> RunnerEvent:
    data = {
        "message_id": message_id,
        "model": "claude-sonnet-4-5",
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "cache_read_input_tokens": 0,
        "cache_creation_input_tokens": 0,
    }
    return RunnerEvent(EventKind.MODEL_USAGE, "", data, "debug")


def text() -> RunnerEvent:
    return RunnerEvent(EventKind.ASSISTANT_TEXT, "working")


def test_turns_are_messages_and_the_cost_is_priced_from_their_newest_usage() -> None:
    clock = Clock()
    meter = RoundMeter(fix_round=1, interval=5.0, clock=clock)
    assert meter.due() is None  # nothing to say before the first model call
    assert meter.observe(usage("m1", 1000)) is True  # the meter's alone: not forwarded
    assert meter.observe(text()) is False
    first = meter.due()
    price = usage_cost("claude-sonnet-4-5", {"input_tokens": 1000, "output_tokens": 1})
    assert first == {
        "fix_round": 1,
        "num_turns": 1,
        "cost_usd": round(price, 6),
        "estimate": True,
    }
    RoundProgressData.model_validate(first)  # what the coordinator accepts
    assert meter.message(first).startswith("agent round so far: 1 turn, ~$")
    # the same message's next line repeats its usage: still one turn, not counted twice
    meter.observe(usage("m1", 1000, 30))
    meter.observe(usage("m2", 2000))
    assert meter.due() is None  # within the interval
    clock.now += 5.0
    second = meter.due()
    assert second is not None and second["num_turns"] == 2
    both = usage_cost("claude-sonnet-4-5", {"input_tokens": 3000, "output_tokens": 31})
    assert second["cost_usd"] == pytest.approx(both)
    clock.now += 60.0
    assert meter.due() is None  # nothing new: no event


def test_a_sandboxed_runs_gateway_count_wins_when_it_is_larger() -> None:
    clock = Clock()
    spent = [0.75]  # what earlier rounds of the run spent through the gateway
    meter = RoundMeter(fix_round=0, clock=clock, spent=lambda: spent[0])
    meter.observe(usage("m1", 100))
    low = meter.due()
    assert low is not None and low["cost_usd"] < 0.01  # the stream's lower bound
    spent[0] += 0.25  # the gateway saw the whole response, output tokens and all
    clock.now += 10
    later = meter.due()
    assert later is not None and later["cost_usd"] == pytest.approx(0.25)


def test_a_runner_that_reports_its_own_running_cost_is_taken_as_it_is() -> None:
    meter = RoundMeter(fix_round=0, clock=Clock())
    data = {"cost_usd": 0.42, "num_turns": 3, "input_tokens": 10}
    assert meter.observe(RunnerEvent(EventKind.USAGE, "Tokens: ...", data)) is False
    assert meter.due() == {"fix_round": 0, "num_turns": 3, "cost_usd": 0.42, "estimate": False}


def test_an_absurd_count_is_capped_to_what_the_coordinator_takes() -> None:
    meter = RoundMeter(fix_round=0, clock=Clock())
    meter.observe(RunnerEvent(EventKind.USAGE, "", {"cost_usd": 1e12, "num_turns": 10**12}))
    capped = meter.due()
    assert capped is not None
    RoundProgressData.model_validate(capped)
