"""The dashboard's Jinja environment: its templates and the filters they use."""

from __future__ import annotations

from pathlib import Path

from fastapi.templating import Jinja2Templates

from claude_cluster import humanize
from claude_cluster.coordinator.web import views

templates = Jinja2Templates(directory=Path(__file__).resolve().parents[1] / "templates")
templates.env.filters["ago"] = humanize.ago
templates.env.filters["duration"] = humanize.duration
templates.env.filters["money"] = humanize.money
templates.env.globals["readiness"] = views.readiness
templates.env.globals["success_rate"] = views.success_rate
