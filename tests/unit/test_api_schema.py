"""Property-based tests of the API from its own OpenAPI schema (schemathesis): for generated
paths and parameters, every response has a documented status code, a documented content type
and a body that matches its schema, and nothing answers 500. Runs against the same small real
lake as tests/unit/test_api.py, with Kafka and Postgres down (so /health and /accuracy must
answer their documented 503).

Schemathesis' pytest plugin (`from_fixture`) does not run under pytest 9 here: each operation's
hypothesis strategy is driven by a plain `@given` instead.
"""

from __future__ import annotations

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings

from serving.api import create_app
from tests.unit.test_api_lake import lake_settings, write_gold_lake

OPERATIONS = (
    "/sources",
    "/sources/{source}/entities",
    "/predictions/{source}/{entity_id}",
    "/predictions/{station_id}",
    "/predictions/{source}/{entity_id}/history",
    "/anomalies",
    "/accuracy",
    "/health",
    "/metrics",
    "/lineage/{source}/{entity_id}/{window_start}",
)

# Not schemathesis' not_a_server_error, which fails every 5xx: a documented 503 (a dependency
# down) is right here. A 500 is not documented, so status_code_conformance catches it.
CHECKS = [
    schemathesis.checks.status_code_conformance,
    schemathesis.checks.content_type_conformance,
    schemathesis.checks.response_schema_conformance,
]


@pytest.fixture(scope="module")
def api_schema(tmp_path_factory):
    root = tmp_path_factory.mktemp("lake")
    write_gold_lake(root)
    app = create_app(lake_settings(root))
    with TestClient(app):  # runs the lifespan: the lake is warm before the first case
        yield schemathesis.openapi.from_asgi("/openapi.json", app)


def test_every_operation_is_tested(api_schema):
    assert sorted(api_schema.raw_schema["paths"]) == sorted(OPERATIONS)


@pytest.mark.parametrize("path", OPERATIONS)
def test_every_operation_answers_as_documented(api_schema, path):
    operation = api_schema[path]["GET"]
    seen: set[int] = set()

    @given(case=operation.as_strategy())
    @settings(
        max_examples=30,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )
    def check(case):
        response = case.call_and_validate(checks=CHECKS)
        assert response.status_code != 500, response.text
        seen.add(response.status_code)

    check()
    assert seen <= {200, 404, 422, 503}
