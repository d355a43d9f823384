"""Task and run status have one owner: ``coordinator/store/transitions.py``.

Scans the source for every way of writing a ``status``: an assignment to ``<x>.status``,
``setattr(<x>, "status", …)``, ``status=`` in a ``Task``/``TaskRun`` constructor or in the
``.values(…)`` of an ``update(Task)``/``update(TaskRun)``. Agents' statuses (``agent.status``,
``update(Agent)``) and webhook deliveries' are not task state. And
the state-changing repository calls are made only by the coordinator service (and the
dispatcher and reconciler it owns), so every change is published and observed.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[3] / "src" / "claude_cluster"
OWNER = SRC / "coordinator" / "store" / "transitions.py"
#: the coordinator service and the loops it owns
SERVICE = {
    SRC / "coordinator" / "service.py",
    SRC / "coordinator" / "dispatcher.py",
    SRC / "coordinator" / "reconciler.py",
}
#: repository methods that change a task's or a run's status
STATE_CHANGING = {
    "create_task",
    "update_task",
    "cancel_task",
    "set_task_status",
    "attach_pull_request",
    "claim",
    "mark_accepted",
    "dispatch_failed",
    "set_phase",
    "confirm_delivery",
    "finish_run",
    "expire_runs",
    "expire_agents",
    "timed_out_runs",
    "register_agent",
    "add_feedback",
    "take_deferred_feedback",
    "release_task",
    "retry_now",
}


def _is_agent(node: ast.expr) -> bool:
    """An agent's or a webhook delivery's status: not task state."""
    return isinstance(node, ast.Name) and any(w in node.id.lower() for w in ("agent", "delivery"))


def _update_target(call: ast.Call) -> str | None:
    """``Task`` for ``update(Task).where(…).values(…)``: the table an update chain writes."""
    node: ast.expr = call.func
    while isinstance(node, ast.Attribute):
        node = node.value
        if isinstance(node, ast.Call):
            if isinstance(node.func, ast.Name) and node.func.id == "update" and node.args:
                arg = node.args[0]
                return arg.id if isinstance(arg, ast.Name) else None
            node = node.func
    return None


def status_writes(tree: ast.AST) -> list[tuple[int, str]]:
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign | ast.AugAssign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                elements = target.elts if isinstance(target, ast.Tuple) else [target]
                for t in elements:
                    if (
                        isinstance(t, ast.Attribute)
                        and t.attr == "status"
                        and not _is_agent(t.value)
                        and not (isinstance(t.value, ast.Name) and t.value.id == "self")
                    ):
                        found.append((node.lineno, f"{ast.unparse(t)} = …"))
        elif isinstance(node, ast.Call):
            func = node.func
            name = func.id if isinstance(func, ast.Name) else None
            if (
                name == "setattr"
                and len(node.args) >= 2
                and isinstance(node.args[1], ast.Constant)
                and node.args[1].value == "status"
                and not _is_agent(node.args[0])
            ):
                found.append((node.lineno, "setattr(…, 'status', …)"))
            has_status = any(k.arg == "status" for k in node.keywords)
            if has_status and name in ("Task", "TaskRun"):
                found.append((node.lineno, f"{name}(status=…)"))
            if (
                has_status
                and isinstance(func, ast.Attribute)
                and func.attr == "values"
                and _update_target(node) in ("Task", "TaskRun")
            ):
                found.append((node.lineno, f"update({_update_target(node)}).values(status=…)"))
    return found


def state_changing_calls(tree: ast.AST) -> list[tuple[int, str]]:
    """``<…>.repo.<method>(…)`` / ``<…>._repo.<method>(…)`` for a state-changing method."""
    found = []
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in STATE_CHANGING
        ):
            owner = node.func.value
            owner_name = (
                owner.attr
                if isinstance(owner, ast.Attribute)
                else owner.id
                if isinstance(owner, ast.Name)
                else ""
            )
            if owner_name in ("repo", "_repo", "repository"):
                found.append((node.lineno, ast.unparse(node.func)))
    return found


def sources() -> list[Path]:
    return sorted(SRC.rglob("*.py"))


def test_only_the_transitions_module_writes_a_status() -> None:
    offenders = [
        f"{path.relative_to(SRC)}:{line}: {what}"
        for path in sources()
        if path != OWNER
        for line, what in status_writes(ast.parse(path.read_text()))
    ]
    assert offenders == []


def test_only_the_service_calls_the_state_changing_queries() -> None:
    offenders = [
        f"{path.relative_to(SRC)}:{line}: {what}"
        for path in sources()
        if path not in SERVICE and "store" not in path.relative_to(SRC).parts
        for line, what in state_changing_calls(ast.parse(path.read_text()))
    ]
    assert offenders == []


@pytest.mark.parametrize(
    "code",
    [
        "task.status = 'queued'",
        "run.status = RunStatus.LOST.value",
        "t.status, x = 'a', 1",
        "setattr(task, 'status', 'failed')",
        "TaskRun(task_id=1, status='running')",
        "update(Task).where(Task.id == 1).values(status='failed')",
        "update(TaskRun).values(status='lost').returning(TaskRun.id)",
    ],
)
def test_the_scan_catches_each_way_of_writing_a_status(code: str) -> None:
    assert status_writes(ast.parse(code)) != []


@pytest.mark.parametrize(
    "code",
    [
        "agent.status = 'idle'",
        "self.status = status",
        "update(Agent).values(status='busy')",
        "log.info('x', status=task.status)",
    ],
)
def test_the_scan_allows_what_is_not_task_state(code: str) -> None:
    assert status_writes(ast.parse(code)) == []


def test_the_call_scan_catches_a_route_writing_through_the_repository() -> None:
    code = "async def f(coordinator):\n    await coordinator.repo.update_task(1, {})\n"
    assert state_changing_calls(ast.parse(code)) == [(2, "coordinator.repo.update_task")]
