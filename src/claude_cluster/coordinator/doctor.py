"""``claude-cluster doctor``: is this coordinator's setup able to turn issues into PRs?

Each check answers with one :class:`Check` (ok or not, what was seen, and the fix). The
checks run with the coordinator's own settings, against the real database, Redis and
GitHub, so a pass here means the same calls will work when the coordinator makes them.
Nothing is written anywhere, and no secret is printed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

from pydantic import SecretStr

from claude_cluster.coordinator.bus import make_bus
from claude_cluster.coordinator.config import CoordinatorSettings
from claude_cluster.coordinator.github_loop import load_watched
from claude_cluster.coordinator.store import migrate
from claude_cluster.coordinator.store.db import create_engine, is_sqlite, sessionmaker
from claude_cluster.coordinator.store.repository import Repository
from claude_cluster.domain.contract import DEFAULT_PROTECTED_PATHS, resolve
from claude_cluster.errors import ConfigError
from claude_cluster.github import (
    GitHubApp,
    GitHubClient,
    GitHubError,
    PersonalToken,
    RepositoryConfig,
    token_provider,
)
from claude_cluster.github.auth import TokenProvider

__all__ = ["Check", "run_checks"]

#: what the GitHub App must be granted to open pull requests and keep the issue informed
APP_PERMISSIONS: tuple[str, ...] = ("contents", "pull_requests", "issues")
#: a check that hangs (a firewalled host) must not hang the doctor
CHECK_TIMEOUT = 15.0


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    #: what to do about it; empty when ok
    fix: str = ""


async def run_checks(settings: CoordinatorSettings) -> list[Check]:
    """Every check, in the order a person would fix them."""
    checks = [Check("configuration", True, f"database {_scheme(settings.database_url)}")]
    checks.append(await _bounded("database", _database(settings)))
    if settings.redis_url:
        checks.append(await _bounded("redis", _redis(settings)))
    else:
        checks.append(
            Check("redis", True, "not configured (one coordinator process, in-process bus)")
        )
    if settings.github_enabled:
        checks.extend(await _github(settings))
    else:
        checks.append(Check("github", True, "loop off (GITHUB_REPOSITORIES is empty)"))
    checks.extend(await _agents(settings))
    return checks


async def _bounded(name: str, check: Awaitable[Check]) -> Check:
    try:
        return await asyncio.wait_for(check, CHECK_TIMEOUT)
    except TimeoutError:
        return Check(
            name, False, f"no answer within {CHECK_TIMEOUT:.0f} s", "check the host and port"
        )


async def _database(settings: CoordinatorSettings) -> Check:
    try:
        current = await asyncio.to_thread(migrate.current_revision, settings.database_url)
    except Exception as exc:
        return Check(
            "database",
            False,
            f"cannot connect: {type(exc).__name__}: {_first_line(exc)}",
            "check DATABASE_URL and that the server is running",
        )
    head = migrate.head_revision()
    if current != head:
        return Check(
            "database",
            False,
            f"migrations at {current or 'none'}, this version needs {head}",
            "run 'claude-cluster db upgrade'",
        )
    return Check("database", True, f"reachable, migrations at head ({head})")


async def _redis(settings: CoordinatorSettings) -> Check:
    bus = make_bus(settings.redis_url)
    try:
        await bus.ping()
    except Exception as exc:
        return Check(
            "redis",
            False,
            f"no answer: {type(exc).__name__}",
            "check REDIS_URL (and its password) and that Redis is running",
        )
    finally:
        await bus.close()
    return Check("redis", True, "answers PING")


async def _github(settings: CoordinatorSettings) -> list[Check]:
    try:
        repositories = load_watched(settings)
        auth = token_provider(
            token=_secret(settings.github_token),
            app_id=settings.github_app_id,
            private_key=_secret(settings.github_app_private_key),
            installation_id=settings.github_app_installation_id,
            base_url=settings.github_api_url,
        )
    except ConfigError as exc:
        return [Check("github", False, str(exc), "fix the variable it names")]
    checks = [_webhook_secret(settings)]
    client = GitHubClient(auth, base_url=settings.github_api_url)
    try:
        if isinstance(auth, GitHubApp):
            checks.append(await _app_permissions(auth, repositories.values()))
        else:
            checks.append(Check("github credentials", True, "personal access token"))
        for repo_cfg in repositories.values():
            checks.append(await _repository(client, auth, repo_cfg.full_name))
    except GitHubError as exc:
        checks.append(
            Check("github credentials", False, str(exc), "check GITHUB_TOKEN or GITHUB_APP_*")
        )
    finally:
        await client.aclose()
        if isinstance(auth, GitHubApp):
            await auth.aclose()
    return checks


def _webhook_secret(settings: CoordinatorSettings) -> Check:
    if settings.github_webhook_secret is not None and _secret(settings.github_webhook_secret):
        return Check("webhook secret", True, "set")
    if settings.github_poll_interval > 0:
        every = f"{settings.github_poll_interval:g} s"
        return Check("webhook secret", True, f"unset; polling every {every} instead")
    return Check(
        "webhook secret",
        False,
        "unset, and polling is off: no GitHub event can arrive",
        "set GITHUB_WEBHOOK_SECRET (the same on the webhook), or GITHUB_POLL_INTERVAL",
    )


async def _app_permissions(app: GitHubApp, repo_cfgs: Iterable[RepositoryConfig]) -> Check:
    granted = await app.installation_permissions()
    needed = list(APP_PERMISSIONS)
    if any(
        not set(DEFAULT_PROTECTED_PATHS) <= set(resolve(None, cfg.contract).protected_paths)
        for cfg in repo_cfgs
    ):
        needed.append("workflows")  # some repository lets runs change workflow files
    missing = [name for name in needed if granted.get(name) != "write"]
    shown = ", ".join(f"{k}: {v}" for k, v in sorted(granted.items()))
    if missing:
        return Check(
            "github app",
            False,
            f"installation {app.installation_id} lacks write on {', '.join(missing)} ({shown})",
            "grant the App these permissions and accept them on the installation",
        )
    return Check("github app", True, f"installation {app.installation_id}: {shown}")


async def _repository(client: GitHubClient, auth: TokenProvider, full_name: str) -> Check:
    name = f"repository {full_name}"
    try:
        repo = await client.get_repo(full_name)
    except GitHubError as exc:
        return Check(name, False, str(exc), "check the name and that the credentials see it")
    if isinstance(auth, PersonalToken) and not repo.permissions.get("push", False):
        return Check(
            name,
            False,
            "the token may not push here",
            "give the token's user write access, or use a GitHub App",
        )
    return Check(name, True, f"reachable, default branch {repo.default_branch}")


async def _agents(settings: CoordinatorSettings) -> list[Check]:
    engine = create_engine(settings.database_url)
    try:
        repository = Repository(sessionmaker(engine), postgres=not is_sqlite(engine))
        agents = await repository.list_agents()
    except Exception:
        return [Check("agents", False, "cannot read the agents table", "fix the database first")]
    finally:
        await engine.dispose()
    if not agents:
        return [
            Check(
                "agents",
                False,
                "none registered",
                "start 'claude-cluster agent' on a host (or 'claude-cluster up')",
            )
        ]
    now = datetime.now(UTC)
    checks = []
    for agent in agents:
        seen = agent.last_heartbeat
        age = f"{(now - _aware(seen)).total_seconds():.0f} s ago" if seen else "never"
        told = agent.configuration or {}
        if agent.not_ready_reason or told.get("ready") is False or agent.status == "maintenance":
            # the live reason (its latest checks, or runs that failed for its own reasons)
            # before what it said at registration
            reason = str(
                agent.not_ready_reason
                or told.get("not_ready_reason")
                or "it reported itself not ready"
            )
            checks.append(
                Check(
                    f"agent {agent.id}",
                    False,
                    f"not ready: {reason[:300]}",
                    "fix what the reason names on that host: its recheck clears it, or run "
                    f"'claude-cluster agents ready {agent.id}'",
                )
            )
        elif agent.status == "offline":
            checks.append(
                Check(
                    f"agent {agent.id}",
                    False,
                    f"offline, last heartbeat {age}",
                    "start its daemon, or check that it reaches COORDINATOR_URL",
                )
            )
        elif agent.draining:
            checks.append(
                Check(
                    f"agent {agent.id}",
                    False,
                    f"draining, last heartbeat {age}",
                    f"'claude-cluster agents drain {agent.id} --undo' to take work",
                )
            )
        else:
            checks.append(
                Check(
                    f"agent {agent.id}",
                    True,
                    f"{agent.status}, last heartbeat {age}, "
                    f"{agent.active_task_count}/{agent.max_concurrent_tasks} slots",
                )
            )
    return checks


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _scheme(url: str) -> str:
    return url.split(":", 1)[0]


def _first_line(exc: BaseException) -> str:
    return (str(exc).splitlines() or [""])[0][:200]


def _secret(value: SecretStr | None) -> str | None:
    return value.get_secret_value() if value is not None else None
