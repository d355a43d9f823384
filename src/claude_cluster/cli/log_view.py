"""A task's log on a terminal: each :class:`~claude_cluster.run_log.LogItem` as the
dashboard's live view draws it. Tool inputs stay folded and long results show their
preview unless ``--full``; every text is shown as text, never as Rich markup."""

from __future__ import annotations

from rich.console import Group, RenderableType
from rich.padding import Padding
from rich.text import Text

from claude_cluster.run_log import LogItem

#: LogItem.style → the colour of its title
STYLES = {
    "assistant": "cyan",
    "tool": "magenta",
    "result": "white",
    "tests": "yellow",
    "fix": "bold red",
    "cost": "green",
    "delivered": "bold green",
    "error": "red",
    "notice": "default",
}


def render(item: LogItem, *, full: bool = False) -> RenderableType:
    head = Text()
    head.append(item.timestamp[11:19] or "--:--:--", style="dim")
    if item.run_id:
        head.append(f" run {item.run_id}", style="dim")
    head.append("  ")
    marker = "▸ " if item.detail and not full else ""
    head.append(marker + item.title, style=f"bold {STYLES.get(item.style, 'default')}")
    if item.level in ("warning", "error") and item.style not in ("fix", "error"):
        head.append(f"  [{item.level}]", style="yellow" if item.level == "warning" else "red")
    parts: list[RenderableType] = [head]
    if item.detail and full:
        parts.append(Padding(Text(item.detail, style="dim"), (0, 0, 0, 4)))
    if item.body:
        body = Text(item.body + (item.more if full else ""))
        if item.style != "assistant":
            body.stylize("dim")
        parts.append(Padding(body, (0, 0, 0, 4)))
        if item.more and not full:
            parts.append(
                Padding(
                    Text(f"… {len(item.more)} more characters (--full shows them)", style="dim"),
                    (0, 0, 0, 4),
                )
            )
    return Group(*parts)
