"""View helpers of the dashboard's templates (times and money are in
:mod:`claude_cluster.humanize`): links that are only links when they point where they
should, an agent's readiness, and the geometry of the cost chart.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import quote, urlsplit

from claude_cluster.coordinator.store.overview import RepositoryCost
from claude_cluster.coordinator.store.tables import Agent, TaskEvent
from claude_cluster.humanize import ago
from claude_cluster.run_log import LogItem, log_item

_OWNER_NAME = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,38})/[A-Za-z0-9._-]{1,100}$")


def safe_href(url: str | None, web_url: str) -> str | None:
    """``url`` when it is http(s) on the host of ``web_url`` (GitHub's), else ``None``: a
    value an issue, a webhook or an agent wrote never becomes a ``javascript:`` link or a
    link to somewhere else."""
    if not url:
        return None
    expected = urlsplit(web_url)
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    if parts.hostname != expected.hostname or parts.scheme != expected.scheme:
        return None
    return url


def issue_href(repository: str, number: int | None, web_url: str) -> str | None:
    """The issue on GitHub for an ``owner/name`` repository (none for a local path)."""
    if number is None or not _OWNER_NAME.match(repository):
        return None
    return safe_href(f"{web_url.rstrip('/')}/{quote(repository)}/issues/{int(number)}", web_url)


@dataclass(frozen=True)
class Readiness:
    ready: bool
    reason: str


def readiness(agent: Agent, now: datetime | None = None) -> Readiness:
    """Why an agent takes work or not, from what its row holds (status, draining, slots,
    cool-down, and the reason it is not ready: its own start checks, or runs that failed
    for a reason of the agent)."""
    now = now or datetime.now(UTC)
    if agent.status == "offline":
        return Readiness(False, f"offline since its heartbeat {ago(agent.last_heartbeat, now)}")
    if agent.not_ready_reason:
        return Readiness(False, f"not ready: {agent.not_ready_reason}")
    if agent.status in ("maintenance", "error"):
        return Readiness(False, agent.status)
    if agent.draining:
        return Readiness(False, "draining: finishes its runs, takes no new ones")
    if agent.cooldown_until is not None and agent.cooldown_until > now:
        return Readiness(
            False, f"cooling down after a failed dispatch ({ago(agent.cooldown_until, now)})"
        )
    if agent.active_task_count >= agent.max_concurrent_tasks:
        return Readiness(
            False, f"full ({agent.active_task_count}/{agent.max_concurrent_tasks} slots)"
        )
    return Readiness(True, "ready")


def success_rate(agent: Agent) -> str:
    done = agent.total_tasks_completed + agent.total_tasks_failed
    return f"{agent.total_tasks_completed / done:.0%}" if done else "–"


@dataclass(frozen=True)
class Bar:
    label: str
    y: float
    today: float
    week: float
    today_width: float
    week_width: float


@dataclass(frozen=True)
class CostChart:
    """A horizontal bar chart: per repository, this week's bar with today's inside it."""

    bars: list[Bar]
    width: int
    height: int
    label_width: int
    bar_width: int
    row_height: int = 28


def cost_chart(rows: Sequence[RepositoryCost], *, width: int = 640) -> CostChart:
    label_width, money_width = 200, 120
    bar_width = width - label_width - money_width
    top = max((r.week for r in rows), default=0.0) or 1.0
    chart = CostChart([], width, 0, label_width, bar_width)
    bars = [
        Bar(
            label=r.repository if len(r.repository) <= 28 else "…" + r.repository[-27:],
            y=i * chart.row_height,
            today=r.today,
            week=r.week,
            today_width=round(bar_width * r.today / top, 1),
            week_width=round(bar_width * r.week / top, 1),
        )
        for i, r in enumerate(rows[:12])
    ]
    return CostChart(bars, width, max(1, len(bars)) * chart.row_height + 4, label_width, bar_width)


def item_of(event: TaskEvent) -> LogItem:
    """The readable form of a stored event."""
    return log_item(
        {
            "id": event.id,
            "run_id": event.run_id,
            "kind": event.kind,
            "level": event.level,
            "message": event.message,
            "details": event.details,
            "timestamp": event.timestamp,
        }
    )
