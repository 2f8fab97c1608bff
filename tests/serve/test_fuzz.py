"""Schema fuzzing: requests generated from the served OpenAPI document, valid and invalid, never get a
5xx. The tiny random model with a 128-token window keeps every generation short."""

from __future__ import annotations

import time

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings

from lowbit.serve.app import ServeArgs, create_app

EXAMPLES = 25  # per operation and mode
seen: dict[str, int] = {}


@pytest.fixture(scope="module")
def client(tiny_chat):
    app = create_app(ServeArgs(tiny_chat.mlc_dir, tiny_chat.lib, context_window=128, max_batch=4))
    with TestClient(app, raise_server_exceptions=False) as c:
        deadline = time.monotonic() + 60
        while c.get("/health").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        yield c


@pytest.mark.parametrize("mode", [schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE])
def test_no_generated_request_gets_a_5xx(client, mode):
    schema = schemathesis.openapi.from_dict(client.get("/openapi.json").json())
    operations = [op.ok() for op in schema.get_all_operations() if op.ok().method.upper() == "POST"]
    assert {op.path for op in operations} == {"/v1/chat/completions", "/v1/completions"}  # GETs take no input
    statuses: dict[int, int] = {}
    for operation in operations:
        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
                  suppress_health_check=list(HealthCheck))
        def call(case):
            body = {"content": case.body} if isinstance(case.body, bytes) else {"json": case.body}
            r = client.request(case.method, case.formatted_path, params=case.query, headers=case.headers, **body)
            statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
            assert r.status_code < 500, (case.method, case.formatted_path, case.body, r.text)

        call()
    print(f"{mode.value}: {sum(statuses.values())} cases, statuses {sorted(statuses.items())}")
    assert sum(statuses.values()) >= 2 * EXAMPLES
