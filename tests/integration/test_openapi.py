"""The OpenAPI document at /openapi.json covers the whole public API, and schemathesis, fuzzing every operation from
it against a real router and miner, finds no 5xx and no error outside the OpenAI shape."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error

from tests.conftest import API_KEY, Network

H = {"authorization": f"Bearer {API_KEY}"}
EXAMPLES = 12  # per operation and mode: ~24 operations x 2 modes, well under a minute on two cores


@pytest.fixture
def net(network: Network) -> Network:
    network.start_router()
    network.add_miner("a")
    return network


def openai_errors(ctx: Any, response: Any, case: Any) -> bool | None:
    """Every 4xx/5xx body is ``{"error": {"message", "type", "param", "code"}}``."""
    if response.status_code < 400:
        return None
    body = response.json()
    assert isinstance(body, dict) and set(body) == {"error"}, body
    assert set(body["error"]) == {"message", "type", "param", "code"}, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"], body
    return True


def test_document_covers_the_public_api(net: Network) -> None:
    doc = httpx.get(net.url + "/openapi.json", timeout=10).json()
    assert doc["openapi"].startswith("3.1")
    for path in ("/v1/chat/completions", "/v1/completions", "/v1/models/{model}", "/v1/embeddings"):
        assert path in doc["paths"]
    for path in (
        "/api/v1/sessions",
        "/api/v1/tasks/{session_id}/{task_id}",
        "/api/v1/completions/{session_id}",
    ):
        assert path in doc["paths"]
    chat = doc["components"]["schemas"]["ChatCompletionRequest"]
    assert {"model", "messages"} <= set(chat["required"])


# schemathesis's own strategies use the random module, which hypothesis deprecates: not ours to fix
@pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisDeprecationWarning")
def test_schemathesis_finds_no_server_error_and_only_openai_errors(net: Network) -> None:
    schema = schemathesis.openapi.from_url(net.url + "/openapi.json")
    ran = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(
                max_examples=EXAMPLES,
                phases=[Phase.generate],  # a failure is reported as found: no shrinking on a live server
                suppress_health_check=list(HealthCheck),
                database=None,
            )
            def fuzz(case: Any) -> None:
                response = case.call(base_url=net.url, headers=H, timeout=30)
                case.validate_response(response, checks=[not_a_server_error, openai_errors])

            fuzz()
            ran += 1
    assert ran >= 40
