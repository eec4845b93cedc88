"""Schemathesis against the app's own /openapi.json: no 5xx and no answer outside the schema.

Driven through Hypothesis directly (one strategy per operation) rather than schemathesis' pytest
plugin, which does not support this pytest yet.
"""

from __future__ import annotations

from pathlib import Path

import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import (
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from tests.conftest import create_tenant, make_settings
from tidings.app import create_app
from tidings.runtime import build_runtime

EXAMPLES_PER_OPERATION = 20


def test_the_api_never_answers_5xx_or_outside_its_schema(tmp_path: Path) -> None:
    runtime = build_runtime(
        make_settings(tmp_path, f"sqlite:///{tmp_path / 'fuzz.db'}"), migrate=True
    )
    keys = create_tenant(runtime, "fuzz")
    schema = schemathesis.openapi.from_asgi("/openapi.json", create_app(runtime))
    headers = {"Authorization": f"Bearer {keys.admin}"}
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) > 30
    try:
        for operation in operations:

            @given(case=operation.as_strategy())
            @settings(
                max_examples=EXAMPLES_PER_OPERATION,
                deadline=None,
                suppress_health_check=list(HealthCheck),
            )
            def check(case: schemathesis.Case) -> None:
                case.call_and_validate(
                    headers=headers,
                    checks=[
                        not_a_server_error,
                        response_schema_conformance,
                        status_code_conformance,
                    ],
                )

            check()
    finally:
        runtime.close()
