"""The `app` part of helm/sam3-serve/values.schema.json, derived from serve_app.config.AppConfig.

The chart's `app` values are rendered verbatim into `serveConfigV2.applications[0].args`, so their schema is
AppConfig's. This module turns `AppConfig.model_json_schema()` into a self-contained JSON-Schema draft-07
fragment Helm can use (refs inlined, titles/defaults dropped, `additionalProperties: false` everywhere), and
`test_values_schema_app_matches_appconfig` fails when the committed schema drifts from AppConfig.

After changing AppConfig, regenerate:  python -m tests.deploy.values_schema
"""

from __future__ import annotations

import copy
import json
import pathlib
import sys
from typing import Any

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
VALUES_SCHEMA = REPO_ROOT / "helm" / "sam3-serve" / "values.schema.json"

_DROP = {"title", "default"}


def _inline(node: Any, defs: dict[str, Any]) -> Any:
    if isinstance(node, dict):
        if "$ref" in node:
            target = node["$ref"].rsplit("/", 1)[-1]
            merged = {**copy.deepcopy(defs[target]), **{k: v for k, v in node.items() if k != "$ref"}}
            return _inline(merged, defs)
        out = {k: _inline(v, defs) for k, v in node.items() if k not in _DROP and k != "$defs"}
        if out.get("type") == "object" and "properties" in out:
            out.setdefault("additionalProperties", False)
        return out
    if isinstance(node, list):
        return [_inline(v, defs) for v in node]
    return node


def app_schema() -> dict[str, Any]:
    """AppConfig as an inlined draft-07 schema fragment (deterministic, sorted keys on dump)."""
    from serve_app.config import AppConfig

    raw = AppConfig.model_json_schema(mode="validation")
    schema = _inline(raw, raw.get("$defs", {}))
    schema["description"] = (
        "Application args rendered into serveConfigV2.applications[0].args; generated from "
        "serve_app.config.AppConfig by `python -m tests.deploy.values_schema`."
    )
    return schema


def main() -> int:
    data = json.loads(VALUES_SCHEMA.read_text())
    data["properties"]["app"] = app_schema()
    VALUES_SCHEMA.write_text(json.dumps(data, indent=2) + "\n")
    print(f"updated {VALUES_SCHEMA.relative_to(REPO_ROOT)} properties.app from AppConfig")
    return 0


if __name__ == "__main__":
    sys.exit(main())
