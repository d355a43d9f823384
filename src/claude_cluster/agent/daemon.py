"""The agent daemon: HTTP server, registration, heartbeat, housekeeping and the runs.

:class:`AgentDaemon` wires the parts together and owns their lifetime:

1. serve the agent API on ``AGENT_HOST:AGENT_PORT`` (first, so that the coordinator can
   dispatch as soon as it knows us);
2. register, retrying with back-off while the coordinator is down;
3. run the heartbeat and housekeeping loops while runs come and go.

Stopping follows a signal ladder (SIGTERM or SIGINT):

* first signal: :meth:`AgentDaemon.stop_gracefully`, drain: refuse new runs (503), let
  held runs finish and report, then exit 0;
* second signal: :meth:`AgentDaemon.stop_ungracefully`: stop every run (each runner's
  process group gets SIGTERM, then SIGKILL), give their reports ``SHUTDOWN_GRACE`` seconds
  to go out (the runs are handed back as ``lost`` so the coordinator retries them), exit 0;
* third signal: exit 1 at once (runs are still cancelled, so no child outlives us).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import shutil
import signal
import socket
import sys
import time
from collections.abc import Generator
from dataclasses import replace
from pathlib import Path

import uvicorn

from claude_cluster import __version__, metrics
from claude_cluster.agent import readiness
from claude_cluster.agent.api import create_agent_app
from claude_cluster.agent.ca_bundle import build_ca_bundle
from claude_cluster.agent.config import AgentSettings, load_agent_settings
from claude_cluster.agent.coordinator_client import CoordinatorClient, CoordinatorError, Registered
from claude_cluster.agent.git import count_operations_as
from claude_cluster.agent.heartbeat import HeartbeatConfig, HeartbeatLoop
from claude_cluster.agent.housekeeping import HousekeepingConfig, HousekeepingLoop
from claude_cluster.agent.identity import TokenFile
from claude_cluster.agent.job_runner import JobRunner
from claude_cluster.agent.pool import JobPool, StopCause
from claude_cluster.agent.pull_request import PullRequestOpener
from claude_cluster.agent.registration import RegistrationConfig, register
from claude_cluster.agent.reporter import ReporterConfig, RunReporter, replay_spilled
from claude_cluster.agent.run_context import JobConfig
from claude_cluster.agent.runbox import GatewayConfig
from claude_cluster.agent.runner_choice import RunnerChoice
from claude_cluster.agent.sandbox import Sandbox, SandboxUnavailable
from claude_cluster.agent.sweep import force_rmtree
from claude_cluster.agent.workspace import WorkspaceManager
from claude_cluster.domain.wire import AgentRegistration
from claude_cluster.errors import ConfigError
from claude_cluster.logging import configure, get_logger
from claude_cluster.runners import Runner, get_runner
from claude_cluster.runners.claude_code import find_claude_cli
from claude_cluster.tls import KEEP_ALIVE_SECONDS, client_verify

__all__ = ["SHUTDOWN_GRACE", "AgentDaemon", "build_runner", "main"]

log = get_logger(__name__)

#: seconds runs and their reports get after the second signal
SHUTDOWN_GRACE = 10.0
#: seconds the HTTP server waits for open connections when it stops
SERVER_CLOSE_GRACE = 3
#: seconds a runner's process group gets between SIGTERM and SIGKILL
KILL_GRACE = 5.0


def build_runner(settings: AgentSettings, name: str | None = None) -> Runner:
    """The runner ``name`` (by default the one ``AGENT_RUNNER`` names), configured from the
    settings.

    Raises:
        ConfigError: unknown runner or configuration it does not accept.
    """
    name = name or settings.agent_runner
    if name == "claude":
        return get_runner(name, cli_path=settings.claude_code_cli_path, kill_grace=KILL_GRACE)
    if name == "command":
        return get_runner(name, command=settings.agent_command or "", kill_grace=KILL_GRACE)
    return get_runner(name, kill_grace=KILL_GRACE)


def model_credentials(settings: AgentSettings) -> dict[str, str | None]:
    """The model credentials the agent has, for the runners' credential checks."""
    return {
        "ANTHROPIC_API_KEY": settings.anthropic_api_key,
        "CLAUDE_CODE_OAUTH_TOKEN": settings.claude_code_oauth_token,
        "OPENAI_API_KEY": os.environ.get("OPENAI_API_KEY"),
    }


