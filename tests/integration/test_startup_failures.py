"""`sam3-serve run --model-id DIR` where DIR is not a SAM 3 checkpoint ends quickly with exit status 1 and ONE
line with the cause and the fix, not pages of tracebacks and not a replica restarting forever (issue 11, item
8). Runs its own Ray (separate temp dir) through the CLI in a subprocess, stopped by PID.

The unit tests (tests/unit/test_startup_errors.py) cover every cause; this checks the wiring end to end: the
replica's constructor fails, Serve's status message carries the line, `wait_running` picks it out at once (a
cause retrying cannot fix), the Serve controller's tracebacks are kept out of the terminal."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

from tests.conftest import REPO, free_port, short_tmpdir

BOUND_S = 120


def test_sam3_serve_run_with_a_directory_that_is_not_a_checkpoint(tmp_path):
    model_dir = tmp_path / "not-a-checkpoint"
    model_dir.mkdir()
    (model_dir / "README.md").write_text("my notes, no model here\n")
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS",)}
    ray_tmp = short_tmpdir()
    env.update(RAY_TMPDIR=ray_tmp, RAY_AUTH_MODE="token", HF_HUB_OFFLINE="1",
               PYTHONPATH=str(REPO) + os.pathsep + env.get("PYTHONPATH", ""))
    log_path = tmp_path / "serve_run.log"
    cmd = [sys.executable, "-m", "serve_app.cli", "run", "--model-id", str(model_dir),
           "--storage-uri", f"file://{tmp_path}/store", "--config", str(REPO / "serve_config.yaml"),
           "--host", "127.0.0.1", "--port", str(free_port()), "--pending-timeout", "30"]
    t0 = time.monotonic()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            code = proc.wait(timeout=BOUND_S)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # its own process group, started above
            proc.wait(timeout=10)
            code = None
        finally:
            shutil.rmtree(ray_tmp, ignore_errors=True)
    elapsed = time.monotonic() - t0
    out = log_path.read_text()
    assert code is not None, f"still running after {BOUND_S} s:\n{out[-3000:]}"
    assert code == 1, out[-3000:]
    line = (f"sam3-serve: cannot load the model '{model_dir}' [model_not_a_checkpoint]: the directory has no "
            "config.json. Fix: ")
    assert line in out, out[-3000:]
    assert "python -m serve_app.devtools.tiny_model DIR" in out
    last = [x for x in out.splitlines() if x.startswith(line)]  # the CLI's own line (no worker prefix)
    assert last, out[-3000:]
    assert "Traceback" not in out, out
    print(f"exit {code} after {elapsed:.0f} s")
