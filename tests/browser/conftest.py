"""Browser tests: Playwright driving Debian's Chromium (``/usr/bin/chromium``, installed by
scripts/setup; never a downloaded browser) against a real coordinator on SQLite with
simulated agents.

One browser per module (there is one), one context per test. A test fails when a page
logs a JavaScript error, or a request fails or answers 4xx/5xx unless the test said it
expects that answer.
Screenshots go to ``test-artifacts/screenshots/`` (``SCREENSHOT_DIR`` overrides it); the
session's summary prints the path.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import threading
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import pytest

from tests.conftest import ADMIN_TOKEN, RunningCoordinator
from tests.support import databases
from tests.support.sim_agents import SimAgents

playwright_sync = pytest.importorskip("playwright.sync_api")

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
SCREENSHOTS = Path(
    os.environ.get(
        "SCREENSHOT_DIR", Path(__file__).resolve().parents[2] / "test-artifacts" / "screenshots"
    )
)
T = TypeVar("T")

if not shutil.which(CHROMIUM):
    pytest.skip(
        f"{CHROMIUM} is missing: run scripts/setup (it installs Debian's chromium)",
        allow_module_level=True,
    )


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    """The browser tests run on SQLite only: what they test is the page, not the backend."""
    return databases.new_sqlite_database(tmp_path)


class SimAgentsThread:
    """:class:`SimAgents` on an event loop of their own, so the synchronous Playwright API
    (which owns this thread's loop) can drive the browser while agents heartbeat."""

    def __init__(self, coordinator_url: str) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self.sims = SimAgents(coordinator_url, heartbeat_interval=0.3)
        self.run(self.sims.__aenter__())

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 20.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def held(self, agent_id: str) -> list[int]:
        return sorted(self.sims.agents[agent_id].held)

    def close(self) -> None:
        try:
            self.run(self.sims.__aexit__())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
            self._loop.close()


@dataclass
class Cluster:
    coordinator: RunningCoordinator
    agents: SimAgentsThread


@pytest.fixture
def cluster(start_coordinator: Callable[..., RunningCoordinator]) -> Iterator[Cluster]:
    coordinator = start_coordinator()
    agents = SimAgentsThread(coordinator.url)
    try:
        yield Cluster(coordinator, agents)
    finally:
        agents.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """One Chromium for the module. Not for the session: the synchronous Playwright API
    holds an event loop on this thread, which async tests after it could not run beside."""
    with playwright_sync.sync_playwright() as p:
        chromium = p.chromium.launch(
            executable_path=CHROMIUM,
            # root in a container: Chromium's sandbox needs user namespaces it may not have
            args=["--no-sandbox", "--disable-dev-shm-usage"],
        )
        try:
            yield chromium
        finally:
            chromium.close()


@dataclass
class Problems:
    """What went wrong in the page while a test ran."""

    errors: list[str] = field(default_factory=list)
    #: (status, path) answers the test expects, e.g. (401, "/") for the sign-in form
    expected: set[tuple[int, str]] = field(default_factory=set)


@pytest.fixture
def page(browser: Any, cluster: Cluster) -> Iterator[Any]:
    context = browser.new_context(
        base_url=cluster.coordinator.url, viewport={"width": 1280, "height": 800}
    )
    context.set_default_timeout(10_000)
    tab = context.new_page()
    problems = Problems()
    tab.problems = problems

    def console(message: Any) -> None:
        if message.type != "error":
            return
        # the browser also logs each 4xx/5xx answer; `answered` judges those
        if message.text.startswith("Failed to load resource: the server responded"):
            return
        problems.errors.append(f"console: {message.text}")

    tab.on("console", console)
    tab.on("pageerror", lambda e: problems.errors.append(f"JavaScript error: {e}"))

    def failed(request: Any) -> None:
        # leaving a page aborts its event stream and a refresh in flight: that is the
        # browser navigating, not a request that failed
        if request.failure == "net::ERR_ABORTED" and request.resource_type in (
            "eventsource",
            "fetch",
        ):
            return
        problems.errors.append(f"request failed: {request.method} {request.url} {request.failure}")

    def answered(response: Any) -> None:
        path = response.url.removeprefix(cluster.coordinator.url).split("?")[0]
        if response.status >= 400 and (response.status, path) not in problems.expected:
            problems.errors.append(f"{response.status} for {response.request.method} {path}")

    tab.on("requestfailed", failed)
    tab.on("response", answered)
    try:
        yield tab
    finally:
        context.close()
    assert not problems.errors, "the page had problems:\n" + "\n".join(problems.errors)


def shoot(page: Any, name: str, *, phone: bool = False) -> Path:
    """A full-page screenshot at laptop size (and the phone's, when asked)."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    if phone:
        size = page.viewport_size
        page.set_viewport_size({"width": 390, "height": 844})
        page.screenshot(path=str(SCREENSHOTS / f"{name}-phone.png"), full_page=True)
        page.set_viewport_size(size)
    return path


def sign_in(page: Any, path: str = "/") -> None:
    """Sign in the way a person does: the form, the token, Enter."""
    page.problems.expected.add((401, path))
    page.goto(path)
    page.get_by_label("Admin token").fill(ADMIN_TOKEN)
    page.keyboard.press("Enter")
    page.get_by_role("button", name="Sign out").wait_for()
    url = urlsplit(page.url)
    assert url.path + (f"?{url.query}" if url.query else "") == path  # back where they were


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if SCREENSHOTS.is_dir() and any(SCREENSHOTS.glob("*.png")):
        terminalreporter.write_line(f"browser screenshots: {SCREENSHOTS}")
