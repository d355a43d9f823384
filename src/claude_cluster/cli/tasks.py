"""``claude-cluster task submit|list|show|logs|cancel``."""

from __future__ import annotations

import json
import time
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from claude_cluster.cli.client import call
from claude_cluster.cli.log_view import render
from claude_cluster.humanize import ago, money, parse_time
from claude_cluster.run_log import log_item

app = typer.Typer(help="Submit and follow tasks.", no_args_is_help=True)
out = Console()

TERMINAL = {"completed", "failed", "cancelled"}


@app.command()
def submit(
    repository: Annotated[
        str,
        typer.Option(
            "--repository", "-r", help="owner/name, or a local repository path / file:// URL"
        ),
    ],
    issue: Annotated[int, typer.Option("--issue", "-i", min=1, help="issue number")],
    title: Annotated[str, typer.Option("--title", "-t", help="what to do")],
    description: Annotated[str, typer.Option("--description", "-d", help="details")] = "",
    priority: Annotated[str | None, typer.Option(help="low, medium, high or urgent")] = None,
    requirement: Annotated[
        list[str] | None, typer.Option(help="a requirement (repeatable)")
    ] = None,
    label: Annotated[list[str] | None, typer.Option(help="an issue label (repeatable)")] = None,
    budget: Annotated[float | None, typer.Option(help="dollar budget for the task")] = None,
    test_command: Annotated[str | None, typer.Option(help="the repository's test command")] = None,
    wait: Annotated[bool, typer.Option(help="wait until the task ends")] = False,
    timeout: Annotated[float, typer.Option(help="seconds to --wait")] = 3600,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Queue a task (an open task of the same issue is returned instead)."""
    body: dict[str, Any] = {
        "title": title,
        "description": description,
        "github_repository": repository,
        "github_issue_number": issue,
        "labels": label or [],
    }
    if priority:
        body["priority"] = priority
    if requirement:
        body["requirements"] = requirement
    if budget is not None:
        body["budget_usd"] = budget
    if test_command:
        body["test_command"] = test_command
    task = call("POST", "/api/v1/tasks", json=body)
    if wait:
        task = _wait(task["id"], timeout)
    if as_json:
        out.print_json(json.dumps(task))
    else:
        out.print(f"task {task['id']} {task['status']} (priority {task['priority']})")
    if wait and task["status"] != "completed" and task["status"] != "review":
        raise typer.Exit(1)


def _wait(task_id: int, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        task: dict[str, Any] = call("GET", f"/api/v1/tasks/{task_id}")
        if task["status"] in TERMINAL or task["status"] == "review":
            return task
        if time.monotonic() > deadline:
            Console(stderr=True).print(
                f"[red]task {task_id} still {task['status']} after {timeout} s"
            )
            raise typer.Exit(4)
        time.sleep(1)


@app.command("list")
def list_(
    status: Annotated[str | None, typer.Option(help="only tasks in this status")] = None,
    repository: Annotated[str | None, typer.Option(help="only this repository")] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000)] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """List tasks, newest first."""
    params = {
        "limit": limit,
        **({"status": status} if status else {}),
        **({"repository": repository} if repository else {}),
    }
    tasks = call("GET", "/api/v1/tasks", params=params)
    if as_json:
        typer.echo(json.dumps(tasks, indent=2))
        return
    table = Table("id", "status", "issue", "agent", "cost", "updated")
    table.add_column("title", min_width=16, overflow="fold")
    for t in tasks:
        table.add_row(
            str(t["id"]),
            t["status"],
            Text(f"{t['github_repository']}#{t['github_issue_number']}"),
            t["assigned_agent_id"] or "",
            money(t["cost_usd"]),
            ago(parse_time(t["updated_at"])),
            Text(t["title"][:60]),
        )
    out.print(table)


@app.command()
def show(task_id: int, as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """A task with its runs."""
    task = call("GET", f"/api/v1/tasks/{task_id}")
    runs = call("GET", f"/api/v1/tasks/{task_id}/runs")
    if as_json:
        out.print_json(json.dumps({**task, "runs": runs}))
        return
    out.print(Text.assemble((f"task {task['id']}", "bold"), f" {task['status']}  {task['title']}"))
    out.print(
        f"  {task['github_repository']}#{task['github_issue_number']}  priority "
        f"{task['priority']}  attempts {task['attempts']}  cost ${task['cost_usd']:.4f}"
    )
    if task["error_message"]:
        out.print(Text(f"  {task['error_message']}", style="red"))
    if task.get("required_runner"):
        out.print(Text(f"  needs runner {task['required_runner']}"))
    if task.get("waiting_for"):
        out.print(Text(f"  {task['waiting_for']}", style="yellow"))
    table = Table(
        "run", "attempt", "agent", "status", "category", "tests", "cost", "started", "branch"
    )
    for r in runs:
        tests = (
            ""
            if r["tests_passed"] is None
            else f"{r['tests_passed']} passed, {r['tests_failed'] or 0} failed"
        )
        table.add_row(
            str(r["id"]),
            str(r["attempt"]),
            r["agent_id"],
            r["status"],
            r["error_category"] or "",
            tests,
            money(r["cost_usd"]),
            ago(parse_time(r["started_at"])),
            r["branch"] or "",
        )
    out.print(table)


@app.command()
def logs(
    task_id: int,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="keep printing new events until the task ends")
    ] = False,
    full: Annotated[
        bool, typer.Option("--full", help="tool inputs and whole results, not previews")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="one JSON event a line")] = False,
) -> None:
    """The task's log as the dashboard shows it: assistant text, tool calls, results,
    tests, fix rounds and cost."""
    after = 0
    while True:
        while True:
            events = call("GET", f"/api/v1/tasks/{task_id}/events", params={"after": after})
            for e in events:
                after = e["id"]
                if as_json:
                    typer.echo(json.dumps(e))
                else:
                    out.print(render(log_item(e), full=full))
            if not events:
                break
        if not follow:
            return
        status = call("GET", f"/api/v1/tasks/{task_id}")["status"]
        if status in TERMINAL:
            if not as_json:
                out.print(Text(f"task {task_id} {status}", style="bold"))
            return
        time.sleep(1)


@app.command()
def cancel(task_id: int) -> None:
    """Cancel a task, stopping its run."""
    task = call("DELETE", f"/api/v1/tasks/{task_id}")
    out.print(f"task {task['id']} {task['status']}")
