"""JSON answers of the routes whose bodies can be large (masks): serialised once, by pydantic-core, on the CPU
pool. Returning the model itself would make FastAPI validate it again against `response_model` and encode it
on the event loop (tens of ms for a few MB of RLE, during which no other request moves). The routes keep
`response_model` in their decorators: the OpenAPI document is unchanged.

The body is pydantic-core's bytes (`json_bytes`): `model_dump_json` would decode them to a str that the
Response encodes again, on the event loop."""

from __future__ import annotations

from fastapi import Response
from pydantic import BaseModel

from serve_app.pipelines.pools import run_cpu


async def json_response(model: BaseModel, *, exclude_none: bool = True, status_code: int = 200) -> Response:
    """`model` as application/json; exclude_none as the route's response_model_exclude_none."""
    return json_body_response(await run_cpu(json_bytes, model, exclude_none=exclude_none), status_code)


def json_bytes(model: BaseModel, *, exclude_none: bool = True) -> bytes:
    """= model.model_dump_json(exclude_none=exclude_none).encode(), without the str in between."""
    return type(model).__pydantic_serializer__.to_json(model, exclude_none=exclude_none)


def json_body_response(body: bytes, status_code: int = 200) -> Response:
    """An application/json response of JSON bytes serialised already (json_bytes, e.g. on the CPU pool)."""
    return Response(content=body, status_code=status_code, media_type="application/json")
