"""One request never fails another, over real HTTP through the session's Ray Serve app (tests/conftest.py:
the concept deployment batches up to 8 with a 0.25 s wait, the click deployment up to 8 with 0.02 s).

Each burst posts eight requests at once: seven good ones and one "poison" that passes every ingress check and
fails in its own processing on the model replica. The poison gets its own 4xx; the seven get 200s with
results, from a batch they shared with the poison (proven with the replica's counters or batch sizes).

- concept: no client input passes the ingress and fails on the replica any more, so the poison is the debug
  interface's (observability.debug_interface): `debug_poison_text` makes the replica's tokenizer reject one
  prompt text, as it rejected lone surrogates before the ingress did (400 invalid_text).
- clicks: a point outside the image, sent by image_id: only the replica knows the image's size (400
  point_outside_image).
"""

from __future__ import annotations

import threading
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from tests.helpers import b64, debug_stats, png_bytes

T = 120
MAX_BURSTS = 5  # scheduling on a small machine decides whether a burst's posts meet in the batch queue


def burst(url: str, bodies: list[dict]) -> list[requests.Response]:
    """All `bodies` posted at once (one thread each, released together); the responses in order."""
    start = threading.Barrier(len(bodies))

    def post(body: dict) -> requests.Response:
        start.wait()
        return requests.post(url, json=body, timeout=T)

    with ThreadPoolExecutor(len(bodies)) as pool:
        return list(pool.map(post, bodies))


def split(responses: list[requests.Response], poison_at: int) -> tuple[requests.Response, list[dict]]:
    """(the poison's response, the good ones' bodies), asserting every good one is a 200."""
    good = [r for i, r in enumerate(responses) if i != poison_at]
    assert all(r.status_code == 200 for r in good), [(r.status_code, r.text[:200]) for r in good]
    return responses[poison_at], [r.json() for r in good]


# ---------------------------------------------------------------------------------------------------------
# concept


@pytest.fixture
def poisoned_concept(concept_handle):
    """A fresh poison text on the concept replica (never cached, so the tokenizer sees it); reset afterwards
    whatever the test did (debug_reset also drops the poison)."""
    text = f"poisoned concept {uuid.uuid4().hex[:8]}"
    yield text
    concept_handle.debug_poison_text.remote(None).result()


def concept_bodies(poison: str, poison_at: int) -> list[dict]:
    bodies = [{"image": {"base64": b64(png_bytes(100 + 10 * i, 80, seed=60 + i))}, "prompts": [{"text": "car"}],
               "threshold": 0.0, "max_instances": 3} for i in range(8)]
    bodies[poison_at]["prompts"] = [{"text": "dog"}, {"text": poison}]
    return bodies


def test_a_poisoned_concept_request_fails_alone_in_its_batch(serve_url, concept_handle, poisoned_concept):
    poison_at = 3
    bodies = concept_bodies(poisoned_concept, poison_at)
    for _ in range(MAX_BURSTS):
        concept_handle.debug_reset.remote().result()  # counters from 0 (this also drops any poison) ...
        concept_handle.debug_poison_text.remote(poisoned_concept).result()  # ... so poison after it
        bad, good = split(burst(serve_url + "/v1/pcs/image", bodies), poison_at)
        assert bad.status_code == 400, bad.text
        assert bad.json()["error"]["code"] == "invalid_text"
        assert bad.json()["error"]["message"] == "prompts[1].text cannot be tokenized"
        for body in good:
            assert len(body["results"]) == 1 and len(body["results"][0]["instances"]) == 3
        stats = debug_stats(concept_handle)
        assert stats["requests"] == 7  # only the good ones reached the forward
        if stats["largest_call"] == 8:  # all eight, the poison included, were one batch of the queue
            break
    assert (stats["calls"], stats["largest_call"]) == (1, 8), stats
    assert stats["batches"] == 1 and stats["forward_errors"] == stats["oom_errors"] == 0, stats
    assert [b["batch_size"] for b in good] == [7] * 7  # the seven ran in one forward

    concept_handle.debug_poison_text.remote(None).result()
    fine = requests.post(serve_url + "/v1/pcs/image", json=bodies[poison_at], timeout=T)
    assert fine.status_code == 200 and len(fine.json()["results"]) == 2  # the text itself is fine


# ---------------------------------------------------------------------------------------------------------
# clicks


def test_a_click_outside_the_image_fails_alone_in_its_batch(serve_url, click_handle):
    image_id = requests.post(serve_url + "/v1/images", files={"file": ("a.png", png_bytes(130, 90, seed=70),
                                                                        "image/png")}, timeout=T).json()["image_id"]
    poison_at = 5
    bodies = [{"image_id": image_id, "objects": [{"points": [[10 + 5 * i, 20 + 3 * i]], "point_labels": [1]}]}
              for i in range(8)]
    bodies[poison_at]["objects"] = [{"points": [[500, 10]], "point_labels": [1]}]  # the image is 130 x 90
    shared = False
    for _ in range(MAX_BURSTS):
        bad, good = split(burst(serve_url + "/v1/pvs/image", bodies), poison_at)
        assert bad.status_code == 400, bad.text
        assert bad.json()["error"]["code"] == "point_outside_image"
        for body in good:
            assert body["image_id"] == image_id and len(body["objects"]) == 1 and body["objects"][0]["mask"]
        # A click's batch_size counts every request of its batch, the poison included. Batches of size b
        # hold a multiple of b requests: if the good ones with batch_size b are not, the poison was in one
        # of them, with b - 1 good clicks.
        sizes = [b["batch_size"] for b in good]
        shared = any(b > 1 and sizes.count(b) % b != 0 for b in set(sizes))
        if shared:
            break
    assert shared, sizes
    stats = debug_stats(click_handle)
    assert stats["forward_errors"] == stats["oom_errors"] == 0
