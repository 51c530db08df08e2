"""build_app's resource decisions (no Ray needed: the cluster's GPUs are faked)."""

from __future__ import annotations

import pytest


@pytest.mark.parametrize("gpus,concept_gpus,share", [(0, "auto", 1.0), (1, "auto", 0.5), (4, "auto", 1.0), (1, 1, 1.0)])
def test_auto_gpus_share_a_single_gpu(monkeypatch, gpus, concept_gpus, share):
    """Two model deployments on 'auto' on a one-GPU machine get half each (else one would never start)."""
    from serve_app import app
    from serve_app.config import AppConfig, ReplicaConfig

    monkeypatch.setattr(app, "cluster_gpus", lambda: float(gpus))
    cfg = AppConfig(concept={"replica": {"num_gpus": concept_gpus}})
    assert app.auto_gpu_share(cfg) == share
    opts = app.deployment_options(ReplicaConfig(num_gpus="auto"), gpu=True, auto_gpus=share)
    assert opts["ray_actor_options"]["num_gpus"] == (share if gpus else 0)
