"""Schemathesis holds the real server to its own OpenAPI document: every answer's status, content type,
headers and body as declared, invalid requests refused with a 4xx, undeclared methods 405 with ``Allow``.

Every check runs except those whose premise the protocol cannot meet, each named in EXCLUDED with why.
Generation is derandomized, bounded and keeps no example database (nothing is written into the repository).
"""

from __future__ import annotations

import time

import schemathesis
from schemathesis.engine import Status, StopReason, events, from_schema

from tests.serve.conftest import Served

MAX_EXAMPLES = 10  # per operation and generation mode
# Every check Schemathesis has runs, except where its premise cannot hold (each named, with why):
EXCLUDED = [
    # A schema-valid body is not a valid request: OpenAPI cannot tie a tensor's data to its shape and datatype
    # (nor describe the binary extension's byte layout), nor say that bytes must decode as an image. So the
    # generated inference and image requests are rightly 400. The check still runs on every other route.
    {"include-path-regex": "/(infer|classify)$", "checks": {"positive_data_acceptance": {"enabled": False}}},
]
CONFIG = {
    "seed": 20240611,
    "max-time": 20,  # seconds: the fuzzing phase runs until this; the coverage phase takes a few seconds
    "generation": {"deterministic": True, "database": "none", "max-examples": MAX_EXAMPLES},
    # The served model by name: a generated name is only ever 404, and no request would reach the parser.
    "parameters": {"path.name": "vgg11_bn", "path.version": "1"},
    # The stateful phase (and its use_after_free / ensure_resource_availability) needs resources that
    # requests create and delete; this API has none: nothing links one answer to another request.
    "phases": {"stateful": {"enabled": False}},
    "checks": {"enabled": True},
    "operations": EXCLUDED,
}


def run_schemathesis(url: str) -> tuple[list[str], dict[str, int], events.EngineFinished]:
    """The phases Schemathesis's CLI runs (examples, coverage, fuzzing): (findings, cases per phase,
    the final event)."""
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json", config=schemathesis.Config.from_dict(CONFIG))
    findings: list[str] = []
    cases: dict[str, int] = {}
    for event in from_schema(schema).execute():
        if isinstance(event, (events.ScenarioFinished, events.FuzzScenarioFinished)):
            phase = getattr(event, "phase", None)
            label = getattr(event, "label", None) or event.recorder.label
            phase_name = phase.value if phase is not None else "fuzzing"
            cases[phase_name] = cases.get(phase_name, 0) + len(event.recorder.cases)
            for case_id, checks in event.recorder.checks.items():
                for check in checks:
                    if check.status != Status.SUCCESS:
                        findings.append(f"{label} [{phase_name}] {check.name}: {check.status.value} "
                                        f"{check.failure_info.failure.title if check.failure_info else ''}\n"
                                        f"  {check.failure_info.code_sample if check.failure_info else case_id}")
            if event.status == Status.ERROR:
                findings.append(f"{label} [{phase_name}]: an error while testing")
        elif isinstance(event, events.NonFatalError):
            findings.append(f"error: {event.info.format()}")
        elif isinstance(event, events.FatalError):
            raise event.exception
        elif isinstance(event, events.EngineFinished):
            findings.extend(f"after the run: {failure.title}" for failure in event.failures)
            return findings, cases, event
    raise AssertionError("the engine stopped without finishing")


def test_every_answer_is_documented(server: Served) -> None:
    started = time.monotonic()
    findings, cases, finished = run_schemathesis(server.url)
    wall = time.monotonic() - started
    assert not findings, "\n".join(findings)
    assert finished.stop_reason in (StopReason.COMPLETED, StopReason.MAX_TIME), finished.stop_reason
    assert cases.get("coverage", 0) and cases.get("fuzzing", 0), cases
    print(f"schemathesis: {cases} cases in {wall:.1f} s")


def test_the_document_declares_every_status(server: Served) -> None:
    import httpx

    document = httpx.get(f"{server.url}/openapi.json").json()
    statuses = {path: set(operation["responses"]) for path, methods in document["paths"].items()
                for operation in methods.values()}
    for path in ("/v2/models/{name}/infer", "/v2/models/{name}/versions/{version}/infer", "/v2/models/{name}/classify"):
        assert {"200", "400", "404", "405", "413", "500", "503", "504"} <= statuses[path], path
    assert all("422" not in found and "405" in found for found in statuses.values())
    assert {"404", "503"} <= statuses["/v2/models/{name}/ready"]
    error = document["components"]["schemas"]["ErrorBody"]
    assert error["required"] == ["error"] and error["properties"]["error"]["type"] == "string"
    from prometheus_client import CONTENT_TYPE_LATEST

    assert list(document["paths"]["/metrics"]["get"]["responses"]["200"]["content"]) == [CONTENT_TYPE_LATEST]


def test_an_unsupported_method_is_405_with_allow_and_json(server: Served) -> None:
    import httpx

    for method, path, allowed in (("DELETE", "/v2/models/vgg11_bn/infer", "POST"), ("POST", "/v2", "GET"),
                                  ("PUT", "/metrics", "GET")):
        response = httpx.request(method, f"{server.url}{path}")
        assert response.status_code == 405 and response.headers["allow"] == allowed, (method, path)
        assert response.headers["content-type"] == "application/json" and "error" in response.json()
