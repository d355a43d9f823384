"""Setting up a run's test environment: the repository's own setup, or one we detect.

A repository that declares ``setup`` in its contract gets exactly that: each step a bash
script (``-e -o pipefail``, like CI systems), run in the run's sandbox with its timeout.
A repository that declares nothing is provisioned from what it contains:

==========================  =================================================================
found                       steps
==========================  =================================================================
``uv.lock``                 ``uv venv .venv``, then ``uv sync --frozen --all-extras`` (the
                            dev group included)
``pyproject.toml`` /        ``uv venv .venv``, then ``uv pip install -e '.[<test extras>]'``
``setup.py`` / ``setup.cfg`` (extras named test, tests, testing or dev) and ``pytest``
``requirements*.txt``       ``uv venv .venv``, then ``uv pip install -r …`` and ``pytest``
``package.json``            ``npm ci`` with a lockfile, else ``npm install`` (writing none)
``go.mod``                  ``go mod download``
``Cargo.toml``              ``cargo fetch``
==========================  =================================================================

Every tool keeps its downloads in the repository's own cache directory (``UV_CACHE_DIR``,
``npm_config_cache``, ``GOMODCACHE``/``GOCACHE``, ``CARGO_HOME``), so a second run of the
same repository is faster and no repository sees another's cache. The virtualenv is made
relocatable, so that a copy of it works in another run's worktree.

The ``.venv`` and ``node_modules`` that detected steps make are saved after the first run
and reused (:mod:`~claude_cluster.agent.envstore`): a later run of the same repository
whose manifests, lockfiles, tools and commands are unchanged gets a copy instead of the
install, and only the project itself is installed again (``uv pip install --no-deps -e .``,
or ``uv sync`` that checks the venv against ``uv.lock``). Where the dependencies are not
known from the keyed files alone (``setup.py``, dynamic metadata, local paths, requirements
files outside the repository; npm workspaces, install scripts of the package itself,
``file:`` dependencies) the full install still runs on top of the copy, or, for npm,
nothing is reused. A contract's own setup is never reused: what it makes is unknown.

A tool the agent host lacks is reported as such instead of failing obscurely.
:func:`plan_setup` decides; :func:`run_setup` runs the plan through whatever runs commands
in the sandbox.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import sys
import time
import tomllib
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from claude_cluster.agent.envstore import EnvStore, environment_key, tool_identity
from claude_cluster.domain.contract import RunPolicy

__all__ = [
    "Plan",
    "Reuse",
    "SetupReport",
    "Stage",
    "Step",
    "StepReport",
    "cache_env",
    "envs_dir",
    "plan_setup",
    "run_setup",
]

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
class Reuse:
    """A directory that a stage's steps make, saved after them and restored instead."""

    #: relative to the worktree: ``.venv``, ``node_modules``
    directory: str
    #: the files (relative to the worktree) that decide what the steps install
    inputs: tuple[str, ...]
    #: tools besides the steps' own commands whose identity is part of the key
    tools: tuple[str, ...] = ()
    #: what still runs after a restore (the project itself), instead of the steps
    refresh: tuple[Step, ...] = ()
    #: paths inside the directory that must resolve after a restore (the interpreter)
    requires: tuple[str, ...] = ()


@dataclass(frozen=True)
class Stage:
    """Steps that run together; with ``reuse``, what they make can be saved and restored."""

    steps: tuple[Step, ...]
    reuse: Reuse | None = None


@dataclass(frozen=True)
class Plan:
    """What to run before the agent, and where the tools keep their caches."""

    #: ``contract`` (the repository's own setup), ``detected: python, node``, or ``none``
    source: str
    stages: tuple[Stage, ...] = ()
    #: cache locations for every step, the tests and the agent's own commands
    env: Mapping[str, str] = field(default_factory=dict)
    #: tools the repository needs that this agent host lacks, one sentence each
    missing: tuple[str, ...] = ()
    #: where the repository's saved environments are kept (:func:`envs_dir`)
    store: Path | None = None

    @property
    def steps(self) -> tuple[Step, ...]:
        """Every step of a run that restores nothing."""
        return tuple(step for stage in self.stages for step in stage.steps)


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
        return Plan("contract", (Stage(scripts),), env)
    stages: list[Stage] = []
    missing: list[str] = []
    found: list[str] = []
    for kind, detect in _DETECTORS:
        stage, lacks = detect(worktree, which)
        if stage is not None or lacks:
            found.append(kind)
        if stage is not None:
            stages.append(stage)
        missing.extend(lacks)
    source = f"detected: {', '.join(found)}" if found else "none"
    return Plan(source, tuple(stages), env, tuple(missing), envs_dir(cache_dir))


