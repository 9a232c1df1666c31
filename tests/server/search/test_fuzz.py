"""Schemathesis against the service's own OpenAPI: every operation, ``POST /items``
included, with generated valid (positive) and, where a request can be invalid, invalid
(negative) requests. Every check runs (no 5xx, status codes, content types and bodies as
documented, invalid data refused) except ``positive_data_acceptance``: a schema-valid
request may still be refused with a documented 4xx for what a schema cannot say (a query
needs text or a photo, base64 must decode to an image). Examples are bounded per
operation and mode to keep the suite fast."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import positive_data_acceptance

from tests.server.search.conftest import ADMIN_HEADERS, running_server

EXAMPLES = 50
OPERATIONS = {
    ("POST", "/search"),
    ("GET", "/items/{item_id}"),
    ("DELETE", "/items/{item_id}"),
    ("GET", "/items/{item_id}/photo"),
    ("POST", "/items"),
    ("GET", "/healthz"),
    ("GET", "/version"),
    ("GET", "/metrics"),
    ("POST", "/admin/reload"),
    ("POST", "/admin/rollback"),
    ("GET", "/models"),
    ("GET", "/models/{version}/{name}"),
}
WITH_BODY = {("POST", "/search"), ("POST", "/items"), ("POST", "/admin/rollback")}
CASES = [(*op, GenerationMode.POSITIVE) for op in sorted(OPERATIONS)] + [
    (*op, GenerationMode.NEGATIVE) for op in sorted(WITH_BODY)
]


@pytest.fixture(scope="module")
def api_schema(tmp_path_factory, search_items, search_vectors, untrained_encoder):
    from server.search.catalog_build import create_catalog
    from server.search.service import create_app
    from tests.server.search.conftest import ADMIN_TOKEN, search_config

    config = search_config(
        tmp_path_factory.mktemp("fuzz"), admin_token=ADMIN_TOKEN, max_upsert_items=4
    )
    catalog = create_catalog(config, search_items, search_vectors, untrained_encoder.version)
    app = create_app(config, encoder=untrained_encoder, catalog=catalog, watch_registry=False)
    with running_server(app, config.search) as url:  # real HTTP, as clients see it
        yield schemathesis.openapi.from_url(f"{url}/openapi.json")


def test_the_schema_lists_every_operation(api_schema):
    found = {(op.ok().method.upper(), op.ok().path) for op in api_schema.get_all_operations()}
    assert found == OPERATIONS


@pytest.mark.parametrize(("method", "path", "mode"), CASES)
def test_generated_requests_get_answers_within_the_schema(api_schema, method, path, mode):
    operation = api_schema[path][method]

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        derandomize=True,
        database=None,
    )
    def answers_within_the_schema(case):
        case.call_and_validate(headers=ADMIN_HEADERS, excluded_checks=[positive_data_acceptance])

    answers_within_the_schema()
