"""What ``claude-cluster up`` checks before it starts anything: the ports are free and the
runner has its credentials. Each problem is one sentence that names the fix."""

from __future__ import annotations

import errno
import os
import socket
from collections.abc import Mapping, Sequence
from pathlib import Path

from claude_cluster.runners.credentials import CREDENTIALS, has_credential


def port_problem(port: int, what: str, option: str) -> str | None:
    """``None`` when ``127.0.0.1:port`` can be bound, else what to do about it."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # as the servers do: a closed connection's TIME_WAIT does not hold the port
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return (
                    f"port {port} ({what}) is taken by another program: stop it, or pass "
                    f"{option} with a free port"
                )
            return f"port {port} ({what}) cannot be used ({exc.strerror}): pass {option}"
    return None


def port_problems(port: int, agent_port: int, agents: int) -> list[str]:
    problems = [port_problem(port, "the coordinator", "--port")]
    for i in range(agents):
        problems.append(port_problem(agent_port + i, f"agent local-{i + 1}", "--agent-port"))
    if port in range(agent_port, agent_port + agents):
        problems.append(
            f"--port {port} falls among the agents' ports {agent_port}–{agent_port + agents - 1}:"
            " pick another --port or --agent-port"
        )
    return [p for p in problems if p]


def credential_problem(runner: str, env: Mapping[str, str], home: Path | None = None) -> str | None:
    """``None`` when ``runner`` can reach its model, else which variable to set."""
    if runner not in CREDENTIALS:
        return (
            f"AGENT_RUNNER / --runner {runner!r} is not a runner: use one of "
            f"{', '.join(CREDENTIALS)}"
        )
    if runner == "command" and not env.get("AGENT_COMMAND"):
        return "--runner command needs AGENT_COMMAND: export AGENT_COMMAND='<the command to run>'"
    home = home or Path(env.get("HOME") or Path.home())
    if has_credential(runner, env, home):
        return None
    names, login_file = CREDENTIALS[runner]
    either = " or ".join(names)
    hint = f" (or log the {runner} CLI in, which writes ~/{login_file})" if login_file else ""
    return (
        f"the {runner} runner needs {either}: export {names[0]}=<your key>{hint}; "
        "--runner command needs none"
    )


def preflight(
    *, port: int, agent_port: int, agents: int, runner: str, env: Mapping[str, str] | None = None
) -> Sequence[str]:
    """Every problem that would stop the cluster, before anything starts."""
    env = os.environ if env is None else env
    problems = port_problems(port, agent_port, agents)
    if agents:
        credentials = credential_problem(runner, env)
        if credentials:
            problems.append(credentials)
    return problems
