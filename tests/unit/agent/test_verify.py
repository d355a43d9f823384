"""Test-command detection and reading counts from runners' output (no processes)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from claude_cluster.agent.testparse import MAX_NAMED_TESTS, CountParser, Counts, OutcomeParser
from claude_cluster.agent.verify import TestReport, detect_test_command

NPM_INIT_PLACEHOLDER = 'echo "Error: no test specified" && exit 1'
PYTEST = (sys.executable, "-m", "pytest", "-q", "-rA")


def parse(output: str) -> Counts | None:
    parser = CountParser()
    for line in output.splitlines():
        parser.feed(line)
    return parser.result()


@pytest.mark.parametrize(
    ("output", "expected"),
    [
        ("..F\n1 failed, 2 passed in 0.12s", Counts(passed=2, failed=1)),
        ("===== 3 passed, 1 warning in 1.02s =====", Counts(passed=3)),
        (
            "== 1 failed, 4 passed, 2 skipped, 1 xfailed, 1 error in 3.40s (0:00:03) ==",
            Counts(passed=4, failed=1, errors=1, skipped=3),
        ),
        ("2 errors in 0.30s", Counts(errors=2)),
        ("no tests ran in 0.01s", Counts(no_tests=True)),
        # only the last summary counts
        ("1 failed in 0.1s\nrerun\n2 passed in 0.2s", Counts(passed=2)),
    ],
)
def test_pytest_summaries(output: str, expected: Counts) -> None:
    assert parse(output) == expected


def test_pytest_summary_needs_the_duration_to_count() -> None:
    # a test's own output that merely looks like counts is not a summary
    assert parse("1 failed, 2 passed") is None


def test_jest_summary() -> None:
    out = "Test Suites: 1 failed, 1 total\nTests:       1 failed, 2 passed, 3 total\nTime: 1 s"
    assert parse(out) == Counts(passed=2, failed=1)
    assert parse("Tests:       0 total") == Counts(no_tests=True)


def test_cargo_summaries_are_summed_over_crates() -> None:
    out = (
        "test result: ok. 3 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out\n"
        "test result: FAILED. 1 passed; 2 failed; 0 ignored; 0 measured; 0 filtered out\n"
    )
    assert parse(out) == Counts(passed=4, failed=2, skipped=1)


def test_mocha_and_node_runner() -> None:
    assert parse("  5 passing (20ms)\n  1 failing\n") == Counts(passed=5, failed=1)
    assert parse("ℹ tests 3\nℹ pass 2\nℹ fail 1\n") == Counts(passed=2, failed=1)
    assert parse("# pass 0\n# fail 0\n") == Counts(no_tests=True)


def test_unknown_output_has_no_counts() -> None:
    assert parse("ok  \texample.com/pkg\t0.01s\n") is None


def write(root: Path, files: dict[str, str]) -> Path:
    for name, body in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(body)
    return root


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ({"pytest.ini": "[pytest]\n"}, PYTEST),
        ({"pyproject.toml": "[tool.pytest.ini_options]\n"}, PYTEST),
        ({"setup.cfg": "[tool:pytest]\n"}, PYTEST),
        ({"tox.ini": "[pytest]\n"}, PYTEST),
        ({"tests/test_app.py": ""}, PYTEST),
        ({"app_test.py": ""}, PYTEST),
        ({"setup.py": ""}, PYTEST),
        ({"package.json": json.dumps({"scripts": {"test": "jest"}})}, ("npm", "test", "--silent")),
        ({"go.mod": "module x\n"}, ("go", "test", "-v", "./...")),
        ({"Cargo.toml": "[package]\n"}, ("cargo", "test")),
        # npm init's placeholder only fails: it is not a test suite
        (
            {"package.json": json.dumps({"scripts": {"test": 'echo "Error: no test specified"'}})},
            None,
        ),
        ({"package.json": "not json"}, None),
        ({"README.md": ""}, None),
    ],
)
def test_detection(tmp_path: Path, files: dict[str, str], expected: tuple[str, ...] | None) -> None:
    assert detect_test_command(write(tmp_path, files)) == expected


def test_pytest_configuration_wins_over_a_package_json(tmp_path: Path) -> None:
    write(tmp_path, {"pytest.ini": "", "package.json": json.dumps({"scripts": {"test": "x"}})})
    assert detect_test_command(tmp_path) == PYTEST


def test_interpreter_choice(tmp_path: Path) -> None:
    write(tmp_path, {"pytest.ini": ""})
    assert detect_test_command(tmp_path, python="/opt/py/bin/python")[0] == "/opt/py/bin/python"  # type: ignore[index]
    venv_python = tmp_path / ".venv" / "bin" / "python"
    write(tmp_path, {".venv/bin/python": ""})
    assert detect_test_command(tmp_path) == (str(venv_python), "-m", "pytest", "-q", "-rA")


def test_report_summary() -> None:
    base = TestReport(("pytest",), 1, 3, 1, False, "", 2.04)
    assert base.summary == "3 passed, 1 failed in 2.0s"
    assert base.command_line == "pytest"
    assert TestReport(("x",), 2, None, None, False, "", 1.0).summary == "exit code 2 in 1.0s"
    no_tests = TestReport(("x",), 5, 0, 0, None, "", 1.0, reason="no tests were collected")
    assert no_tests.summary == "no tests were collected"


def outcomes(text: str) -> dict[str, str]:
    parser = OutcomeParser()
    for line in text.splitlines():
        parser.feed(line)
    return parser.outcomes


def test_outcomes_from_pytest_ra() -> None:
    text = """\
