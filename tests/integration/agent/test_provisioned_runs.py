"""Verified runs end to end: a repository whose dependencies are not on the agent gets them
during setup, from a package index on this host reached only through the run's gateway,
then the real Claude Code CLI (against the fake API) fixes a failing test, all in the
bubblewrap sandbox. The pull request body says what the tests did before and after.

The index serves HTTPS on 127.0.0.2: the gateway tunnels (CONNECT) only, and a run's
sandbox sends everything but 127.0.0.1 to it. It gets on a run's allowlist the two ways an
operator puts a private index there: the repository's ``contract:`` in
GITHUB_REPOSITORIES_FILE (the Python project, which asks for it in its own contract too),
or ``RUN_EGRESS_ALLOW`` for every run (the Node package). A repository asking for it
without the operator's leave gets nothing but a refusal. The index's certificate is of a
private CA: the Python project's setup trusts it through the agent's ``RUN_CA_BUNDLE``,
the Node package through its own ``.npmrc``.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from claude_cluster.agent.ca_bundle import build_ca_bundle
from claude_cluster.agent.reporter import RunReporter
from claude_cluster.domain.contract import OperatorPolicy
from claude_cluster.domain.states import ErrorCategory
from tests.fakes.anthropic_api import FakeAnthropic, text, write
from tests.integration.agent.test_sandbox_runs import job_runner, reporter, request
from tests.support.agents import CALC_TEST, Opener, branch_file, branches, make_origin
from tests.support.package_index import PackageIndex
from tests.support.tls import TestCA

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed"),
]

BACKEND = Path(__file__).parents[2] / "fixtures" / "provision" / "backend.py"
#: not 127.0.0.1: the sandbox's NO_PROXY would send that to its own empty loopback
INDEX_HOST = "127.0.0.2"
PLUS = "def plus(a, b):\n    return a + b\n"
CALC_BUGGY = "from calcdep import plus\n\n\ndef add(a, b):\n    return plus(a, -b)\n"
CALC_FIXED = "from calcdep import plus\n\n\ndef add(a, b):\n    return plus(a, b)\n"
PAD = "exports.pad = (s) => ' ' + s;\n"
INDENT_BUGGY = (
    "const { pad } = require('padder');\n\nexports.indent = (s) => pad(s.trim().toUpperCase());\n"
)
INDENT_FIXED = "const { pad } = require('padder');\n\nexports.indent = (s) => pad(s.trim());\n"
INDENT_TEST = (
    "const test = require('node:test');\nconst assert = require('node:assert');\n"
    "const { indent } = require('./indent');\n\n"
    "test('indents', () => assert.strictEqual(indent('x'), ' x'));\n"
    "test('trims first', () => assert.strictEqual(indent(' A '), ' A'));\n"
)


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> TestCA:
    return TestCA(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def index(tmp_path_factory: pytest.TempPathFactory, ca: TestCA) -> Iterator[PackageIndex]:
    """HTTPS on 127.0.0.2: pytest and its dependencies, ``calcdep`` and ``padder``."""
    leaf = ca.issue("index", addresses=(INDEX_HOST,))
    with PackageIndex(tmp_path_factory.mktemp("index"), host=INDEX_HOST, tls=leaf) as served:
        served.add_pytest()
        served.add_wheel("calcdep", "1.0", {"calcdep/__init__.py": PLUS})
        served.add_npm_tarball("padder", "1.0.0", {"index.js": PAD})
        yield served


def python_repository(index: PackageIndex) -> dict[str, str]:
    """A project that needs ``calcdep`` from the index, and says so in its contract; one
    of its two tests fails."""
    return {
        # uv reads where its index is from the project; the index's CA is the agent's
        # RUN_CA_BUNDLE, not the project's to say
        "pyproject.toml": (
            "[project]\nname = 'demo'\nversion = '0'\ndependencies = ['calcdep']\n"
            "[build-system]\nrequires = []\nbuild-backend = 'backend'\n"
            "backend-path = ['_build']\n"
            f"[tool.uv]\nindex-url = '{index.url}/simple/'\n"
        ),
        "_build/backend.py": BACKEND.read_text(),
        "calc.py": CALC_BUGGY,
        "test_calc.py": CALC_TEST,
        ".claude-cluster.yml": f"network:\n  allow: ['{index.netloc}']\nwhen_untested: fail\n",
    }


def node_repository(index: PackageIndex, ca: TestCA) -> dict[str, str]:
    """A package that needs ``padder`` (a tarball on the index); one of its tests fails."""
    pem = ca.cert.read_text().strip().replace("\n", "\\n")
    package = {
        "name": "web",
        "version": "1.0.0",
        "scripts": {"test": "node --test"},
        "dependencies": {"padder": f"{index.url}/npm/padder-1.0.0.tgz"},
    }
    return {
        "package.json": json.dumps(package, indent=2),
        ".npmrc": f'ca="{pem}"\n',  # the index's CA, and only it
        "indent.js": INDENT_BUGGY,
        "indent.test.js": INDENT_TEST,
    }


def events(rep: RunReporter, kind: str) -> list[dict[str, object]]:
    return [e.data for e in rep._events.first(len(rep._events)) if e.kind == kind]


async def tokens(run_id: int, purpose: str) -> str:
    return "ghs_token"


def run_ca_bundle(ca: TestCA, tmp_path: Path) -> Path:
    """The bundle an agent with ``RUN_CA_BUNDLE`` = the index's CA builds at start."""
    return build_ca_bundle(ca.cert, tmp_path / "agent-state" / "run-ca-certificates.pem")


