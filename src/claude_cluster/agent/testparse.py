"""Reading pass/fail counts out of test runners' output.

Each parser looks at one line at a time, so counts survive output far larger than the tail
the agent keeps. Formats understood:

* pytest's closing summary, ``=== 1 failed, 2 passed, 1 skipped in 0.12s ===``;
* jest's ``Tests:       1 failed, 2 passed, 3 total``;
* ``cargo test``'s ``test result: ok. 3 passed; 0 failed; …`` (summed over crates);
* mocha's ``2 passing`` / ``1 failing``;
* node's built-in runner, ``ℹ pass 2`` / ``# fail 1``.

Anything else (``go test`` without ``-v``, a bespoke script) yields no counts, and the exit
code alone decides.

:class:`OutcomeParser` reads the outcome of each named test, where the runner prints one
line per test, so a run can be compared with its baseline test by test:

* pytest with ``-rA``: ``PASSED tests/test_a.py::test_x``, ``FAILED … - message``, ``ERROR …``;
* ``go test -v``: ``--- PASS: TestX (0.00s)``, ``--- FAIL: …``, ``--- SKIP: …``;
* ``cargo test``: ``test module::name ... ok`` / ``FAILED`` / ``ignored``;
* TAP (``node --test``, ``prove``): ``ok 1 - name``, ``not ok 2 - name``, ``# SKIP``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["MAX_NAMED_TESTS", "CountParser", "Counts", "OutcomeParser"]

#: tests remembered by name; a larger suite is compared by counts beyond this
MAX_NAMED_TESTS = 10_000
_MAX_NAME = 500

_PYTEST_SUMMARY = re.compile(
    r"^=*\s*(?P<body>\d+ [a-z]+(?:, \d+ [a-z]+)*|no tests ran)"
    r"(?: in \d+(?:\.\d+)?s\b.*?)\s*=*$"
)
_PAIR = re.compile(r"(\d+) ([a-z]+)")
_JEST = re.compile(r"^Tests:\s+(?P<body>.*\d+ total)\s*$")
_CARGO = re.compile(r"^test result: \w+\. (\d+) passed; (\d+) failed; (\d+) ignored")
_MOCHA = re.compile(r"^\s*(\d+) (passing|failing|pending)\b")
_NODE = re.compile(r"^[#ℹ] (pass|fail|skipped|todo) (\d+)\s*$")
_PYTEST_LINE = re.compile(r"^(PASSED|FAILED|ERROR|XPASS|XFAIL) (\S+::\S+)(?: - .*)?$")
_GO_LINE = re.compile(r"^\s*--- (PASS|FAIL|SKIP): (\S+) \(")
_CARGO_LINE = re.compile(r"^test (\S+) \.\.\. (ok|FAILED|ignored)\b")
_TAP_LINE = re.compile(r"^\s*(not ok|ok) \d+ (?:- )?(.+?)(?:\s+#\s*(SKIP|TODO)\b.*)?$")
_WORDS = {
    "PASSED": "passed",
    "XPASS": "passed",
    "XFAIL": "skipped",
    "FAILED": "failed",
    "ERROR": "error",
    "PASS": "passed",
    "FAIL": "failed",
    "SKIP": "skipped",
    "ok": "passed",
    "ignored": "skipped",
    "not ok": "failed",
}


@dataclass(frozen=True)
class Counts:
    """Test counts from one runner's summary."""

    passed: int = 0
    failed: int = 0
    errors: int = 0  #: pytest's errors (collection or fixture failures)
    skipped: int = 0
    no_tests: bool = False  #: the runner said it found nothing to run


class CountParser:
    """Feed it every output line; :meth:`result` gives the counts of the best-known format."""

    def __init__(self) -> None:
        self._pytest: Counts | None = None
        self._jest: Counts | None = None
        self._cargo: Counts | None = None
        self._mocha: dict[str, int] = {}
        self._node: dict[str, int] = {}

    def feed(self, line: str) -> None:
        line = line.rstrip()
        if m := _PYTEST_SUMMARY.match(line):
            # the last summary wins (a plugin may print intermediate ones)
            self._pytest = _pytest_counts(m["body"])
        elif m := _JEST.match(line):
            pairs = {word: int(n) for n, word in _PAIR.findall(m["body"])}
            self._jest = Counts(
                passed=pairs.get("passed", 0),
                failed=pairs.get("failed", 0),
                skipped=pairs.get("skipped", 0) + pairs.get("todo", 0),
                no_tests=pairs.get("total", 0) == 0,
            )
        elif m := _CARGO.match(line):
            before = self._cargo or Counts()
            self._cargo = Counts(
                passed=before.passed + int(m[1]),
                failed=before.failed + int(m[2]),
                skipped=before.skipped + int(m[3]),
            )
        elif m := _MOCHA.match(line):
            self._mocha[m[2]] = int(m[1])
        elif m := _NODE.match(line):
            self._node[m[1]] = int(m[2])

    def result(self) -> Counts | None:
        """The counts, or ``None`` when no known summary was seen."""
        for counts in (self._pytest, self._jest, self._cargo):
            if counts is not None:
                return counts
        if self._mocha:
            return Counts(
                passed=self._mocha.get("passing", 0),
                failed=self._mocha.get("failing", 0),
                skipped=self._mocha.get("pending", 0),
            )
        if self._node:
            return Counts(
                passed=self._node.get("pass", 0),
                failed=self._node.get("fail", 0),
                skipped=self._node.get("skipped", 0) + self._node.get("todo", 0),
                no_tests=not any(self._node.get(k, 0) for k in ("pass", "fail")),
            )
        return None


def _pytest_counts(body: str) -> Counts:
    if body == "no tests ran":
        return Counts(no_tests=True)
    pairs: dict[str, int] = {}
    for n, word in _PAIR.findall(body):
        key = {"error": "errors", "warning": "warnings"}.get(word, word)
        pairs[key] = pairs.get(key, 0) + int(n)
    passed = pairs.get("passed", 0) + pairs.get("xpassed", 0)
    failed = pairs.get("failed", 0)
    errors = pairs.get("errors", 0)
    skipped = pairs.get("skipped", 0) + pairs.get("xfailed", 0)
    return Counts(
        passed=passed,
        failed=failed,
        errors=errors,
        skipped=skipped,
        no_tests=passed + failed + errors + skipped == 0,
    )


class OutcomeParser:
    """Feed it every output line; :attr:`outcomes` maps each named test to ``passed``,
    ``failed``, ``error`` or ``skipped`` (the last line about a test wins)."""

    def __init__(self) -> None:
        self.outcomes: dict[str, str] = {}
        #: more tests than :data:`MAX_NAMED_TESTS`; the rest are counted, not named
        self.truncated = False

    def feed(self, line: str) -> None:
        line = line.rstrip()
        if (m := _PYTEST_LINE.match(line)) or (m := _GO_LINE.match(line)):
            self._add(m[2], _WORDS[m[1]])
        elif m := _CARGO_LINE.match(line):
            self._add(m[1], "failed" if m[2] == "FAILED" else _WORDS[m[2]])
        elif m := _TAP_LINE.match(line):
            self._add(m[2], "skipped" if m[3] else _WORDS[m[1]])

    def _add(self, name: str, outcome: str) -> None:
        name = name[:_MAX_NAME]
        if name not in self.outcomes and len(self.outcomes) >= MAX_NAMED_TESTS:
            self.truncated = True
            return
        self.outcomes[name] = outcome
