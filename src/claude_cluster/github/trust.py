"""Who may steer runs from GitHub: the trust rule of a watched repository.

A trigger (an ``@claude`` comment, a review, an opened, labelled, edited, reopened, closed
or unlabelled issue) counts only when its actor is trusted. GitHub tells how an actor
relates to the repository in two ways:

- ``author_association`` on comments, reviews and issues (the author's relation):
  trusted by default when OWNER, MEMBER or COLLABORATOR;
- the actor's repository permission (``GET /repos/{o}/{r}/collaborators/{login}/permission``)
  for events whose payload says nothing of the sender (labelled, edited by someone other
  than the author, closed, reopened): trusted by default when admin, maintain or write.

Logins in ``trusted_logins`` (bots, for instance) are trusted whatever GitHub says. The
functions here only decide; looking the permission up is the caller's job.
"""

from __future__ import annotations

from dataclasses import dataclass

#: every value GitHub sends as ``author_association``
ASSOCIATIONS: frozenset[str] = frozenset(
    {
        "OWNER",
        "MEMBER",
        "COLLABORATOR",
        "CONTRIBUTOR",
        "FIRST_TIME_CONTRIBUTOR",
        "FIRST_TIMER",
        "MANNEQUIN",
        "NONE",
    }
)
#: every repository permission the permission endpoint answers
PERMISSIONS: frozenset[str] = frozenset({"admin", "maintain", "write", "triage", "read", "none"})

DEFAULT_TRUSTED_ASSOCIATIONS: tuple[str, ...] = ("OWNER", "MEMBER", "COLLABORATOR")
DEFAULT_TRUSTED_PERMISSIONS: tuple[str, ...] = ("admin", "maintain", "write")


@dataclass(frozen=True)
class Verdict:
    trusted: bool
    reason: str


def is_listed(login: str | None, trusted_logins: tuple[str, ...]) -> bool:
    """Whether ``login`` is one of ``trusted_logins`` (GitHub logins ignore case)."""
    return bool(login) and (login or "").lower() in {name.lower() for name in trusted_logins}


def judge_association(
    login: str | None,
    association: str | None,
    *,
    trusted_associations: tuple[str, ...],
    trusted_logins: tuple[str, ...],
) -> Verdict:
    """Whether an author with this ``author_association`` is trusted."""
    who = f"@{login}" if login else "an unknown actor"
    if is_listed(login, trusted_logins):
        return Verdict(True, f"{who} is in trusted_logins")
    value = (association or "NONE").upper()
    if value in trusted_associations:
        return Verdict(True, f"{who} is {value}")
    return Verdict(False, f"{who} is not trusted (author_association {value})")


def judge_permission(
    login: str | None,
    permission: str | None,
    *,
    trusted_permissions: tuple[str, ...],
    trusted_logins: tuple[str, ...],
) -> Verdict:
    """Whether an actor with this repository permission is trusted (None: unknown)."""
    who = f"@{login}" if login else "an unknown actor"
    if is_listed(login, trusted_logins):
        return Verdict(True, f"{who} is in trusted_logins")
    if permission is not None and permission.lower() in trusted_permissions:
        return Verdict(True, f"{who} has {permission.lower()} permission")
    return Verdict(False, f"{who} is not trusted (permission {permission or 'unknown'})")
