""" "So far": finished agent rounds plus the newest report of the round in progress."""

from __future__ import annotations

import pytest

from claude_cluster.run_log import LogItem, RoundSums, log_item, tally


def finished(fix_round: int, cost: float, turns: int) -> tuple[str, dict[str, object]]:
    return "runner_finished", {"fix_round": fix_round, "cost_usd": cost, "num_turns": turns}


def progress(fix_round: int, cost: float, turns: int) -> tuple[str, dict[str, object]]:
    data = {"fix_round": fix_round, "cost_usd": cost, "num_turns": turns, "estimate": True}
    return "round_progress", data


def sums(*events: tuple[str, dict[str, object]]) -> RoundSums:
    total = RoundSums()
    for kind, details in events:
        total.add(kind, details)
    return total


def test_nothing_reported_is_nothing_so_far() -> None:
    assert not sums().seen


def test_the_first_round_in_progress_shows_before_it_ends() -> None:
    total = sums(progress(0, 0.05, 2), progress(0, 0.12, 4))
    assert total.seen and total.estimated
    assert (total.turns, total.cost_usd) == (4, pytest.approx(0.12))  # the newest, not a sum


def test_finished_rounds_plus_the_live_one() -> None:
    total = sums(progress(0, 0.10, 3), finished(0, 0.25, 5), progress(1, 0.04, 2))
    assert (total.turns, total.cost_usd, total.estimated) == (7, pytest.approx(0.29), True)


def test_the_finished_figure_replaces_the_estimate_of_its_round() -> None:
    total = sums(progress(0, 0.10, 3), finished(0, 0.25, 5))
    assert (total.turns, total.cost_usd, total.estimated) == (5, pytest.approx(0.25), False)


def test_a_late_report_of_a_finished_round_is_ignored() -> None:
    total = sums(finished(0, 0.25, 5), progress(0, 9.0, 99))
    assert (total.turns, total.cost_usd, total.estimated) == (5, pytest.approx(0.25), False)


@pytest.mark.parametrize(
    "bad",
    [
        {"fix_round": 0, "cost_usd": -1.0, "num_turns": 2},
        {"fix_round": 0, "cost_usd": float("nan"), "num_turns": 2},
        {"fix_round": 0, "cost_usd": "0.1", "num_turns": 2},
        {"fix_round": 0, "cost_usd": 0.1, "num_turns": True},
        {"fix_round": 0, "cost_usd": 0.1, "num_turns": -3},
    ],
)
def test_a_stored_report_with_strange_figures_counts_nothing(bad: dict[str, object]) -> None:
    total = sums(finished(0, 0.25, 5), ("round_progress", bad))
    assert (total.turns, total.cost_usd) == (5, pytest.approx(0.25))


def test_the_task_pages_tally_counts_the_round_in_progress() -> None:
    def item(seq: int, kind: str, details: dict[str, object]) -> LogItem:
        return log_item({"id": seq, "run_id": 3, "kind": kind, "details": details})

    items = [
        item(1, *finished(0, 0.25, 5)),
        item(2, *progress(1, 0.04, 2)),
        item(3, "assistant_text", {}),
    ]
    t = tally(items)[3]
    assert (t.turns, t.cost_usd, t.estimated, t.messages) == (7, pytest.approx(0.29), True, 1)
    assert items[1].title == "agent round in progress: 2 turns, ~$0.0400 so far"
    t = tally([*items, item(4, *finished(1, 0.06, 3))])[3]
    assert (t.turns, t.cost_usd, t.estimated) == (8, pytest.approx(0.31), False)
