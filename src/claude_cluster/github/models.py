"""The GitHub resources this project reads, in GitHub's own JSON shape.

The same models parse REST answers and webhook payloads (GitHub uses one shape for both).
Only the fields the product uses are declared; everything else GitHub sends is ignored, so
a new field on GitHub's side never breaks parsing.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator


class GitHubModel(BaseModel):
    """Base: ignore unknown fields, immutable once parsed."""

    model_config = ConfigDict(extra="ignore", frozen=True)


class User(GitHubModel):
    login: str
    id: int = 0
    type: str = "User"  #: "User", "Bot" or "Organization"


class Label(GitHubModel):
    name: str
    color: str = ""


class Repository(GitHubModel):
    full_name: str
    default_branch: str = "main"
    clone_url: str = ""
    html_url: str = ""
    private: bool = False
    id: int = 0
    #: what the authenticated user may do here (``push``, ``admin``…); empty for an App
    permissions: dict[str, bool] = {}


class IssuePullRequestLink(GitHubModel):
    """Present on an issue object only when the issue is a pull request."""

    url: str = ""
    html_url: str = ""
    merged_at: str | None = None


class Issue(GitHubModel):
    number: int
    title: str
    body: str | None = None
    state: str = "open"  #: "open" or "closed"
    state_reason: str | None = None
    labels: tuple[Label, ...] = ()
    user: User | None = None
    html_url: str = ""
    comments: int = 0  #: how many comments the issue has
    author_association: str = "NONE"  #: how the issue's author relates to the repository
    created_at: str | None = None
    updated_at: str | None = None
    pull_request: IssuePullRequestLink | None = None

    @property
    def label_names(self) -> tuple[str, ...]:
        return tuple(label.name for label in self.labels)

    @property
    def is_pull_request(self) -> bool:
        """GitHub lists pull requests among issues; they carry a ``pull_request`` key."""
        return self.pull_request is not None


class IssueComment(GitHubModel):
    id: int
    body: str = ""
    user: User | None = None
    html_url: str = ""
    author_association: str = "NONE"
    created_at: str | None = None


class BranchRef(GitHubModel):
    """A pull request's ``head`` or ``base``; ``label`` is ``owner:branch``. ``repo`` is
    where the branch lives: a fork for a pull request from a fork (None when the fork was
    deleted)."""

    ref: str
    sha: str = ""
    label: str = ""
    repo: Repository | None = None


class PullRequest(GitHubModel):
    number: int
    title: str = ""
    body: str | None = None
    state: str = "open"
    draft: bool = False
    merged: bool = False
    merged_at: str | None = None
    html_url: str = ""
    head: BranchRef
    base: BranchRef
    user: User | None = None


class Review(GitHubModel):
    id: int
    state: str  #: commented, changes_requested, approved or dismissed (lower case)
    body: str | None = None
    user: User | None = None
    commit_id: str = ""
    html_url: str = ""
    author_association: str = "NONE"

    @field_validator("state")
    @classmethod
    def _lower(cls, value: str) -> str:
        # webhooks say "changes_requested", the REST API says "CHANGES_REQUESTED"
        return value.lower()


class InstallationRef(GitHubModel):
    """The ``installation`` key of deliveries made to a GitHub App."""

    id: int


class Hook(GitHubModel):
    id: int = 0
    type: str = "Repository"
    events: tuple[str, ...] = Field(default_factory=tuple)
