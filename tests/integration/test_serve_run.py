"""`sam3-serve run --model-id TINY` (the README's command: `serve run serve_config.yaml` with the model id
and port overridden) answers a request. Runs its own Ray (separate temp dir) in a subprocess, stopped by PID."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

import requests

from serve_app.config import StorageConfig
from serve_app.storage import open_store
from tests.conftest import REPO, free_port, short_tmpdir
from tests.helpers import png_bytes


def test_serve_run_serve_config_yaml(tmp_path, tiny_model_dir):
    port = free_port()

    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS",)}
    ray_tmp = short_tmpdir()
    env.update(RAY_TMPDIR=ray_tmp, RAY_AUTH_MODE="token", HF_HUB_OFFLINE="1",
               PYTHONPATH=str(REPO) + os.pathsep + env.get("PYTHONPATH", ""))
    log = open(tmp_path / "serve_run.log", "w")
    cmd = [sys.executable, "-m", "serve_app.cli", "run", "--model-id", tiny_model_dir,
           "--storage-uri", f"file://{tmp_path}/store",
           "--config", str(REPO / "serve_config.yaml"), "--host", "127.0.0.1", "--port", str(port)]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 240
        ready = None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                ready = requests.get(base + "/readyz", timeout=5)
                if ready.status_code == 200:
                    break
            except requests.RequestException:  # not listening yet, or busy starting replicas
                pass
            time.sleep(1)
        assert ready is not None and ready.status_code == 200, (tmp_path / "serve_run.log").read_text()[-3000:]
        r = requests.post(base + "/v1/pcs/image", files={"image": ("a.png", png_bytes(), "image/png")},
                          data={"text": "car", "threshold": "0.0", "max_instances": "2"}, timeout=60)
        assert r.status_code == 200, r.text
        assert len(r.json()["results"][0]["instances"]) == 2
        # The local storage backend end to end: presigned PUT to this service's /v1/blobs, then use it.
        data = png_bytes(seed=2)
        up = requests.post(base + "/v1/uploads", json={"content_type": "image/png", "content_length": len(data)},
                           timeout=30).json()
        assert up["url"].startswith(f"{base}/v1/blobs/t/default/uploads/{up['upload_id']}?")
        assert requests.put(up["url"], data=data, headers=up["headers"], timeout=30).status_code == 200
        r = requests.post(base + "/v1/pcs/image", json={"image": {"upload_id": up["upload_id"]}, "return": "url",
                                                        "prompts": [{"text": "car"}]}, timeout=60)
        assert r.status_code == 200, r.text
        stored = requests.get(r.json()["result_url"], timeout=30)
        assert stored.status_code == 200 and stored.json()["image_id"] == r.json()["image_id"]
        store = open_store(StorageConfig(uri=f"file://{tmp_path}/store"))
        assert store.get(f"t/default/uploads/{up['upload_id']}").data == data
    finally:
        proc.send_signal(signal.SIGINT)  # the CLI exec'd `serve run` (same PID), which shuts Serve and its Ray down on Ctrl-C
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # its own process group, started above
            proc.wait(timeout=10)
        log.close()
        shutil.rmtree(ray_tmp, ignore_errors=True)
