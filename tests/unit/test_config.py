"""AppConfig validation, serve_config.yaml parity, deployment options from config."""

from __future__ import annotations

import pytest
import yaml
from pydantic import ValidationError

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


def test_every_field_is_described():
    def walk(model):
        for name, field in model.model_fields.items():
            assert field.description, f"{model.__name__}.{name} has no description"
            ann = field.annotation
            if isinstance(ann, type) and issubclass(ann, AppConfig.__mro__[1]):
                walk(ann)
    walk(AppConfig)


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
