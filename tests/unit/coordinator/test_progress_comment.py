"""What the coordinator takes from a run's ``baseline`` event for the issue's progress
comment: counts and a fixed vocabulary, nothing the run could write its own text into."""

from __future__ import annotations

from claude_cluster.coordinator.github_comments import baseline_of
from claude_cluster.github import Baseline
from claude_cluster.github.progress import Progress, render_progress


def test_the_baseline_event_gives_counts_and_statuses_only() -> None:
    assert baseline_of(None) is None
    ran = {"ran": True, "passed": 1, "failed": 2, "errors": 0, "ok": False, "command": "x"}
    assert baseline_of(ran) == Baseline(passed=1, failed=2)
    assert baseline_of({"ran": False, "status": "skipped"}) == Baseline(missing="skipped")
    assert baseline_of({"ran": False, "status": "untested"}) == Baseline(missing="untested")
    # the tests did not run on the base commit (no command, tool missing)
    assert baseline_of({**ran, "ok": None}) == Baseline(missing="untested")
    # an event from an agent older than the "ran" key still counts
    assert baseline_of({k: v for k, v in ran.items() if k != "ran"}) == Baseline(1, 2)
    # what a run controls cannot put text into the comment through the counts
    for bad in ("@everyone", -1, 1.5, True, None, 10**12):
        body = render_progress(
            Progress(task_id=7, status="in_progress", baseline=baseline_of({**ran, "passed": bad}))
        )
        assert "@everyone" not in body
        assert "no baseline (the tests could not run on the base commit)" in body
    unknown = baseline_of({"ran": False, "status": "@everyone pwned"})
    assert unknown == Baseline(missing="untested")
