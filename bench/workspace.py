"""Benchmark: preparing a run's workspace for a repository with ~200 MB of history.

Side by side, each over ``--runs`` runs (after one untimed warm-up where it applies):

* ``full clone``     ``git clone`` per run, the seed's way;
* ``clone --depth 1`` a shallow clone per run;
* ``mirror+worktree`` ``WorkspaceManager(reuse_slots=False)``: fetch into the warm mirror,
  ``git worktree add`` a fresh directory;
* ``slot reuse``     ``WorkspaceManager(reuse_slots=True)``: fetch into the warm mirror,
  reset the slot's worktree (the agent's default).

The methods take turns (round-robin), so load from other processes falls on all alike.
Before every round one small commit lands upstream, and the previous run leaves some
mess in its workspace, so fetches and resets do real work. Every method reads the repository
through a ``file://`` URL: a plain path would let ``git clone`` hard-link the objects,
which no network clone can do.

The repository is generated once with ``git fast-import`` (incompressible blobs over many
commits) and cached; delete the cache directory or pass ``--rebuild`` to regenerate.

    uv run python bench/workspace.py [--runs 5] [--size-mb 200] [--cache DIR] [--rebuild]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from claude_cluster.agent.workspace import WorkspaceManager

FILES = 1500  #: files in the tree
FILE_BYTES = 8 * 1024  #: size of each (random, so the working tree is ~12 MB)
TOUCHED_PER_COMMIT = 60


def default_cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path(tempfile.gettempdir())
    return Path(base) / "claude-cluster-bench"


def git(*args: str, cwd: Path | None = None) -> str:
    result = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True)
    return result.stdout.strip()


# -- the repository ------------------------------------------------------------------


def build_repository(path: Path, size_mb: int) -> None:
    """Write ``size_mb`` of incompressible history into a new bare repository."""
    commits = max(
        1, (size_mb * 1024 * 1024 - FILES * FILE_BYTES) // (TOUCHED_PER_COMMIT * FILE_BYTES)
    )
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    git("init", "--quiet", "--bare", "--initial-branch=main", str(tmp))
    started = time.monotonic()
    importer = subprocess.Popen(["git", "fast-import", "--quiet"], cwd=tmp, stdin=subprocess.PIPE)
    assert importer.stdin is not None
    out = importer.stdin
    rng = random.Random(42)
    stamp = 1_700_000_000
    for n in range(commits + 1):
        paths = range(FILES) if n == 0 else rng.sample(range(FILES), TOUCHED_PER_COMMIT)
        message = f"commit {n}".encode()
        out.write(b"commit refs/heads/main\n")
        out.write(f"committer Bench <bench@example.invalid> {stamp + n * 60} +0000\n".encode())
        out.write(b"data %d\n%s\n" % (len(message), message))
        if n == 0:
            readme = b"# bench repository\n"
            out.write(b"M 100644 inline README.md\ndata %d\n%s\n" % (len(readme), readme))
        for p in paths:
            blob = os.urandom(FILE_BYTES)
            out.write(b"M 100644 inline src/d%02d/f%04d.bin\n" % (p % 50, p))
            out.write(b"data %d\n%s\n" % (len(blob), blob))
    out.close()
    if importer.wait() != 0:
        raise SystemExit("git fast-import failed")
    tmp.rename(path)
    size = sum(f.stat().st_size for f in (path / "objects").rglob("*") if f.is_file())
    print(
        f"built {path} ({commits + 1} commits, {size / 1e6:.0f} MB of objects) "
        f"in {time.monotonic() - started:.1f}s"
    )


def add_upstream_commit(source: Path, n: int) -> None:
    """Land one small commit on main, as an active repository would between runs."""
    body = f"change {n} at {time.time()}\n".encode()
    parent = git("rev-parse", "refs/heads/main", cwd=source)
    stream = (
        b"commit refs/heads/main\n"
        b"committer Bench <bench@example.invalid> %d +0000\n"
        b"data 6\nupdate\nfrom %s\n"
        b"M 100644 inline CHANGES.txt\ndata %d\n%s\n"
    ) % (int(time.time()), parent.encode(), len(body), body)
    subprocess.run(["git", "fast-import", "--quiet"], cwd=source, input=stream, check=True)


def leave_mess(path: Path) -> None:
    """What a run leaves behind: edited, new and ignored files."""
    victim = next((path / "src" / "d00").iterdir())
    victim.write_bytes(b"edited by the previous run\n")
    (path / "scratch.txt").write_text("untracked\n")
    (path / "__pycache__").mkdir(exist_ok=True)
    (path / "__pycache__" / "x.pyc").write_bytes(b"\0" * 1024)


# -- the methods ---------------------------------------------------------------------

Timed = Callable[[int], Awaitable[float]]


def clone_method(url: str, scratch: Path, *extra: str) -> Timed:
    async def run(n: int) -> float:
        dest = scratch / f"clone-{n}"
        started = time.perf_counter()
        git("clone", "--quiet", *extra, url, str(dest))
        elapsed = time.perf_counter() - started
        shutil.rmtree(dest)
        return elapsed

    return run


def manager_method(url: str, root: Path, *, reuse_slots: bool, releases: list[float]) -> Timed:
    manager = WorkspaceManager(root, reuse_slots=reuse_slots)

    async def run(n: int) -> float:
        started = time.perf_counter()
        ws = await manager.prepare(
            task_id=n, attempt=1, repository_url=url, issue_number=n, title=f"bench run {n}"
        )
        elapsed = time.perf_counter() - started
        leave_mess(ws.path)
        released = time.perf_counter()
        await manager.release(ws)
        releases.append(time.perf_counter() - released)
        return elapsed

    return run


Method = tuple[str, Timed, bool]  #: name, timed callable, whether it needs a warm-up


async def measure(methods: list[Method], source: Path, runs: int) -> dict[str, list[float]]:
    """Time every method ``runs`` times, round-robin, so that load from other processes
    on the machine falls on all of them alike."""
    for _, method, warm in methods:
        if warm:
            await method(-1)  # fills the mirror (and the slot); not timed
    results: dict[str, list[float]] = {name: [] for name, _, _ in methods}
    for n in range(runs):
        add_upstream_commit(source, n)
        for name, method, _ in methods:
            results[name].append(await method(n))
            print(f"  run {n + 1} {name:<16} {results[name][-1]:.3f}s", file=sys.stderr)
    return results


def p90(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.9 * (len(ordered) - 1)))]


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--size-mb", type=int, default=200)
    parser.add_argument("--cache", type=Path, default=default_cache())
    parser.add_argument("--rebuild", action="store_true")
    args = parser.parse_args()

    source = args.cache / f"source-{args.size_mb}mb.git"
    if args.rebuild:
        shutil.rmtree(source, ignore_errors=True)
    if not source.exists():
        args.cache.mkdir(parents=True, exist_ok=True)
        build_repository(source, args.size_mb)
    url = source.resolve().as_uri()

    with tempfile.TemporaryDirectory(prefix="ccbench-", dir=args.cache) as tmp:
        scratch = Path(tmp)
        fresh_releases: list[float] = []
        slot_releases: list[float] = []
        fresh_root, slots_root = scratch / "ws-fresh", scratch / "ws-slots"
        methods: list[Method] = [
            ("full clone", clone_method(url, scratch), False),
            ("clone --depth 1", clone_method(url, scratch, "--depth", "1"), False),
            (
                "mirror+worktree",
                manager_method(url, fresh_root, reuse_slots=False, releases=fresh_releases),
                True,
            ),
            (
                "slot reuse",
                manager_method(url, slots_root, reuse_slots=True, releases=slot_releases),
                True,
            ),
        ]
        results = await measure(methods, source, args.runs)

    baseline = statistics.median(results["full clone"])
    print(f"\nworkspace preparation, {args.size_mb} MB of history, {args.runs} runs each\n")
    print(f"{'method':<18}{'median s':>10}{'p90 s':>10}{'min s':>10}{'vs full clone':>15}")
    for name, times in results.items():
        median = statistics.median(times)
        print(
            f"{name:<18}{median:>10.3f}{p90(times):>10.3f}{min(times):>10.3f}"
            f"{baseline / median:>14.1f}x"
        )
    print(
        f"\nrelease (not in the figures above): mirror+worktree median "
        f"{statistics.median(fresh_releases[1:]):.3f}s, slot reuse median "
        f"{statistics.median(slot_releases[1:]):.3f}s"
    )


if __name__ == "__main__":
    asyncio.run(main())
