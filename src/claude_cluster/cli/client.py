"""The CLI's HTTP client: ``COORDINATOR_URL`` and ``ADMIN_TOKEN``, errors as exit codes."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import httpx
import typer
from rich.console import Console
from rich.text import Text

err = Console(stderr=True)

DEFAULT_URL = "http://127.0.0.1:8080"
#: written by ``claude-cluster up`` so that local commands find the embedded cluster
LOCAL_TOKEN_FILE = Path(".data") / "admin-token"


def admin_token() -> str:
    token = os.environ.get("ADMIN_TOKEN", "")
    if not token and LOCAL_TOKEN_FILE.is_file():
        token = LOCAL_TOKEN_FILE.read_text().strip()
    if not token:
        err.print(
            "[red]ADMIN_TOKEN is not set[/red] (and no .data/admin-token from "
            "'claude-cluster up' here): export ADMIN_TOKEN=<the coordinator's admin token>"
        )
        raise typer.Exit(2)
    return token


def coordinator_url() -> str:
    return os.environ.get("COORDINATOR_URL", DEFAULT_URL).rstrip("/")


def _fix(response: httpx.Response) -> str:
    """What to do about a refusal, when the status says more than the detail."""
    if response.status_code == 401:
        return (
            ": set ADMIN_TOKEN to the coordinator's admin token ('claude-cluster up' keeps it "
            "in .data/admin-token)"
        )
    if response.status_code == 403:
        return ": this token may not do that; use the admin token or an admin API token"
    if response.status_code == 404:
        return ": 'claude-cluster task list' and 'claude-cluster agents list' show what exists"
    return ""


def call(method: str, path: str, *, json: Any = None, params: Any = None) -> Any:
    url = coordinator_url()
    try:
        with httpx.Client(
            base_url=url, headers={"Authorization": f"Bearer {admin_token()}"}, timeout=30
        ) as client:
            response = client.request(method, path, json=json, params=params)
    except httpx.HTTPError as exc:
        err.print(
            f"[red]cannot reach the coordinator at {url}[/red] ({type(exc).__name__}): "
            "start one with 'claude-cluster up', or set COORDINATOR_URL to where it runs"
        )
        raise typer.Exit(3) from None
    if response.status_code >= 400:
        try:
            detail = response.json().get("detail", response.text)
        except ValueError:
            detail = response.text
        err.print(Text.assemble((f"{response.status_code} ", "red"), str(detail), _fix(response)))
        raise typer.Exit(1)
    return response.json()
