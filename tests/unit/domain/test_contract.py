"""The repository contract: validation with key and line, bounded parsing, the caps."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from claude_cluster.domain.contract import (
    CONTRACT_PATHS,
    DEFAULT_PROTECTED_PATHS,
    MAX_CONTRACT_BYTES,
    PACKAGE_REGISTRIES,
    ContractError,
    OperatorPolicy,
    RepositoryContract,
    host_allowed,
    parse_contract,
    pick_contract,
    resolve,
)
from claude_cluster.domain.wire import ExecuteTaskRequest

FULL = """\
setup:
  - uv sync --extra test
  - name: node
    run: |
      npm ci
      npm run build
    timeout: 300
test: uv run pytest -q
network:
  allow: [PyPI.org, "*.npmjs.org", "127.0.0.1:8765"]
protected_paths: ["deploy/prod/**"]
budget_usd: 5
max_turns: 40
model: claude-sonnet-4-5
runner: claude
instructions: Keep the public API stable.
when_tests_fail: draft
when_untested: fail
baseline: false
"""


def test_a_full_contract_parses() -> None:
    contract = parse_contract(FULL)
    assert [step.run for step in contract.setup] == [
        "uv sync --extra test",
        "npm ci\nnpm run build\n",
    ]
    assert [step.timeout for step in contract.setup] == [600, 300]
    assert contract.setup[1].title == "node"
    assert contract.network is not None
    assert contract.network.allow == ("pypi.org", "*.npmjs.org", "127.0.0.1:8765")
    assert (contract.test, contract.budget_usd, contract.max_turns) == ("uv run pytest -q", 5, 40)
    assert (contract.when_tests_fail, contract.when_untested, contract.baseline) == (
        "draft",
        "fail",
        False,
    )


def test_empty_file_and_single_setup_string() -> None:
    assert parse_contract("") == RepositoryContract()
    assert parse_contract("# only a comment\n") == RepositoryContract()
    assert [s.run for s in parse_contract("setup: make deps\n").setup] == ["make deps"]


@pytest.mark.parametrize(
    ("text", "line", "key", "words"),
    [
        ("test: pytest\ntset: pytest\n", 2, "tset", "unknown key"),
        ("setup:\n  - ok\n  - run: x\n    timeout: 99999\n", 4, "setup.1.timeout", "7200"),
        ("budget_usd: -1\n", 1, "budget_usd", "greater than 0"),
        ("max_turns: lots\n", 1, "max_turns", "integer"),
        ("runner: bash\n", 1, "runner", "'claude'"),
        ("when_tests_fail: ignore\n", 1, "when_tests_fail", "'push'"),
        ("network:\n  allow:\n    - 'evil.com; rm -rf /'\n", 2, "network.allow", "host name"),
        ("network:\n  deny: [x.org]\n", 2, "network.deny", "unknown key"),
        ("protected_paths: ['../outside/**']\n", 1, "protected_paths", "relative glob"),
        ("protected_paths: ['/etc/**']\n", 1, "protected_paths", "relative glob"),
        ("model: 'x; curl evil'\n", 1, "model", "model name"),
        ("setup:\n  - run: ''\n", 2, "setup.0.run", "at least 1"),
    ],
)
def test_errors_name_the_key_and_the_line(text: str, line: int, key: str, words: str) -> None:
    with pytest.raises(ContractError) as caught:
        parse_contract(text)
    assert (caught.value.line, caught.value.key) == (line, key)
    assert f"line {line}" in str(caught.value)
    assert f"key {key!r}" in str(caught.value)
    assert words in str(caught.value)


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("- a list\n", "must be a mapping"),
        ("test: [unclosed\n", "not valid YAML"),
        ("setup: !!python/object/apply:os.system ['id']\n", "not valid YAML"),
    ],
)
def test_not_a_contract(text: str, words: str) -> None:
    with pytest.raises(ContractError, match=words):
        parse_contract(text)


def test_yaml_aliases_are_refused_before_they_can_expand() -> None:
    """A 'billion laughs' file would expand exponentially under validation."""
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]
    with pytest.raises(ContractError, match="anchors and aliases are not allowed") as caught:
        parse_contract("\n".join(lines) + "\n")
    assert caught.value.line == 2


def test_size_is_capped_as_text_and_as_bytes() -> None:
    big = "instructions: " + "x" * MAX_CONTRACT_BYTES + "\n"
    with pytest.raises(ContractError, match="over 64 KiB"):
        parse_contract(big)
    with pytest.raises(ContractError, match="over 64 KiB"):
        parse_contract(big.encode())
    with pytest.raises(ContractError, match="not UTF-8"):
        parse_contract(b"test: \xff\xfe\n")


def test_pick_contract_refuses_two_files() -> None:
    assert pick_contract({}) == (None, None)
    source, contract = pick_contract({CONTRACT_PATHS[1]: b"test: make check\n"})
    assert (source, contract and contract.test) == (".github/claude-cluster.yml", "make check")
    with pytest.raises(ContractError, match="keep one"):
        pick_contract({path: b"" for path in CONTRACT_PATHS})


def test_defaults_without_any_contract() -> None:
    policy = resolve(None)
    assert policy.network_allow == PACKAGE_REGISTRIES
    assert policy.protected_paths == (*DEFAULT_PROTECTED_PATHS, *CONTRACT_PATHS)
    assert (policy.when_tests_fail, policy.when_untested, policy.baseline) == (
        "push",
        "draft",
        True,
    )
    assert policy.notes == ()


def test_operator_caps_budget_turns_and_network() -> None:
    repo = parse_contract(
        "budget_usd: 50\nmax_turns: 500\nnetwork:\n  allow: [pypi.org, evil.example.com]\n"
    )
    operator = OperatorPolicy(
        budget_usd=10, max_turns=100, network={"allow": ["pypi.org", "*.internal.example"]}
    )
    policy = resolve(repo, operator)
    assert (policy.budget_usd, policy.max_turns) == (10, 100)
    assert policy.network_allow == ("pypi.org",)
    assert policy.network_refused == ("evil.example.com",)
    assert any("evil.example.com" in note for note in policy.notes)
    assert any("budget_usd: 50" in note for note in policy.notes)
    # asking for less than the cap is kept as asked
    assert resolve(parse_contract("budget_usd: 2\n"), operator).budget_usd == 2


def test_repository_wins_where_the_table_says_and_operator_defaults_fill_in() -> None:
    operator = OperatorPolicy(
        test="make test", model="opus", when_untested="fail", protected_paths=("infra/**",)
    )
    policy = resolve(parse_contract("test: pytest -q\nprotected_paths: [docs/**]\n"), operator)
    assert (policy.test, policy.model, policy.when_untested) == ("pytest -q", "opus", "fail")
    # protected paths are the union, and the contract cannot be rewritten by a run
    assert set(policy.protected_paths) == {"infra/**", "docs/**", *CONTRACT_PATHS}


def test_a_repository_asking_for_nothing_gets_the_operator_allowlist() -> None:
    operator = OperatorPolicy(network={"allow": ["pypi.org"]})
    assert resolve(parse_contract("test: x\n"), operator).network_allow == ("pypi.org",)
    assert resolve(parse_contract("network: {allow: []}\n"), operator).network_allow == ()


@pytest.mark.parametrize(
    ("host", "allowed"),
    [
        ("pypi.org", True),
        ("PyPI.org.", True),
        ("files.pythonhosted.org", False),
        ("registry.npmjs.org", True),
        ("npmjs.org", False),
        ("evilnpmjs.org", False),
        ("127.0.0.1:8765", True),
        ("127.0.0.1:9999", False),
    ],
)
def test_host_allowed(host: str, allowed: bool) -> None:
    assert host_allowed(host, ("pypi.org", "*.npmjs.org", "127.0.0.1:8765")) is allowed


def test_a_tasks_own_test_command_and_budget_join_the_operators_side() -> None:
    operator = OperatorPolicy(test="make test", budget_usd=4, max_turns=30)
    # the task's budget is one more cap: the smaller of the two holds, whichever it is
    assert operator.with_task(test=None, budget_usd=9).budget_usd == 4
    assert operator.with_task(test=None, budget_usd=2).budget_usd == 2
    assert OperatorPolicy().with_task(test=None, budget_usd=None).budget_usd is None
    # the task's test command comes before the operator contract's default
    assert operator.with_task(test="pytest -q", budget_usd=None).test == "pytest -q"
    assert operator.with_task(test=None, budget_usd=None).test == "make test"
    # the other keys are the operator's as they were
    policy = resolve(
        parse_contract("max_turns: 99\nbudget_usd: 50\n"),
        operator.with_task(test=None, budget_usd=3),
    )
    assert (policy.max_turns, policy.budget_usd) == (30, 3)


def test_the_operator_contract_travels_with_the_dispatch() -> None:
    """A missing field is no operator contract; an agent that does not know one of its
    keys refuses the dispatch rather than drop what could be a cap."""
    base = {
        "run_id": 1,
        "task_id": 2,
        "title": "t",
        "github_repository": "acme/app",
        "github_issue_number": 3,
        "repository_url": "/srv/app.git",
    }
    assert ExecuteTaskRequest.model_validate(base).operator_contract is None
    sent = ExecuteTaskRequest(
        **base,  # type: ignore[arg-type]
        operator_contract=OperatorPolicy(
            budget_usd=2, max_turns=10, network={"allow": ["pypi.org"]}
        ),
    )
    received = ExecuteTaskRequest.model_validate_json(sent.model_dump_json())
    assert received.operator_contract == sent.operator_contract
    assert resolve(None, received.operator_contract).network_allow == ("pypi.org",)
    with pytest.raises(ValidationError, match=r"operator_contract\.max_cost"):
        ExecuteTaskRequest.model_validate({**base, "operator_contract": {"max_cost": 1}})


def test_runner_names_are_checked_against_the_known_runners() -> None:
    from claude_cluster.domain.contract import RUNNERS, known_runner, known_runners

    assert RUNNERS == ("claude", "codex", "aider", "command")
    assert known_runner("codex") == "codex"
    for hostile in ("Codex", "codex ", "../codex", "codex'; --", "", None, 3, ["codex"]):
        assert known_runner(hostile) is None
    assert known_runners(["command", "evil", "claude", "command"]) == ["claude", "command"]
    assert known_runners(None) is None
