"""The repository contract: what a repository asks of a run, and what the operator allows.

A repository may carry ``.claude-cluster.yml`` (or ``.github/claude-cluster.yml``)::

    setup:                          # run in order before the agent, each with a timeout
      - uv sync --extra test
      - run: npm ci
        timeout: 300
    test: uv run pytest -q          # the test command (split with shlex, no shell)
    network:
      allow: [pypi.org, files.pythonhosted.org]
    protected_paths: [".github/workflows/**", "deploy/prod/**"]
    budget_usd: 5
    max_turns: 40
    model: claude-sonnet-4-5
    runner: claude
    instructions: Keep the public API stable.
    when_tests_fail: draft          # push | draft | fail
    when_untested: fail             # draft | fail | push
    baseline: true                  # run the tests on the base commit first

The file is attacker-reachable text (anyone who can open a pull request can propose one),
so parsing is bounded: at most :data:`MAX_CONTRACT_BYTES`, no YAML anchors or aliases
(a "billion laughs" document would otherwise expand exponentially under validation),
unknown keys refused. Every error names the key and the line.

The operator's per-repository configuration (:class:`OperatorPolicy`) supplies defaults
and caps; :func:`resolve` combines both into the :class:`RunPolicy` a run follows. Which
side wins, key by key, is SPEC §4b's table and the docstring of :func:`resolve`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

__all__ = [
    "CONTRACT_PATHS",
    "DEFAULT_PROTECTED_PATHS",
    "MAX_CONTRACT_BYTES",
    "PACKAGE_REGISTRIES",
    "RUNNERS",
    "ContractError",
    "NetworkPolicy",
    "OperatorPolicy",
    "RepositoryContract",
    "RunPolicy",
    "SetupStep",
    "host_allowed",
    "known_runner",
    "known_runners",
    "parse_contract",
    "pick_contract",
    "resolve",
]

#: where a repository's contract is looked up, in this order; two at once is an error
CONTRACT_PATHS: tuple[str, ...] = (".claude-cluster.yml", ".github/claude-cluster.yml")
#: a contract is a few lines; anything near this is a mistake or an attack
MAX_CONTRACT_BYTES = 64 * 1024
#: paths no run may change unless the repository and operator say otherwise
DEFAULT_PROTECTED_PATHS: tuple[str, ...] = (".github/workflows/**",)
#: what a repository that names no domains may reach besides the model API: the public
#: package registries its setup and tests need (the operator's allowlist by default)
PACKAGE_REGISTRIES: tuple[str, ...] = (
    "pypi.org",
    "files.pythonhosted.org",
    "registry.npmjs.org",
    "proxy.golang.org",
    "sum.golang.org",
    "index.crates.io",
    "static.crates.io",
)
Policy = Literal["push", "draft", "fail"]
Runner = Literal["claude", "codex", "aider", "command"]
#: every runner a contract may name, and so every runner the coordinator routes by
RUNNERS: tuple[str, ...] = get_args(Runner)


def known_runner(value: object) -> str | None:
    """``value`` when it is the name of a runner (:data:`RUNNERS`), else None.

    A runner name reaches the coordinator from text it does not control (a repository's
    file, through an agent's report; an agent's own list), so it is checked against this
    closed list before it is stored or used, never trusted as it comes."""
    return value if isinstance(value, str) and value in RUNNERS else None


def known_runners(values: Iterable[object] | None) -> list[str] | None:
    """The known runner names of ``values`` in :data:`RUNNERS` order, once each; unknown
    names are dropped (a newer agent may have a runner this coordinator does not know).
    None stays None: not told."""
    if values is None:
        return None
    named = {v for v in values if known_runner(v) is not None}
    return [r for r in RUNNERS if r in named]


_HOST_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_HOST = re.compile(rf"^(?:\*\.)?{_HOST_LABEL}(?:\.{_HOST_LABEL})*(?::[0-9]{{1,5}})?$")
_MODEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:\-\[\]/]{0,99}$")


class ContractError(ValueError):
    """A contract file that cannot be used; the message names the key and the line."""

    def __init__(self, message: str, *, key: str | None = None, line: int | None = None) -> None:
        where = ", ".join(
            part for part in (f"line {line}" if line else "", f"key {key!r}" if key else "") if part
        )
        super().__init__(f"{where}: {message}" if where else message)
        self.key = key
        self.line = line


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SetupStep(_Strict):
    """One setup command: a shell script run in the run's sandbox before the agent."""

    run: str = Field(min_length=1, max_length=16_384)
    name: str | None = Field(default=None, max_length=200)
    #: seconds before the step is stopped and the run fails as ``setup failed``
    timeout: int = Field(default=600, ge=1, le=7_200)

    @property
    def title(self) -> str:
        return self.name or self.run.splitlines()[0][:80]


class NetworkPolicy(_Strict):
    #: host names (``*.example.com`` for subdomains, ``host:port``) setup and tests may reach
    allow: tuple[str, ...] = Field(default=(), max_length=100)

    @field_validator("allow", mode="before")
    @classmethod
    def _hosts(cls, value: Any) -> Any:
        if not isinstance(value, list | tuple):
            return value
        hosts = []
        for item in value:
            if not isinstance(item, str) or not _HOST.match(item.strip().lower()):
                raise ValueError(f"{item!r} is not a host name (example: pypi.org, *.npmjs.org)")
            hosts.append(item.strip().lower())
        return tuple(dict.fromkeys(hosts))


