"""What the run sandbox and the gateway cost (SPEC §4c).

Four figures, each direct vs confined, median and p90:

* sandbox start: ``/bin/true`` started directly, under bubblewrap, and under bubblewrap
  with the gateway bridge (socat) up before the command starts;
* one model request (a small streamed reply from the fake API on loopback) sent straight
  to the API vs through a run gateway's Unix socket (token swap, usage counting);
* streaming: a long reply (thousands of SSE events) direct vs through the gateway, as
  events per second;
* a no-op turn of the real Claude Code CLI: unconfined against the API vs in the sandbox
  through the gateway.

Targets: sandbox start ≤ 50 ms, gateway ≤ 2 ms per request, no measurable change in
streamed events per second. Run: ``uv run python bench/sandbox.py [--samples 30]``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from claude_cluster.agent.gateway import DomainAllowlist, RunGateway
from claude_cluster.agent.sandbox import Confinement, Sandbox, bwrap_argv
from claude_cluster.runners.claude_code import find_claude_cli
from tests.fakes.anthropic_api import FakeAnthropic, reply, text

BODY = {"model": "claude-sonnet-4-5", "max_tokens": 10, "stream": True, "messages": []}


def stats(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered), ordered[min(len(ordered) - 1, int(len(ordered) * 0.9))]


def row(name: str, samples: list[float], unit: str = "ms", scale: float = 1000.0) -> None:
    median, p90 = stats(samples)
    print(f"{name:<52} {median * scale:>10.2f} {p90 * scale:>10.2f}  {unit}")


def timed(argv: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(argv, check=True, stdin=subprocess.DEVNULL)
    return time.perf_counter() - started


def sandbox_start(samples: int, root: Path, sandbox: Sandbox) -> None:
    tmp = root / "tmp"
    tmp.mkdir(exist_ok=True)
    plain = Confinement(writable=(root,), tmp=tmp, readable=sandbox.readable)
    sock = root / "gw.sock"
    import socket

    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(sock))
    listener.listen(1)
    bridged = Confinement(writable=(root,), tmp=tmp, readable=sandbox.readable, gateway_socket=sock)
    variants = {
        "start: /bin/true directly": ["/bin/true"],
        "start: /bin/true in the sandbox": bwrap_argv(["/bin/true"], plain, cwd=root),
        "start: /bin/true in the sandbox + gateway bridge": bwrap_argv(
            ["/bin/true"], bridged, cwd=root
        ),
    }
    results: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(samples):  # interleaved, so load falls on all variants alike
        for name, argv in variants.items():
            results[name].append(timed(argv))
    listener.close()
    for name, values in results.items():
        row(name, values)


async def measure(
    samples: int, call: Callable[[], Awaitable[object]], warmup: int = 3
) -> list[float]:
    for _ in range(warmup):
        await call()
    out = []
    for _ in range(samples):
        started = time.perf_counter()
        await call()
        out.append(time.perf_counter() - started)
    return out


async def gateway_requests(samples: int, root: Path, api: FakeAnthropic) -> None:
    small = api.scenario([text("ok")])
    long_reply = api.scenario([reply(*[f"word{i} " for i in range(2000)])])
    gateways = []
    for scenario in (small, long_reply):
        gateway = RunGateway(
            root / f"gw-{scenario.id}.sock",
            upstream=scenario.base_url,
            credential=("x-api-key", "sk-bench"),
            allow=DomainAllowlist(),
        )
        await gateway.start()
        gateways.append(gateway)
    try:
        async with (
            httpx.AsyncClient(timeout=30) as direct,
            httpx.AsyncClient(
                transport=httpx.AsyncHTTPTransport(uds=str(gateways[0].socket_path)),
                base_url="http://127.0.0.1:3128",
                timeout=30,
            ) as via_small,
            httpx.AsyncClient(
                transport=httpx.AsyncHTTPTransport(uds=str(gateways[1].socket_path)),
                base_url="http://127.0.0.1:3128",
                timeout=30,
            ) as via_long,
        ):

            def call(
                client: httpx.AsyncClient, url: str, key: str
            ) -> Callable[[], Awaitable[object]]:
                async def go() -> object:
                    headers = {"x-api-key": key}
                    response = await client.post(url, json=BODY, headers=headers)
                    response.raise_for_status()
                    return response.content

                return go

            direct_small = call(direct, f"{small.base_url}/v1/messages", "sk-bench")
            gw_small = call(via_small, "/v1/messages", gateways[0].token)
            a, b = [], []
            for _ in range(samples):
                a += await measure(1, direct_small, warmup=0)
                b += await measure(1, gw_small, warmup=0)
            row("request: small streamed reply, direct", a)
            row("request: small streamed reply, via the gateway", b)
            overhead = [y - x for x, y in zip(sorted(a), sorted(b), strict=True)]
            row("request: gateway overhead (sorted pairs)", overhead)

            events = 2 + 3 * 2000 + 2
            direct_long = call(direct, f"{long_reply.base_url}/v1/messages", "sk-bench")
            gw_long = call(via_long, "/v1/messages", gateways[1].token)
            c, d = [], []
            for _ in range(max(5, samples // 3)):
                c += await measure(1, direct_long, warmup=0)
                d += await measure(1, gw_long, warmup=0)
            print(f"{'stream: SSE events/s, direct':<52} {events / stats(c)[0]:>10.0f} "
                  f"{events / stats(c)[1]:>10.0f}  events/s (median, p90 time)")  # fmt: skip
            print(f"{'stream: SSE events/s, via the gateway':<52} {events / stats(d)[0]:>10.0f} "
                  f"{events / stats(d)[1]:>10.0f}  events/s (median, p90 time)")  # fmt: skip
    finally:
        for gateway in gateways:
            await gateway.close()


async def cli_turns(samples: int, root: Path, api: FakeAnthropic, sandbox: Sandbox) -> None:
    cli = find_claude_cli()
    if cli is None:
        print("cli: the Claude Code CLI is not installed; skipped", file=sys.stderr)
        return
    sandbox = Sandbox.for_agent(enabled=True, extra_readable=[Path(cli).resolve().parent])
    sandbox.check()
    work, home, tmp = root / "work", root / "home", root / "cli-tmp"
    for path in (work, home, tmp):
        path.mkdir(exist_ok=True)
    await asyncio.to_thread(subprocess.run, ["git", "init", "-q", str(work)], check=True)
    argv = [cli, "-p", "--output-format", "json", "--max-turns", "1", "--", "say ok"]
    base_env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(home),
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        "CLAUDE_CODE_MAX_RETRIES": "0",
    }
    direct_times, boxed_times = [], []
    for _ in range(samples):
        scenario = api.scenario([text("ok")])
        env = {**base_env, **scenario.env()}
        direct_times.append(timed_env(argv, env, work))
        gateway = RunGateway(
            root / "cli-gw.sock",
            upstream=scenario.base_url,
            credential=("x-api-key", "sk-bench"),
            allow=DomainAllowlist(),
        )
        await gateway.start()
        try:
            confinement = sandbox.confinement(
                writable=(work, home), tmp=tmp, gateway_socket=gateway.socket_path
            )
            boxed_env = {**base_env, **gateway.sandbox_env(3128)}
            boxed = sandbox.wrap(argv, confinement, cwd=work)
            boxed_times.append(await asyncio.to_thread(timed_env, boxed, boxed_env, work))
        finally:
            await gateway.close()
    row("cli: no-op turn, unconfined, direct to the API", direct_times)
    row("cli: no-op turn, sandbox + gateway", boxed_times)


def timed_env(argv: list[str], env: dict[str, str], cwd: Path) -> float:
    if os.geteuid() == 0:
        env = {**env, "IS_SANDBOX": "1"}
    started = time.perf_counter()
    subprocess.run(argv, check=True, env=env, cwd=cwd, capture_output=True, timeout=120)
    return time.perf_counter() - started


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=30, help="samples per variant")
    parser.add_argument("--cli-samples", type=int, default=10, help="CLI turns per variant")
    args = parser.parse_args()
    sandbox = Sandbox.for_agent(enabled=True)
    sandbox.check()
    print(f"{'what':<52} {'median':>10} {'p90':>10}")
    with tempfile.TemporaryDirectory(prefix="cc-bench-sandbox-") as scratch:
        root = Path(scratch)
        sandbox_start(args.samples, root, sandbox)
        with FakeAnthropic.start() as api:
            await gateway_requests(args.samples * 3, root, api)
            await cli_turns(args.cli_samples, root, api, sandbox)


if __name__ == "__main__":
    asyncio.run(main())
