"""Schemathesis against the live service: the OpenAPI spec the session's Serve app serves (GET /openapi.json of
tests/conftest.py `serve_url`) drives generated requests at every documented operation, and every response must

- not be a server error (no status >= 500: the routes answer 4xx for anything a client can send, 503/504 only
  when a dependency fails, which it does not here),
- have a documented status code, a documented content type and a body matching the documented schema,
- reject schema-violating data (negative cases) with a 4xx, except for multipart/form-data bodies (below).

Cases: positive (schema-valid) and negative (schema-violating) data for every operation, plus cases aimed at
real resources so the deep paths run too: the path parameters `sid` / `job_id` set to a live video session
and a stored job (created by the `resources` fixture), and click/automatic/concept/upload bodies whose image is
an uploaded `image_id`. The session is deleted by the last operation (DELETE /v1/video/sessions/{sid} runs
last). Cases are spread by weight over the operations (`WEIGHTS`; the model-backed video routes get fewer);
operations without parameters (/healthz, /readyz, /v1/cluster) have exactly one possible request, which is
sent once.

Reproducible: a fixed seed (SAM3_FUZZ_SEED, default below) and no example database, no shrinking (failures
are collected, not minimised, and each is reported with a curl command that reproduces it).

Default run: SAM3_FUZZ_CASES=1200 fuzzing cases in all, plus the ~1,150 coverage-phase cases (~1 min on 2
cores, after the session app is up). A larger run (20,000 cases: ~10 min on 2 cores), e.g.:

    SAM3_FUZZ_CASES=20000 SAM3_FUZZ_SEED=7 python3 -m pytest -q -s tests/integration/test_fuzz_openapi.py

(-s shows the cases per operation and status.)

Not driven here (schemathesis cannot, or the check does not apply):
- WS /v1/video/sessions/{sid}/ws is not an OpenAPI operation: its hostile messages are tested by hand in
  test_hostile_edges_http.py.
- The NDJSON stream of POST .../propagate is sent and read whole (schemathesis checks status and content type;
  the lines have no OpenAPI schema); the stream itself is tested in test_video_http.py.
- GET/PUT /v1/blobs/{key} (the local storage backend's presigned URLs) are not in the spec
  (include_in_schema=False); with S3 storage they answer 404.
- negative_data_rejection is not applied to multipart/form-data bodies: every multipart value travels as text,
  so a "schema-violating" null, boolean or number arrives as a valid string (text="null" is a fine prompt);
  multipart bodies still get every other check.
"""

from __future__ import annotations

import collections
import os
import time
from dataclasses import dataclass
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, seed, settings

from tests.helpers import png_bytes, wait_for, wait_job
from tests.videos import make_video

SEED = int(os.environ.get("SAM3_FUZZ_SEED", "20240611"))
TOTAL = int(os.environ.get("SAM3_FUZZ_CASES", "1200"))
MIN_PER_OPERATION = 10
T = 60  # per request

# Relative share of the cases per operation (default 1): the routes that run a model on the real session get less.
WEIGHTS = {
    "POST /v1/video/sessions/{sid}/prompts": 0.6,
    "POST /v1/video/sessions/{sid}/propagate": 0.6,
    "POST /v1/video/sessions": 0.8,
}
# Operations that change the real resources for the ones after them run last, in this order.
LAST = ("POST /v1/video/sessions/{sid}/reset", "DELETE /v1/video/sessions/{sid}")
# JSON bodies whose image can name the uploaded image: body field -> how.
IMAGE_BODIES = {
    "POST /v1/pcs/image": "image",
    "POST /v1/images": "image",
    "POST /v1/pvs/image": "image_id",
    "POST /v1/auto/image": "image_id",
}


@dataclass(frozen=True)
class Resources:
    image_id: str
    sid: str
    job_id: str


