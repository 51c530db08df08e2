"""The OpenAPI document is self-consistent: every $ref resolves, every v1 route documents its body."""

from __future__ import annotations

import json
import re

from serve_app.ingress.fastapi_app import create_app

BODILESS = {"/v1/video/sessions/{sid}/reset"}  # actions that take no body


def test_every_ref_resolves_and_bodies_are_documented():
    spec = create_app().openapi()
    text = json.dumps(spec)
    components = spec.get("components", {}).get("schemas", {})
    refs = set(re.findall(r'"\$ref": "#/components/schemas/([^"]+)"', text))
    assert refs and refs <= set(components), refs - set(components)
    for path, methods in spec["paths"].items():
        for method, op in methods.items():
            if method == "post" and path.startswith("/v1/") and path not in BODILESS:
                assert "application/json" in op["requestBody"]["content"], path
            elif path in BODILESS:
                assert "requestBody" not in op, path
