"""Each webhook event processed exactly once through redeliveries and a kill."""

from __future__ import annotations

import pytest

from tests.chaos.conftest import report
from tests.chaos.webhooks import webhook_burst
from tests.support.chaos import Lab

pytestmark = pytest.mark.postgres


@pytest.mark.timeout(150)
async def test_a_webhook_burst_with_redeliveries_and_a_kill_processes_each_event_once(
    lab: Lab,
) -> None:
    figures = await webhook_burst(lab, deliveries=100)
    report(figures)
    assert figures.faults == 1
    assert (figures.lost, figures.duplicated) == (0, 0), figures.notes
