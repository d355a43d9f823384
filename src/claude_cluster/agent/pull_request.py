"""Deliver, GitHub side: the pull request of a run, with the run's real figures.

:func:`describe` renders the title and body (through :mod:`claude_cluster.github.pr`: the
measured test counts, cost and tokens, ``Closes #n`` and ``Task ID``), and
:func:`github_opener` opens it, or updates the open one of the branch, with the run's
short-lived token. The GitHub package is imported only when a run opens a pull request,
so an agent that only pushes branches never loads it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from claude_cluster.agent.verify import TestReport
from claude_cluster.domain.wire import ExecuteTaskRequest

__all__ = ["PullRequestOpener", "PullRequestRequest", "RunFigures", "describe", "github_opener"]


@dataclass(frozen=True)
class PullRequestRequest:
    """What a :data:`PullRequestOpener` needs to open or update a pull request."""

    repository: str
    head: str
    base: str
    title: str
    body: str
    token: str
    draft: bool = False


#: opens or updates a pull request; returns (number, html_url); raises GitHubError
PullRequestOpener = Callable[[PullRequestRequest], Awaitable[tuple[int, str]]]


@dataclass(frozen=True)
class RunFigures:
    """What the run measured, for the body."""

    summary: str
    changed_files: Sequence[str]
    tests: TestReport | None
    cost_usd: float
    input_tokens: int
    output_tokens: int
    cache_read_tokens: int
    cache_creation_tokens: int
    #: why the tests did not run, when they did not
    untested: str | None = None
    #: the tests against the base commit, one sentence per group
    test_changes: Sequence[str] = ()
    #: the proof-of-work lines of the body
    proof: Sequence[str] = ()


#: the head of the pull request body of a run that was not sandboxed
UNCONFINED_NOTE = (
    "> [!WARNING]\n> This run was **not sandboxed** (`RUN_SANDBOX=off` on agent {agent}): "
    "the agent and the tests ran with the agent's own permissions and network.\n\n"
)


def describe(
    request: ExecuteTaskRequest,
    *,
    head: str,
    base: str,
    figures: RunFigures,
    agent_id: str,
    model: str | None,
    token: str,
    confined: bool = True,
    draft: bool = False,
) -> PullRequestRequest:
    """The pull request of ``request``'s run from ``head`` into ``base``.

    ``token`` is the one asked for at delivery; ``confined=False`` (``RUN_SANDBOX=off``)
    puts a warning at the top of the body.
    """
    from claude_cluster.github import PullRequestInfo, TestResults, Usage, pr_title, render_pr_body

    tests = figures.tests
    measured = None
    if tests is not None and tests.command:
        measured = TestResults(
            command=tests.command_line,
            passed=tests.passed or 0,
            failed=tests.failed or 0,
            skipped=tests.skipped or 0,
            errors=tests.errors or 0,
            duration_seconds=tests.duration,
            output_tail=tests.output_tail[-4000:] or None,
        )
    info = PullRequestInfo(
        task_id=request.task_id,
        issue_number=request.github_issue_number,
        issue_title=request.title,
        summary=figures.summary,
        changes=list(figures.changed_files)[:100],
        tests=measured,
        agent=agent_id,
        model=model,
        attempt=request.attempt,
        branch=head,
        usage=Usage(
            cost_usd=figures.cost_usd,
            input_tokens=figures.input_tokens,
            output_tokens=figures.output_tokens,
            cache_read_tokens=figures.cache_read_tokens,
            cache_creation_tokens=figures.cache_creation_tokens,
        ),
        untested=figures.untested,
        test_changes=tuple(figures.test_changes),
        proof=tuple(figures.proof),
    )
    return PullRequestRequest(
        repository=request.github_repository,
        head=head,
        base=base,
        title=pr_title(request.github_issue_number, request.title),
        body=(UNCONFINED_NOTE.format(agent=agent_id) if not confined else "")
        + render_pr_body(info),
        token=token,
        draft=draft,
    )


def github_opener(api_url: str) -> PullRequestOpener:
    """An opener using :class:`claude_cluster.github.GitHubClient` at ``GITHUB_API_URL``."""

    async def open_pull_request(pr: PullRequestRequest) -> tuple[int, str]:
        from claude_cluster.github import GitHubClient, PersonalToken

        async with GitHubClient(PersonalToken(pr.token), base_url=api_url) as gh:
            opened = await gh.open_or_update_pull_request(
                pr.repository,
                head=pr.head,
                base=pr.base,
                title=pr.title,
                body=pr.body,
                draft=pr.draft,
            )
        return opened.pull_request.number, opened.pull_request.html_url

    return open_pull_request