def envs_dir(cache_dir: Path) -> Path:
    """Where the saved environments of the repository whose tool caches are ``cache_dir``
    live: beside it, not in it, since a run's sandbox may write its tool caches."""
    return cache_dir.parent / ".environments" / cache_dir.name


async def run_setup(
    plan: Plan, run: CommandRun, *, cwd: Path, env: Mapping[str, str]
) -> SetupReport:
    """Run the plan's steps in order; the first that fails (or times out) ends it.

    A stage whose directory was saved by an earlier run with the same key is restored
    from it and runs only its refresh steps; a stage that ran in full is saved.
    """
    started = time.monotonic()
    if plan.missing:
        return SetupReport(False, reason="; ".join(plan.missing))
    store = EnvStore(plan.store) if plan.store is not None else None
    step_env = {**env, **plan.env}
    reports: list[StepReport] = []
    for stage in plan.stages:
        reuse = stage.reuse if store is not None else None
        key = _key(stage, cwd, step_env) if reuse is not None else ""
        steps = stage.steps
        hit = False
        if store is not None and reuse is not None:
            restored = await _restore(store, reuse, key, cwd)
            if restored is not None:
                reports.append(restored)
                steps, hit = reuse.refresh, True
        for step in steps:
            t0 = time.monotonic()
            code, output = await run(step.argv, cwd=cwd, env=step_env, timeout=step.timeout)
            took = time.monotonic() - t0
            reports.append(StepReport(step.name, code, took, output[-TAIL_CHARS:]))
            if code != 0:
                why = f"timed out after {step.timeout} s" if code is None else f"exited {code}"
                reason = f"setup step {step.name!r} {why}"
                return SetupReport(False, tuple(reports), reason, time.monotonic() - started)
        if store is not None and reuse is not None and not hit:
            reports.append(await _save(store, reuse, key, cwd))
    return SetupReport(True, tuple(reports), None, time.monotonic() - started)


def _key(stage: Stage, cwd: Path, env: Mapping[str, str]) -> str:
    """The stage's key: its inputs' contents, its commands, the tools found on its PATH."""
    assert stage.reuse is not None
    path = env.get("PATH", os.defpath)
    tools = {name: tool_identity(shutil.which(name, path=path)) for name in stage.reuse.tools}
    for step in stage.steps:
        tools[step.argv[0]] = tool_identity(shutil.which(step.argv[0], path=path))
    argv = [step.argv for step in (*stage.steps, *stage.reuse.refresh)]
    return environment_key(cwd, stage.reuse.inputs, argv=argv, tools=tools)


async def _restore(store: EnvStore, reuse: Reuse, key: str, cwd: Path) -> StepReport | None:
    t0 = time.monotonic()
    target = cwd / reuse.directory
    got = await asyncio.to_thread(
        store.restore, reuse.directory, key, target, requires=reuse.requires
    )
    if got is None:
        return None
    note = (
        f"reused {reuse.directory} saved by an earlier run of this repository "
        f"(key {key[:12]}, {got.entries} entries, {got.size / 1e6:.1f} MB)"
    )
    return StepReport(f"restore {reuse.directory}", 0, time.monotonic() - t0, note)


async def _save(store: EnvStore, reuse: Reuse, key: str, cwd: Path) -> StepReport:
    """Save what the stage made; a failure to save (a full disk) does not fail setup."""
    t0 = time.monotonic()
    try:
        got = await asyncio.to_thread(store.save, reuse.directory, key, cwd / reuse.directory)
    except OSError as exc:
        note = f"not saved for later runs: {exc}"
    else:
        note = (
            f"saved for later runs of this repository (key {key[:12]}, {got.entries} entries, "
            f"{got.size / 1e6:.1f} MB)"
            if got is not None
            else "nothing new to save"
        )
    return StepReport(f"save {reuse.directory}", 0, time.monotonic() - t0, note)


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