=========================== short test summary info ============================
PASSED tests/test_calc.py::test_add
PASSED tests/test_calc.py::test_cases[1-2]
FAILED tests/test_calc.py::test_div - ZeroDivisionError: division by zero
ERROR tests/test_db.py::test_conn - fixture 'db' not found
XFAIL tests/test_calc.py::test_known - not yet
SKIPPED [1] tests/test_calc.py:40: needs network
==== 1 failed, 2 passed, 1 skipped, 1 xfailed, 1 error in 0.12s ====
"""
    assert outcomes(text) == {
        "tests/test_calc.py::test_add": "passed",
        "tests/test_calc.py::test_cases[1-2]": "passed",
        "tests/test_calc.py::test_div": "failed",
        "tests/test_db.py::test_conn": "error",
        "tests/test_calc.py::test_known": "skipped",
    }


def test_outcomes_from_go_cargo_and_tap() -> None:
    go = "=== RUN   TestAdd\n--- PASS: TestAdd (0.00s)\n    --- FAIL: TestDiv/zero (0.01s)\n"
    go += "--- SKIP: TestNet (0.00s)\nFAIL\n"
    assert outcomes(go) == {"TestAdd": "passed", "TestDiv/zero": "failed", "TestNet": "skipped"}
    cargo = "test calc::adds ... ok\ntest calc::divides ... FAILED\ntest slow ... ignored\n"
    assert outcomes(cargo) == {"calc::adds": "passed", "calc::divides": "failed", "slow": "skipped"}
    tap = "TAP version 13\nok 1 - adds\nnot ok 2 - divides\nok 3 - net # SKIP offline\n"
    assert outcomes(tap) == {"adds": "passed", "divides": "failed", "net": "skipped"}


def test_outcome_names_are_bounded() -> None:
    parser = OutcomeParser()
    for i in range(MAX_NAMED_TESTS + 5):
        parser.feed(f"test t{i} ... ok")
    parser.feed("test " + "x" * 2000 + " ... FAILED")
    assert len(parser.outcomes) == MAX_NAMED_TESTS
    assert parser.truncated
    # an already-known test still updates past the cap (its last line wins)
    parser.feed("test t3 ... FAILED")
    assert parser.outcomes["t3"] == "failed"


def test_an_overlong_test_name_is_clipped_and_still_one_test() -> None:
    parser = OutcomeParser()
    name = "x" * 2000
    parser.feed(f"test {name} ... ok")
    parser.feed(f"test {name} ... FAILED")
    assert list(parser.outcomes.values()) == ["failed"]
    assert len(next(iter(parser.outcomes))) == 500
