"""Pluggable job kinds: what `POST /v1/jobs {"kind": …, "input": {…}}` can run.

A kind validates its input when the job is submitted (so a bad body is a 400, not a failed job) and runs
it on a worker. It raises Sam3Error subclasses for known failures: Unavailable / Timeout / Overloaded
are retried (within the job's attempts), anything else fails the job with that error's code and message.
A kind must tolerate being run again from scratch (a replica may die mid-run).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from pydantic import BaseModel, ValidationError

from serve_app.errors import InvalidInput, ValidationFailed, format_validation_errors

M = TypeVar("M", bound=BaseModel)


def parse_job_input(model: type[M], input: dict) -> M:
    """A job's input as `model`, validated strictly as JSON (`true` is no number); 422 invalid_job_input with
    the first problem otherwise. For `JobKind.validate` and `execute`."""
    try:
        return model.model_validate(input, strict=True)
    except ValidationError as exc:
        raise ValidationFailed("input: " + format_validation_errors(exc.errors()), "invalid_job_input") from None


@dataclass(frozen=True)
class JobOutput:
    """What a run produced: the result document (JSON bytes), an optional PNG overlay, and optionally the key
    of an artifact the kind already stored itself (e.g. an export ZIP streamed to storage), shown to clients
    as a presigned `export_url`."""

    result_json: bytes
    overlay_png: bytes | None = None
    artifact_key: str | None = None


@dataclass(frozen=True)
class JobProgress:
    """How far the running attempt got: `done` of `total` `unit`s (e.g. frames)."""

    done: int
    total: int
    unit: str = "frames"


def _no_progress(progress: JobProgress) -> None:
    pass


@dataclass(frozen=True)
class JobContext:
    """Which run this is: its job and attempt number (1-based). `report` records progress; the worker writes
    the latest report into the job record with its next heartbeat (no extra storage write per report)."""

    job_id: str
    attempt: int
    report: Callable[[JobProgress], None] = field(default=_no_progress, compare=False)


class JobKind(Protocol):
    name: str

    def validate(self, input: dict) -> None:
        """Raise InvalidInput (or a subclass) if `input` cannot be run. Cheap: runs in the request path."""

    async def execute(self, input: dict, ctx: JobContext) -> JobOutput:
        """Do the work. Cancellation (the worker stopping) must leave nothing half-written that matters."""


class JobKindRegistry:
    """Name -> JobKind. One registry per app: the ingress validates with it, workers run with it."""

    def __init__(self) -> None:
        self._kinds: dict[str, JobKind] = {}

    def register(self, kind: JobKind) -> None:
        if kind.name in self._kinds:
            raise ValueError(f"job kind {kind.name!r} is already registered")
        self._kinds[kind.name] = kind

    def get(self, name: str) -> JobKind:
        try:
            return self._kinds[name]
        except KeyError:
            known = ", ".join(self.names()) or "none"
            raise InvalidInput(f"unknown job kind {name!r} (known: {known})", "unknown_job_kind") from None

    def names(self) -> list[str]:
        return sorted(self._kinds)
