"""OpenAPI helpers for routes that parse their bodies themselves (size caps, JSON or multipart)."""

from __future__ import annotations

from pydantic import BaseModel


def inline_schema(model: type[BaseModel]) -> dict:
    """The model's JSON schema with every $ref replaced by its definition (self-contained in OpenAPI:
    nested request-only models are not registered as components)."""
    schema = model.model_json_schema()
    defs = schema.pop("$defs", {})

    def resolve(node):
        if isinstance(node, dict):
            if "$ref" in node:
                return resolve(defs[node["$ref"].rsplit("/", 1)[-1]])
            return {k: resolve(v) for k, v in node.items()}
        if isinstance(node, list):
            return [resolve(v) for v in node]
        return node

    return resolve(schema)


def json_request_body(model: type[BaseModel]) -> dict:
    """`openapi_extra` documenting a required application/json body of `model`."""
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": inline_schema(model)}}}}
