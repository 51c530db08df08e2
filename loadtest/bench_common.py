"""What the benchmark scripts share: latency summaries, the common CLI flags, checkpoint + device setup,
and writing the JSON (+ PNG plot) result. Imported by loadtest/bench_*.py (run as scripts)."""

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


def setup(args: argparse.Namespace) -> tuple[str, bool, dict]:
    """(checkpoint dir, whether CUDA is used, the result's header: command, model, device, torch)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from serve_app.devtools.tiny_model import build_tiny_checkpoint

    model_dir = args.model_dir or str(build_tiny_checkpoint(tempfile.mkdtemp(prefix="bench-ckpt-"),
                                                            full_size=args.model == "full-random"))
    cuda = torch.cuda.is_available() and args.device != "cpu"
    device = torch.cuda.get_device_name(0) if cuda else f"CPU ({os.cpu_count()} cores, {platform.machine()})"
    header = {"command": " ".join(["python"] + sys.argv), "model": args.model, "device": device,
              "torch": torch.__version__}
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
