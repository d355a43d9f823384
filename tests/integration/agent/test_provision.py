"""Setting up real projects: uv and npm install dependencies from a package index on
loopback (built in the test), the tests then run green, and failures are reported. A
repository's next run reuses the environment its first one saved, unless a manifest or a
lockfile changed, and never another repository's."""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import pytest

from claude_cluster.agent.envstore import EnvStore
from claude_cluster.agent.provision import cache_env, envs_dir, plan_setup, run_setup
from claude_cluster.agent.runbox import GatewayConfig, RunBox
from claude_cluster.agent.sandbox import Sandbox
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


async def set_up(repo: Path, cache: Path, index: PackageIndex) -> list[str]:
    """One run's setup of ``repo`` as the agent does it; the names of the steps it ran."""
    plan = plan_setup(repo, resolve(None), cache_dir=cache)
    report = await run_setup(plan, local_run, cwd=repo, env=base_env(index))
    assert report.ok, report
    assert all(step.exit_code == 0 for step in report.steps)
    return [step.name for step in report.steps]


def site_packages(repo: Path) -> Path:
    (found,) = (repo / ".venv" / "lib").glob("python3*/site-packages")
    return found


async def test_a_python_project_is_provisioned_then_tested(
    tmp_path: Path, index: PackageIndex
) -> None:
    repo = python_repo(tmp_path / "task-1")
    cache = tmp_path / "envcache" / "demo.git"
    plan = plan_setup(repo, resolve(None), cache_dir=cache)
    assert [s.name for s in plan.steps] == ["python venv", "python install"]
    report = await run_setup(plan, local_run, cwd=repo, env=base_env(index))
    assert report.ok, report
    assert [s.name for s in report.steps] == ["python venv", "python install", "save .venv"]
    assert [s.exit_code for s in report.steps] == [0, 0, 0]
    tests = await run_tests(repo, command=None, timeout=60)
    assert tests.command is not None and tests.command[0] == str(repo / ".venv/bin/python")
    assert (tests.ok, tests.passed, tests.failed) == (True, 2, 0)
    assert (cache / "uv").is_dir()  # the repository's own cache, kept for the next run
    assert list(envs_dir(cache).glob("venv-*/tree/bin/python"))  # and its saved venv

    # the next run of the repository (a worktree at another path) gets a copy of the venv
    # and installs only the project itself: not one request to the index
    second = python_repo(tmp_path / "task-2")
    asked = index.requests
    assert await set_up(second, cache, index) == ["restore .venv", "python project"]
    assert index.requests == asked
    tests = await run_tests(second, command=None, timeout=60)
    assert (tests.ok, tests.passed, tests.failed) == (True, 2, 0), tests.output_tail
    # the project is the second worktree's, and the venv's scripts work at the new path
    where = await local_run(
        [".venv/bin/python", "-c", "import demo; print(demo.__file__)"],
        cwd=second, env={}, timeout=30,
    )  # fmt: skip
    assert where == (0, str(second / "demo.py"))
    code, out = await local_run([".venv/bin/pytest", "-q"], cwd=second, env={}, timeout=60)
    assert code == 0, out
    # the first run's worktree going away takes nothing of the second's with it
    shutil.rmtree(repo)
    tests = await run_tests(second, command=None, timeout=60)
    assert tests.ok, tests.output_tail


