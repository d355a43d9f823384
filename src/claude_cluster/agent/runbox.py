"""One run's box: its sandbox confinement, its gateway, and running commands inside.

:meth:`RunBox.open` starts the run's :class:`~claude_cluster.agent.gateway.RunGateway` and
fixes what the run's processes may touch (its repository, HOME and tmp writable; the
mirror's object store and the CLI read-only); every process of the run (the agent CLI,
the tests, the fix rounds, the git commands that read the run's repository) is started
through :meth:`RunBox.wrap` or :meth:`RunBox.run`. With the sandbox off (``RUN_SANDBOX=off``)
the box is transparent: commands run as they are and the runner gets the real credential.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from claude_cluster.agent.ca_bundle import SANDBOX_CA_BUNDLE, ca_env
from claude_cluster.agent.gateway import DomainAllowlist, EventCallback, RunGateway
from claude_cluster.agent.sandbox import Confinement, Sandbox
from claude_cluster.agent.sweep import force_rmtree
from claude_cluster.process import Watchdogs, run_process

__all__ = ["GatewayConfig", "RunBox"]

#: the loopback port inside the sandbox that reaches the gateway
GATEWAY_PORT = 3128
_OUTPUT_LIMIT = 1024 * 1024


@dataclass(frozen=True)
class GatewayConfig:
    """What every run's gateway shares.

    Attributes:
        upstream: the real model API (``ANTHROPIC_BASE_URL``, default Anthropic's).
        credential: the header carrying the real credential, or ``None`` when the agent
            has none.
        allow: hosts every run may tunnel to besides the model API's.
    """

    upstream: str = "https://api.anthropic.com"
    credential: tuple[str, str] | None = None
    allow: tuple[str, ...] = ()


class RunBox:
    """The confinement of one run. Use :meth:`open` and :meth:`close`."""

    def __init__(
        self,
        sandbox: Sandbox | None,
        confinement: Confinement | None,
        gateway: RunGateway | None,
        scratch: Path | None,
        *,
        ca_bundle: Path | None = None,
    ) -> None:
        self.sandbox = sandbox
        self.confinement = confinement
        self.gateway = gateway
        self.scratch = scratch
        self.ca_bundle = ca_bundle

    @classmethod
    async def open(
        cls,
        sandbox: Sandbox | None,
        *,
        run_id: int,
        state_dir: Path,
        repository: Path,
        home: Path,
        readable: Sequence[Path],
        gateway: GatewayConfig,
        allow: Sequence[str] = (),
        budget_usd: float | None = None,
        on_event: EventCallback | None = None,
        writable: Sequence[Path] = (),
        ca_bundle: Path | None = None,
    ) -> RunBox:
        """Set up the box of run ``run_id``: its tmp, its gateway socket, its confinement.

        Args:
            sandbox: the agent's sandbox, or ``None`` when ``RUN_SANDBOX=off``.
            state_dir: a directory of the daemon's that no run sees (sockets, scratch).
            repository: the run's repository (writable).
            home: the run's HOME (writable).
            readable: more read-only paths (the mirror's objects, the CLI).
            gateway: the model API and the agent-wide egress allowlist.
            allow: hosts this run's repository may reach besides (per repository).
            budget_usd: the run's budget, enforced by the gateway.
            on_event: receives the gateway's run events.
            writable: more writable directories (the repository's own tool caches).
            ca_bundle: the CA bundle the run's tools trust (``RUN_CA_BUNDLE`` with the
                system roots), bound read-only into the sandbox.
        """
        if sandbox is None or not sandbox.enabled:
            return cls(None, None, None, None, ca_bundle=ca_bundle)
        scratch = state_dir / f"run-{run_id}"
        if scratch.exists():
            force_rmtree(scratch)
        tmp = scratch / "tmp"
        tmp.mkdir(parents=True)
        host = _host_of(gateway.upstream)
        run_gateway = RunGateway(
            scratch / "gateway.sock",
            upstream=gateway.upstream,
            credential=gateway.credential,
            allow=DomainAllowlist.of([*([host] if host else []), *gateway.allow, *allow]),
            budget_usd=budget_usd,
            on_event=on_event,
        )
        await run_gateway.start()
        confinement = sandbox.confinement(
            writable=(repository, home, *writable),
            tmp=tmp,
            readable=readable,
            gateway_socket=run_gateway.socket_path,
            gateway_port=GATEWAY_PORT,
            ca_bundle=ca_bundle,
        )
        return cls(sandbox, confinement, run_gateway, scratch, ca_bundle=ca_bundle)

    @property
    def confined(self) -> bool:
        return self.confinement is not None

    @property
    def tmp(self) -> Path | None:
        """The host side of the run's ``/tmp``."""
        return self.confinement.tmp if self.confinement is not None else None

    def wrap(self, argv: Sequence[str], cwd: Path) -> list[str]:
        if self.sandbox is None:
            return list(argv)
        return self.sandbox.wrap(argv, self.confinement, cwd=cwd)

    def agent_env(self, real: Mapping[str, str]) -> dict[str, str]:
        """The runner's credentials: the gateway and the run token, or ``real`` when off;
        and the CA bundle, which the model's own commands (an install) need as setup does."""
        if self.gateway is None:
            return {**real, **self.ca_env()}
        env = {k: v for k, v in real.items() if not _is_model_credential(k)}
        env.update(self.gateway.sandbox_env(GATEWAY_PORT))
        env.update(self.ca_env())
        env["TMPDIR"] = "/tmp"  # noqa: S108 - the run's own tmp inside the sandbox
        return env

    def tool_env(self) -> dict[str, str]:
        """For tests and setup: the proxy and the CA bundle only (no model token)."""
        if self.gateway is None:
            return self.ca_env()
        env = {
            k: v for k, v in self.gateway.sandbox_env(GATEWAY_PORT).items() if "PROXY" in k.upper()
        }
        env.update(self.ca_env())
        env["TMPDIR"] = "/tmp"  # noqa: S108
        return env

    def ca_env(self) -> dict[str, str]:
        """The CA variables naming the bundle where the run's processes see it."""
        if self.ca_bundle is None:
            return {}
        return ca_env(SANDBOX_CA_BUNDLE if self.confined else str(self.ca_bundle))

    async def run(
        self, argv: Sequence[str], *, cwd: Path, env: Mapping[str, str], timeout: float
    ) -> tuple[int | None, str]:
        """Run ``argv`` in the box; its exit code and output (stdout then stderr, capped)."""
        out: list[str] = []
        size = 0

        async def keep(line: str) -> bool:
            nonlocal size
            if size < _OUTPUT_LIMIT:
                out.append(line)
                size += len(line) + 1
            return False

        async def keep_err(line: str) -> None:
            await keep(line)

        process = await run_process(
            self.wrap(argv, cwd),
            cwd=cwd,
            env=env,
            on_line=keep,
            on_stderr_line=keep_err,
            watchdogs=Watchdogs(timeout, timeout, timeout, kill_grace=2),
        )
        return process.exit_code, "\n".join(out)

    async def close(self) -> None:
        """Revoke the run token, stop the gateway and drop the scratch directory."""
        if self.gateway is not None:
            await self.gateway.close()
        if self.scratch is not None:
            with contextlib.suppress(OSError):
                await asyncio.to_thread(force_rmtree, self.scratch)


def _is_model_credential(name: str) -> bool:
    return name in ("ANTHROPIC_API_KEY", "CLAUDE_CODE_OAUTH_TOKEN", "ANTHROPIC_BASE_URL")


def _host_of(url: str) -> str:
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if not parts.hostname:
        return ""
    return parts.hostname if parts.port in (None, 443) else f"{parts.hostname}:{parts.port}"
