"""One-command performance campaign: every model-only number of the service on this machine, plus the served
numbers where Ray is installed. JSON + a Markdown table + PNG plots in one folder; the table is printed.

    python loadtest/campaign.py --model full-random --out-dir DIR      # a GPU machine: ~6 min on one H100
    python loadtest/campaign.py --model tiny --out-dir /tmp/campaign   # CPU, tiny checkpoint: a few minutes

--out-dir defaults to $OUT when set (the lent GPU machine collects that folder), else
loadtest/results/campaign-<model>. `full-random` builds the real SAM 3 architecture with random weights
(facebook/sam3's cost, meaningless masks) on the machine itself: no download.

The model-only part needs only torch + transformers + numpy + cv2 + pydantic + pycocotools (the GPU machine
has no Ray and no network, shared/notes/GPU_RUNS.md); the served part runs when `ray` imports and
--skip-served is not given. Sections run in order, each bounded by what is left of --budget-s (a section
that would not fit is recorded as skipped) and each failure is recorded, not fatal: a run always leaves its
JSON. While a section runs on CUDA, GPU busy % and memory are sampled with NVML (nvidia-ml-py).

Sections: environment, checkpoint (build), cold_start (checkpoint on local disk -> runner ready -> first
answer), concept (batch curve 1-16 at 1 and 2 prompts), concept_variants (CUDA: dtype/TF32/attention/
torch.compile at batch 1 and 8), click (cold/warm/batched clicks, automatic masks), video (frames/s per
workload, concurrent sessions per GPU), video_profile (torch.profiler over a few frame steps of one session,
text prompt + 5 objects: wall vs device-busy ms per step, top ops by self CPU / device time, syncs and copies
per step; Chrome trace video_profile_trace.json.gz), mask_encoding (CPU), kept_masks (the concept replica's
gather of kept masks, old vs new, on the device), served (floor, concept, click over HTTP).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import shutil
import sys
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import bench_concept
import campaign_model as cm
from bench_common import REPO, pyplot, scratch_dir

os.environ.setdefault("HF_HUB_OFFLINE", "1")

# Variants of the concept model measured on CUDA: ModelConfig overrides (a field this version lacks is
# recorded as that variant's error).
VARIANTS: dict[str, dict] = {
    "bf16 sdpa (default)": {"dtype": "bfloat16"},
    "bf16 eager attention": {"dtype": "bfloat16", "attn_implementation": "eager"},
    "fp32 + TF32": {"dtype": "float32", "tf32": True},
    "fp32 no TF32": {"dtype": "float32", "tf32": False},
    "bf16 torch.compile": {"dtype": "bfloat16", "compile": "default"},
}


class GpuSampler:
    """Samples GPU utilisation (%) and used memory (MiB) of device 0 every `interval_s` with NVML, in a thread.
    A no-op (empty stats) when NVML or a GPU is missing."""

    def __init__(self, interval_s: float = 0.05):
        self.interval_s = interval_s
        self.busy: list[int] = []
        self.mem_mb: list[float] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        try:
            import pynvml

            pynvml.nvmlInit()
            self._nvml = pynvml
            self._handle = pynvml.nvmlDeviceGetHandleByIndex(0)
        except Exception:  # noqa: BLE001 - no NVML, no GPU: sampling is optional
            self._nvml = None

    def __enter__(self) -> GpuSampler:
        if self._nvml is not None:
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        nv = self._nvml
        while not self._stop.wait(self.interval_s):
            self.busy.append(nv.nvmlDeviceGetUtilizationRates(self._handle).gpu)
            self.mem_mb.append(nv.nvmlDeviceGetMemoryInfo(self._handle).used / 2**20)

    def stats(self) -> dict:
        if not self.busy:
            return {}
        return {"gpu_busy_mean_pct": round(sum(self.busy) / len(self.busy), 1), "gpu_busy_samples": len(self.busy),
                "gpu_mem_used_max_mb": round(max(self.mem_mb), 1)}


class Campaign:
    """Runs sections within a time budget and keeps the result file up to date after each one."""

    def __init__(self, out_dir: Path, budget_s: float, header: dict, only: set[str] | None = None):
        self.out_dir = out_dir
        self.only = only
        self.deadline = time.monotonic() + budget_s
        self.result: dict[str, Any] = {**header, "sections": {}}
        out_dir.mkdir(parents=True, exist_ok=True)

    def left_s(self) -> float:
        return self.deadline - time.monotonic()

    def section(self, name: str, fn: Callable[[], Any], needs_s: float = 0.0) -> Any:
        """Run fn under the GPU sampler and record {result, wall_s, gpu stats} or {error} or {skipped}."""
        if self.only is not None and name not in self.only | {"environment", "checkpoint"}:
            return None
        if self.left_s() < needs_s:
            self.result["sections"][name] = {"skipped": f"needs ~{needs_s:.0f} s, {self.left_s():.0f} s left"}
            print(f"== {name}: skipped ({self.result['sections'][name]['skipped']})", flush=True)
            self.save()
            return None
        print(f"== {name} ({self.left_s():.0f} s left)", flush=True)
        t0 = time.monotonic()
        value = None
        with GpuSampler() as gpu:
            try:
                value = fn()
                entry: dict[str, Any] = {"result": value}
            except Exception as exc:  # noqa: BLE001 - one failing section must not lose the others
                traceback.print_exc()
                entry = {"error": f"{type(exc).__name__}: {exc}"}
        entry.update(wall_s=round(time.monotonic() - t0, 1), **gpu.stats())
        self.result["sections"][name] = entry
        self.save()
        return value

    def get(self, name: str) -> Any:
        return self.result["sections"].get(name, {}).get("result")

    def save(self) -> None:
        (self.out_dir / "campaign.json").write_text(json.dumps(self.result, indent=2, default=str) + "\n")


def free_cuda() -> None:
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:
        pass


def ray_installed() -> bool:
    try:
        import ray  # noqa: F401
    except ImportError:
        return False
    return True


def environment(device: str) -> dict:
    import torch
    import transformers

    env = {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
           "cpus": os.cpu_count(), "machine": platform.platform(), "ray": ray_installed()}
    if device == "cuda":
        p = torch.cuda.get_device_properties(0)
        env.update(gpu=p.name, gpu_memory_gb=round(p.total_memory / 2**30, 1), cuda=torch.version.cuda,
                   capability=f"{p.major}.{p.minor}")
    return env


def build_checkpoint(model: str, device: str) -> str:
    from serve_app.devtools.tiny_model import build_tiny_checkpoint

    # +10 on the tracker's object-score head: random trackers otherwise say "no object" on every frame, so
    # clicks and video would track nothing (same checkpoint as bench_video's).
    path = build_tiny_checkpoint(scratch_dir("campaign-ckpt-"), full_size=model == "full-random",
                                 object_score_bias=10.0, init_device=device)
    return str(path)


def cold_start(model_dir: str, device: str) -> dict:
    """Seconds from a checkpoint on local disk to a runner that answered its first request, per runner."""

    from serve_app.config import ModelConfig
    from serve_app.model.click import ClickRunner
    from serve_app.model.concept import ConceptRunner
    from serve_app.model.video import VideoRunner

    sync = cm.synchronizer(device)
    out = {}
    t0 = time.perf_counter()
    runner = ConceptRunner.from_config(ModelConfig(model_id=model_dir, device=device))
    sync()
    t1 = time.perf_counter()
    runner.segment_batch(cm.concept_requests(runner, 1, 1))
    sync()
    out["concept"] = {"load_s": t1 - t0, "first_answer_s": time.perf_counter() - t1}
    del runner
    for name, load in (("click", lambda: ClickRunner.from_config(ModelConfig(model_id=model_dir, device=device))),
                       ("video", lambda: VideoRunner.from_config(ModelConfig(model_id=model_dir, device=device)))):
        free_cuda()
        t0 = time.perf_counter()
        r = load()
        sync()
        out[name] = {"load_s": time.perf_counter() - t0}
        del r
    free_cuda()
    for name, row in out.items():
        print(f"cold    {name:8s} load {row['load_s']:6.2f} s" +
              (f"  first answer {row['first_answer_s']:6.2f} s" if "first_answer_s" in row else ""), flush=True)
    return out


def concept_section(model_dir: str, device: str, iters: int, batch_sizes: tuple[int, ...]) -> dict:

    from serve_app.config import ModelConfig
    from serve_app.model.concept import ConceptRunner

    runner = ConceptRunner.from_config(ModelConfig(model_id=model_dir, device=device))
    try:
        return {"runtime": cm.runtime_facts(runner),
                "curve": {f"{p}_prompts": cm.concept_curve(runner, batch_sizes, p, iters, "default") for p in (1, 2)}}
    finally:
        del runner
        free_cuda()


def concept_variants(camp: Campaign, model_dir: str, device: str, iters: int) -> dict:

    from serve_app.config import ModelConfig
    from serve_app.model.concept import ConceptRunner

    out: dict[str, Any] = {}
    for name, overrides in VARIANTS.items():
        needs = 120.0 if "compile" in overrides else 30.0
        if camp.left_s() < needs:
            out[name] = {"skipped": f"{camp.left_s():.0f} s left"}
            continue
        try:
            t0 = time.perf_counter()
            runner = ConceptRunner.from_config(ModelConfig(model_id=model_dir, device=device, **overrides))
            load_s = time.perf_counter() - t0
            out[name] = {"overrides": overrides, "load_s": load_s, "runtime": cm.runtime_facts(runner),
                         "curve": cm.concept_curve(runner, (1, 8), 2, iters, name)}
            del runner
        except Exception as exc:  # noqa: BLE001 - recorded per variant
            out[name] = {"overrides": overrides, "error": f"{type(exc).__name__}: {exc}"}
            print(f"concept {name}: {out[name]['error']}", flush=True)
        free_cuda()
    return out


def click_section(model_dir: str, device: str, iters: int) -> dict:

    from serve_app.config import ClickConfig, ModelConfig
    from serve_app.model.click import ClickRunner

    runner = ClickRunner.from_config(ModelConfig(model_id=model_dir, device=device),
                                     ClickConfig(cache_bytes=4 * 1024**3))
    try:
        return {"runtime": cm.runtime_facts(runner), **cm.click_rows(runner, iters)}
    finally:
        del runner
        free_cuda()


def video_runner(model_dir: str, device: str):
    """The VideoRunner of the video sections: detection thresholds 0 and hotstart off, so random weights
    detect (up to max_num_objects) and every frame is yielded at once."""
    from serve_app.config import ModelConfig
    from serve_app.model.video import VideoRunner

    return VideoRunner.from_config(ModelConfig(model_id=model_dir, device=device), score_threshold_detection=0.0,
                                   new_det_thresh=0.0, max_num_objects=10, hotstart_delay=0)


def video_size(full: bool) -> tuple[int, int]:
    """(height, width) of the synthetic video: 640x480 for the full-size model, 160x120 for the tiny one."""
    return (480, 640) if full else (120, 160)


def video_section(model_dir: str, device: str, frames: int, full: bool) -> dict:
    runner = video_runner(model_dir, device)
    h, w = video_size(full)
    try:
        return {"runtime": cm.runtime_facts(runner),
                **cm.video_rows(runner, cm.synthetic_video(frames, h, w),
                             [("clicks", 1, True), ("clicks", 5, True), ("clicks", 5, False), ("text", 1, True),
                              ("text", 5, True), ("text", 5, False)],
                             (1, 2, 4), ("text", 5))}
    finally:
        del runner
        free_cuda()


def video_profile_section(model_dir: str, device: str, steps: int, full: bool, out_dir: Path) -> dict:
    """torch.profiler over `steps` frame steps of one session (text prompt, 5 objects, batched tracker); the
    Chrome trace goes to out_dir/video_profile_trace.json.gz."""
    runner = video_runner(model_dir, device)
    h, w = video_size(full)
    try:
        return {"runtime": cm.runtime_facts(runner),
                **cm.video_profile(runner, cm.synthetic_video(cm.video_profile_frames(steps), h, w), ("text", 5),
                                   steps, out_dir)}
    finally:
        del runner
        free_cuda()


def served_section(camp: Campaign, model_dir: str, cuda: bool, quick: bool) -> dict:
    """The served benchmarks in this process's Ray: concept and click over real HTTP, each followed by the
    floor (bench_floor: the same topology and payloads, no model work), and the overhead against the
    model-only numbers of this run (bench_common.overhead)."""
    import bench_click
    from bench_common import overhead

    floor_iters = 10 if quick else 50
    gpus = 1 if cuda else 0
    concept = bench_concept.served_session(model_dir, 2, 2 if quick else 6, gpus, floor_iters=floor_iters)
    click = bench_click.bench_served(model_dir, 20 if quick else 60, 5 if quick else 10, gpus, floor_iters=floor_iters)
    model_concept = dig(camp.get("concept"), "curve", "2_prompts", 0, "p50_ms")
    model_click = dig(camp.get("click"), "warm_click_1_objects", "p50_ms")
    if model_concept is not None:
        concept["overhead"] = overhead(concept["served"][0]["p50_ms"], model_concept,
                                       concept["floor"]["image"]["c1"]["p50_ms"], concept["model_work_c1"]["p50_ms"])
    if model_click is not None:
        click["overhead"] = overhead(click["warm_click"]["p50_ms"], model_click, click["floor"]["click"]["c1"]["p50_ms"],
                                     click["model_work_warm"]["p50_ms"])
    return {"concept": concept, "click": click}


# ------------------------------------------------------------------------------------------------ report


def dig(d: Any, *keys: Any) -> Any:
    for k in keys:
        if isinstance(d, dict):
            d = d.get(k)
        elif isinstance(d, list) and isinstance(k, int) and -len(d) <= k < len(d):
            d = d[k]
        else:
            return None
    return d


def summary_rows(result: dict) -> list[tuple[str, str, str]]:
    """(what, metric, value) rows of the Markdown table."""
    s = result["sections"]
    rows: list[tuple[str, str, str]] = []
    for name, r in (dig(s, "cold_start", "result") or {}).items():
        extra = f" + first answer {r['first_answer_s']:.2f} s" if "first_answer_s" in r else ""
        rows.append((f"cold start {name}", "load from local disk", f"{r['load_s']:.2f} s{extra}"))
    concept = dig(s, "concept")
    for key in ("1_prompts", "2_prompts"):
        curve = dig(concept, "result", "curve", key) or []
        if curve:
            best = max(curve, key=lambda r: r["images_per_s"])
            rows.append((f"concept model-only, {key[0]} prompt(s)", "batch 1 p50",
                         f"{curve[0]['p50_ms']:.1f} ms ({curve[0]['images_per_s']:.1f} img/s)"))
            rows.append((f"concept model-only, {key[0]} prompt(s)", "peak throughput",
                         f"{best['images_per_s']:.1f} img/s at batch {best['batch_size']}"))
    if concept and "gpu_busy_mean_pct" in concept:
        rows.append(("concept model-only curve", "GPU busy (NVML mean)",
                     f"{concept['gpu_busy_mean_pct']}% (max {concept['gpu_mem_used_max_mb']:.0f} MiB used)"))
    for name, v in (dig(s, "concept_variants", "result") or {}).items():
        curve = v.get("curve")
        value = (f"bs1 {curve[0]['p50_ms']:.1f} ms, bs8 {curve[1]['images_per_s']:.1f} img/s" if curve
                 else v.get("error") or v.get("skipped", "—"))
        rows.append((f"concept variant: {name}", "2 prompts", value[:120]))
    click = dig(s, "click", "result") or {}
    for key, label in (("cold_click", "cold click (encoder + decoder) p50"),
                       ("warm_click_1_objects", "warm click, 1 object p50"),
                       ("warm_click_16_objects", "warm click, 16 objects p50"),
                       ("automatic_16x16", "automatic masks 16x16 p50"),
                       ("automatic_32x32", "automatic masks 32x32 p50")):
        if key in click:
            rows.append(("click model-only", label, f"{click[key]['p50_ms']:.1f} ms"))
    for key in sorted(k for k in click if k.startswith("warm_batch_")):
        rows.append(("click model-only", f"{key.split('_')[-1]} warm clicks in one batch",
                     f"{click[key]['p50_ms']:.1f} ms ({click[key]['clicks_per_s']:.0f} clicks/s)"))
    video = dig(s, "video", "result") or {}
    for r in video.get("single", []):
        mem = f", session {r['session_resident_mb']:.0f} MiB" if "session_resident_mb" in r else ""
        tracker = "" if r["objects"] == 1 else (", batched tracker" if r.get("batched", True) else ", per-object loop")
        rows.append((f"video {r['workload']} {r['objects']} obj{tracker}", "frames/s (1 session)",
                     f"{r['fps']:.1f} (first new frame {r['first_new_frame_ms']:.0f} ms{mem})"))
    for r in video.get("concurrent", []):
        rows.append((f"video {r['sessions']} sessions, {r['workload']} {r['objects']} obj", "aggregate frames/s",
                     f"{r['aggregate_fps']:.1f} ({r['per_session_fps']:.1f} per session)"))
    rows += video_profile_rows(dig(s, "video_profile", "result"))
    for r in dig(s, "mask_encoding", "result") or []:
        rows.append((f"mask encoding {r['masks']} masks {r['width']}x{r['height']}", "p50 (CPU), old -> new",
                     f"{r['old']['p50_ms']:.1f} -> {r['new']['p50_ms']:.1f} ms (x{r['speedup_p50']:.1f})"))
    for r in dig(s, "kept_masks", "result") or []:
        rows.append((f"concept kept masks, {r['pairs']} pairs x 200 queries ({r['device']})", "p50, old -> new",
                     f"{r['old']['p50_ms']:.2f} -> {r['new']['p50_ms']:.2f} ms (x{r['speedup_p50']:.1f})"))
    served = dig(s, "served", "result") or {}
    for r in dig(served, "concept", "served") or []:
        rows.append((f"concept served (2 prompts), {r['concurrency']} clients", "p50",
                     f"{r['p50_ms']:.1f} ms ({r['requests_per_s']:.1f} req/s, mean batch {r['mean_batch_size']:.2f})"))
    for key, label in (("warm_click", "warm click, 1 object"), ("cold_click", "cold click")):
        if dig(served, "click", key) is not None:
            rows.append((f"click served, {label}", "p50", f"{served['click'][key]['p50_ms']:.1f} ms"))
    for route, floor_key in (("concept", "image"), ("click", "click")):
        floor = dig(served, route, "floor", floor_key, "c1", "p50_ms")
        if floor is not None:
            rows.append((f"floor for {route} (no model work)", "p50, 1 client", f"{floor:.1f} ms"))
        o = dig(served, route, "overhead")
        if o:
            rows.append((f"{route} serving overhead", "served p50 - replica model work (vs floor)",
                         f"{o['served_minus_model_work_ms']:.1f} ms (floor {o['floor_p50_ms']:.1f} ms, "
                         f"ratio {o['served_minus_model_work_over_floor']:.2f})"))
    for name, entry in s.items():
        if "error" in entry or "skipped" in entry:
            rows.append((name, "not measured", (entry.get("error") or entry.get("skipped", ""))[:120]))
    return rows


def video_profile_rows(p: dict | None) -> list[tuple[str, str, str]]:
    if not p:
        return []

    def cell(name: str) -> str:
        return name.replace("|", "/")[:48]

    what = f"video profile, {p['workload']} {p['objects']} obj ({p['objects_tracked']} tracked), {p['size']}"
    sy, host = p["syncs_per_step"], p["host"]
    busy = (f"{p['device_busy_ms']:.1f} ms busy of {p['wall_ms']:.1f} ms ({100 * p['device_busy_fraction']:.0f}%), "
            f"python-side gap {p['python_gap_ms']:.1f} ms" if p["device"] == "cuda" else "no device (CPU run)")
    rows = [(what, f"frame step wall p50, {p['steps']} profiled steps",
             f"{p['wall_ms']:.1f} ms (unprofiled {p['wall_ms_unprofiled']:.1f} ms)"),
            (what, "device busy per step (profiler)", busy),
            (what, "host time per step (self CPU)",
             f"aten ops {host['aten_self_cpu_ms']:.1f} ms, CUDA runtime {host['cuda_runtime_self_cpu_ms']:.1f} ms "
             f"(of which sync/copy waits {host['sync_wait_self_cpu_ms']:.1f}), outside ops "
             f"{host['outside_ops_ms']:.1f} ms; {host['aten_ops']:.0f} aten ops, "
             f"{host['kernel_launches']:.0f} kernel launches"),
            (what, "syncs per step",
             f"cudaStreamSync {sy['cudaStreamSynchronize']:g}, cudaDeviceSync {sy['cudaDeviceSynchronize']:g} "
             f"(1 = harness), cudaMemcpyAsync {sy['cudaMemcpyAsync']:g} (DtoH {sy['memcpy_DtoH']:g}), item "
             f"{sy['aten::item']:g}, _local_scalar_dense {sy['aten::_local_scalar_dense']:g}, nonzero "
             f"{sy['aten::nonzero']:g}"),
            (what, "top self CPU (ms/step)",
             ", ".join(f"{cell(r['name'])} {r['self_cpu_ms_per_step']:.2f}" for r in p["top_self_cpu"][:4]))]
    if p.get("top_kernels"):
        rows.append((what, "top kernels (device ms/step)",
                     ", ".join(f"{cell(r['name'])} {r['self_device_ms_per_step']:.2f}" for r in p["top_kernels"][:3])))
    rows.append((what, "Chrome trace", p.get("trace") or p.get("trace_error", "not written")))
    return rows


def markdown(result: dict) -> str:
    env = dig(result, "sections", "environment", "result") or {}
    device = env.get("gpu") or f"CPU ({env.get('cpus')} cores)"
    lines = [f"# Campaign: {result['model']} on {device}", "",
             f"Command: `{result['command']}`  ", f"torch {env.get('torch')}, transformers {env.get('transformers')}, "
             f"python {env.get('python')}; wall {result.get('wall_s', 0):.0f} s", "",
             "| what | metric | value |", "|---|---|---|"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in summary_rows(result)]
    return "\n".join(lines) + "\n"


def plots(result: dict, out_dir: Path) -> None:
    plt = pyplot()
    if plt is None:
        return
    s = result["sections"]
    curve = dig(s, "concept", "result", "curve") or {}
    if curve:
        fig, axes = plt.subplots(1, 2, figsize=(10, 4))
        for key, rows in curve.items():
            axes[0].plot([r["batch_size"] for r in rows], [r["images_per_s"] for r in rows], "o-", label=key)
            axes[1].plot([r["batch_size"] for r in rows], [r["p50_ms"] for r in rows], "o-", label=key)
        axes[0].set(xlabel="batch size", ylabel="images/s", title="concept model-only throughput")
        axes[1].set(xlabel="batch size", ylabel="ms per batch (p50)", title="latency")
        for ax in axes:
            ax.legend()
        fig.suptitle(f"{result['model']} — {dig(s, 'environment', 'result', 'gpu') or 'CPU'}")
        fig.tight_layout()
        fig.savefig(out_dir / "campaign_concept.png", dpi=100)
        plt.close(fig)
    video = dig(s, "video", "result") or {}
    if video.get("concurrent"):
        fig, ax = plt.subplots(figsize=(5, 4))
        rows = video["concurrent"]
        ax.plot([r["sessions"] for r in rows], [r["aggregate_fps"] for r in rows], "o-", label="aggregate")
        ax.plot([r["sessions"] for r in rows], [r["per_session_fps"] for r in rows], "s--", label="per session")
        ax.set(xlabel="concurrent sessions", ylabel="frames/s", title="video propagation")
        ax.legend()
        fig.tight_layout()
        fig.savefig(out_dir / "campaign_video.png", dpi=100)
        plt.close(fig)


# ------------------------------------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["tiny", "full-random"], default="tiny")
    parser.add_argument("--model-dir", help="use this checkpoint directory instead of building one")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--out-dir", default=os.environ.get("OUT"))
    parser.add_argument("--budget-s", type=float, default=420.0, help="time for all sections (skips what won't fit)")
    parser.add_argument("--iters", type=int, default=None, help="timed iterations per point (default 10 GPU, 5 CPU)")
    parser.add_argument("--frames", type=int, default=None, help="video frames (default 32 GPU, 12 CPU)")
    parser.add_argument("--skip-served", action="store_true", help="model-only sections (default without Ray)")
    parser.add_argument("--quick", action="store_true", help="fewer points (CI smoke test)")
    parser.add_argument("--only", help="comma-separated sections to run (environment and checkpoint always run)")
    args = parser.parse_args(argv)
    import torch

    device = "cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available()) else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        sys.exit("campaign: --device cuda but torch sees no CUDA device")
    if device == "cuda":
        torch.backends.cudnn.benchmark = True
    import transformers

    transformers.logging.set_verbosity_error()
    out_dir = Path(args.out_dir or REPO / "loadtest" / "results" / f"campaign-{args.model}")
    header = {"command": " ".join(["python"] + sys.argv), "model": args.model, "device": device,
              "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    camp = Campaign(out_dir, args.budget_s, header, only=set(args.only.split(",")) if args.only else None)
    t0 = time.monotonic()
    camp.section("environment", lambda: environment(device))
    model_dir = args.model_dir or camp.section("checkpoint", lambda: build_checkpoint(args.model, device))
    if model_dir is None:
        sys.exit("campaign: no checkpoint (see campaign.json)")
    try:
        run_sections(camp, args, model_dir, device)
    finally:
        if not args.model_dir:  # a built full-random checkpoint is 3.4 GB
            shutil.rmtree(model_dir, ignore_errors=True)
    camp.result["wall_s"] = time.monotonic() - t0
    camp.save()
    plots(camp.result, out_dir)
    table = markdown(camp.result)
    (out_dir / "campaign.md").write_text(table)
    print(table, flush=True)
    print(f"wrote {out_dir}/campaign.json, campaign.md and plots", flush=True)


def run_sections(camp: Campaign, args: argparse.Namespace, model_dir: str, device: str) -> None:
    cuda = device == "cuda"
    iters = args.iters or (10 if cuda else 5)
    if args.quick:
        iters = min(iters, 2)
    batch_sizes = (1, 2) if args.quick else (1, 2, 4, 8, 16)
    camp.section("cold_start", lambda: cold_start(model_dir, device), needs_s=20)
    camp.section("concept", lambda: concept_section(model_dir, device, iters, batch_sizes), needs_s=30)
    camp.section("click", lambda: click_section(model_dir, device, iters), needs_s=30)
    frames = args.frames or (32 if cuda else 12)
    camp.section("video", lambda: video_section(model_dir, device, 6 if args.quick else frames,
                                                args.model == "full-random"), needs_s=40)
    camp.section("video_profile", lambda: video_profile_section(model_dir, device, 4 if args.quick else 8,
                                                                args.model == "full-random", camp.out_dir), needs_s=30)
    camp.section("mask_encoding", lambda: bench_concept.bench_masks(2 if args.quick else 5), needs_s=20)
    camp.section("kept_masks", lambda: bench_concept.bench_kept_masks(2 if args.quick else 5, device,
                                                                     (1, 4) if args.quick else (1, 8, 16)), needs_s=10)
    if cuda and not args.quick:
        camp.section("concept_variants", lambda: concept_variants(camp, model_dir, device, iters), needs_s=30)
    if not args.skip_served and ray_installed():
        camp.section("served", lambda: served_section(camp, model_dir, cuda, args.quick), needs_s=60)


if __name__ == "__main__":
    main()
