"""Setting up a run's test environment: the repository's own setup, or one we detect.

A repository that declares ``setup`` in its contract gets exactly that: each step a bash
script (``-e -o pipefail``, like CI systems), run in the run's sandbox with its timeout.
A repository that declares nothing is provisioned from what it contains:

==========================  =================================================================
found                       steps
==========================  =================================================================
``uv.lock``                 ``uv sync --frozen --all-extras`` (the dev group included)
``pyproject.toml`` /        ``uv venv .venv``, then ``uv pip install -e '.[<test extras>]'``
``setup.py`` / ``setup.cfg`` (extras named test, tests, testing or dev) and ``pytest``
``requirements*.txt``       ``uv venv .venv``, then ``uv pip install -r …`` and ``pytest``
``package.json``            ``npm ci`` with a lockfile, else ``npm install`` (writing none)
``go.mod``                  ``go mod download``
``Cargo.toml``              ``cargo fetch``
==========================  =================================================================

Every tool keeps its downloads in the repository's own cache directory (``UV_CACHE_DIR``,
``npm_config_cache``, ``GOMODCACHE``/``GOCACHE``, ``CARGO_HOME``), so a second run of the
same repository is faster and no repository sees another's cache. A tool the agent host
lacks is reported as such instead of failing obscurely. :func:`plan_setup` decides;
:func:`run_setup` runs the plan through whatever runs commands in the sandbox.
"""

from __future__ import annotations

import shutil
import sys
import time
import tomllib
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from claude_cluster.domain.contract import RunPolicy

__all__ = ["Plan", "SetupReport", "Step", "StepReport", "cache_env", "plan_setup", "run_setup"]

#: how long a detected step may take (a contract's steps carry their own)
DETECTED_TIMEOUT = 900
#: output kept per step for the report
TAIL_CHARS = 4_000
_TEST_EXTRAS = ("test", "tests", "testing", "dev")
_REQUIREMENTS = ("requirements.txt", "requirements-dev.txt", "requirements-test.txt")
_NPM_LOCKS = ("package-lock.json", "npm-shrinkwrap.json")
#: how a contract's step runs: bash, stopping at the first failing command, as CI does
_BASH = ("bash", "--noprofile", "--norc", "-eo", "pipefail", "-c")

#: ``run(argv, cwd=, env=, timeout=)`` → (exit code or None when stopped, output)
CommandRun = Callable[..., Awaitable[tuple[int | None, str]]]


@dataclass(frozen=True)
class Step:
    name: str
    argv: tuple[str, ...]
    timeout: int


@dataclass(frozen=True)
class Plan:
    """What to run before the agent, and where the tools keep their caches."""

    #: ``contract`` (the repository's own setup), ``detected: python, node``, or ``none``
    source: str
    steps: tuple[Step, ...] = ()
    #: cache locations for every step, the tests and the agent's own commands
    env: Mapping[str, str] = field(default_factory=dict)
    #: tools the repository needs that this agent host lacks, one sentence each
    missing: tuple[str, ...] = ()


@dataclass(frozen=True)
class StepReport:
    name: str
    exit_code: int | None
    duration: float
    output_tail: str


@dataclass(frozen=True)
class SetupReport:
    ok: bool
    steps: tuple[StepReport, ...] = ()
    #: why the environment is not ready (a failed step, a missing tool); None when ok
    reason: str | None = None
    duration: float = 0.0


def plan_setup(
    worktree: Path,
    policy: RunPolicy,
    *,
    cache_dir: Path,
    which: Callable[[str], str | None] = shutil.which,
) -> Plan:
    """The setup of ``worktree``: the contract's steps, else detected ones."""
    env = cache_env(cache_dir)
    if policy.setup:
        scripts = tuple(Step(s.title, (*_BASH, s.run), s.timeout) for s in policy.setup)
        return Plan("contract", scripts, env)
    steps: list[Step] = []
    missing: list[str] = []
    found: list[str] = []
    for kind, detect in _DETECTORS:
        more, lacks = detect(worktree, which)
        if more or lacks:
            found.append(kind)
        steps.extend(more)
        missing.extend(lacks)
    source = f"detected: {', '.join(found)}" if found else "none"
    return Plan(source, tuple(steps), env, tuple(missing))


