"""A run's policy: the repository's contract, read from the base commit, within the
operator's limits.

The contract is read from the daemon's own mirror at the commit the run starts from, never
from the run's repository: a run cannot loosen its own policy (its protected paths, its
network) by editing the file, and the file it would edit is itself protected.
:func:`resolve_policy` is the run's phase: it loads the policy and says in the run's events
what the run will do, or ends the run with ``contract_error`` before any model call.
"""

from __future__ import annotations

from pathlib import Path

from claude_cluster.agent.git import GitError, git
from claude_cluster.agent.reporter import RunReporter
from claude_cluster.agent.run_report import RunProgress
from claude_cluster.agent.workspace import Workspace
from claude_cluster.domain.contract import (
    CONTRACT_PATHS,
    MAX_CONTRACT_BYTES,
    ContractError,
    OperatorPolicy,
    RunPolicy,
    pick_contract,
    resolve,
)
from claude_cluster.domain.states import ErrorCategory
from claude_cluster.domain.wire import ExecuteTaskRequest

__all__ = ["ContractError", "load_run_policy", "resolve_policy"]


async def load_run_policy(
    mirror: Path, commit: str, request: ExecuteTaskRequest, *, timeout: float = 60
) -> RunPolicy:
    """The policy of ``request``'s run, from the contract files at ``commit`` in ``mirror``.

    The operator's side is the contract the dispatch carries (none from an older
    coordinator) with the task's own settings above it: its test command is the default
    and its budget one more cap (:meth:`OperatorPolicy.with_task`).

    Raises:
        ContractError: the contract is invalid (the message names the key and the line).
    """
    files: dict[str, bytes] = {}
    for path in CONTRACT_PATHS:
        size = await git(
            "cat-file", "-s", f"{commit}:{path}", cwd=mirror, timeout=timeout, check=False
        )
        if size.returncode != 0:
            continue  # not in this commit
        if int(size.stdout.strip() or 0) > MAX_CONTRACT_BYTES:
            raise ContractError(f"{path} is over {MAX_CONTRACT_BYTES // 1024} KiB")
        shown = await git("cat-file", "blob", f"{commit}:{path}", cwd=mirror, timeout=timeout)
        files[path] = shown.stdout.encode()
    source, contract = pick_contract(files)
    operator = (request.operator_contract or OperatorPolicy()).with_task(
        test=request.test_command, budget_usd=request.budget_usd
    )
    return resolve(contract, operator, source=source)


async def resolve_policy(
    request: ExecuteTaskRequest,
    reporter: RunReporter,
    ws: Workspace,
    progress: RunProgress,
    *,
    timeout: float,
) -> RunPolicy:
    """The repository's contract at the base commit, within the task's limits.

    Raises:
        RunEnded: the contract is invalid (``contract_error``) or git failed
            (``workspace_error``).
    """
    try:
        policy = await load_run_policy(ws.mirror, ws.base_sha, request, timeout=timeout)
    except ContractError as exc:
        message = f"invalid repository contract: {exc}"
        reporter.event("contract", message, {"error": str(exc)}, level="error")
        raise progress.failed(ErrorCategory.CONTRACT_ERROR, message) from None
    except GitError as exc:
        raise progress.failed(ErrorCategory.WORKSPACE_ERROR, str(exc)) from None
    reporter.event(
        "contract",
        f"{policy.source or 'no contract file'}: setup {len(policy.setup) or 'detected'}, "
        f"tests {policy.test or 'detected'}, "
        f"network {', '.join(policy.network_allow) or 'none'}",
        {
            "source": policy.source,
            "test": policy.test,
            "network_allow": list(policy.network_allow),
            "network_refused": list(policy.network_refused),
            "protected_paths": list(policy.protected_paths),
            "when_tests_fail": policy.when_tests_fail,
            "when_untested": policy.when_untested,
            "baseline": policy.baseline,
            "runner": policy.runner,
            "budget_usd": policy.budget_usd,
            "max_turns": policy.max_turns,
        },
    )
    for note in policy.notes:
        reporter.event("contract", note, {}, level="warning")
    return policy
