"""A run's policy: the repository's contract, read from the base commit, within the
operator's limits.

The contract is read from the daemon's own mirror at the commit the run starts from, never
from the run's repository: a run cannot loosen its own policy (its protected paths, its
network) by editing the file, and the file it would edit is itself protected.
"""

from __future__ import annotations

from pathlib import Path

from claude_cluster.agent.git import git
from claude_cluster.domain.contract import (
    CONTRACT_PATHS,
    MAX_CONTRACT_BYTES,
    ContractError,
    OperatorPolicy,
    RunPolicy,
    pick_contract,
    resolve,
)
from claude_cluster.domain.wire import ExecuteTaskRequest

__all__ = ["ContractError", "load_run_policy"]


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