async def run_setup(
    plan: Plan, run: CommandRun, *, cwd: Path, env: Mapping[str, str]
) -> SetupReport:
    """Run the plan's steps in order; the first that fails (or times out) ends it."""
    started = time.monotonic()
    if plan.missing:
        return SetupReport(False, reason="; ".join(plan.missing))
    reports: list[StepReport] = []
    for step in plan.steps:
        t0 = time.monotonic()
        code, output = await run(step.argv, cwd=cwd, env={**env, **plan.env}, timeout=step.timeout)
        took = time.monotonic() - t0
        reports.append(StepReport(step.name, code, took, output[-TAIL_CHARS:]))
        if code != 0:
            why = f"timed out after {step.timeout} s" if code is None else f"exited {code}"
            return SetupReport(
                False, tuple(reports), f"setup step {step.name!r} {why}", time.monotonic() - started
            )
    return SetupReport(True, tuple(reports), None, time.monotonic() - started)


def cache_env(cache: Path) -> dict[str, str]:
    return {
        "UV_CACHE_DIR": str(cache / "uv"),
        "UV_PYTHON_DOWNLOADS": "never",  # use the host's Python; no interpreter downloads
        "npm_config_cache": str(cache / "npm"),
        "npm_config_update_notifier": "false",
        "GOMODCACHE": str(cache / "go" / "mod"),
        "GOCACHE": str(cache / "go" / "build"),
        "CARGO_HOME": str(cache / "cargo"),
    }


Detector = Callable[[Path, Callable[[str], str | None]], tuple[list[Step], list[str]]]


def _uv(which: Callable[[str], str | None]) -> str | None:
    beside = Path(sys.executable).parent / "uv"  # the agent's venv ships uv
    return str(beside) if beside.exists() else which("uv")


def _python(root: Path, which: Callable[[str], str | None]) -> tuple[list[Step], list[str]]:
    pyproject = root / "pyproject.toml"
    requirements = [name for name in _REQUIREMENTS if (root / name).is_file()]
    project = pyproject.is_file() or (root / "setup.py").is_file() or (root / "setup.cfg").is_file()
    if not project and not requirements:
        return [], []
    uv = _uv(which)
    if uv is None:
        return [], ["uv is not installed on this agent (needed to set up the Python project)"]
    if (root / "uv.lock").is_file():
        return [Step("uv sync", (uv, "sync", "--frozen", "--all-extras"), DETECTED_TIMEOUT)], []
    install = [uv, "pip", "install", "--python", ".venv/bin/python"]
    if project:
        extras = _extras(pyproject)
        install += ["-e", f".[{','.join(extras)}]" if extras else "."]
    for name in requirements:
        install += ["-r", name]
    install.append("pytest")
    return [
        Step("python venv", (uv, "venv", "--allow-existing", ".venv"), DETECTED_TIMEOUT),
        Step("python install", tuple(install), DETECTED_TIMEOUT),
    ], []


def _extras(pyproject: Path) -> list[str]:
    try:
        data = tomllib.loads(pyproject.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError):
        return []
    declared = (data.get("project") or {}).get("optional-dependencies") or {}
    return [name for name in _TEST_EXTRAS if isinstance(declared, dict) and name in declared]


def _node(root: Path, which: Callable[[str], str | None]) -> tuple[list[Step], list[str]]:
    if not (root / "package.json").is_file():
        return [], []
    for lock, tool in (("yarn.lock", "yarn"), ("pnpm-lock.yaml", "pnpm")):
        if (root / lock).is_file() and not any((root / n).is_file() for n in _NPM_LOCKS):
            if which(tool) is None:
                return [], [f"{tool} is not installed on this agent (the repository has {lock})"]
            argv = (tool, "install", "--frozen-lockfile")
            return [Step(f"{tool} install", argv, DETECTED_TIMEOUT)], []
    if which("npm") is None:
        return [], ["npm is not installed on this agent (the repository has package.json)"]
    flags = ("--no-audit", "--no-fund", "--prefer-offline")  # the cache first: faster reruns
    if any((root / name).is_file() for name in _NPM_LOCKS):
        return [Step("npm ci", ("npm", "ci", *flags), DETECTED_TIMEOUT)], []
    # without a lockfile of its own, the repository gets none from setup: a file the run
    # did not write must not be delivered as its work
    install = ("npm", "install", "--no-package-lock", *flags)
    return [Step("npm install", install, DETECTED_TIMEOUT)], []


def _single(marker: str, tool: str, argv: Sequence[str]) -> Detector:
    def detect(root: Path, which: Callable[[str], str | None]) -> tuple[list[Step], list[str]]:
        if not (root / marker).is_file():
            return [], []
        if which(tool) is None:
            return [], [f"{tool} is not installed on this agent (the repository has {marker})"]
        return [Step(" ".join(argv), tuple(argv), DETECTED_TIMEOUT)], []

    return detect


_DETECTORS: tuple[tuple[str, Detector], ...] = (
    ("python", _python),
    ("node", _node),
    ("go", _single("go.mod", "go", ("go", "mod", "download"))),
    ("rust", _single("Cargo.toml", "cargo", ("cargo", "fetch"))),
)
