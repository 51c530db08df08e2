"""What the benchmark scripts share: latency summaries, the common CLI flags, checkpoint + device setup, a local
Ray sized to the app and a bounded deploy (`deploy_or_fail`), the serving-overhead summary, writing the
JSON (+ PNG plot) result, and the API key of a running service (`--api-key`, env SAM3_API_KEY, sent as
`Authorization: Bearer`). Imported by loadtest/bench_*.py (run as scripts)."""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs), q)) if xs else float("nan")


def summary(latencies_ms: list[float]) -> dict:
    """n, p50/p95/p99 and mean of a list of latencies in ms."""
    return {"n": len(latencies_ms), "p50_ms": pct(latencies_ms, 50), "p95_ms": pct(latencies_ms, 95),
            "p99_ms": pct(latencies_ms, 99), "mean_ms": statistics.fmean(latencies_ms)}


def base_parser(doc: str, default_out: str) -> argparse.ArgumentParser:
    """--model tiny|full-random, --model-dir, --device, --skip-served, --out."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--model", choices=["tiny", "full-random"], default="tiny")
    parser.add_argument("--model-dir", help="use this checkpoint directory instead of building one")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--skip-served", action="store_true")
    parser.add_argument("--out", default=default_out)
    return parser


API_KEY_ENV = "SAM3_API_KEY"


def add_api_key_arg(parser: argparse.ArgumentParser, *names: str, env: str | None = API_KEY_ENV,
                    help: str | None = None) -> None:
    """`--api-key` (or `names`): the key sent as `Authorization: Bearer <key>` to a running service (--url) in
    auth.mode api_keys; default the environment variable `env` (SAM3_API_KEY). Never written to a result
    (`redacted_argv`)."""
    default = os.environ.get(env) if env else None
    parser.add_argument(*(names or ("--api-key",)), default=default or None, help=help or (
        f"API key of the service (sent as 'Authorization: Bearer <key>'); default ${env}" if env else
        "API key (sent as 'Authorization: Bearer <key>')"))


def auth_headers(key: str | None) -> dict[str, str]:
    """The request headers that carry `key` ({} without one)."""
    return {"Authorization": f"Bearer {key}"} if key else {}


def key_sha256(key: str) -> str:
    """What auth.keys[].key_sha256 holds for `key` (`sam3-serve hash-key`)."""
    import hashlib

    return hashlib.sha256(key.encode()).hexdigest()


def redacted_argv(argv: list[str]) -> list[str]:
    """`argv` with the value of every `--...-key` flag replaced by ***: results record their command line."""
    out: list[str] = []
    hide = False
    for arg in argv:
        if hide:
            out.append("***")
            hide = False
        elif arg.startswith("--") and arg.split("=", 1)[0].endswith("-key"):
            flag, eq, _ = arg.partition("=")
            out.append(f"{flag}=***" if eq else arg)
            hide = not eq
        else:
            out.append(arg)
    return out


def scratch_dir(prefix: str) -> str:
    """A new temporary directory removed when the process exits (checkpoints the benchmark builds: a
    full-random one is 3.4 GB; storage dirs of the served runs)."""
    import atexit
    import shutil

    path = tempfile.mkdtemp(prefix=prefix)
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


def setup(args: argparse.Namespace) -> tuple[str, bool, dict]:
    """(checkpoint dir, whether CUDA is used, the result's header: command, model, device, torch, python,
    machine). Without --model-dir it builds the tiny (or full-random) checkpoint, removed at exit."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from serve_app.devtools.tiny_model import build_tiny_checkpoint

    model_dir = args.model_dir or str(build_tiny_checkpoint(scratch_dir("bench-ckpt-"),
                                                            full_size=args.model == "full-random"))
    cuda = torch.cuda.is_available() and args.device != "cpu"
    device = torch.cuda.get_device_name(0) if cuda else f"CPU ({os.cpu_count()} cores, {platform.machine()})"
    header = {"command": " ".join(["python"] + redacted_argv(sys.argv)), "model": args.model, "device": device,
              "torch": torch.__version__, "python": platform.python_version(),
              "machine": f"{platform.node()} {platform.platform()}, {os.cpu_count()} CPUs"}
    return model_dir, cuda, header


