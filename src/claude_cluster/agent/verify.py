"""Verify: run the repository's tests in the worktree and report what really happened.

The command is the repository's configured one (split with :func:`shlex.split`, never
given to a shell), else detected from the files in the worktree:

==========================================  =========================
found                                       command
==========================================  =========================
pytest configuration (``pytest.ini``,        ``<python> -m pytest -q -rA``
``conftest.py``, ``[tool.pytest…]`` …)
``package.json`` with a real test script     ``npm test``
``go.mod``                                   ``go test -v ./...``
``Cargo.toml``                               ``cargo test``
``test_*.py`` / ``*_test.py`` files, or a    ``<python> -m pytest -q -rA``
Python project file
==========================================  =========================

``<python>`` is the one given, else the worktree's ``.venv/bin/python``, else the
agent's own interpreter. The tests run in their own process group under a time limit,
with a trimmed environment: the agent's secrets (coordinator token, API keys) are not
passed to code from the repository.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import sys
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from claude_cluster.agent.testparse import CountParser, OutcomeParser
from claude_cluster.process import StopReason, Watchdogs, run_process

__all__ = ["TestReport", "detect_test_command", "run_tests"]

#: pytest's exit status for "collected no tests"
PYTEST_NO_TESTS = 5
#: what ``npm init`` writes; it only fails, so it is not a test suite
_NPM_PLACEHOLDER = re.compile(r"no test specified")
_PYTEST_CONFIG = {
    "pyproject.toml": "[tool.pytest",
    "setup.cfg": "[tool:pytest]",
    "tox.ini": "[pytest]",
}
_PYTHON_PROJECT = ("pyproject.toml", "setup.py", "setup.cfg", "tox.ini")
#: variables of the agent's environment the tests may see (exact names or prefixes*)
_PASSED_ENV = (
    *("PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "LANGUAGE", "TZ", "TMPDIR"),
    *("LC_*", "XDG_*", "GOPATH", "GOROOT", "GOCACHE", "GOMODCACHE", "GOPROXY", "GOFLAGS"),
    *("CARGO_HOME", "RUSTUP_HOME", "JAVA_HOME"),
)
#: settings that make runners non-interactive and their output parseable
_TEST_ENV = {
    "CI": "true",
    "NO_COLOR": "1",
    "FORCE_COLOR": "0",
    "PY_COLORS": "0",
    "TERM": "dumb",
    "PYTHONDONTWRITEBYTECODE": "1",
}


@dataclass(frozen=True)
class TestReport:
    """The outcome of one test run.

    ``ok`` is ``True`` when the command exited 0 (and pytest found tests), ``False`` when
    tests failed or the run timed out, ``None`` when the tests could not be run at all:
    nothing to run, no runner detected, runner not installed (see ``reason``). Counts are
    ``None`` when the runner's output has no summary we understand.
    """

    __test__ = False  # not a pytest test class, despite the name

    command: tuple[str, ...] | None
    exit_code: int | None
    passed: int | None
    failed: int | None
    ok: bool | None
    output_tail: str
    duration: float
    reason: str | None = None
    errors: int | None = None
    skipped: int | None = None
    timed_out: bool = False
    no_tests: bool = False
    #: each named test's outcome, where the runner names them (``agent/testparse.py``)
    outcomes: Mapping[str, str] = field(default_factory=dict)

    @property
    def command_line(self) -> str:
        return shlex.join(self.command) if self.command else ""

    @property
    def summary(self) -> str:
        """One line for a pull request or a log: ``"3 passed, 1 failed"``, or why not."""
        if self.reason:
            return self.reason
        parts = [
            f"{n} {word}"
            for n, word in (
                (self.passed, "passed"),
                (self.failed, "failed"),
                (self.errors, "errors"),
                (self.skipped, "skipped"),
            )
            if n
        ]
        if self.passed is not None and not parts:
            parts = ["0 passed"]
        verdict = ", ".join(parts) if parts else f"exit code {self.exit_code}"
        return f"{verdict} in {self.duration:.1f}s"


def detect_test_command(cwd: Path, *, python: str | None = None) -> tuple[str, ...] | None:
    """The test command for the project in ``cwd``, or ``None`` if none is recognisable."""
    pytest = (python or _python_for(cwd), "-m", "pytest", "-q", "-rA")
    if (cwd / "pytest.ini").exists() or (cwd / "conftest.py").exists():
        return pytest
    for name, marker in _PYTEST_CONFIG.items():
        if marker in _read(cwd / name):
            return pytest
    if _npm_test_script(cwd / "package.json"):
        return ("npm", "test", "--silent")
    if (cwd / "go.mod").exists():
        return ("go", "test", "-v", "./...")
    if (cwd / "Cargo.toml").exists():
        return ("cargo", "test")
    if _has_python_tests(cwd) or any((cwd / name).exists() for name in _PYTHON_PROJECT):
        return pytest
    return None


async def run_tests(
    cwd: Path,
    *,
    command: str | None,
    timeout: float,
    env: Mapping[str, str] | None = None,
    python: str | None = None,
    tail_chars: int = 20_000,
    wrap: Callable[[Sequence[str], Path], list[str]] | None = None,
) -> TestReport:
    """Run the repository's tests in ``cwd``.

    Args:
        cwd: The worktree.
        command: The configured test command (``"make test"``), or ``None`` to detect one.
        timeout: Seconds before the whole process group is killed (reported as failed).
        env: Variables for the tests, on top of a trimmed copy of the agent's environment.
        python: Interpreter for a detected pytest run.
        tail_chars: How much of the end of the output to keep in the report.
        wrap: Turns the command line into the sandboxed one (the run's box).

    Returns:
        The report; it never raises for a failing, missing or hanging test command.
    """
    argv = tuple(shlex.split(command)) if command else detect_test_command(cwd, python=python)
    if not argv:
        reason = "no test command configured or detected"
        return TestReport(None, None, None, None, None, "", 0.0, reason=reason)
    tail: deque[str] = deque()
    tail_len = 0
    parser = CountParser()
    named = OutcomeParser()

    async def on_line(line: str) -> bool:
        nonlocal tail_len
        parser.feed(line)
        named.feed(line)
        tail.append(line)
        tail_len += len(line) + 1
        while tail_len > tail_chars and len(tail) > 1:
            tail_len -= len(tail.popleft()) + 1
        return False

    async def on_stderr(line: str) -> None:
        await on_line(line)

    try:
        outcome = await run_process(
            argv if wrap is None else wrap(argv, cwd),
            cwd=cwd,
            env=_test_env(env),
            on_line=on_line,
            on_stderr_line=on_stderr,
            watchdogs=Watchdogs(
                wall_timeout=timeout, idle_timeout=timeout, terminal_grace=timeout, kill_grace=5
            ),
        )
    except OSError as exc:
        reason = f"cannot run {argv[0]}: {exc.strerror or exc}"
        return TestReport(argv, None, None, None, None, "", 0.0, reason=reason)
    output = "\n".join(tail)[-tail_chars:]
    report = _report(argv, outcome.exit_code, outcome.stop_reason, outcome.duration, output, parser)
    return replace(report, outcomes=named.outcomes)


def _report(
    argv: tuple[str, ...],
    exit_code: int | None,
    stop: StopReason,
    duration: float,
    output: str,
    parser: CountParser,
) -> TestReport:
    counts = parser.result()
    report = TestReport(
        command=argv,
        exit_code=exit_code,
        passed=counts.passed if counts else None,
        failed=counts.failed if counts else None,
        errors=counts.errors if counts else None,
        skipped=counts.skipped if counts else None,
        ok=exit_code == 0,
        output_tail=output,
        duration=duration,
    )
    if stop is not StopReason.EXITED:
        return replace(report, ok=False, timed_out=True, reason=f"timed out after {duration:.0f}s")
    is_pytest = _is_pytest(argv)
    if is_pytest and exit_code != 0 and "No module named pytest" in output:
        return replace(report, ok=None, reason=f"pytest is not installed for {argv[0]}")
    if (is_pytest and exit_code == PYTEST_NO_TESTS) or (counts and counts.no_tests):
        # an empty suite proves nothing, whatever the exit code says
        return replace(report, ok=None, no_tests=True, reason="no tests were collected")
    return report


def _is_pytest(argv: Sequence[str]) -> bool:
    return any(Path(arg).name in ("pytest", "py.test") for arg in argv[:4])


def _python_for(cwd: Path) -> str:
    venv = cwd / ".venv" / "bin" / "python"
    return str(venv) if venv.exists() else sys.executable


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def _npm_test_script(package_json: Path) -> bool:
    try:
        scripts = json.loads(_read(package_json) or "{}").get("scripts") or {}
    except (json.JSONDecodeError, AttributeError):
        return False
    test = scripts.get("test") if isinstance(scripts, dict) else None
    return isinstance(test, str) and bool(test.strip()) and not _NPM_PLACEHOLDER.search(test)


def _has_python_tests(cwd: Path) -> bool:
    for folder in (cwd, cwd / "tests", cwd / "test"):
        if any(folder.glob("test_*.py")) or any(folder.glob("*_test.py")):
            return True
    return False


def _test_env(extra: Mapping[str, str] | None) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if any(
            key == name or (name.endswith("*") and key.startswith(name[:-1]))
            for name in _PASSED_ENV
        )
    }
    env.update(_TEST_ENV)
    if extra:
        env.update(extra)
    return env