async def test_a_changed_manifest_is_not_served_an_old_venv(
    tmp_path: Path, index: PackageIndex
) -> None:
    index.add_wheel("verdep", "1.0", {"verdep.py": "VERSION = 1\n"})
    index.add_wheel("verdep", "2.0", {"verdep.py": "VERSION = 2\n"})
    cache = tmp_path / "envcache" / "demo.git"

    def run_of(name: str, pin: str) -> Path:
        repo = python_repo(tmp_path / name)
        manifest = repo / "pyproject.toml"
        manifest.write_text(manifest.read_text().replace("'calcdep'", f"'calcdep', '{pin}'"))
        return repo

    async def version(repo: Path) -> tuple[int | None, str]:
        argv = [".venv/bin/python", "-c", "import verdep; print(verdep.VERSION)"]
        return await local_run(argv, cwd=repo, env={}, timeout=30)

    full = ["python venv", "python install", "save .venv"]
    assert await set_up(run_of("one", "verdep==1.0"), cache, index) == full
    changed = run_of("two", "verdep==2.0")
    assert await set_up(changed, cache, index) == full  # not the venv with verdep 1.0
    assert await version(changed) == (0, "2")
    back = run_of("three", "verdep==1.0")  # both are kept: the first one serves again
    assert await set_up(back, cache, index) == ["restore .venv", "python project"]
    assert await version(back) == (0, "1")


async def test_a_uv_lock_project_is_reused_and_synced_against_its_lock(
    tmp_path: Path, index: PackageIndex
) -> None:
    template = python_repo(tmp_path / "template")
    manifest = template / "pyproject.toml"  # a locked project brings its own pytest
    manifest.write_text(manifest.read_text().replace("test = []", "test = ['pytest']"))
    index.add_wheel("colorama", "0.4.6", {"colorama/__init__.py": ""})  # a lock is universal
    lock = await local_run(
        [str(Path(sys.executable).parent / "uv"), "lock"],
        cwd=template, env={**base_env(index), "UV_CACHE_DIR": str(tmp_path / "lock-cache")},
        timeout=120,
    )  # fmt: skip
    assert lock[0] == 0, lock[1]
    cache = tmp_path / "envcache" / "demo.git"
    first, second = tmp_path / "task-1", tmp_path / "task-2"
    shutil.copytree(template, first)
    assert await set_up(first, cache, index) == ["python venv", "uv sync", "save .venv"]
    shutil.copytree(template, second)
    assert await set_up(second, cache, index) == ["restore .venv", "uv sync"]
    tests = await run_tests(second, command=None, timeout=60)
    assert (tests.ok, tests.passed) == (True, 2), tests.output_tail
    # the lock changes (here only its text): the saved venv no longer matches
    third = tmp_path / "task-3"
    shutil.copytree(template, third)
    (third / "uv.lock").write_text((third / "uv.lock").read_text() + "\n")
    assert await set_up(third, cache, index) == ["python venv", "uv sync", "save .venv"]


async def test_no_repository_is_served_anothers_environment(
    tmp_path: Path, index: PackageIndex
) -> None:
    """Two repositories with the very same files: each has its own saved venv, and what a
    run does to its copy reaches neither the store nor the other repository."""
    envcache = tmp_path / "envcache"
    first = python_repo(tmp_path / "a-1")
    await set_up(first, envcache / "a.git", index)
    # the attacker's attempt: the run (its agent, its tests) rewrites a package in its venv
    (site_packages(first) / "calcdep" / "__init__.py").write_text(
        "def add(a, b):\n    return 'pwned'\n"
    )
    other = python_repo(tmp_path / "b-1")
    assert await set_up(other, envcache / "b.git", index) == [
        "python venv", "python install", "save .venv",
    ]  # fmt: skip
    assert "pwned" not in (site_packages(other) / "calcdep" / "__init__.py").read_text()
    again = python_repo(tmp_path / "a-2")
    assert await set_up(again, envcache / "a.git", index) == ["restore .venv", "python project"]
    tests = await run_tests(again, command=None, timeout=60)
    assert (tests.ok, tests.passed) == (True, 2), tests.output_tail


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


