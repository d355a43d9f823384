"""Shared helpers for the GitHub unit tests: the recorded-shape webhook payloads."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "github"


@pytest.fixture
def payload_bytes() -> Callable[[str], bytes]:
    """``payload_bytes("issues.labeled")`` → the raw body of that fixture."""

    def load(name: str) -> bytes:
        return (FIXTURES / f"{name}.json").read_bytes()

    return load


@pytest.fixture
def payload() -> Callable[[str], dict]:
    def load(name: str) -> dict:
        return json.loads((FIXTURES / f"{name}.json").read_text())

    return load
