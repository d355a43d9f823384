"""Which runner a run uses: the one its policy names, when this agent has it.

A contract (the repository's, else the operator's) may name a runner (``claude``,
``codex``, ``aider``, ``command``); without one a run uses the agent's own
(``AGENT_RUNNER``). Another runner is built from the agent's settings the first time a run
asks for it, and only when it is available here: its executable is found and it has a
model credential, the checks readiness makes of the agent's own runner
(:mod:`~claude_cluster.agent.readiness`). When it is not, :meth:`RunnerChoice.pick` raises
:class:`RunnerUnavailable`, naming the runner and saying it is not installed on this agent;
the run fails before any model call (SPEC §4b), and the coordinator routes its task to an
agent that has it. :meth:`RunnerChoice.offered` is what the agent tells the coordinator it
can run, at registration and with every heartbeat.
"""

from __future__ import annotations

from collections.abc import Callable

from claude_cluster.domain.contract import RUNNERS
from claude_cluster.runners import Runner

__all__ = ["RunnerChoice", "RunnerUnavailable"]


class RunnerUnavailable(Exception):
    """The runner a run's policy names is not installed on this agent."""


class RunnerChoice:
    """The agent's runners: its own, and the others it can build when a run names them.

    Args:
        default: the agent's own runner (``AGENT_RUNNER``).
        build: builds another runner by name from the agent's settings; None: the agent
            offers its own runner only.
        problem: why a runner is not usable here (its executable is not installed, it has
            no model credential), or None.
    """

    def __init__(
        self,
        default: Runner,
        *,
        build: Callable[[str], Runner] | None = None,
        problem: Callable[[str], str | None] | None = None,
    ) -> None:
        self.default = default
        self._build = build
        self._problem = problem
        self._built: dict[str, Runner] = {}

    def pick(self, name: str | None) -> Runner:
        """The runner for ``name`` (None: the agent's own).

        Raises:
            RunnerUnavailable: this agent cannot run ``name``; the message says why.
        """
        if name is None or name == self.default.name:
            return self.default
        if self._build is None:
            raise RunnerUnavailable(_refusal(name, f"it runs {self.default.name} only"))
        problem = self._problem(name) if self._problem is not None else None
        if problem is not None:
            raise RunnerUnavailable(_refusal(name, problem))
        # checked at every run (an operator may remove it), built once
        if name not in self._built:
            self._built[name] = self._build(name)
        return self._built[name]

    def offered(self) -> list[str]:
        """The runners this agent can run now: its own, and each other one it could build
        (installed, with a model credential), in :data:`RUNNERS` order."""
        own = self.default.name
        return [
            name
            for name in RUNNERS
            if name == own
            or (self._build is not None and (self._problem is None or self._problem(name) is None))
        ]


def _refusal(name: str, problem: str) -> str:
    why = problem.removeprefix(f"runner {name}: ")
    return f"the contract names runner {name}, which this agent cannot run: {why}"