def allowing(index: PackageIndex) -> OperatorPolicy:
    """The operator's contract for a repository, with the index on its allowlist."""
    return OperatorPolicy.model_validate({"network": {"allow": [index.netloc]}})


async def fixed_run(
    tmp_path: Path, fake_api: FakeAnthropic, index: PackageIndex, files: dict[str, str],
    path: str, fixed: str, *, egress_allow: tuple[str, ...] = (),
    operator: OperatorPolicy | None = None, ca_bundle: Path | None = None,
) -> tuple[RunReporter, str]:  # fmt: skip
    """A run of ``files`` in which the model writes ``fixed`` to ``path``, with the
    agent's ``egress_allow`` (RUN_EGRESS_ALLOW), ``ca_bundle`` (built from RUN_CA_BUNDLE)
    and the ``operator``'s contract; checks
    what every such run must show, returns its events and its pull request's body."""
    origin = make_origin(tmp_path / "remote", files)
    scenario = fake_api.scenario([write(path, fixed), text("Fixed it.")])
    opener = Opener()
    runner = job_runner(
        tmp_path, scenario.base_url, allow=egress_allow, git_tokens=tokens,
        open_pull_request=opener, ca_bundle=ca_bundle,
    )  # fmt: skip
    rep = reporter()
    served = index.requests

    result = await runner.run(
        request(
            origin, github_repository="octo/app", open_pull_request=True,
            operator_contract=operator,
        ),
        rep,
    )  # fmt: skip

    assert result.succeeded, result.message
    assert (result.tests_passed, result.tests_failed, result.tests_ok) == (2, 0, True)
    assert index.requests > served, "the dependencies came from the index"
    assert events(rep, "egress_refused") == []
    assert result.changed_files == [path]  # not what setup left: a venv, packages, a lockfile
    assert branch_file(origin, result.branch or "", path) == fixed
    [pr] = opener.opened
    assert not pr.draft
    proof = pr.body.split("## Proof of Work", 1)[1]
    assert "On the base commit, before the run: 1 passed, 1 failed" in proof
    assert "Blocked network hosts: none" in proof
    return rep, pr.body


async def test_a_python_fix_is_tested_with_dependencies_from_the_allowed_index(
    tmp_path: Path, claude_cli: str, fake_api: FakeAnthropic, index: PackageIndex, ca: TestCA
) -> None:
    """The index's certificate is verified against the operator's RUN_CA_BUNDLE, which
    reaches setup only through the agent (the project trusts no host of its own)."""
    files = python_repository(index)
    rep, body = await fixed_run(
        tmp_path, fake_api, index, files, "calc.py", CALC_FIXED, operator=allowing(index),
        ca_bundle=run_ca_bundle(ca, tmp_path),
    )  # fmt: skip

    assert [(s["step"], s["exit_code"]) for s in events(rep, "setup")] == [
        ("python venv", 0),
        ("python install", 0),
        ("save .venv", 0),  # for the repository's next runs
    ]
    assert "- 1 fixed: test_calc.py::test_add" in body
    assert "/.venv/bin/python -m pytest -q -rA` exited 0" in body


