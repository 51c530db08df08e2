"""`sam3-serve run --model-id TINY` (the README's command: `serve run serve_config.yaml` with the model id
and port overridden) answers a request. Runs its own Ray (separate temp dir) in a subprocess, stopped by PID."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import requests

import shutil

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
            except requests.ConnectionError:
                pass
            time.sleep(1)
        assert ready is not None and ready.status_code == 200, (tmp_path / "serve_run.log").read_text()[-3000:]
        r = requests.post(base + "/v1/pcs/image", files={"image": ("a.png", png_bytes(), "image/png")},
                          data={"text": "car", "threshold": "0.0", "max_instances": "2"}, timeout=60)
        assert r.status_code == 200, r.text
        assert len(r.json()["results"][0]["instances"]) == 2
    finally:
        proc.send_signal(signal.SIGINT)  # the CLI exec'd `serve run` (same PID), which shuts Serve and its Ray down on Ctrl-C
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # its own process group, started above
            proc.wait(timeout=10)
        log.close()
        shutil.rmtree(ray_tmp, ignore_errors=True)