async def test_a_changed_lockfile_is_not_served_old_node_modules(
    tmp_path: Path, index: PackageIndex
) -> None:
    require_npm()
    one = index.add_npm_tarball("pinned", "1.0.0", {"index.js": "exports.v = 1;\n"})
    two = index.add_npm_tarball("pinned", "2.0.0", {"index.js": "exports.v = 2;\n"})
    cache = tmp_path / "envcache" / "web.git"
    check = "assert.ok(require('pinned').v)"
    template = node_project(tmp_path / "template", {"pinned": one}, check)
    assert await set_up(template, cache, index) == ["npm install", "save node_modules"]
    shutil.rmtree(template / "node_modules")
    # the repository commits a lockfile (setup writes none)
    locked = await local_run(
        ["npm", "install", "--package-lock-only", "--no-audit", "--no-fund"],
        cwd=template, env={**base_env(index), **cache_env(tmp_path / "lock-cache")},
        timeout=120,
    )  # fmt: skip
    assert locked[0] == 0, locked[1]
    lock = json.loads((template / "package-lock.json").read_text())

    def run_of(name: str) -> Path:
        shutil.copytree(template, tmp_path / name)
        return tmp_path / name

    assert await set_up(run_of("r1"), cache, index) == ["npm ci", "save node_modules"]
    asked = index.requests
    hit = run_of("r2")
    assert await set_up(hit, cache, index) == ["restore node_modules"]  # npm does not run
    assert index.requests == asked
    tests = await run_tests(hit, command=None, timeout=60)
    assert (tests.ok, tests.passed) == (True, 1), tests.output_tail
    # the same lock written another way is another lockfile: installed afresh
    relaid = run_of("r3")
    (relaid / "package-lock.json").write_text(json.dumps(lock, indent=4))
    assert await set_up(relaid, cache, index) == ["npm ci", "save node_modules"]
    # a new version in the lock gets the new version, never the saved one
    bumped = node_project(tmp_path / "r4", {"pinned": two}, check)
    assert await set_up(bumped, cache, index) == ["npm install", "save node_modules"]
    assert "exports.v = 2" in (bumped / "node_modules" / "pinned" / "index.js").read_text()


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


@pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed")
async def test_a_sandboxed_run_cannot_reach_the_saved_environments(tmp_path: Path) -> None:
    """The box a run gets (job_runner's: the repository's tool caches writable) has the
    store out of sight: the attacker's writes to it fail and it stays as it was."""
    cache = tmp_path / "envcache" / "demo.git"
    cache.mkdir(parents=True)
    store = EnvStore(envs_dir(cache))
    saved = tmp_path / "saved" / ".venv"
    (saved / "lib").mkdir(parents=True)
    (saved / "lib" / "calc.py").write_text(CALC)
    store.save(".venv", "f" * 64, saved)
    (kept,) = envs_dir(cache).glob("venv-*/tree/lib/calc.py")
    repo, home = tmp_path / "task-1", tmp_path / "home"
    repo.mkdir()
    home.mkdir()
    box = await RunBox.open(
        Sandbox.for_agent(enabled=True),
        run_id=1,
        state_dir=tmp_path / "state",
        repository=repo,
        home=home,
        readable=(),
        gateway=GatewayConfig(),
        writable=(cache,),
    )
    try:
        env = {"PATH": "/usr/bin:/bin", "HOME": str(home)}
        # judged on the host: a path under /tmp inside is the run's own tmp, so a write
        # that "succeeds" there lands in the run's scratch, not in the store
        for script in (
            f"echo 'def add(a, b): return 0' > {kept}",
            f"rm -rf {envs_dir(cache)}",
            f"mkdir -p {envs_dir(cache)}/venv-{'0' * 64}/tree",
            f"ln -s {cache} {envs_dir(cache)}/venv-x",
        ):
            await box.run(["/bin/sh", "-c", script], cwd=repo, env=env, timeout=30)
        code, out = await box.run(["cat", str(kept)], cwd=repo, env=env, timeout=30)
        assert code != 0 and "def add" not in out  # not even readable
        # the tool caches are still the run's to write
        assert await box.run(["touch", f"{cache}/uv-entry"], cwd=repo, env=env, timeout=30) == (
            0, "",
        )  # fmt: skip
    finally:
        await box.close()
    assert kept.read_text() == CALC
    assert [p.name for p in envs_dir(cache).iterdir()] == [f"venv-{'f' * 64}"]