def runner_unavailable(settings: AgentSettings, name: str) -> str | None:
    """Why runner ``name`` cannot run on this agent (no executable, no model credential),
    or None: what a contract's ``runner`` is checked against before its run."""
    if name == "command" and not settings.agent_command:
        return "AGENT_COMMAND is not set on this agent"
    return readiness.executable_problem(
        name,
        cli_path=settings.claude_code_cli_path if name == "claude" else None,
        command=settings.agent_command,
    ) or readiness.credential_problem(name, model_credentials(settings))


def runner_choice(settings: AgentSettings, runner: Runner | None = None) -> RunnerChoice:
    """The agent's own runner (``runner``, else ``AGENT_RUNNER``'s) and the others a
    contract may name, built from the settings when they are available here."""
    return RunnerChoice(
        runner or build_runner(settings),
        build=lambda name: build_runner(settings, name),
        problem=lambda name: runner_unavailable(settings, name),
    )


def gateway_config(settings: AgentSettings) -> GatewayConfig:
    """Where the runs' gateways send model requests, with which credential."""
    credential: tuple[str, str] | None = None
    if settings.anthropic_api_key:
        credential = ("x-api-key", settings.anthropic_api_key)
    elif settings.claude_code_oauth_token:
        credential = ("authorization", f"Bearer {settings.claude_code_oauth_token}")
    return GatewayConfig(
        upstream=settings.anthropic_base_url or "https://api.anthropic.com",
        credential=credential,
        allow=tuple(settings.run_egress_allow),
    )


def run_ca_bundle(settings: AgentSettings) -> Path | None:
    """The runs' CA bundle: the system roots and ``RUN_CA_BUNDLE``, written once at start
    under ``WORKSPACE_PATH`` (not in ``runs/``, which a start empties; no run sees it but
    through its read-only bind); ``None`` when unset."""
    if settings.run_ca_bundle is None:
        return None
    return build_ca_bundle(
        settings.run_ca_bundle, settings.workspace_path / "run-ca-certificates.pem"
    )


def sandbox_for(settings: AgentSettings) -> Sandbox:
    """The runs' sandbox: the agent's interpreter, the Claude CLI and ``AGENT_COMMAND``
    readable inside (whichever runner the agent runs: a contract may name the other)."""
    extra: list[Path] = []
    cli = find_claude_cli(settings.claude_code_cli_path)
    if cli is not None:
        extra.append(Path(cli).resolve().parent)
    if settings.agent_command:
        # the operator's command and the files it names (a script), read-only; one that
        # cannot be split is refused by its runner, not here
        try:
            words = shlex.split(settings.agent_command)
        except ValueError:
            words = []
        found = shutil.which(words[0]) if words else None
        named = [Path(found)] if found else []
        named += [Path(w) for w in words[1:] if w.startswith("/") and Path(w).exists()]
        extra += [p.resolve() for p in named]
    return Sandbox.for_agent(enabled=settings.run_sandbox, extra_readable=extra)


#: what `claude-cluster agent` tells the operator when the canary fails
SANDBOX_FIX = (
    "install bubblewrap and socat (scripts/setup, or apt-get install bubblewrap socat) and "
    "allow unprivileged user namespaces (sysctl kernel.unprivileged_userns_clone=1; on "
    "Ubuntu also kernel.apparmor_restrict_unprivileged_userns=0; under systemd do not set "
    "RestrictNamespaces or PrivateUsers); keep the agent's .env outside WORKSPACE_PATH and "
    "the venv; or set RUN_SANDBOX=off to run unconfined (said in every run, PR and /status)"
)


