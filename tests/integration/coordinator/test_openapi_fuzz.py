"""A property-based fuzz of the coordinator's own OpenAPI document (schemathesis), over real
HTTP, as an admin: for every operation, bounded generated requests (valid and not) find no
server error and no response that breaks the documented schema. Both database backends.

Driven through Hypothesis directly (one ``@given`` per operation) rather than
schemathesis's pytest plugin, whose fixture loader does not run on this pytest.
"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

from tests.conftest import ADMIN_TOKEN, RunningCoordinator

pytestmark = pytest.mark.timeout(300)

#: generated requests per operation (bounded: the suite stays fast)
EXAMPLES = 12


def test_no_server_error_and_no_schema_breaking_answer(coordinator: RunningCoordinator) -> None:
    schema = schemathesis.openapi.from_url(coordinator.url + "/openapi.json")
    # the webhook answers 503 by design while GITHUB_WEBHOOK_SECRET is unset, and what it
    # accepts is decided by its signature (test_webhooks, test_trust)
    operations = [
        op
        for op in (result.ok() for result in schema.get_all_operations())
        if op.path != "/webhook/github"
    ]
    assert len(operations) > 20  # the whole API, not an empty document
    for operation in operations:

        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(case=operation.as_strategy())
        def call(case: schemathesis.Case) -> None:
            case.call_and_validate(
                headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
                checks=[not_a_server_error, response_schema_conformance],
                timeout=10,
            )

        call()
