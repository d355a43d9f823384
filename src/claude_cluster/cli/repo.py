"""``claude-cluster repo check``: validate a repository contract and show what a run would do."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from claude_cluster.domain.contract import (
    CONTRACT_PATHS,
    MAX_CONTRACT_BYTES,
    ContractError,
    OperatorPolicy,
    RepositoryContract,
    RunPolicy,
    parse_contract,
    pick_contract,
    resolve,
)
from claude_cluster.errors import ConfigError

app = typer.Typer(help="Repository contracts (.claude-cluster.yml).", no_args_is_help=True)
out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


@app.command()
def check(
    path: Annotated[
        Path, typer.Argument(help="a repository checkout, or the contract file itself")
    ] = Path("."),
    repositories_file: Annotated[
        Path | None,
        typer.Option(
            "--repositories-file",
            envvar="GITHUB_REPOSITORIES_FILE",
            help="the operator's per-repository file, whose caps apply",
        ),
    ] = None,
    repository: Annotated[
        str | None,
        typer.Option("--repository", help="owner/name whose operator settings apply"),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the plan as JSON")] = False,
) -> None:
    """Validate the contract and print what a run would do (exit 1 when it is invalid)."""
    try:
        source, contract = _read(path)
        policy = resolve(contract, _operator(repositories_file, repository), source=source)
    except ContractError as exc:
        err.print(f"[red]invalid contract[/red]: {exc}")
        raise typer.Exit(1) from None
    if as_json:
        out.print_json(json.dumps(asdict(policy), default=str))
        return
    _print_plan(policy, path)


def _read(path: Path) -> tuple[str | None, RepositoryContract | None]:
    if path.is_file():
        return path.name, parse_contract(_bytes(path), source=str(path))
    if not path.is_dir():
        err.print(f"[red]{path}[/red] is neither a directory nor a file")
        raise typer.Exit(2)
    files = {name: _bytes(path / name) for name in CONTRACT_PATHS if (path / name).is_file()}
    return pick_contract(files)


def _bytes(path: Path) -> bytes:
    with path.open("rb") as handle:  # one byte past the cap: a huge file is not read whole
        return handle.read(MAX_CONTRACT_BYTES + 1)


def _operator(repositories_file: Path | None, repository: str | None) -> OperatorPolicy | None:
    if repositories_file is None:
        return None
    if repository is None:
        err.print("[red]--repository owner/name[/red] is needed with --repositories-file")
        raise typer.Exit(2)
    from claude_cluster.github.repos import load_repositories

    try:
        return load_repositories(repository, repositories_file)[repository].contract
    except ConfigError as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None


def _print_plan(policy: RunPolicy, path: Path) -> None:
    out.print(f"contract: {policy.source or 'none (defaults apply)'}")
    if policy.setup:
        out.print("setup, in the sandbox, in order:")
        for step in policy.setup:
            out.print(f"  - {step.title}  (timeout {step.timeout} s)")
    else:
        out.print("setup: none declared (the agent provisions Python, Node, Go and Rust projects)")
    out.print(f"tests: {policy.test or _detected(path)}")
    out.print(
        "baseline: "
        + ("tests run on the base commit first" if policy.baseline else "off (no baseline run)")
    )
    out.print(f"network: the model API, {', '.join(policy.network_allow) or 'nothing else'}")
    out.print(f"protected paths: {', '.join(policy.protected_paths)}")
    budget = f"${policy.budget_usd:g}" if policy.budget_usd else "the task budget"
    out.print(f"budget: {budget}")
    out.print(f"max turns: {policy.max_turns or 'the agent default'}")
    out.print(f"runner: {policy.runner or 'the agent default'}; model: {policy.model or 'default'}")
    out.print(f"when tests fail: {policy.when_tests_fail}; when untested: {policy.when_untested}")
    if policy.instructions:
        out.print(f"instructions: {policy.instructions.splitlines()[0][:100]}")
    for note in policy.notes:
        out.print(f"[yellow]note[/yellow]: {note}")


def _detected(path: Path) -> str:
    from claude_cluster.agent.verify import detect_test_command

    command = detect_test_command(path) if path.is_dir() else None
    if command is None:
        return "none declared and none detected: the run would be untested"
    return f"none declared; detected: {' '.join(command)}"
