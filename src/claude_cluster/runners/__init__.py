"""Runners: each speaks one agent CLI's protocol behind the :class:`Runner` interface.

The package owns starting a CLI for a :class:`RunSpec` (through
:mod:`claude_cluster.process`: own process group, watchdogs), turning its output
into :class:`RunnerEvent` objects and classifying the end as a :class:`RunnerOutcome`.
It knows nothing of tasks, workspaces or the coordinator. Runners: ``claude`` (Claude
Code headless), ``codex`` (``codex exec --json``), ``aider`` and ``command`` (any
executable); build one with :func:`get_runner`.
"""

from claude_cluster.runners.base import (
    EventKind,
    EventSink,
    Runner,
    RunnerEvent,
    RunnerOutcome,
    RunSpec,
    get_runner,
    runner_names,
)

__all__ = [
    "EventKind",
    "EventSink",
    "RunSpec",
    "Runner",
    "RunnerEvent",
    "RunnerOutcome",
    "get_runner",
    "runner_names",
]
