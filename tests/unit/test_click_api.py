"""CPU-side pieces of the click API without Ray: OpenAPI, option checks, knob resolution, response encoding."""

from __future__ import annotations

import json
import re
from types import SimpleNamespace

import numpy as np
import pytest

from serve_app.codecs.mask_input import decode_mask_input
from serve_app.codecs.masks import decode_rle
from serve_app.config import ClickConfig
from serve_app.errors import InvalidInput
from serve_app.model.types import ClickResponse, ObjectMasks
from serve_app.pipelines.click import ClickPipeline, encode_objects, validate_objects
from serve_app.schemas import AutoOptions, ClickOptions


def test_openapi_documents_the_routes_with_self_contained_bodies():
    from serve_app.ingress.fastapi_app import create_app

    spec = create_app().openapi()
    for path in ("/v1/images", "/v1/pvs/image", "/v1/auto/image"):
        body = json.dumps(spec["paths"][path]["post"]["requestBody"])
        assert not re.search(r"\$ref", body), path
    assert "multipart/form-data" in spec["paths"]["/v1/images"]["post"]["requestBody"]["content"]


@pytest.mark.parametrize("objects,code", [
    ([], "no_objects"),
    ([{"points": [[1, 1]]}] * 3, "too_many_objects"),
    ([{"points": [[i, i] for i in range(5)]}], "too_many_points"),
    ([{}], "empty_object"),
    ([{"points": [], "point_labels": []}], "empty_object"),
    ([{"points": [[1, 1]], "point_labels": [1, 0]}], "point_labels_mismatch"),
    ([{"box": [5, 5, 4, 9]}], "invalid_box"),
])
def test_validate_objects(objects, code):
    cfg = ClickConfig(max_objects=2, max_points_per_object=4)
    with pytest.raises(InvalidInput) as err:
        validate_objects(ClickOptions(objects=objects), cfg)
    assert err.value.code == code


def test_auto_knobs_default_to_config_and_respect_bounds():
    cfg = ClickConfig(auto={"points_per_side": 8, "max_points_per_side": 12, "max_masks": 50})
    pipe = ClickPipeline(None, SimpleNamespace(tenant="acme"), cfg)
    req = pipe.auto_request("a" * 64, AutoOptions(box_nms_thresh=0.5, max_masks=500))
    assert req.cache_key == "acme/" + "a" * 64  # the replica's cache key is tenant-scoped
    assert (req.points_per_side, req.box_nms_thresh, req.max_masks) == (8, 0.5, 50)
    assert req.pred_iou_thresh == cfg.auto.pred_iou_thresh and req.pixels is None
    with pytest.raises(InvalidInput) as err:
        pipe.auto_request("a" * 64, AutoOptions(points_per_side=13))
    assert err.value.code == "points_per_side_too_large"


def test_encode_objects_best_first_with_handles():
    logits = np.full((3, 8, 8), -5, np.float16)
    logits[0, :4, :4] = 5  # top-left quarter
    logits[1, :, :] = 5  # everything
    logits[2, 4:, 4:] = 5
    out = ClickResponse([ObjectMasks(logits, np.array([0.2, 0.9, 0.5], np.float32), 0.7)], (40, 60), True)
    (obj,) = encode_objects(out, ClickOptions(objects=[{"points": [[1, 1]]}], multimask_output=True))
    assert obj.candidates is not None
    assert [c.score for c in obj.candidates] == pytest.approx([0.9, 0.5, 0.2])
    assert obj.score == pytest.approx(0.9) and obj.area == 40 * 60 and obj.box == [0, 0, 60, 40]
    np.testing.assert_array_equal(decode_mask_input(obj.mask_input, 8), logits[1])
    top_left = decode_rle(obj.candidates[2].mask.model_dump())
    assert top_left.shape == (40, 60) and top_left[:15, :25].all() and not top_left[25:, 35:].any()
    single = encode_objects(out, ClickOptions(objects=[{"points": [[1, 1]]}], return_mask_input=False))[0]
    wire = single.model_dump(exclude_none=True)
    assert "candidates" not in wire and "mask_input" not in wire and single.object_score == 0.7