def write_result(result: dict, out: str, plot: Callable[[dict, Path], None]) -> None:
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    plot(result, path.with_suffix(".png"))
    print(f"wrote {path}")


def pyplot():
    """matplotlib.pyplot on the Agg backend, or None when matplotlib is not installed (plots are optional)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


# Image benchmarks keep the video side idle: no warm session actor loading a video model during the run,
# and a SessionManager that asks for no CPU (so everything schedules on 2 cores).
VIDEO_IDLE = {"warm_pool": 0, "manager": {"num_cpus": 0}}


# ------------------------------------------------------------------------------------------ Ray and Serve


class DeployError(RuntimeError):
    """An app did not reach RUNNING (replicas Ray cannot place, DEPLOY_FAILED, too slow): the message says why."""


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (for Serve's proxy: fixed ports collide with other runs on a shared box)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def app_cpus(app_args: dict[str, Any]) -> float:
    """Logical CPUs the sam3 app built from `app_args` (AppConfig) reserves: every deployment's replicas
    (num_replicas, or autoscaling's initial/min) times their num_cpus, plus the warm pool's session actors."""
    from serve_app.config import AppConfig

    cfg = AppConfig.model_validate(app_args)
    total = 0.0
    for rep in (cfg.ingress.replica, cfg.concept.replica, cfg.click.replica, cfg.jobs.worker, cfg.video.manager):
        auto = rep.autoscaling
        n = rep.num_replicas if auto is None else (auto.initial_replicas if auto.initial_replicas is not None
                                                   else max(1, auto.min_replicas))
        total += n * rep.num_cpus
    return total + cfg.video.warm_pool * cfg.video.actor.num_cpus


def start_ray(num_cpus: float, port: int, *, num_gpus: float | None = None) -> str:
    """A local Ray with `num_cpus` logical CPUs (at least the machine's cores: replicas must be placeable on a
    2-core box, logical CPUs are only a scheduling token) and Serve's proxy on 127.0.0.1:`port`. Its temp files
    go to a short dir under /tmp (AF_UNIX path limit); returns that dir."""
    import ray
    from ray import serve

    tmp = tempfile.mkdtemp(prefix="bench-ray-", dir="/tmp")
    os.environ["RAY_TMPDIR"] = tmp
    cpus = max(int(-(-num_cpus // 1)), os.cpu_count() or 1)
    kw: dict[str, Any] = {} if num_gpus is None else {"num_gpus": num_gpus}
    # replicas import serve_app (and loadtest modules) from this checkout whatever the working directory
    path = os.pathsep.join(p for p in (str(REPO), str(REPO / "loadtest"), os.environ.get("PYTHONPATH")) if p)
    try:
        ray.init(num_cpus=cpus, include_dashboard=False, _temp_dir=tmp, log_to_driver=False,
                 runtime_env={"env_vars": {"PYTHONPATH": path}}, **kw)
        serve.start(http_options={"host": "127.0.0.1", "port": port})
    except BaseException:  # e.g. "node timed out during startup" on an overloaded box: no temp dir left behind
        stop_ray(tmp)
        raise
    return tmp


def stop_ray(tmp: str | None = None) -> None:
    import shutil

    import ray
    from ray import serve

    try:
        if ray.is_initialized():
            try:
                serve.shutdown()
            finally:
                ray.shutdown()
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)


def deploy_or_fail(app: Any, *, name: str = "sam3", route_prefix: str | None = "/", timeout_s: float = 300.0,
                   pending_timeout_s: float = 60.0, unplaceable_timeout_s: float = 5.0) -> Any:
    """serve.run(app) that cannot hang: deploy without waiting, then poll Serve until the app is RUNNING.
    Raises DeployError with `replicas pending: X needs N CPUs, cluster has M` (serve_app.cluster.pending, the
    message /readyz and `sam3-serve run` give) when a replica needs more than the cluster has
    (after `unplaceable_timeout_s`) or stays unplaced for `pending_timeout_s`; also on DEPLOY_FAILED and after
    `timeout_s` (a slow model load). Returns the ingress deployment's handle."""
    from ray import serve

    from serve_app.cluster.local import NotRunning, wait_running

    handle = serve._run(app, _blocking=False, name=name, route_prefix=route_prefix)
    try:
        wait_running(name, pending_timeout_s=pending_timeout_s, unplaceable_timeout_s=unplaceable_timeout_s,
                     timeout_s=timeout_s, on_pending=lambda msg: print(f"deploy {name}: {msg}", file=sys.stderr,
                                                                      flush=True))
    except NotRunning as exc:
        raise DeployError(f"deploy {name}: {exc}") from exc
    return handle


# ------------------------------------------------------------------------------------------ overhead


def overhead(served_p50_ms: float, model_only_p50_ms: float, floor_p50_ms: float,
             model_work_p50_ms: float | None) -> dict:
    """How much of a served request is serving: the served p50 minus the model-only p50 (the model called
    directly, no Ray/HTTP), divided by the floor p50 (the same topology and payloads, no model work:
    bench_floor.py); 1.0 = the service costs exactly its topology's floor. And the served p50 minus the
    model work the replica itself timed (timings_ms of the responses), which needs no model-only run."""
    out = {"served_p50_ms": served_p50_ms, "model_only_p50_ms": model_only_p50_ms, "floor_p50_ms": floor_p50_ms,
           "served_minus_model_only_ms": served_p50_ms - model_only_p50_ms,
           "overhead_ratio": (served_p50_ms - model_only_p50_ms) / floor_p50_ms if floor_p50_ms > 0 else float("nan")}
    if model_work_p50_ms is not None:
        out["model_work_p50_ms"] = model_work_p50_ms
        out["served_minus_model_work_ms"] = served_p50_ms - model_work_p50_ms
        out["served_minus_model_work_over_floor"] = ((served_p50_ms - model_work_p50_ms) / floor_p50_ms
                                                     if floor_p50_ms > 0 else float("nan"))
    return out


def print_overhead(title: str, o: dict) -> None:
    rows = [("served p50 (1 client)", o["served_p50_ms"]), ("model-only p50", o["model_only_p50_ms"]),
            ("floor p50 (no model work)", o["floor_p50_ms"]),
            ("served - model-only", o["served_minus_model_only_ms"])]
    if "model_work_p50_ms" in o:
        rows += [("model work (replica timings_ms) p50", o["model_work_p50_ms"]),
                 ("served - model work", o["served_minus_model_work_ms"])]
    print(f"--- {title}", flush=True)
    for label, v in rows:
        print(f"  {label:38s} {v:9.2f} ms", flush=True)
    print(f"  {'overhead ratio (served-model)/floor':38s} {o['overhead_ratio']:9.2f}", flush=True)
    if "served_minus_model_work_over_floor" in o:
        print(f"  {'(served - model work)/floor':38s} {o['served_minus_model_work_over_floor']:9.2f}", flush=True)


# ------------------------------------------------------------------------------------------------ payloads

W, H = 1024, 768  # the image benchmarks' size (a typical 4:3 photo)
TEXTS = ("car", "person", "dog", "tree", "red shirt", "bicycle", "cat", "house")


def test_image(width: int = W, height: int = H, seed: int = 0) -> np.ndarray:
    """uint8 (height, width, 3) RGB of 8x8-pixel blocks of seeded noise (a 1024x768 JPEG at quality 90 is ~149 kB)."""
    rng = np.random.RandomState(seed)
    img = (rng.rand(height // 8 + 1, width // 8 + 1, 3) * 255).astype(np.uint8)
    return np.ascontiguousarray(np.kron(img, np.ones((8, 8, 1), np.uint8))[:height, :width])


def jpeg(seed: int, width: int = W, height: int = H) -> bytes:
    """test_image(width, height, seed) as JPEG bytes (quality 90)."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(test_image(width, height, seed)).save(buf, "JPEG", quality=90)
    return buf.getvalue()