Detector = Callable[[Path, Callable[[str], str | None]], tuple[Stage | None, list[str]]]
#: files besides the manifests that change what uv installs
_PYTHON_INPUTS = (".python-version", "uv.toml")
#: npm's lifecycle scripts of the package itself that ``npm ci``/``npm install`` run: they
#: may write anywhere in the worktree, so a copy of node_modules would not replace them
_NPM_OWN_SCRIPTS = (
    "preinstall", "install", "postinstall", "prepublish", "preprepare", "prepare", "postprepare",
)  # fmt: skip
_NPM_DEPENDENCIES = ("dependencies", "devDependencies", "optionalDependencies")
#: requirement lines that pull in what no keyed file shows: another file, a local path
_REQUIREMENT_INCLUDE = re.compile(r"^\s*(-r|-c|--requirement|--constraint)\b\s*=?\s*(\S+)")
_REQUIREMENT_LOCAL = re.compile(r"^\s*(-e|--editable|\.|/|~|file:)|@\s*file:")


def _uv(which: Callable[[str], str | None]) -> str | None:
    beside = Path(sys.executable).parent / "uv"  # the agent's venv ships uv
    return str(beside) if beside.exists() else which("uv")


def _python(root: Path, which: Callable[[str], str | None]) -> tuple[Stage | None, list[str]]:
    pyproject = root / "pyproject.toml"
    requirements = [name for name in _REQUIREMENTS if (root / name).is_file()]
    project = pyproject.is_file() or (root / "setup.py").is_file() or (root / "setup.cfg").is_file()
    if not project and not requirements:
        return None, []
    uv = _uv(which)
    if uv is None:
        return None, ["uv is not installed on this agent (needed to set up the Python project)"]
    # relocatable: a saved venv works in another run's worktree (scripts find their python)
    venv = Step(
        "python venv", (uv, "venv", "--relocatable", "--allow-existing", ".venv"), DETECTED_TIMEOUT
    )
    inputs = ("pyproject.toml", "setup.py", "setup.cfg", *_PYTHON_INPUTS)
    python_tools = ("python3", "python")
    if (root / "uv.lock").is_file():
        # uv sync checks the restored venv against the lock and installs the project again
        sync = Step("uv sync", (uv, "sync", "--frozen", "--all-extras"), DETECTED_TIMEOUT)
        reuse = Reuse(".venv", (*inputs, "uv.lock"), python_tools, (sync,), ("bin/python",))
        return Stage((venv, sync), reuse), []
    install = [uv, "pip", "install", "--python", ".venv/bin/python"]
    data = _pyproject(pyproject)
    spec = "."
    if project:
        extras = _extras(data)
        spec = f".[{','.join(extras)}]" if extras else "."
        install += ["-e", spec]
    for name in requirements:
        install += ["-r", name]
    install.append("pytest")
    full = Step("python install", tuple(install), DETECTED_TIMEOUT)
    included, static = _requirement_files(root, requirements)
    static = static and (not project or _static_dependencies(data))
    if not static:
        refresh: tuple[Step, ...] = (full,)  # uv resolves again and installs what changed
    elif project:
        own = (uv, "pip", "install", "--python", ".venv/bin/python", "--no-deps", "-e", spec)
        refresh = (Step("python project", own, DETECTED_TIMEOUT),)
    else:
        refresh = ()
    reuse = Reuse(".venv", (*inputs, *included), python_tools, refresh, ("bin/python",))
    return Stage((venv, full), reuse), []


