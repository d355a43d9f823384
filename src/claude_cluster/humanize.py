"""Times, durations and money as people read them; the dashboard and the CLI share them."""

from __future__ import annotations

from datetime import UTC, datetime


def ago(moment: datetime | None, now: datetime | None = None) -> str:
    """``12 s ago``, ``3 min ago``, ``2 h ago``, ``4 d ago``; ``never`` for ``None``."""
    if moment is None:
        return "never"
    seconds = ((now or datetime.now(UTC)) - moment).total_seconds()
    if seconds < 0:
        return "in " + duration(-seconds)
    return duration(seconds) + " ago"


def duration(seconds: float) -> str:
    """``45 s``, ``3 min``, ``1 h 5 min``, ``2 d 3 h``."""
    s = int(max(0, seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min"
    if s < 86400:
        return f"{s // 3600} h {s % 3600 // 60} min"
    return f"{s // 86400} d {s % 86400 // 3600} h"


def money(dollars: float | None) -> str:
    value = dollars or 0.0
    return f"${value:.2f}" if value >= 1 else f"${value:.4f}"


def parse_time(value: str | None) -> datetime | None:
    """An ISO timestamp from the API (``None`` stays ``None``)."""
    return datetime.fromisoformat(value) if value else None
