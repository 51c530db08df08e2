#!/usr/bin/env bash
# The campaign (loadtest/campaign.py) on a GPU machine that has torch + CUDA but not this project's Python
# packages and no network, like the lent machine of shared/notes/GPU_RUNS.md (Python 3.12, torch, an older
# transformers, no pydantic/pycocotools/Ray).
#
#   bash loadtest/gpu_campaign.sh download          # here, with a package index: py3.12 wheels -> .gpu/wheels (~30 MB)
#   bash loadtest/gpu_campaign.sh run [ARGS...]      # there (.gpu/wheels carried along): unpack into .gpu/site, run
#
# `run` passes ARGS to campaign.py after `--model full-random` (results go to $OUT when set). The wheels are
# unpacked, not pip-installed (no index there, and a wheel is a zip); they shadow the machine's own copies.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
case "${1:-}" in
  download)
    # transformers as pinned in pyproject (SAM 3 needs >= 5.23) plus what serve_app.model imports; not numpy or
    # torch (the GPU machine's own builds are kept).
    rm -rf .gpu/wheels && mkdir -p .gpu/wheels
    $PY -m pip download -q -d .gpu/wheels --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
      "transformers==$($PY -c 'import transformers; print(transformers.__version__)')" \
      pydantic pycocotools pyyaml
    rm -f .gpu/wheels/numpy-*.whl
    du -sh .gpu/wheels
    ;;
  run)
    shift
    rm -rf .gpu/site && mkdir -p .gpu/site
    $PY - <<'EOF'
import glob, zipfile
for wheel in sorted(glob.glob(".gpu/wheels/*.whl")):
    zipfile.ZipFile(wheel).extractall(".gpu/site")
EOF
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
    PYTHONPATH=".gpu/site:.${PYTHONPATH:+:$PYTHONPATH}" $PY loadtest/campaign.py --model full-random "$@"
    ;;
  *)
    echo "usage: bash loadtest/gpu_campaign.sh download | run [campaign args]" >&2
    exit 2
    ;;
esac