@pytest.fixture(scope="module")
def resources(serve_url, tmp_path_factory) -> Resources:
    """An uploaded image, a video session with one object (so propagation has work), a finished job."""
    r = requests.post(serve_url + "/v1/images", files={"file": ("a.png", png_bytes(seed=21), "image/png")},
                      timeout=120)
    assert r.status_code == 200, r.text
    image_id = r.json()["image_id"]
    path = tmp_path_factory.mktemp("fuzz-video") / "v.mp4"
    make_video(str(path), n=4, h=48, w=64, fps=8.0)
    r = requests.post(serve_url + "/v1/video/sessions", files={"video": ("v.mp4", path.read_bytes(), "video/mp4")},
                      timeout=120)
    assert r.status_code == 201, r.text
    sid = r.json()["session_id"]

    def prompted():
        r = requests.post(f"{serve_url}/v1/video/sessions/{sid}/prompts", timeout=120,
                          json={"frame_index": 0, "objects": [{"obj_id": 1, "points": [[20, 20]]}]})
        return None if r.status_code == 409 else (r,)  # 409 session_starting: the actor is starting

    (r,) = wait_for(prompted, 120, "the fuzz session's actor to start", interval_s=0.5)
    assert r.status_code == 200, r.text
    job = {"kind": "pcs_image", "input": {"image": {"image_id": image_id}, "prompts": [{"text": "x"}]}}
    r = requests.post(serve_url + "/v1/jobs", json=job, timeout=120)
    assert r.status_code == 202, r.text
    job_id = r.json()["job_id"]
    assert wait_job(serve_url, job_id)["status"] == "succeeded"
    yield Resources(image_id=image_id, sid=sid, job_id=job_id)
    requests.delete(f"{serve_url}/v1/video/sessions/{sid}", timeout=120)  # if the fuzzing did not


CREATED_SESSIONS: list[str] = []  # sessions a generated request created (deleted after the tests)
COVERAGE_CASES: collections.Counter = collections.Counter()  # status -> cases of test_openapi_coverage_cases


def _note_created(case, response) -> None:
    if case.operation.label == "POST /v1/video/sessions" and response.status_code == 201:
        CREATED_SESSIONS.append(response.json()["session_id"])


@pytest.fixture(scope="module")
def openapi_schema(serve_url, resources):
    """The live app's spec (the fixture schemathesis' pytest integration loads lazily)."""
    yield schemathesis.openapi.from_url(f"{serve_url}/openapi.json")
    for sid in CREATED_SESSIONS:
        requests.delete(f"{serve_url}/v1/video/sessions/{sid}", timeout=120)


def _checks() -> tuple[list, Any]:
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import (
        content_type_conformance,
        negative_data_rejection,
        response_headers_conformance,
        response_schema_conformance,
        status_code_conformance,
    )

    common = [not_a_server_error, status_code_conformance, content_type_conformance, response_headers_conformance,
              response_schema_conformance]
    return common, negative_data_rejection


def _with_image(res: Resources, field: str, case):
    """A positive JSON case of an image route, its image replaced by the uploaded one."""
    if case.media_type == "application/json" and isinstance(case.body, dict):
        body = dict(case.body)
        if field == "image_id":
            body.pop("image", None)
            body["image_id"] = res.image_id
        else:
            body["image"] = {"image_id": res.image_id}
        case.body = body
    return case


VIDEO_FRAMES = 4  # of the fuzz session's video


def _in_video(case):
    """A positive case on the real session with its frame indices folded into the video's frames (random
    indices are nearly always out of range: 400 frame_out_of_range, and the model never runs)."""
    def fold(container: Any, key: str) -> None:
        if isinstance(container, dict) and type(container.get(key)) is int:
            container[key] = container[key] % VIDEO_FRAMES

    if case.path_parameters and type(case.path_parameters.get("index")) is int:
        case.path_parameters = {**case.path_parameters, "index": case.path_parameters["index"] % VIDEO_FRAMES}
    if case.query:
        query = dict(case.query)
        fold(query, "frame_start")
        fold(query, "frame_end")
        case.query = query
    if isinstance(case.body, dict):
        body = dict(case.body)
        fold(body, "frame_index")
        fold(body, "start_frame_index")
        case.body = body
    return case


def _strategy(op, res: Resources):
    from hypothesis import strategies as st
    from schemathesis import GenerationMode

    parts = [op.as_strategy(GenerationMode.POSITIVE), op.as_strategy(GenerationMode.NEGATIVE)]
    names = {p.name for p in op.path_parameters}
    fixed = {k: v for k, v in (("sid", res.sid), ("job_id", res.job_id)) if k in names}
    if fixed:
        parts.append(op.as_strategy(GenerationMode.POSITIVE, path_parameters=fixed))
        if "sid" in fixed:
            parts.append(op.as_strategy(GenerationMode.POSITIVE, path_parameters=fixed).map(_in_video))
        if len(names) > len(fixed) or list(op.query) or list(op.body) or list(op.headers):  # something left to break
            parts.append(op.as_strategy(GenerationMode.NEGATIVE, path_parameters=fixed))
    if op.label in IMAGE_BODIES:
        field = IMAGE_BODIES[op.label]
        parts.append(op.as_strategy(GenerationMode.POSITIVE).map(lambda case: _with_image(res, field, case)))
    return st.one_of(parts)


