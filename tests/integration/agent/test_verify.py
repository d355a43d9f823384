"""run_tests on real projects: pytest and npm, pass, fail, nothing to run, hangs."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

from claude_cluster.agent.verify import run_tests
from tests.unit.agent.test_workspace_git import gone

pytestmark = pytest.mark.timeout(30)

PASSING = "from app import answer\n\ndef test_answer():\n    assert answer() == 42\n"
FAILING = "from app import answer\n\ndef test_wrong():\n    assert answer() == 43\n"
TRIVIAL = "def test_truth():\n    assert True\n"


def python_project(root: Path, *tests: str) -> Path:
    (root / "pyproject.toml").write_text('[project]\nname = "demo"\nversion = "0"\n')
    (root / "app.py").write_text("def answer():\n    return 42\n")
    (root / "tests").mkdir()
    for n, body in enumerate(tests):
        (root / "tests" / f"test_{n}.py").write_text(body)
    # pytest runs from the project root with the default rootdir-based import
    (root / "conftest.py").write_text("")
    return root


async def test_pytest_all_passing(tmp_path: Path) -> None:
    report = await run_tests(python_project(tmp_path, PASSING, TRIVIAL), command=None, timeout=20)
    assert report.command == (sys.executable, "-m", "pytest", "-q", "-rA")
    assert (report.ok, report.exit_code, report.passed, report.failed) == (True, 0, 2, 0)
    assert set(report.outcomes.values()) == {"passed"} and len(report.outcomes) == 2
    assert "2 passed" in report.output_tail
    assert report.summary.startswith("2 passed in ")


async def test_pytest_failures_are_counted_and_shown(tmp_path: Path) -> None:
    report = await run_tests(python_project(tmp_path, PASSING, FAILING), command=None, timeout=20)
    assert (report.ok, report.exit_code, report.passed, report.failed) == (False, 1, 1, 1)
    assert "assert 42 == 43" in report.output_tail
    assert sorted(report.outcomes.values()) == ["failed", "passed"]
    assert all(name.startswith("tests/test_") and "::" in name for name in report.outcomes)
    assert report.summary.startswith("1 passed, 1 failed")


async def test_pytest_collecting_nothing_is_not_a_pass(tmp_path: Path) -> None:
    report = await run_tests(python_project(tmp_path), command=None, timeout=20)
    assert report.exit_code == 5
    assert report.ok is None
    assert report.no_tests is True
    assert report.reason == "no tests were collected"


async def test_collection_error_counts_as_error(tmp_path: Path) -> None:
    broken = "import does_not_exist\n"
    report = await run_tests(python_project(tmp_path, broken), command=None, timeout=20)
    assert report.ok is False
    assert report.errors == 1
    assert "does_not_exist" in report.output_tail


def npm_project(root: Path, test_script: str, files: dict[str, str]) -> Path:
    package = {"name": "demo", "version": "1.0.0", "scripts": {"test": test_script}}
    (root / "package.json").write_text(json.dumps(package))
    for name, body in files.items():
        (root / name).write_text(body)
    return root


async def test_npm_trivial_script_passes_on_exit_code(tmp_path: Path) -> None:
    project = npm_project(tmp_path, "node check.js", {"check.js": "console.log('fine')\n"})
    report = await run_tests(project, command=None, timeout=20)
    assert report.command == ("npm", "test", "--silent")
    assert report.ok is True
    assert report.passed is None  # no summary to read: the exit code decides
    assert "fine" in report.output_tail


async def test_npm_failing_script(tmp_path: Path) -> None:
    check = "console.error('boom'); process.exit(3)\n"
    report = await run_tests(
        npm_project(tmp_path, "node check.js", {"check.js": check}), command=None, timeout=20
    )
    assert report.ok is False
    assert report.exit_code != 0
    assert "boom" in report.output_tail


async def test_node_test_runner_counts(tmp_path: Path) -> None:
    suite = (
        "const test = require('node:test'); const assert = require('node:assert');\n"
        "test('one', () => assert.equal(1, 1));\n"
        "test('two', () => assert.equal(1, 2));\n"
    )
    project = npm_project(tmp_path, "node --test", {"math.test.js": suite})
    report = await run_tests(project, command=None, timeout=20)
    assert (report.ok, report.passed, report.failed) == (False, 1, 1)


async def test_configured_command_is_split_never_given_to_a_shell(tmp_path: Path) -> None:
    report = await run_tests(tmp_path, command="echo 'it works' && exit 7", timeout=10)
    assert report.command == ("echo", "it works", "&&", "exit", "7")
    assert report.ok is True  # echo printed the rest; no shell ran "exit 7"
    assert "it works && exit 7" in report.output_tail


async def test_timeout_kills_the_whole_process_group(tmp_path: Path) -> None:
    marker = tmp_path / "grandchild.pid"
    script = (
        "import subprocess, sys, time\n"
        "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        f"open({str(marker)!r}, 'w').write(str(p.pid))\n"
        "print('started', flush=True)\n"
        "time.sleep(60)\n"
    )
    (tmp_path / "hang.py").write_text(script)
    started = time.monotonic()
    report = await run_tests(tmp_path, command=f"{sys.executable} hang.py", timeout=1.0)
    assert time.monotonic() - started < 10
    assert report.ok is False
    assert report.timed_out is True
    assert "timed out" in (report.reason or "")
    assert "started" in report.output_tail
    assert await gone(int(marker.read_text()))


async def test_nothing_to_run(tmp_path: Path) -> None:
    (tmp_path / "README.md").write_text("no code here\n")
    report = await run_tests(tmp_path, command=None, timeout=10)
    assert report.ok is None
    assert report.command is None
    assert report.reason == "no test command configured or detected"


async def test_missing_runner_is_reported_not_raised(tmp_path: Path) -> None:
    report = await run_tests(tmp_path, command="no-such-test-runner --all", timeout=10)
    assert report.ok is None
    assert report.reason is not None and "cannot run no-such-test-runner" in report.reason


async def test_agent_secrets_stay_out_of_the_tests_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-secret")
    monkeypatch.setenv("REGISTRATION_TOKEN", "reg-secret")
    show = "import os; print(sorted(os.environ.items()))"
    (tmp_path / "show.py").write_text(show)
    report = await run_tests(
        tmp_path, command=f"{sys.executable} show.py", timeout=10, env={"EXTRA": "given"}
    )
    assert "sk-ant-secret" not in report.output_tail
    assert "reg-secret" not in report.output_tail
    assert "('EXTRA', 'given')" in report.output_tail
    assert "('CI', 'true')" in report.output_tail


async def test_output_tail_is_bounded(tmp_path: Path) -> None:
    (tmp_path / "loud.py").write_text("for i in range(100000):\n    print('line', i)\n")
    report = await run_tests(
        tmp_path, command=f"{sys.executable} loud.py", timeout=20, tail_chars=1000
    )
    assert len(report.output_tail) <= 1000
    assert report.output_tail.endswith("line 99999")
