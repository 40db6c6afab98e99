"""Property-based fuzzing of every route in the app's OpenAPI schema: no input gives a 5xx."""

from __future__ import annotations

import schemathesis
from hypothesis import HealthCheck, given, settings


def test_no_server_errors_on_any_operation(make_client, base_params):
    client = make_client(base_params | {"rate_limit": {"requests_per_minute": 100000, "burst": 100000}})
    auth = {"Authorization": client.headers["Authorization"]}
    schema = schemathesis.openapi.from_asgi("/openapi.json", client.app, headers=auth)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} >= {
        "/v1/chat/completions",
        "/v1/feedback",
        "/v1/models",
        "/healthz",
    }
    called: list[int] = []

    for operation in operations:

        @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        @given(case=operation.as_strategy())
        def check(case) -> None:
            response = case.call(headers=auth)
            called.append(response.status_code)
            assert response.status_code < 500, (case.as_curl_command(), response.text[:500])
            if response.status_code >= 400 and case.method.upper() != "HEAD":  # HEAD answers carry no body
                assert response.json()["error"]["message"] and "Traceback" not in response.text

        check()
    assert len(called) >= 4 * len(operations) // 2  # hypothesis really generated cases
    assert any(200 <= s < 300 for s in called) and any(s == 400 for s in called)