def _budget(operations: list) -> dict[str, int]:
    """Cases per operation: TOTAL spread by WEIGHTS; 1 for an operation without any parameter or body."""
    fixed = {op.label for op in operations
             if not (list(op.path_parameters) or list(op.query) or list(op.body) or list(op.headers))}
    weights = {op.label: WEIGHTS.get(op.label, 1.0) for op in operations if op.label not in fixed}
    scale = (TOTAL - len(fixed)) / sum(weights.values())
    return {**{label: 1 for label in fixed},
            **{label: max(MIN_PER_OPERATION, round(w * scale)) for label, w in weights.items()}}


def _summary(failure: BaseException) -> str:
    """The check names and the first lines of a schemathesis failure (the full text has the curl command)."""
    lines = [ln for ln in str(failure).splitlines() if ln.strip()]
    return " | ".join(lines[:6])[:400]


coverage_schema = schemathesis.pytest.from_fixture("openapi_schema")


@coverage_schema.parametrize()
@settings(max_examples=1, phases=[Phase.explicit], deadline=None, database=None, derandomize=True,
          suppress_health_check=list(HealthCheck))
def test_openapi_coverage_cases(case, serve_url):
    """Schemathesis' coverage phase, per operation: deterministic boundary values, missing and wrongly typed
    fields, missing bodies, other content types and every undocumented method (405 with an `Allow` header)."""
    from schemathesis.specs.openapi.checks import unsupported_method

    common, negative_data_rejection = _checks()
    response = case.call(base_url=serve_url, timeout=T)
    _note_created(case, response)
    COVERAGE_CASES[response.status_code] += 1
    checks = [*common, unsupported_method]
    if case.media_type != "multipart/form-data":
        checks.append(negative_data_rejection)
    case.validate_response(response, checks=checks)


def test_openapi_fuzz_no_server_errors_and_responses_match_the_spec(serve_url, resources, openapi_schema):
    common, negative_data_rejection = _checks()
    schema = openapi_schema
    operations = [result.ok() for result in schema.get_all_operations()]
    operations.sort(key=lambda op: LAST.index(op.label) + 1 if op.label in LAST else 0)  # stable: spec order
    budget = _budget(operations)
    session = requests.Session()
    statuses: dict[str, collections.Counter] = {}
    failures: dict[tuple[str, str], list[str]] = collections.defaultdict(list)
    t0 = time.monotonic()

    def fuzz(op) -> None:
        counts = statuses.setdefault(op.label, collections.Counter())

        @seed(SEED)
        @settings(max_examples=budget[op.label], deadline=None, database=None, derandomize=False,
                  phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
        @given(case=_strategy(op, resources))
        def run(case) -> None:
            response = case.call(base_url=serve_url, session=session, timeout=T)
            _note_created(case, response)
            counts[response.status_code] += 1
            checks = list(common)
            if case.media_type != "multipart/form-data":
                checks.append(negative_data_rejection)
            try:
                case.validate_response(response, checks=checks)
            except (Exception, BaseExceptionGroup) as exc:  # schemathesis' FailureGroup: collect, go on
                failures[(op.label, _summary(exc))].append(str(exc))

        run()

    for op in operations:
        fuzz(op)

    elapsed = time.monotonic() - t0
    total = sum(sum(c.values()) for c in statuses.values())
    report = "\n".join(f"  {label}: {sum(c.values())} cases {dict(sorted(c.items()))}" for label, c in statuses.items())
    print(f"\nschemathesis coverage phase: {sum(COVERAGE_CASES.values())} cases {dict(sorted(COVERAGE_CASES.items()))}"
          f"\nschemathesis fuzzing: {total} cases in {elapsed:.0f} s (seed {SEED})\n{report}")
    assert all(sum(c.values()) > 0 for c in statuses.values()), report
    assert total >= 0.95 * TOTAL, report  # hypothesis stops early only where an operation's space is exhausted
    server_errors = {label: sum(n for s, n in c.items() if s >= 500) for label, c in statuses.items()}
    assert not any(server_errors.values()), f"responses >= 500: {server_errors}"
    detail = "\n\n".join(f"### {label} ({len(found)} cases): first one:\n{found[0][:3000]}"
                         for (label, _), found in failures.items())
    assert not failures, f"{len(failures)} distinct failures:\n{detail}"
