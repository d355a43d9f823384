"""What the agent asks the model: the seed's "# GitHub Issue Resolution" prompt.

Three prompts, all plain text handed to the runner as one argument (never through a
shell):

* :func:`issue_prompt`: the issue (title, body, recent comments), the repository at a
  glance (top-level files, detected technologies), the requirements and the specialty
  context, and the seed's five instructions; plus a feedback section on follow-up runs.
* :func:`fix_prompt`: a fix round, sent into the same session: the failing test output.
* :func:`feedback_prompt`: a follow-up run that resumes the earlier session: only the
  review feedback (the session already knows the issue).

Issue text is untrusted. It is clipped so the prompt fits in one command-line argument
(Linux limits a single argument to 128 KiB).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from claude_cluster.domain.wire import ExecuteTaskRequest

__all__ = ["MAX_PROMPT_BYTES", "feedback_prompt", "fix_prompt", "issue_prompt"]

#: one argv string may hold 128 KiB on Linux; stay clear of it
MAX_PROMPT_BYTES = 100_000
# per-part limits in UTF-8 bytes; together they stay under MAX_PROMPT_BYTES
_BODY_BYTES = 40_000
_COMMENT_BYTES = 2_500
_COMMENTS = 10
_FEEDBACK_BYTES = 20_000
_OUTPUT_BYTES = 12_000
_LISTING = 50
_SKIPPED = frozenset({"node_modules", "__pycache__", ".git", "venv", ".venv", "dist", "build"})

SPECIALTY_CONTEXT = {
    "backend": "Focus on server-side logic, APIs, data access and their error handling.",
    "frontend": "Focus on the user interface: components, state, accessibility and styling.",
    "testing": "Focus on reproducing the problem in a test first, then on a minimal fix.",
    "devops": "Focus on build, CI, deployment and infrastructure configuration.",
    "database": "Focus on schema, queries and migrations; keep changes backward compatible.",
    "security": "Focus on input validation, authentication and safe defaults.",
    "documentation": "Focus on accurate, concise documentation that matches the code.",
    "general": "Work across the code base as the issue requires.",
}
#: marker file → technology, for the "detected technologies" line
_TECHNOLOGIES = {
    "pyproject.toml": "Python",
    "setup.py": "Python",
    "requirements.txt": "Python",
    "package.json": "JavaScript/TypeScript (npm)",
    "tsconfig.json": "TypeScript",
    "go.mod": "Go",
    "Cargo.toml": "Rust",
    "pom.xml": "Java (Maven)",
    "build.gradle": "Java/Kotlin (Gradle)",
    "Gemfile": "Ruby",
    "composer.json": "PHP",
    "Dockerfile": "Docker",
    "Makefile": "Make",
}

INSTRUCTIONS = """\
1. Understand the issue and the code it concerns before changing anything.
2. Implement a complete, working solution in this repository.
3. Follow the repository's existing conventions, style and structure.
4. Add or update tests that cover the change, and make sure the test suite passes.
5. Update documentation where the change affects it."""


def issue_prompt(
    request: ExecuteTaskRequest,
    *,
    specialties: Sequence[str] = (),
    worktree: Path | None = None,
) -> str:
    """The full prompt for a run.

    Args:
        request: the run, with the issue's title, body, comments, requirements and, on a
            follow-up run, the review feedback.
        specialties: the agent's specialties; their context lines are included for the
            ones the task requires (all of them when the task names none).
        worktree: the checked-out repository, for the file listing and technologies.
    """
    sections = [
        "# GitHub Issue Resolution",
        f"## Issue #{request.github_issue_number}: {_one_line(request.title)}\n\n"
        f"Repository: {request.github_repository}\nPriority: {request.priority.value}",
        "### Description\n\n" + (_clip(request.description.strip(), _BODY_BYTES) or "(empty)"),
    ]
    comments = [c.strip() for c in request.issue_comments if c.strip()][-_COMMENTS:]
    if comments:
        lines = [f"- {_clip(c, _COMMENT_BYTES)}" for c in comments]
        sections.append("### Recent comments\n\n" + "\n".join(lines))
    if worktree is not None:
        sections.append(_repository_section(worktree))
    sections.append(_requirements_section(request.requirements, specialties))
    sections.append("## Instructions\n\n" + INSTRUCTIONS)
    sections.append(
        "Work only inside the current working directory. Do not commit, push or open pull "
        "requests: the agent commits your changes, runs the tests and delivers them."
    )
    if request.feedback:
        sections.append(_feedback_section(request.feedback))
    return _fit("\n\n".join(sections))


def feedback_prompt(request: ExecuteTaskRequest) -> str:
    """The prompt for a follow-up run that resumes the session of the earlier run."""
    body = _feedback_section(request.feedback or "")
    return _fit(
        f"{body}\n\nAddress this feedback on issue #{request.github_issue_number} in the "
        "current working directory, keeping the tests passing. Do not commit or push."
    )


def fix_prompt(test_command: str, output_tail: str, *, round_number: int, rounds: int) -> str:
    """The prompt for fix round ``round_number`` of ``rounds``: the failing test output."""
    tail = _clip(output_tail.strip(), _OUTPUT_BYTES, keep_end=True)
    return _fit(
        f"# Tests are failing (fix round {round_number} of {rounds})\n\n"
        f"After your changes the repository's tests fail. Command: `{test_command}`\n\n"
        f"Output (last lines):\n\n```\n{tail}\n```\n\n"
        "Fix the code (or the tests, if they are wrong about the intended behaviour) so "
        "that the whole suite passes. Do not commit or push."
    )


def _feedback_section(feedback: str) -> str:
    return "## Review feedback to address\n\n" + _clip(feedback.strip(), _FEEDBACK_BYTES)


def _requirements_section(requirements: Sequence[str], specialties: Sequence[str]) -> str:
    wanted = list(requirements) or list(specialties) or ["general"]
    lines = [f"Requirements: {', '.join(requirements) if requirements else 'none given'}"]
    for name in dict.fromkeys(wanted):
        context = SPECIALTY_CONTEXT.get(name.lower())
        if context:
            lines.append(f"- {name}: {context}")
    return "## Requirements and specialty context\n\n" + "\n".join(lines)


def _repository_section(worktree: Path) -> str:
    try:
        entries = sorted(
            p for p in worktree.iterdir() if not p.name.startswith(".") and p.name not in _SKIPPED
        )
    except OSError:
        entries = []
    listing = [f"- {p.name}/" if p.is_dir() else f"- {p.name}" for p in entries[:_LISTING]]
    if len(entries) > _LISTING:
        listing.append(f"- … {len(entries) - _LISTING} more")
    found = sorted({tech for name, tech in _TECHNOLOGIES.items() if (worktree / name).exists()})
    return (
        "## Repository\n\n"
        f"Detected technologies: {', '.join(found) if found else 'not detected'}\n\n"
        "Top-level files:\n" + ("\n".join(listing) or "(empty)")
    )


def _one_line(text: str) -> str:
    return " ".join(text.split())[:500]


def _clip(text: str, limit: int, *, keep_end: bool = False) -> str:
    """``text`` cut to ``limit`` bytes of UTF-8, saying how much was cut."""
    data = text.encode()
    if len(data) <= limit:
        return text
    dropped = len(data) - limit
    if keep_end:
        return f"[… {dropped} bytes cut]\n" + data[-limit:].decode(errors="ignore")
    return data[:limit].decode(errors="ignore") + f"\n[… {dropped} bytes cut]"


def _fit(prompt: str) -> str:
    """``prompt`` cut to :data:`MAX_PROMPT_BYTES` of UTF-8 (and free of NUL bytes)."""
    prompt = prompt.replace("\x00", "")
    data = prompt.encode()
    if len(data) <= MAX_PROMPT_BYTES:
        return prompt
    return data[: MAX_PROMPT_BYTES - 40].decode(errors="ignore") + "\n[… prompt cut]"