def _pyproject(pyproject: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(pyproject.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError):
        return {}


def _extras(data: Mapping[str, Any]) -> list[str]:
    declared = (data.get("project") or {}).get("optional-dependencies") or {}
    return [name for name in _TEST_EXTRAS if isinstance(declared, dict) and name in declared]


def _static_dependencies(data: Mapping[str, Any]) -> bool:
    """Whether pyproject.toml alone says what the project depends on (PEP 621, nothing
    dynamic, no local path): otherwise setup.py or other files decide it."""
    project = data.get("project")
    if not isinstance(project, dict):
        return False
    dynamic = project.get("dynamic") or []
    if not isinstance(dynamic, list) or {"dependencies", "optional-dependencies"} & set(dynamic):
        return False
    declared = [*(project.get("dependencies") or [])]
    for extra in (project.get("optional-dependencies") or {}).values():
        declared += extra if isinstance(extra, list) else []
    return not any(_REQUIREMENT_LOCAL.search(str(req)) for req in declared)


def _requirement_files(root: Path, names: Sequence[str]) -> tuple[list[str], bool]:
    """The requirements files and those they include (-r, -c), relative to ``root``, and
    whether they are all there is (no local path, nothing outside the repository)."""
    found: list[str] = []
    pending = list(names)
    static = True
    while pending and len(found) < 50:
        name = pending.pop()
        if name in found:
            continue
        found.append(name)
        try:
            lines = (root / name).read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError):
            static = False
            continue
        for line in lines:
            if included := _REQUIREMENT_INCLUDE.match(line):
                path = os.path.normpath(os.path.join(os.path.dirname(name), included[2]))
                if path.startswith(("..", "/")):
                    static = False
                else:
                    pending.append(path)
            elif _REQUIREMENT_LOCAL.search(line.split("#", 1)[0]):
                static = False
    return found, static and not pending


def _node(root: Path, which: Callable[[str], str | None]) -> tuple[Stage | None, list[str]]:
    if not (root / "package.json").is_file():
        return None, []
    for lock, tool in (("yarn.lock", "yarn"), ("pnpm-lock.yaml", "pnpm")):
        if (root / lock).is_file() and not any((root / n).is_file() for n in _NPM_LOCKS):
            if which(tool) is None:
                return None, [f"{tool} is not installed on this agent (the repository has {lock})"]
            argv = (tool, "install", "--frozen-lockfile")
            return Stage((Step(f"{tool} install", argv, DETECTED_TIMEOUT),)), []
    if which("npm") is None:
        return None, ["npm is not installed on this agent (the repository has package.json)"]
    flags = ("--no-audit", "--no-fund", "--prefer-offline")  # the cache first: faster reruns
    if any((root / name).is_file() for name in _NPM_LOCKS):
        step = Step("npm ci", ("npm", "ci", *flags), DETECTED_TIMEOUT)
    else:
        # without a lockfile of its own, the repository gets none from setup: a file the
        # run did not write must not be delivered as its work
        install = ("npm", "install", "--no-package-lock", *flags)
        step = Step("npm install", install, DETECTED_TIMEOUT)
    if not _node_modules_is_all(root / "package.json"):
        return Stage((step,)), []
    inputs = ("package.json", *_NPM_LOCKS, ".npmrc")
    return Stage((step,), Reuse("node_modules", inputs, ("node",))), []


def _node_modules_is_all(package_json: Path) -> bool:
    """Whether the install makes nothing but node_modules from the keyed files: no
    workspaces, no lifecycle scripts of the package itself, no local dependencies."""
    try:
        manifest = json.loads(package_json.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if not isinstance(manifest, dict) or "workspaces" in manifest:
        return False
    scripts = manifest.get("scripts") or {}
    if not isinstance(scripts, dict) or any(name in scripts for name in _NPM_OWN_SCRIPTS):
        return False
    for group in _NPM_DEPENDENCIES:
        specs = manifest.get(group) or {}
        if not isinstance(specs, dict):
            return False
        for spec in specs.values():
            if not isinstance(spec, str) or spec.startswith(("file:", "link:", ".", "/", "~")):
                return False
    return True


def _single(marker: str, tool: str, argv: Sequence[str]) -> Detector:
    def detect(root: Path, which: Callable[[str], str | None]) -> tuple[Stage | None, list[str]]:
        if not (root / marker).is_file():
            return None, []
        if which(tool) is None:
            return None, [f"{tool} is not installed on this agent (the repository has {marker})"]
        return Stage((Step(" ".join(argv), tuple(argv), DETECTED_TIMEOUT),)), []

    return detect


_DETECTORS: tuple[tuple[str, Detector], ...] = (
    ("python", _python),
    ("node", _node),
    ("go", _single("go.mod", "go", ("go", "mod", "download"))),
    ("rust", _single("Cargo.toml", "cargo", ("cargo", "fetch"))),
)