def runner_env(settings: AgentSettings) -> dict[str, str]:
    """The credentials and API settings the runner's CLI needs (nothing else of ours)."""
    values = {
        "ANTHROPIC_API_KEY": settings.anthropic_api_key,
        "CLAUDE_CODE_OAUTH_TOKEN": settings.claude_code_oauth_token,
        "ANTHROPIC_BASE_URL": settings.anthropic_base_url,
    }
    return {name: value for name, value in values.items() if value}


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: the daemon owns the signal ladder."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


class AgentDaemon:
    """One agent process.

    Args:
        settings: the agent's settings.
        runner: the runner to use instead of the one ``AGENT_RUNNER`` names (tests).
        open_pull_request: a pull-request opener instead of the GitHub client (tests).
        reporter_config: timing of the run reporters.
        registration_config: back-off of the registration retries.
        client: the coordinator client to use (tests).
    """

    def __init__(
        self,
        settings: AgentSettings,
        *,
        runner: Runner | None = None,
        open_pull_request: PullRequestOpener | None = None,
        reporter_config: ReporterConfig | None = None,
        registration_config: RegistrationConfig | None = None,
        client: CoordinatorClient | None = None,
        env_file: Path | None = None,
    ) -> None:
        self.settings = settings
        self.env_file = (env_file or Path(".env")).absolute()
        self.sandbox_on = settings.run_sandbox
        self.run_sandbox = sandbox_for(settings)
        self.agent_id = settings.agent_id
        count_operations_as(settings.agent_id)
        self.secret = settings.agent_secret
        self.started_at = time.monotonic()
        self.client = client or CoordinatorClient(
            settings.coordinator_url,
            registration_token=settings.registration_token,
            verify=client_verify(settings.tls_ca_file),
            token_file=TokenFile(settings.state_dir),
        )
        self.workspaces = WorkspaceManager(
            settings.workspace_path,
            branch_prefix=settings.branch_prefix,
            keep=settings.debug,
            isolated=settings.run_sandbox,
        )
        self.homes_dir = settings.workspace_path / "homes"
        runners = runner_choice(settings, runner)
        self.job_runner = JobRunner(
            JobConfig(
                agent_id=settings.agent_id,
                homes_dir=self.homes_dir,
                specialties=tuple(settings.specialties),
                runner_env=runner_env(settings),
                model=settings.claude_model,
                max_turns=settings.claude_max_turns,
                task_timeout=settings.task_timeout,
                stall_timeout=settings.stall_timeout,
                result_grace=settings.result_grace,
                max_fix_rounds=settings.max_fix_rounds,
                test_timeout=settings.test_timeout,
                git_user_name=settings.git_user_name,
                git_user_email=settings.git_user_email,
                sandbox=self.run_sandbox if settings.run_sandbox else None,
                gateway=gateway_config(settings),
                state_dir=settings.workspace_path / "runs",
                ca_bundle=run_ca_bundle(settings),
                protected_paths=tuple(settings.protected_paths),
                dashboard_url=settings.coordinator_url.rstrip("/"),
            ),
            workspaces=self.workspaces,
            runner=runners.default,
            runners=runners,
            open_pull_request=open_pull_request,
            github_api_url=settings.github_api_url,
            git_tokens=self.client.git_token,
            confirm_delivery=self.client.confirm_delivery,
        )
        reporter_config = reporter_config or ReporterConfig()
        if reporter_config.spill_dir is None:  # unsent reports beyond memory go to disk
            reporter_config = replace(reporter_config, spill_dir=settings.state_dir / "reports")
        self.reporter_config = reporter_config
        self.pool = JobPool(
            self.job_runner,
            lambda run_id: RunReporter(self.client, run_id, reporter_config),
            capacity=settings.max_concurrent_tasks,
            agent_id=settings.agent_id,
        )
        self.app = create_agent_app(self.pool, self)
        self.registration_config = registration_config or RegistrationConfig()
        self.registered_as: Registered | None = None
        self.heartbeat: HeartbeatLoop | None = None
        self.signals = 0
        self._draining = asyncio.Event()
        self._forced = asyncio.Event()
        self._loops_stop = asyncio.Event()
        self._server: _Server | None = None
        self._sandbox_failed = False
        self._sandbox_checked = False
        #: set when a run failed for a reason of the agent: recheck readiness at once
        self._recheck_now = asyncio.Event()
        self.pool.on_agent_fault = self._recheck_now.set

    # --- identity (for the API) ----------------------------------------------------

    @property
    def registered(self) -> bool:
        return self.registered_as is not None

    @property
    def sandbox(self) -> str:
        return "on" if self.sandbox_on else "off"

    async def check_ready(self) -> bool:
        """Run every readiness check (runner, model credential, sandbox canary, workspace);
        when one fails the agent is not ready (no runs) and says why, in its registration,
        its heartbeats, ``/status`` and ``claude_agent_ready``."""
        s = self.settings
        runner = self.job_runner.runner
        problems = [
            readiness.runner_problem(runner),
            readiness.credential_problem(getattr(runner, "name", ""), model_credentials(s)),
            await self._sandbox_problem(),
            await asyncio.to_thread(
                readiness.workspace_problem, s.workspace_path, s.workspace_min_free_gb
            ),
        ]
        reason = "; ".join(p for p in problems if p) or None
        if reason != self.pool.not_ready:
            if reason is None:
                log.info("agent_ready", agent_id=self.agent_id)
            else:
                log.error("agent_not_ready", agent_id=self.agent_id, reason=reason)
        self.pool.not_ready = reason
        metrics.AGENT_READY.labels(agent_id=self.agent_id).set(1 if reason is None else 0)
        return reason is None

    async def _sandbox_problem(self) -> str | None:
        """The sandbox canary's failure, or None (also with ``RUN_SANDBOX=off``)."""
        metrics.AGENT_SANDBOX.labels(agent_id=self.agent_id).set(1 if self.sandbox_on else 0)
        if not self.sandbox_on:
            if self._sandbox_checked:
                return None
            self._sandbox_checked = True
            log.warning(
                "sandbox_off",
                agent_id=self.agent_id,
                detail="RUN_SANDBOX=off: runs are NOT confined; they can read this agent's "
                "files and credentials and reach the network",
            )
            return None
        s = self.settings
        try:
            await self.run_sandbox.canary(
                secret_files=[self.env_file],
                forbidden_dirs=[s.workspace_path, self.env_file.parent, Path(sys.prefix)],
            )
        except SandboxUnavailable as exc:
            if not self._sandbox_failed:
                log.error(
                    "sandbox_not_ready", agent_id=self.agent_id, reason=str(exc), fix=SANDBOX_FIX
                )
            self._sandbox_failed = True
            return str(exc)
        if self._sandbox_failed or not self._sandbox_checked:
            log.info("sandbox_ready", agent_id=self.agent_id)
        self._sandbox_failed = False
        self._sandbox_checked = True
        return None

    def registration(self) -> AgentRegistration:
        """What we tell the coordinator about ourselves."""
        s = self.settings
        return AgentRegistration(
            id=s.agent_id,
            name=s.agent_name,
            hostname=socket.gethostname(),
            ip_address=s.ip_address,
            port=s.port,
            specialties=list(s.specialties),
            capabilities=list(s.capabilities),
            max_concurrent_tasks=s.max_concurrent_tasks,
            cpu_cores=s.cpu_cores,
            memory_gb=s.memory_gb,
            disk_gb=s.disk_gb,
            workspace_path=str(s.workspace_path),
            version=__version__,
            configuration={
                **s.public_configuration(),
                "ready": self.pool.not_ready is None,
                "not_ready_reason": self.pool.not_ready,
            },
            secret=s.agent_secret,
            url=s.url,
            ready=self.pool.not_ready is None,
            not_ready_reason=self.pool.not_ready,
            runners=self.job_runner.runners.offered(),
        )

    # --- the signal ladder -----------------------------------------------------------

    def stop_gracefully(self) -> None:
        """Drain: refuse new runs, let held runs finish and report, then exit."""
        first = not self._draining.is_set()
        self.pool.drain()
        self._draining.set()
        if first:
            log.info("agent_draining", agent_id=self.agent_id, runs=len(self.pool.jobs))

    def stop_ungracefully(self) -> None:
        """Stop every run now (handed back to the coordinator), then exit."""
        self.stop_gracefully()
        self.pool.report_timeout = SHUTDOWN_GRACE
        stopped = self.pool.stop_all(StopCause.SHUTDOWN)
        self._forced.set()
        log.warning("agent_stopping_runs", agent_id=self.agent_id, runs_stopped=stopped)

    def _on_signal(self, signum: int) -> None:
        """One rung of the ladder. The step comes before any logging, and a failure to log
        (a closed pipe, a full disk) cannot stop it."""
        self.signals += 1
        try:
            if self.signals == 1:
                self.stop_gracefully()
            elif self.signals == 2:
                self.stop_ungracefully()
            else:
                self._exit_now()
        finally:
            with contextlib.suppress(Exception):
                log.info("signal_received", signal=signal.Signals(signum).name, count=self.signals)

    def _exit_now(self) -> None:
        self._forced.set()
        # the cancelled runners kill their process groups in their own finally blocks,
        # which need the loop: leave through the normal path, but do not wait for reports
        self.pool.report_timeout = 0.5
        for job in self.pool.jobs.values():
            if job.task is not None:
                job.task.cancel()
        with contextlib.suppress(Exception):
            log.error("agent_exiting_now", agent_id=self.agent_id)

    # --- running ---------------------------------------------------------------------

    async def run(self, *, install_signals: bool = True) -> int:
        """Serve, register, beat and run until stopped; returns the exit code."""
        loop = asyncio.get_running_loop()
        if install_signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self._on_signal, sig)
        try:
            if not await self._start_server():
                return 1
            try:
                code = await self._serve_until_stopped()
            except CoordinatorError as exc:
                log.error("agent_cannot_register", agent_id=self.agent_id, error=str(exc))
                code = 1
            await self._shutdown()
            return code if self.signals < 3 else 1
        finally:
            if install_signals:
                for sig in (signal.SIGTERM, signal.SIGINT):
                    loop.remove_signal_handler(sig)
            await self.client.aclose()

    async def _start_server(self) -> bool:
        config = uvicorn.Config(
            self.app,
            host=self.settings.host,
            port=self.settings.port,
            log_level="warning",
            access_log=False,
            lifespan="off",
            ssl_certfile=self.settings.tls_cert_file,
            ssl_keyfile=self.settings.tls_key_file,
            # Runs are drained before the server stops; what is left are idle keep-alive
            # connections, and closing a TLS one waits for the peer's close_notify (30 s).
            timeout_graceful_shutdown=SERVER_CLOSE_GRACE,
            timeout_keep_alive=KEEP_ALIVE_SECONDS,
        )
        self._server = _Server(config)
        self._serve_task = asyncio.create_task(self._server.serve())
        while not self._server.started:
            if self._serve_task.done():
                log.error(
                    "agent_http_failed",
                    agent_id=self.agent_id,
                    host=self.settings.host,
                    port=self.settings.port,
                )
                with contextlib.suppress(BaseException):
                    self._serve_task.result()
                return False
            await asyncio.sleep(0.02)
        log.info(
            "agent_started",
            agent_id=self.agent_id,
            url=self.settings.url,
            runner=self.job_runner.runner.name,
            capacity=self.pool.capacity,
            version=__version__,
        )
        return True

    async def _serve_until_stopped(self) -> int:
        s = self.settings
        s.workspace_path.mkdir(parents=True, exist_ok=True)
        # runs' sockets and tmp left by a crash: no run is held at start
        runs_state = s.workspace_path / "runs"
        if runs_state.exists():
            await asyncio.to_thread(force_rmtree, runs_state)
        await self.check_ready()
        registered = await register(
            self.client, self.registration(), config=self.registration_config, stop=self._draining
        )
        if registered is None:
            return 0  # asked to stop before the coordinator ever answered
        self.registered_as = registered
        interval = min(self.settings.heartbeat_interval, registered.heartbeat_interval)
        self.heartbeat = HeartbeatLoop(
            self.client,
            self.pool,
            HeartbeatConfig(interval=interval, lease_seconds=registered.lease_seconds),
            agent_id=self.agent_id,
            reregister=self._register_once,
            runners=self.job_runner.runners.offered,
        )
        housekeeping = HousekeepingLoop(
            self.workspaces,
            self.homes_dir,
            lambda: {job.request.task_id for job in self.pool.jobs.values()},
            HousekeepingConfig(
                retention_days=self.settings.workspace_cleanup_days,
                max_size_gb=self.settings.workspace_max_size_gb,
            ),
        )
        loops = [
            asyncio.create_task(self.heartbeat.run(self._loops_stop), name="heartbeat"),
            asyncio.create_task(self._recheck_readiness(), name="readiness"),
            asyncio.create_task(housekeeping.run(self._loops_stop), name="housekeeping"),
        ]
        # reports an earlier life could not deliver (kept on disk): send them now
        replay = asyncio.create_task(replay_spilled(self.client, self.reporter_config))
        try:
            await self._draining.wait()
            await self._wait_for_runs()
            # one last beat: the coordinator sees us in maintenance with nothing held
            with contextlib.suppress(CoordinatorError):
                await self.heartbeat.beat()
        finally:
            replay.cancel()  # what it did not send stays on disk for the next start
            self._loops_stop.set()
            await asyncio.gather(*loops, replay, return_exceptions=True)
        return 0

    async def _recheck_readiness(self) -> None:
        """Run the readiness checks every ``READY_CHECK_INTERVAL`` seconds, and at once
        after a run failed for a reason of the agent: the heartbeat carries their result,
        so a host that broke stops getting work and a fixed one gets it again without a
        restart."""
        while not self._loops_stop.is_set():
            stop = asyncio.create_task(self._loops_stop.wait())
            now = asyncio.create_task(self._recheck_now.wait())
            await asyncio.wait(
                {stop, now},
                timeout=self.settings.ready_check_interval,
                return_when=asyncio.FIRST_COMPLETED,
            )
            stop.cancel()
            now.cancel()
            self._recheck_now.clear()
            if self._loops_stop.is_set() or self._draining.is_set():
                return
            try:
                await self.check_ready()
            except Exception:  # a check that breaks must not end the loop
                log.exception("readiness_check_failed", agent_id=self.agent_id)

    async def _wait_for_runs(self) -> None:
        idle = asyncio.create_task(self.pool.wait_idle())
        forced = asyncio.create_task(self._forced.wait())
        await asyncio.wait({idle, forced}, return_when=asyncio.FIRST_COMPLETED)
        if not idle.done():
            grace = SHUTDOWN_GRACE + KILL_GRACE if self.signals < 3 else KILL_GRACE
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(idle, grace)
        forced.cancel()
        if not idle.done():
            idle.cancel()
        await self.pool.close()

    async def _register_once(self) -> None:
        self.registered_as = await self.client.register(self.registration())
        log.info("agent_reregistered", agent_id=self.agent_id)

    async def _shutdown(self) -> None:
        self._loops_stop.set()
        await self.pool.close()
        if self._server is not None:
            self._server.should_exit = True
            with contextlib.suppress(Exception):
                await self._serve_task
        log.info("agent_stopped", agent_id=self.agent_id)


def main(env_file: Path | None = None) -> int:
    """Load the settings, configure logging and run the daemon; returns the exit code."""
    try:
        settings = load_agent_settings(env_file)
    except ConfigError as exc:
        print(f"claude-cluster agent: {exc}", file=sys.stderr)  # noqa: T201 - before logging exists
        return 2
    configure(
        settings.log_level,
        service="claude-cluster-agent",
        log_file=settings.log_file,
        fmt=settings.log_format,
    )
    try:
        daemon = AgentDaemon(settings, env_file=env_file)
    except (ConfigError, ValueError) as exc:
        print(f"claude-cluster agent: {exc}", file=sys.stderr)  # noqa: T201
        return 2
    return asyncio.run(daemon.run())
