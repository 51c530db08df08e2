"""The storage key layout: exact keys, and no client string can escape its tenant or its directory."""

from __future__ import annotations

import hashlib
import time

import pytest

from serve_app.errors import InvalidInput
from serve_app.storage import keys

pytestmark = pytest.mark.unit

SHA = hashlib.sha256(b"image").hexdigest()


def test_layout_matches_design():
    assert keys.image_key("default", SHA) == f"t/default/images/{SHA}"
    assert keys.upload_key("default", "u1") == "t/default/uploads/u1"
    assert keys.job_record_key("acme", "j_1") == "t/acme/jobs/j_1/record.json"
    assert keys.job_input_key("acme", "j_1") == "t/acme/jobs/j_1/input.json"
    assert keys.job_result_key("acme", "j_1") == "t/acme/jobs/j_1/result.json"
    assert keys.job_overlay_key("acme", "j_1") == "t/acme/jobs/j_1/overlay.png"
    assert keys.active_job_key("acme", "j_1") == "t/acme/jobs-active/j_1"
    assert keys.session_masks_key("default", "s-1", 7) == "t/default/sessions/s-1/masks/000007.json"
    assert keys.video_key("default", "a" * 64) == "t/default/videos/" + "a" * 64
    assert keys.session_journal_key("default", "s-1", 7) == "t/default/sessions/s-1/journal/0000000007"
    assert keys.session_frame_key("default", "s-1", 12) == "t/default/sessions/s-1/frames/12.jpg"
    assert keys.export_key("default", "e1") == "t/default/exports/e1.zip"


def test_idempotency_marker_hashes_the_client_string():
    key = keys.idempotency_key("default", "../../t/other/jobs x")
    assert key == "t/default/jobs-idem/" + hashlib.sha256(b"../../t/other/jobs x").hexdigest()
    with pytest.raises(InvalidInput):
        keys.idempotency_key("default", "")
    with pytest.raises(InvalidInput):
        keys.idempotency_key("default", "k" * 256)


@pytest.mark.parametrize("bad", ["", "../x", "a/b", "..", ".", "a b", "x" * 65, "é", "a\x00", "id\n", "id%2F", None, 3])
def test_ids_are_validated(bad):
    with pytest.raises(InvalidInput):
        keys.upload_key("default", bad)
    with pytest.raises(InvalidInput):
        keys.job_record_key("default", bad)
    with pytest.raises(InvalidInput):
        keys.export_key("default", bad)


@pytest.mark.parametrize("bad", ["../default", "default/../other", "a/b", "", "x" * 65, "default\n"])
def test_tenant_is_validated(bad):
    with pytest.raises(InvalidInput):
        keys.image_key(bad, SHA)


@pytest.mark.parametrize("bad", [SHA.upper(), SHA[:-1], SHA + "0", "../" + SHA[3:], "g" * 64])
def test_image_id_must_be_lowercase_sha256(bad):
    with pytest.raises(InvalidInput):
        keys.image_key("default", bad)


def test_a_key_cannot_reach_another_tenant():
    # ids cannot contain "/", so whatever a client sends, the key stays under its own tenant
    for job_id in ("x/../../other", "..", "t/other"):
        with pytest.raises(InvalidInput):
            keys.job_record_key("default", job_id)
    assert keys.job_record_key("default", "other").startswith("t/default/")


@pytest.mark.parametrize("bad", ["/abs", "a//b", "a/../b", "a/./b", "../a", "a/.hidden", ".lock", "a/b/", "a\\b",
                                 "a b", "a\n", "x" * 901, ""])
def test_check_key_rejects_unsafe_keys(bad):
    with pytest.raises(InvalidInput):
        keys.check_key(bad)


def test_check_key_prefixes():
    assert keys.check_key("", prefix=True) == ""
    assert keys.check_key("t/default/jobs/", prefix=True) == "t/default/jobs/"
    assert keys.check_key("t/default/jobs/ab", prefix=True) == "t/default/jobs/ab"
    for bad in ("t/../", "/t/", "t//", "t/.x"):
        with pytest.raises(InvalidInput):
            keys.check_key(bad, prefix=True)


def test_job_ids_sort_newest_first_and_ids_oldest_first():
    older_job, older_id = keys.new_job_id(), keys.new_id()
    time.sleep(0.002)
    newer_job, newer_id = keys.new_job_id(), keys.new_id()
    assert newer_job < older_job
    assert older_id < newer_id
    for value in (older_job, newer_job, older_id, newer_id):
        assert keys.validate_id(value) == value


def test_job_id_of_record_key_round_trips():
    assert keys.job_id_of_record_key("default", keys.job_record_key("default", "j1")) == "j1"
    assert keys.job_id_of_record_key("default", keys.job_result_key("default", "j1")) is None
    assert keys.job_id_of_record_key("other", keys.job_record_key("default", "j1")) is None
