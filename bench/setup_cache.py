"""Time to a ready test environment, cold cache vs warm, for a small Python and Node project.

Each sample copies the project afresh (no ``.venv``, no ``node_modules``) and times the
agent's detected setup (``agent/provision.py``: uv for Python, npm for Node) against a
package index on loopback (``tests/support/package_index.py``: pytest and its
dependencies plus a dependency of the project's own; three npm tarballs) that stands in
for a remote registry with ``--latency`` per request and ``--rate`` bandwidth (50 ms and
5 MB/s by default); the tests then run, untimed, to prove the environment works.
*Cold* starts from an empty per-repository cache; *warm* reuses the cache a previous run
filled, as the agent does for the next run of the same repository. Target: warm ≤ 25% of
cold. Prints the median and spread of ``--samples`` runs (default 5) per case.

    uv run python bench/setup_cache.py [--samples 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from claude_cluster.agent.provision import plan_setup, run_setup
from claude_cluster.agent.verify import run_tests
from claude_cluster.domain.contract import resolve
from tests.integration.agent.test_provision import local_run, python_repo
from tests.support.package_index import PackageIndex

CALC = "def add(a, b):\n    return a + b\n"
PATH = "/usr/local/bin:/usr/bin:/bin"


def node_repo(root: Path, index: PackageIndex) -> Path:
    root.mkdir()
    deps = {
        name: index.add_npm_tarball(name, "1.0.0", {"index.js": f"exports.name = '{name}';\n"})
        for name in ("alpha", "beta", "gamma")
    }
    manifest = {"name": "web", "version": "1.0.0", "scripts": {"test": "node --test"}}
    (root / "package.json").write_text(json.dumps({**manifest, "dependencies": deps}))
    (root / "a.test.js").write_text(
        "const test = require('node:test');\nconst assert = require('node:assert');\n"
        "test('deps', () => assert.strictEqual(require('alpha').name, 'alpha'));\n"
    )
    return root


async def ready(template: Path, work: Path, cache: Path, env: dict[str, str]) -> float:
    """Seconds from a fresh copy to a ready environment (the tests then run, untimed, to
    prove it is ready)."""
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(template, work)
    started = time.perf_counter()
    plan = plan_setup(work, resolve(None), cache_dir=cache)
    setup = await run_setup(plan, local_run, cwd=work, env=env)
    took = time.perf_counter() - started
    if not setup.ok:
        raise SystemExit(f"setup failed: {setup.reason}\n{setup.steps[-1].output_tail}")
    tests = await run_tests(work, command=None, timeout=120)
    if not tests.ok:
        raise SystemExit(f"tests failed: {tests.summary}\n{tests.output_tail}")
    return took


async def measure(samples: int, latency: float, rate: float) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        with PackageIndex(root / "index", latency=latency, rate=rate) as index:
            index.add_pytest()
            index.add_wheel(
                "calcdep", "1.0", {"calcdep/__init__.py": "def add(a, b):\n    return a + b\n"}
            )
            env = {
                "PATH": "/usr/local/bin:/usr/bin:/bin",
                "HOME": str(root),
                "UV_INDEX_URL": index.simple_url,
            }
            projects = {
                "python (uv)": python_repo(root / "py"),
                "node (npm)": node_repo(root / "node", index),
            }
            print(f"{'project':<12} {'cache':<5} {'median s':>9} {'min s':>7} {'max s':>7}")
            for name, template in projects.items():
                cold, warm = [], []
                for i in range(samples):
                    cold.append(
                        await ready(template, root / "work", root / f"cold-{name}-{i}", env)
                    )
                shared = root / f"warm-{name}"
                await ready(template, root / "work", shared, env)  # fill the cache once
                for _ in range(samples):
                    warm.append(await ready(template, root / "work", shared, env))
                for label, times in (("cold", cold), ("warm", warm)):
                    print(
                        f"{name:<12} {label:<5} {statistics.median(times):>9.3f} "
                        f"{min(times):>7.3f} {max(times):>7.3f}"
                    )
                ratio = statistics.median(warm) / statistics.median(cold)
                print(f"{name:<12} warm/cold = {ratio:.0%} (target <= 25%)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=5)
    parser.add_argument("--latency", type=float, default=0.05, help="registry latency (s)")
    parser.add_argument("--rate", type=float, default=5.0, help="registry MB/s")
    args = parser.parse_args()
    print(f"registry on loopback with {args.latency * 1000:.0f} ms per request, {args.rate} MB/s")
    asyncio.run(measure(args.samples, args.latency, args.rate * 1e6))


if __name__ == "__main__":
    main()
