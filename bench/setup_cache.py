"""Time to a ready test environment, cold cache vs warm, for a small Python and Node project.

Each sample is one run as the agent makes it by default: the project is copied to a new
directory (a sandboxed run gets a repository of its own, so no two runs share a path, and
none starts with a ``.venv`` or ``node_modules``), the run's box is opened (bubblewrap and
its gateway, ``agent/runbox.py``), and the agent's detected setup (``agent/provision.py``:
uv for Python, npm for Node) is timed as ``job_runner`` runs it: every step in the
sandbox, the registry reached only through the gateway. The registry is a package index
on the host's loopback (``tests/support/package_index.py``: pytest and its dependencies
plus a dependency of the project's own; three npm tarballs) served over HTTPS with a CA
made here, with ``--latency`` per request and ``--rate`` bandwidth (50 ms and 5 MB/s by
default) to stand in for a remote one. The tests then run in the sandbox, untimed, to
prove the environment works.

*Cold* starts from an empty per-repository cache; *warm* reuses the cache a previous run
of the same repository filled. Target: warm ≤ 25% of cold. Prints the median and spread
of ``--samples`` runs (default 5) per case. ``--sandbox off`` runs the same steps
unconfined (``RUN_SANDBOX=off``); ``--deps N`` gives each project N more dependencies
(30 files of ~4 KB each), to see how the figures grow with a project's size.

    uv run python bench/setup_cache.py [--samples 5] [--sandbox on|off] [--deps N]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from claude_cluster.agent.provision import cache_env, plan_setup, run_setup
from claude_cluster.agent.runbox import GatewayConfig, RunBox
from claude_cluster.agent.sandbox import Sandbox
from claude_cluster.agent.verify import run_tests
from claude_cluster.domain.contract import resolve
from tests.integration.agent.test_provision import node_project, python_repo
from tests.support.package_index import PackageIndex
from tests.support.tls import TestCA

#: what job_runner gives setup steps
TOOL_PATH = "/usr/local/bin:/usr/bin:/bin"
#: not 127.0.0.1: that one is in the sandbox's NO_PROXY and would stay inside it
REGISTRY_HOST = "127.0.0.2"
_run_ids = itertools.count(1)


def synthetic_files(name: str, files: int, ext: str) -> dict[str, str]:
    """``files`` modules of ~4 KB each: a dependency of some size."""
    mark = "#" if ext == "py" else "//"
    body = "".join(f"{mark} {name} line {n}: {'x' * 60}\n" for n in range(60))
    return {f"{name}/m{n}.{ext}": body for n in range(files)}


def python_project(root: Path, index: PackageIndex, extra: int) -> Path:
    repo = python_repo(root)
    names = [f"dep{n}" for n in range(extra)]
    for name in names:
        index.add_wheel(name, "1.0", {f"{name}/__init__.py": "", **synthetic_files(name, 30, "py")})
    manifest = repo / "pyproject.toml"
    more = "".join(f", '{name}'" for name in names)
    manifest.write_text(manifest.read_text().replace("['calcdep']", f"['calcdep'{more}]"))
    return repo


def node_repo(root: Path, index: PackageIndex, extra: int) -> Path:
    deps = {
        name: index.add_npm_tarball(name, "1.0.0", {"index.js": f"exports.name = '{name}';\n"})
        for name in ("alpha", "beta", "gamma")
    }
    for n in range(extra):
        files = {"index.js": "", **synthetic_files("lib", 30, "js")}
        deps[f"dep{n}"] = index.add_npm_tarball(f"dep{n}", "1.0.0", files)
    return node_project(root, deps, "assert.strictEqual(require('alpha').name, 'alpha')")


class Bench:
    def __init__(self, root: Path, sandbox: Sandbox | None, index: PackageIndex, ca: Path):
        self.root = root
        self.sandbox = sandbox
        self.index = index
        #: how the bench's registry is trusted, as a public one is through the system CAs
        self.registry_env = {
            "UV_INDEX_URL": index.simple_url,
            "SSL_CERT_FILE": str(ca),
            "npm_config_cafile": str(ca),
        }
        self.ca_dir = ca.parent

    async def ready(self, template: Path, cache: Path) -> float:
        """Seconds from plan to a ready environment in a new run of ``template``."""
        n = next(_run_ids)
        work, home = self.root / "runs" / f"task-{n}", self.root / "homes" / f"task-{n}"
        shutil.copytree(template, work)
        home.mkdir(parents=True)
        cache.mkdir(parents=True, exist_ok=True)
        box = await RunBox.open(
            self.sandbox,
            run_id=n,
            state_dir=self.root / "state",
            repository=work,
            home=home,
            readable=(self.ca_dir,),
            gateway=GatewayConfig(),
            allow=(self.index.netloc,),
            writable=(cache,),
        )
        try:
            env = {"PATH": TOOL_PATH, "HOME": str(home), "LANG": "C.UTF-8", **box.tool_env()}
            started = time.perf_counter()
            plan = plan_setup(work, resolve(None), cache_dir=cache)
            setup = await run_setup(plan, box.run, cwd=work, env={**env, **self.registry_env})
            took = time.perf_counter() - started
            if not setup.ok:
                tail = setup.steps[-1].output_tail if setup.steps else ""
                raise SystemExit(f"setup failed: {setup.reason}\n{tail}")
            tests = await run_tests(
                work,
                command=None,
                timeout=120,
                env={**cache_env(cache), **box.tool_env()},
                wrap=box.wrap if box.confined else None,
            )
            if not tests.ok:
                raise SystemExit(f"tests failed: {tests.summary}\n{tests.output_tail}")
        finally:
            await box.close()
            shutil.rmtree(work, ignore_errors=True)
            shutil.rmtree(home, ignore_errors=True)
        return took


async def measure(samples: int, latency: float, rate: float, sandboxed: bool, extra: int) -> None:
    sandbox = None
    if sandboxed:
        sandbox = Sandbox.for_agent(enabled=True)
        sandbox.check()
    with tempfile.TemporaryDirectory(prefix="cc-bench-setup-") as tmp:
        root = Path(tmp)
        ca = TestCA(root / "pki")
        leaf = ca.issue("registry", addresses=(REGISTRY_HOST,))
        with PackageIndex(
            root / "index", latency=latency, rate=rate, host=REGISTRY_HOST, tls=leaf
        ) as index:
            index.add_pytest()
            index.add_wheel(
                "calcdep", "1.0", {"calcdep/__init__.py": "def add(a, b):\n    return a + b\n"}
            )
            bench = Bench(root, sandbox, index, ca.cert)
            projects = {
                "python (uv)": python_project(root / "py", index, extra),
                "node (npm)": node_repo(root / "node", index, extra),
            }
            print(f"{'project':<12} {'cache':<5} {'median s':>9} {'min s':>7} {'max s':>7}")
            for name, template in projects.items():
                cold, warm = [], []
                shared = root / "cache" / "warm"
                await bench.ready(template, shared)  # the first run of the repository
                for i in range(samples):  # interleaved: load falls on both alike
                    print(f"{name}: sample {i + 1}/{samples}", file=sys.stderr)
                    cold.append(await bench.ready(template, root / "cache" / f"cold-{i}"))
                    warm.append(await bench.ready(template, shared))
                shutil.rmtree(root / "cache")
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
    parser.add_argument(
        "--sandbox", choices=("on", "off"), default="on", help="confine the runs (the default)"
    )
    parser.add_argument(
        "--deps",
        type=int,
        default=0,
        help="more dependencies for each project (30 files of ~4 KB each), to see how the "
        "figures grow with a project's size",
    )
    args = parser.parse_args()
    print(
        f"registry on loopback (HTTPS) with {args.latency * 1000:.0f} ms per request, "
        f"{args.rate} MB/s; sandbox {args.sandbox}; {args.deps} more dependencies"
    )
    sandboxed = args.sandbox == "on"
    asyncio.run(measure(args.samples, args.latency, args.rate * 1e6, sandboxed, args.deps))


if __name__ == "__main__":
    main()
