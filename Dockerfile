# syntax=docker/dockerfile:1.7
# sam3-serve production image: Ray Serve app on the official Ray GPU image.
#
# The base tag must match pyproject.toml: Ray = the `ray[serve]==X` pin, pyXY = a Python allowed by
# `requires-python` (tests/deploy/test_dockerfile.py checks both). KubeRay starts Ray in this image with its
# own command; the app is installed into the image's Python, so production needs no runtime_env installs.
#
#   docker build -t REGISTRY/sam3-serve:0.1.0 .
#
# Optional: bake the weights into the image (no Hub download at cold start; gated models need a token,
# passed as a BuildKit secret so it never lands in a layer or the build args):
#
#   docker build --build-arg BAKE_MODEL_ID=facebook/sam3 \
#     --secret id=hf_token,env=HF_TOKEN -t REGISTRY/sam3-serve:0.1.0-baked .
#
# and deploy with `app.model.model_id: /home/ray/models/sam3` and `huggingface.offline: true`.
FROM rayproject/ray:2.60.0-py311-gpu

# Hub id to download into /home/ray/models/sam3 at build time; empty (default) = weights are not baked.
ARG BAKE_MODEL_ID=""
# Hub revision (branch, tag or commit) for BAKE_MODEL_ID; empty = the default branch.
ARG BAKE_MODEL_REVISION=""

# HF_HOME is where the chart mounts a writable emptyDir/PVC (the root filesystem may be read-only).
ENV HF_HOME=/home/ray/.cache/huggingface \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# The base image's user: ray (uid 1000, gid 100 "users"), owner of /home/ray and its conda env.
USER 1000:100
WORKDIR /home/ray/sam3-serve

# Dependencies and the package from pyproject (non-editable install into the image's Python).
COPY --chown=1000:100 pyproject.toml README.md ./
COPY --chown=1000:100 serve_app ./serve_app
RUN pip install --no-cache-dir . \
 && python -c "import serve_app.app" \
 && mkdir -p "${HF_HOME}"

RUN --mount=type=secret,id=hf_token,uid=1000 \
    if [ -n "${BAKE_MODEL_ID}" ]; then \
      HF_TOKEN="$(cat /run/secrets/hf_token 2>/dev/null || true)" \
      python -c 'import os; from huggingface_hub import snapshot_download; snapshot_download(os.environ["BAKE_MODEL_ID"], revision=os.environ["BAKE_MODEL_REVISION"] or None, local_dir="/home/ray/models/sam3", token=os.environ.get("HF_TOKEN") or None)' ; \
    fi

# serve (Ray Serve HTTP), metrics (Prometheus), dashboard (head only).
EXPOSE 8000 8080 8265
