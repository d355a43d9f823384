"""The dashboard's view helpers: relative times, readiness, CSRF tokens, the cost chart."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from claude_cluster.coordinator.api.deps import Principal
from claude_cluster.coordinator.store.overview import RepositoryCost
from claude_cluster.coordinator.store.tables import Agent
from claude_cluster.coordinator.web import csrf
from claude_cluster.coordinator.web.access import may_act
from claude_cluster.coordinator.web.views import cost_chart, readiness
from claude_cluster.humanize import ago, duration

NOW = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)


def _agent(**fields: object) -> Agent:
    values: dict[str, object] = {
        "id": "a1",
        "status": "idle",
        "draining": False,
        "cooldown_until": None,
        "active_task_count": 0,
        "max_concurrent_tasks": 2,
        "last_heartbeat": NOW,
        "not_ready_reason": None,
    }
    values.update(fields)
    return Agent(**values)


def test_relative_times_read_like_speech() -> None:
    assert ago(NOW - timedelta(seconds=12), NOW) == "12 s ago"
    assert ago(NOW - timedelta(minutes=3, seconds=5), NOW) == "3 min ago"
    assert ago(NOW - timedelta(hours=2, minutes=5), NOW) == "2 h 5 min ago"
    assert ago(NOW - timedelta(days=4, hours=1), NOW) == "4 d 1 h ago"
    assert ago(NOW + timedelta(seconds=30), NOW) == "in 30 s"
    assert ago(None, NOW) == "never"
    assert duration(59.9) == "59 s"


def test_readiness_names_why_an_agent_takes_no_work() -> None:
    assert readiness(_agent(), NOW).ready
    assert readiness(_agent(draining=True), NOW).reason.startswith("draining")
    assert readiness(_agent(active_task_count=2), NOW).reason == "full (2/2 slots)"
    cooling = readiness(_agent(cooldown_until=NOW + timedelta(seconds=20)), NOW)
    assert not cooling.ready and "in 20 s" in cooling.reason
    offline = readiness(_agent(status="offline", last_heartbeat=NOW - timedelta(minutes=6)), NOW)
    assert offline.reason == "offline since its heartbeat 6 min ago"
    broken = readiness(_agent(status="maintenance", not_ready_reason="runner not found"), NOW)
    assert (broken.ready, broken.reason) == (False, "not ready: runner not found")


def test_csrf_tokens_belong_to_one_session_and_key() -> None:
    token = csrf.token_for("key", "session-a")
    assert csrf.is_valid("key", "session-a", token)
    assert not csrf.is_valid("key", "session-b", token)
    assert not csrf.is_valid("other-key", "session-a", token)
    assert not csrf.is_valid("key", "", csrf.token_for("key", ""))  # no session, no token
    assert not csrf.is_valid("key", "session-a", "")


def test_only_admins_may_act() -> None:
    assert may_act(Principal("admin"))
    assert not may_act(Principal("agent", "a1"))


def test_the_cost_chart_scales_to_the_costliest_week() -> None:
    chart = cost_chart(
        [RepositoryCost("acme/app", 1.0, 4.0), RepositoryCost("acme/" + "x" * 40, 0.0, 2.0)]
    )
    first, second = chart.bars
    assert first.week_width == chart.bar_width and first.today_width == chart.bar_width / 4
    assert second.week_width == chart.bar_width / 2 and second.y == chart.row_height
    assert len(second.label) == 28 and second.label.startswith("…")
    assert cost_chart([]).bars == []