class RepositoryContract(_Strict):
    """What ``.claude-cluster.yml`` may say; every key is optional."""

    setup: tuple[SetupStep, ...] = Field(default=(), max_length=50)
    test: str | None = Field(default=None, min_length=1, max_length=4_096)
    network: NetworkPolicy | None = None
    protected_paths: tuple[str, ...] | None = Field(default=None, max_length=200)
    budget_usd: float | None = Field(default=None, gt=0, le=10_000)
    max_turns: int | None = Field(default=None, ge=1, le=1_000)
    model: str | None = None
    runner: Runner | None = None
    instructions: str | None = Field(default=None, max_length=8_000)
    when_tests_fail: Policy | None = None
    when_untested: Policy | None = None
    baseline: bool | None = None

    @field_validator("setup", mode="before")
    @classmethod
    def _steps(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [value]
        if isinstance(value, list):
            return [{"run": item} if isinstance(item, str) else item for item in value]
        return value

    @field_validator("protected_paths")
    @classmethod
    def _globs(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        for glob in value or ():
            path = PurePosixPath(glob)
            if not glob or len(glob) > 1_024 or path.is_absolute() or ".." in path.parts:
                raise ValueError(f"{glob!r} must be a relative glob inside the repository")
        return value

    @field_validator("model")
    @classmethod
    def _model(cls, value: str | None) -> str | None:
        if value is not None and not _MODEL.match(value):
            raise ValueError(f"{value!r} is not a model name")
        return value


class OperatorPolicy(RepositoryContract):
    """The operator's side, per repository (``contract:`` in ``GITHUB_REPOSITORIES_FILE``).

    The same keys as the repository's file, read as defaults, plus the caps:
    ``budget_usd`` and ``max_turns`` are also the most a repository may ask for, and
    ``network.allow`` is the allowlist a repository's domains must fall within
    (:data:`PACKAGE_REGISTRIES` when the operator names none).
    """

    def with_task(self, *, test: str | None, budget_usd: float | None) -> OperatorPolicy:
        """This policy with a task's own settings, which are the operator's side too (the
        repository's ``test_command`` or the API's task fields): the task's test command is
        the default before this policy's, and its budget is one more cap (the smaller
        wins)."""
        budgets = [b for b in (budget_usd, self.budget_usd) if b is not None]
        return self.model_copy(
            update={
                "test": _first(test, self.test),
                "budget_usd": min(budgets) if budgets else None,
            }
        )


@dataclass(frozen=True)
class RunPolicy:
    """What a run does: the repository's contract within the operator's caps."""

    #: the contract file it came from, relative to the repository root; None = none found
    source: str | None = None
    setup: tuple[SetupStep, ...] = ()
    test: str | None = None
    #: domains setup and tests may reach through the gateway (the model API always)
    network_allow: tuple[str, ...] = PACKAGE_REGISTRIES
    #: domains the repository asked for that the operator's allowlist refuses
    network_refused: tuple[str, ...] = ()
    protected_paths: tuple[str, ...] = DEFAULT_PROTECTED_PATHS
    budget_usd: float | None = None
    max_turns: int | None = None
    model: str | None = None
    runner: Runner | None = None
    instructions: str | None = None
    when_tests_fail: Policy = "push"
    when_untested: Policy = "draft"
    baseline: bool = True
    #: what the caps changed, one sentence each, for the run's events and ``repo check``
    notes: tuple[str, ...] = field(default=())


def parse_contract(text: str | bytes, *, source: str = CONTRACT_PATHS[0]) -> RepositoryContract:
    """Validate a contract file's text.

    Raises:
        ContractError: too large, not YAML, anchors or aliases, not a mapping, an unknown
            key or a bad value; the message names the key and the line.
    """
    if isinstance(text, bytes):
        if len(text) > MAX_CONTRACT_BYTES:
            raise ContractError(f"{source} is over {MAX_CONTRACT_BYTES // 1024} KiB")
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError:
            raise ContractError(f"{source} is not UTF-8 text") from None
    if len(text.encode("utf-8")) > MAX_CONTRACT_BYTES:
        raise ContractError(f"{source} is over {MAX_CONTRACT_BYTES // 1024} KiB")
    loader = _NoAliasLoader(text)
    try:
        root = loader.get_single_node()
        document = loader.construct_document(root) if root is not None else None
    except yaml.MarkedYAMLError as exc:
        line = exc.problem_mark.line + 1 if exc.problem_mark else None
        raise ContractError(f"{source} is not valid YAML: {exc.problem}", line=line) from None
    except yaml.YAMLError as exc:
        raise ContractError(f"{source} is not valid YAML: {exc}") from None
    finally:
        loader.dispose()
    if document is None:
        return RepositoryContract()
    if not isinstance(document, dict):
        raise ContractError(f"{source} must be a mapping of keys (setup, test, ...)", line=1)
    try:
        return RepositoryContract.model_validate(document)
    except ValidationError as exc:
        error = exc.errors()[0]
        loc = tuple(error["loc"])
        key = ".".join(str(part) for part in loc) or None
        message = "unknown key" if error["type"] == "extra_forbidden" else error["msg"]
        raise ContractError(message, key=key, line=_line_of(root, loc)) from None


def pick_contract(files: dict[str, bytes]) -> tuple[str | None, RepositoryContract | None]:
    """The contract among the files found at :data:`CONTRACT_PATHS` (path → content).

    Raises:
        ContractError: both places hold one (which one counts would be a guess), or the
            one found is invalid.
    """
    found = [path for path in CONTRACT_PATHS if path in files]
    if len(found) > 1:
        raise ContractError(f"both {' and '.join(found)} exist; keep one")
    if not found:
        return None, None
    return found[0], parse_contract(files[found[0]], source=found[0])


def resolve(
    contract: RepositoryContract | None,
    operator: OperatorPolicy | None = None,
    *,
    source: str | None = None,
) -> RunPolicy:
    """Combine a repository's contract with the operator's policy.

    ========================  ===============================================================
    key                       which side wins
    ========================  ===============================================================
    setup, test,              the repository's, else the operator's default
    instructions, model,
    runner, when_tests_fail,
    when_untested, baseline
    budget_usd, max_turns     the smaller of the two (the operator's value is a cap)
    network.allow             the repository's domains that the operator's allowlist covers
                              (refused ones are reported); none asked → the allowlist
    protected_paths           both (union), and the contract files themselves always
    ========================  ===============================================================
    """
    repo = contract or RepositoryContract()
    op = operator or OperatorPolicy()
    notes: list[str] = []
    allowlist = op.network.allow if op.network is not None else PACKAGE_REGISTRIES
    refused: tuple[str, ...] = ()
    if repo.network is None:
        allowed = tuple(allowlist)
    else:
        allowed = tuple(h for h in repo.network.allow if host_allowed(h, allowlist))
        refused = tuple(h for h in repo.network.allow if h not in allowed)
        if refused:
            notes.append(f"network.allow: not in the operator's allowlist: {', '.join(refused)}")
    protected = tuple(
        dict.fromkeys(
            [
                *(
                    op.protected_paths
                    if op.protected_paths is not None
                    else DEFAULT_PROTECTED_PATHS
                ),
                *(repo.protected_paths or ()),
                *CONTRACT_PATHS,
            ]
        )
    )
    return RunPolicy(
        source=source,
        setup=repo.setup or op.setup,
        test=_first(repo.test, op.test),
        network_allow=allowed,
        network_refused=refused,
        protected_paths=protected,
        budget_usd=_capped("budget_usd", repo.budget_usd, op.budget_usd, notes),
        max_turns=_capped("max_turns", repo.max_turns, op.max_turns, notes),
        model=_first(repo.model, op.model),
        runner=_first(repo.runner, op.runner),
        instructions=_first(repo.instructions, op.instructions),
        when_tests_fail=_first(repo.when_tests_fail, op.when_tests_fail) or "push",
        when_untested=_first(repo.when_untested, op.when_untested) or "draft",
        baseline=_first(repo.baseline, op.baseline, True),
        notes=tuple(notes),
    )


def host_allowed(host: str, patterns: Iterable[str]) -> bool:
    """Whether ``host`` (optionally ``host:port``) is covered by one of ``patterns``.

    ``example.com`` covers itself only; ``*.example.com`` covers its subdomains (not the
    bare domain); a pattern with a port covers that port only, one without covers any.
    """
    name, _, port = host.lower().rstrip(".").partition(":")
    for pattern in patterns:
        p_name, _, p_port = pattern.lower().partition(":")
        if p_port and p_port != port:
            continue
        if p_name.startswith("*."):
            if name.endswith(p_name[1:]) and name != p_name[2:]:
                return True
        elif name == p_name:
            return True
    return False


class _NoAliasLoader(yaml.SafeLoader):
    """PyYAML's safe loader without anchors and aliases."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()  # type: ignore[no-untyped-call]
            raise yaml.composer.ComposerError(
                None, None, "anchors and aliases are not allowed", event.start_mark
            )
        return super().compose_node(parent, index)


def _line_of(root: yaml.Node | None, loc: Sequence[Any]) -> int | None:
    """The 1-based line of the value at ``loc`` (or of its key, or of the nearest parent)."""
    node = root
    line = root.start_mark.line + 1 if root is not None else None
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            match = next((kv for kv in node.value if kv[0].value == str(part)), None)
            if match is None:
                break
            line = match[0].start_mark.line + 1
            node = match[1]
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
            if part >= len(node.value):
                break
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            break
    return line


def _first(*values: Any) -> Any:
    return next((v for v in values if v is not None), None)


def _capped(key: str, asked: Any, cap: Any, notes: list[str]) -> Any:
    if asked is None:
        return cap
    if cap is not None and asked > cap:
        notes.append(f"{key}: {asked:g} asked, capped to the operator's {cap:g}")
        return cap
    return asked
