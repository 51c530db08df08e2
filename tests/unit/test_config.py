"""AppConfig validation, serve_config.yaml parity, deployment options from config."""

from __future__ import annotations

import typing

import pytest
import yaml
from pydantic import BaseModel, ValidationError

import serve_app.config as config_module
from serve_app.app import build_app, deployment_options
from serve_app.config import AppConfig, ReplicaConfig
from tests.conftest import REPO


def test_serve_config_yaml_args_validate():
    cfg = yaml.safe_load((REPO / "serve_config.yaml").read_text())
    app = cfg["applications"][0]
    assert app["import_path"] == "serve_app.app:build_app"
    parsed = AppConfig.model_validate(app["args"])
    assert parsed.model.model_id == "facebook/sam3"
    assert parsed.concept.replica.autoscaling is not None


@pytest.mark.parametrize("args, fragment", [
    ({"modle": {}}, "modle"),
    ({"model": {"model_idd": "x"}}, "model_idd"),
    ({"concept": {"batching": {"max_batch_size": 0}}}, "max_batch_size"),
    ({"concept": {"replica": {"max_ongoing_requests": 4}, "batching": {"max_batch_size": 8}}}, "max_ongoing_requests"),
    ({"concept": {"replica": {"autoscaling": {"min_replicas": 3, "max_replicas": 2}}}}, "min_replicas"),
    ({"model": {"device": "tpu"}}, "device"),
])
def test_bad_config_is_rejected_with_the_field_named(args, fragment):
    with pytest.raises(ValidationError) as exc:
        AppConfig.model_validate(args)
    assert fragment in str(exc.value)


def test_build_app_validates_args():
    with pytest.raises(ValidationError):
        build_app({"limits": {"max_promts": 3}})


def _models_in(annotation) -> list[type[BaseModel]]:
    """Every pydantic model class in a field annotation: X, X | None, Optional[X], Union[X, Y], list[X],
    dict[str, X], Annotated[X, ...] (walked through typing.get_args, never through default values)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in _models_in(arg)]


def config_models() -> set[type[BaseModel]]:
    """AppConfig and every model reachable from its fields' annotations."""
    seen: set[type[BaseModel]] = set()
    todo: list[type[BaseModel]] = [AppConfig]
    while todo:
        model = todo.pop()
        if model not in seen:
            seen.add(model)
            todo += [m for field in model.model_fields.values() for m in _models_in(field.annotation)]
    return seen


def test_models_in_sees_through_optional_union_and_containers():
    class Leaf(BaseModel):
        x: int = 0

    class Other(BaseModel):
        y: int = 0

    for annotation in (Leaf, Leaf | None, typing.Optional[Leaf], list[Leaf], dict[str, Leaf],
                       typing.Annotated[Leaf | None, "meta"]):
        assert _models_in(annotation) == [Leaf], annotation
    assert _models_in(typing.Union[Leaf, Other, None]) == [Leaf, Other]
    assert _models_in(int | None) == [] and _models_in(typing.Literal["a", "b"]) == []


def test_every_field_is_described():
    models = config_models()
    undescribed = [f"{m.__name__}.{name}" for m in models for name, field in m.model_fields.items()
                   if not (field.description or "").strip()]
    assert not undescribed, f"config fields without a description: {sorted(undescribed)}"
    # Every config model in serve_app.config is reached, including those behind Optional[...] (autoscaling).
    defined = {v for v in vars(config_module).values() if isinstance(v, type) and issubclass(v, BaseModel)
               and v.__module__ == config_module.__name__ and v.model_fields}
    assert defined <= models, f"not reachable from AppConfig's annotations: {sorted(m.__name__ for m in defined - models)}"
    autoscaling = ReplicaConfig.model_fields["autoscaling"]
    behind_optional = _models_in(autoscaling.annotation)
    assert autoscaling.default is None and behind_optional and set(behind_optional) <= models


def test_deployment_options_fixed_and_autoscaled():
    fixed = deployment_options(ReplicaConfig(num_replicas=2, num_gpus=0.5, num_cpus=2), gpu=True)
    assert fixed["num_replicas"] == 2 and "autoscaling_config" not in fixed
    assert fixed["ray_actor_options"] == {"num_cpus": 2.0, "num_gpus": 0.5}
    auto = deployment_options(ReplicaConfig(autoscaling={"min_replicas": 0, "max_replicas": 3}), gpu=True)
    assert "num_replicas" not in auto
    assert auto["autoscaling_config"].min_replicas == 0 and auto["autoscaling_config"].max_replicas == 3


def test_auto_gpu_is_zero_without_a_ray_gpu():
    opts = deployment_options(ReplicaConfig(num_gpus="auto"), gpu=True)
    assert opts["ray_actor_options"]["num_gpus"] == 0