async def test_a_node_fix_is_tested_with_a_tarball_from_the_allowed_index(
    tmp_path: Path, claude_cli: str, fake_api: FakeAnthropic, index: PackageIndex, ca: TestCA
) -> None:
    files = node_repository(index, ca)
    rep, body = await fixed_run(
        tmp_path, fake_api, index, files, "indent.js", INDENT_FIXED, egress_allow=(index.netloc,)
    )

    assert [(s["step"], s["exit_code"]) for s in events(rep, "setup")] == [
        ("npm install", 0),
        ("save node_modules", 0),
    ]
    assert "- 1 fixed: indents" in body
    assert "Tests: `npm test --silent` exited 0" in body


async def test_a_repository_cannot_open_its_own_way_to_an_index(
    tmp_path: Path, claude_cli: str, fake_api: FakeAnthropic, index: PackageIndex
) -> None:
    """The same project, asking for the index in its own contract, on an agent whose
    operator allowed no such host: setup cannot reach it, and the run is untested (its
    contract says fail), not succeeded."""
    origin = make_origin(tmp_path / "remote", python_repository(index))
    scenario = fake_api.scenario([write("calc.py", CALC_FIXED), text("Fixed add().")])
    rep = reporter()
    served = index.requests

    result = await job_runner(tmp_path, scenario.base_url).run(request(origin), rep)

    assert not result.succeeded
    assert result.error_category == ErrorCategory.UNTESTED, result.message
    assert result.message.startswith("untested: setup failed: setup step 'python install'")
    assert "nothing was delivered" in result.message
    assert result.tests_ok is None
    assert [e["host"] for e in events(rep, "egress_refused")] == [INDEX_HOST]  # uv retries
    [summary] = events(rep, "egress_refused_summary")
    assert summary["refused"][INDEX_HOST] > 1  # type: ignore[index]
    assert index.requests == served, "nothing reached the index"
    notes = [e for e in rep._events.first(len(rep._events)) if e.kind == "contract"]
    assert any(f"not in the operator's allowlist: {index.netloc}" in n.message for n in notes)
    # the tests ran neither before nor after; the baseline event says why not
    assert [e["status"] for e in events(rep, "baseline")] == ["untested"]
    assert events(rep, "tests") == []
    assert branches(origin) == ["main"]


async def test_the_next_run_of_the_repository_gets_the_venv_its_first_run_saved(
    tmp_path: Path, claude_cli: str, fake_api: FakeAnthropic, index: PackageIndex, ca: TestCA
) -> None:
    """Two tasks of one repository on one agent, each in its own sandbox and checkout:
    the second restores the venv (outside any sandbox) and asks the index for nothing."""
    origin = make_origin(tmp_path / "remote", python_repository(index))
    setups: list[tuple[list[object], int]] = []
    for task in (7, 8):
        scenario = fake_api.scenario([write("calc.py", CALC_FIXED), text("Fixed it.")])
        runner = job_runner(
            tmp_path, scenario.base_url, git_tokens=tokens, open_pull_request=Opener(),
            ca_bundle=run_ca_bundle(ca, tmp_path),
        )  # fmt: skip
        rep = reporter()
        served = index.requests
        result = await runner.run(
            request(
                origin, run_id=task, task_id=task, github_issue_number=task,
                github_repository="octo/app", open_pull_request=True,
                operator_contract=allowing(index),
            ),
            rep,
        )  # fmt: skip
        assert result.succeeded, result.message
        assert (result.tests_passed, result.tests_failed, result.tests_ok) == (2, 0, True)
        assert result.changed_files == ["calc.py"]
        setups.append(([s["step"] for s in events(rep, "setup")], index.requests - served))
    (first, asked), second = setups
    assert first == ["python venv", "python install", "save .venv"] and asked > 0
    assert second == (["restore .venv", "python project"], 0)
