"""Comparing a run's tests with the base commit's."""

from __future__ import annotations

from claude_cluster.domain.baseline import MAX_LISTED, Comparison, TestVerdict, compare, judge

BEFORE = {
    "t::already_broken": "failed",
    "t::the_bug": "failed",
    "t::fine": "passed",
    "t::will_break": "passed",
    "t::errored": "error",
    "t::skipped_then_fails": "skipped",
    "t::deleted": "passed",
}
AFTER = {
    "t::already_broken": "failed",
    "t::the_bug": "passed",
    "t::fine": "passed",
    "t::will_break": "failed",
    "t::errored": "passed",
    "t::skipped_then_fails": "failed",
    "t::new_one": "passed",
    "t::new_failing": "error",
}


def test_each_test_lands_in_its_group() -> None:
    result = compare(BEFORE, AFTER)
    assert result.fixed == ("t::errored", "t::the_bug")
    assert result.broken == ("t::new_failing", "t::skipped_then_fails", "t::will_break")
    assert result.still_failing == ("t::already_broken",)
    assert result.added == ("t::new_one",)
    assert result.removed == ("t::deleted",)
    assert result.regressions


def test_a_failure_that_was_there_before_is_not_a_regression() -> None:
    result = compare({"a": "failed", "b": "passed"}, {"a": "failed", "b": "passed"})
    assert result == Comparison(still_failing=("a",))
    assert not result.regressions
    # failing before, skipped now: neither fixed nor broken
    assert compare({"a": "failed"}, {"a": "skipped"}) == Comparison()


def test_lines_name_the_tests_and_cap_long_lists() -> None:
    assert compare(BEFORE, AFTER).lines() == [
        "2 fixed: t::errored, t::the_bug",
        "3 newly failing: t::new_failing, t::skipped_then_fails, t::will_break",
        "1 still failing (failed before the run too): t::already_broken",
        "1 added and passing: t::new_one",
        "1 removed: t::deleted",
    ]
    many = compare({}, {f"t{i:03}": "failed" for i in range(MAX_LISTED + 7)})
    (line,) = many.lines()
    assert line.startswith(f"{MAX_LISTED + 7} newly failing: t000, t001")
    assert line.endswith(" and 7 more")
    assert Comparison().lines() == []


def test_judge_without_names_trusts_the_exit_status() -> None:
    assert judge(None, {}, ok=True) == TestVerdict(failing=False)
    assert judge({}, {"a": "failed"}, ok=False).failing
    assert not judge({"a": "passed"}, {"a": "passed"}, ok=True).failing


def test_judge_blames_the_run_for_what_it_broke_only() -> None:
    before = {"t.py::test_old": "failed", "t.py::test_add": "passed"}
    pre_existing = judge(before, {**before}, ok=False, issue_text="make add() faster")
    assert not pre_existing.failing
    assert pre_existing.comparison is not None
    assert pre_existing.comparison.still_failing == ("t.py::test_old",)
    broke = judge(before, {"t.py::test_old": "failed", "t.py::test_add": "failed"}, ok=False)
    assert broke.failing and broke.blamed == ("t.py::test_add",)


def test_judge_holds_the_run_to_the_tests_the_issue_names() -> None:
    before = {"tests/test_calc.py::test_divide[0-1]": "failed", "tests/x.py::test_y": "failed"}
    verdict = judge(before, before, ok=False, issue_text="test_divide fails when b is 0")
    assert verdict.failing
    assert verdict.blamed == ("tests/test_calc.py::test_divide[0-1]",)
