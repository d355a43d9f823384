"""Setting up real projects: uv and npm install dependencies from a package index on
loopback (built in the test), the tests then run green, and failures are reported."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import pytest

from claude_cluster.agent.provision import plan_setup, run_setup
from claude_cluster.agent.verify import run_tests
from claude_cluster.domain.contract import parse_contract, resolve
from claude_cluster.process import Watchdogs, run_process
from tests.support.package_index import PackageIndex

CALC = "def add(a, b):\n    return a + b\n"
BACKEND = Path(__file__).parents[2] / "fixtures" / "provision" / "backend.py"


async def local_run(
    argv: Sequence[str], *, cwd: Path, env: Mapping[str, str], timeout: float
) -> tuple[int | None, str]:
    """Run a command as the run's sandbox would, minus the confinement."""
    lines: list[str] = []

    async def keep(line: str) -> bool:
        lines.append(line)
        return False

    async def keep_err(line: str) -> None:
        lines.append(line)

    done = await run_process(
        list(argv),
        cwd=cwd,
        env=dict(env),
        on_line=keep,
        on_stderr_line=keep_err,
        watchdogs=Watchdogs(timeout, timeout, timeout, kill_grace=2),
    )
    return (done.exit_code if done.stop_reason.value == "exited" else None), "\n".join(lines)


@pytest.fixture(scope="module")
def index(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PackageIndex]:
    with PackageIndex(tmp_path_factory.mktemp("index")) as served:
        served.add_pytest()
        served.add_wheel("calcdep", "1.0", {"calcdep/__init__.py": CALC})
        yield served


def base_env(index: PackageIndex) -> dict[str, str]:
    path = "/usr/local/bin:/usr/bin:/bin"
    return {"PATH": path, "HOME": "/tmp", "UV_INDEX_URL": index.simple_url}


def python_repo(root: Path) -> Path:
    root.mkdir()
    (root / "pyproject.toml").write_text(
        "[project]\nname = 'demo'\nversion = '0'\ndependencies = ['calcdep']\n"
        "[project.optional-dependencies]\ntest = []\n"
        "[build-system]\nrequires = []\nbuild-backend = 'backend'\nbackend-path = ['_build']\n"
    )
    # a PEP 517 backend in the repository itself: no build tool to download
    (root / "_build").mkdir()
    shutil.copy(BACKEND, root / "_build" / "backend.py")
    (root / "demo.py").write_text("from calcdep import add\n\ndef total(xs):\n    return sum(xs)\n")
    (root / "tests").mkdir()
    (root / "tests" / "test_demo.py").write_text(
        "from calcdep import add\nfrom demo import total\n\n"
        "def test_add():\n    assert add(2, 3) == 5\n\n"
        "def test_total():\n    assert total([1, 2]) == 3\n"
    )
    return root


async def test_a_python_project_is_provisioned_then_tested(
    tmp_path: Path, index: PackageIndex
) -> None:
    repo = python_repo(tmp_path / "repo")
    cache = tmp_path / "cache"
    plan = plan_setup(repo, resolve(None), cache_dir=cache)
    assert [s.name for s in plan.steps] == ["python venv", "python install"]
    report = await run_setup(plan, local_run, cwd=repo, env=base_env(index))
    assert report.ok, report
    assert [s.exit_code for s in report.steps] == [0, 0]
    tests = await run_tests(repo, command=None, timeout=60)
    assert tests.command is not None and tests.command[0] == str(repo / ".venv/bin/python")
    assert (tests.ok, tests.passed, tests.failed) == (True, 2, 0)
    assert (cache / "uv").is_dir()  # the repository's own cache, kept for the next run
    # a second run of the same repository reuses the cache and still works
    shutil.rmtree(repo / ".venv")
    again = await run_setup(plan, local_run, cwd=repo, env=base_env(index))
    assert again.ok, again


def require_npm() -> None:
    if shutil.which("npm") is None:
        pytest.fail("npm is missing: scripts/setup installs nodejs and npm")


def node_project(root: Path, deps: dict[str, str], check: str) -> Path:
    """A package with ``deps`` (name → tarball URL) whose one test asserts ``check`` (JS)."""
    root.mkdir()
    manifest = {"name": "web", "version": "1.0.0", "scripts": {"test": "node --test"}}
    (root / "package.json").write_text(json.dumps({**manifest, "dependencies": deps}))
    (root / "deps.test.js").write_text(
        "const test = require('node:test');\nconst assert = require('node:assert');\n"
        f"test('deps', () => {check});\n"
    )
    return root


async def test_a_node_project_installs_a_tarball_then_tests(
    tmp_path: Path, index: PackageIndex
) -> None:
    require_npm()
    url = index.add_npm_tarball("padder", "1.0.0", {"index.js": "exports.pad = s => ' ' + s;\n"})
    repo = node_project(
        tmp_path / "web", {"padder": url}, "assert.strictEqual(require('padder').pad('x'), ' x')"
    )
    plan = plan_setup(repo, resolve(None), cache_dir=tmp_path / "cache")
    assert [s.name for s in plan.steps] == ["npm install"]
    report = await run_setup(plan, local_run, cwd=repo, env=base_env(index))
    assert report.ok, report
    assert (repo / "node_modules" / "padder" / "index.js").is_file()
    assert not (repo / "package-lock.json").exists(), "setup wrote no lockfile of its own"
    tests = await run_tests(repo, command=None, timeout=60)
    assert (tests.ok, tests.passed, tests.failed) == (True, 1, 0), tests.output_tail


async def test_a_failing_step_stops_setup_and_says_which(
    tmp_path: Path, index: PackageIndex
) -> None:
    contract = parse_contract(
        "setup:\n  - name: first\n    run: echo one > one.txt\n"
        "  - name: broken\n    run: |\n      echo about to fail\n      false\n      echo never\n"
        "  - name: never\n    run: touch never.txt\n"
    )
    plan = plan_setup(tmp_path, resolve(contract), cache_dir=tmp_path / "c")
    report = await run_setup(plan, local_run, cwd=tmp_path, env=base_env(index))
    assert not report.ok
    assert report.reason == "setup step 'broken' exited 1"
    assert [s.name for s in report.steps] == ["first", "broken"]
    assert "about to fail" in report.steps[1].output_tail
    assert "never" not in report.steps[1].output_tail
    assert (tmp_path / "one.txt").exists() and not (tmp_path / "never.txt").exists()


async def test_a_step_past_its_timeout_is_stopped(tmp_path: Path, index: PackageIndex) -> None:
    plan = plan_setup(
        tmp_path,
        resolve(parse_contract("setup:\n  - run: sleep 30\n    timeout: 1\n")),
        cache_dir=tmp_path / "c",
    )
    report = await run_setup(plan, local_run, cwd=tmp_path, env=base_env(index))
    assert (report.ok, report.reason) == (False, "setup step 'sleep 30' timed out after 1 s")
    assert report.duration < 15


async def test_an_attacker_controlled_dependency_name_is_not_a_shell(
    tmp_path: Path, index: PackageIndex
) -> None:
    """A requirements file is data for uv, never shell text."""
    (tmp_path / "requirements.txt").write_text("calcdep; touch /tmp/pwned-$(id -u)\n")
    plan = plan_setup(tmp_path, resolve(None), cache_dir=tmp_path / "c")
    report = await run_setup(plan, local_run, cwd=tmp_path, env=base_env(index))
    assert not report.ok  # uv refuses the malformed requirement
    assert not list(Path("/tmp").glob("pwned-*"))
