"""Model-only measurements of the campaign (loadtest/campaign.py): the runners of serve_app.model in this
process, no Ray, no HTTP. Needs only torch + transformers + numpy + cv2 + pydantic (+ pycocotools for mask
encoding), because the GPU machine has no Ray and no network (shared/notes/GPU_RUNS.md).

Every function takes a built runner (or a checkpoint dir), returns JSON-able rows and prints one line per
row. Latencies are wall-clock ms around the call with CUDA synchronised before and after, so they include
host-side pre/post-processing (what a replica pays), not only kernels.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from bench_common import TEXTS, H, W, summary, test_image


def synchronizer(device_type: str) -> Callable[[], None]:
    """torch.cuda.synchronize on CUDA, a no-op on CPU."""
    import torch

    return torch.cuda.synchronize if device_type == "cuda" else (lambda: None)


def timed(fn: Callable[[int], Any], n: int, sync: Callable[[], None], warmup: int = 2) -> list[float]:
    """ms of fn(i) for i in range(n), after `warmup` untimed calls; CUDA synchronised around each call."""
    for i in range(warmup):
        fn(i)
    sync()
    out = []
    for i in range(n):
        t = time.perf_counter()
        fn(i)
        sync()
        out.append((time.perf_counter() - t) * 1e3)
    return out


def runtime_facts(runner) -> dict:
    """What a runner runs on: device, dtype and whatever runtime options its info reports."""
    facts = {"device": str(runner.placement.device), "dtype": str(runner.placement.dtype).replace("torch.", "")}
    describe = getattr(runner.placement, "describe", None)  # attention, compile, TF32, pinned copies
    if describe is not None:
        facts.update({k: v if isinstance(v, (str, int, float, bool)) else str(v) for k, v in describe().items()})
    info = getattr(runner, "info", None)
    if dataclasses.is_dataclass(info) and not isinstance(info, type):
        facts.update({k: v for k, v in dataclasses.asdict(info).items() if isinstance(v, (str, int, float, bool))})
    return facts


# ------------------------------------------------------------------------------------------------ concept


def concept_requests(runner, batch_size: int, prompts: int, seed: int = 0) -> list:
    """batch_size ConceptRequests of distinct 1024x768 images with `prompts` text prompts each."""
    from serve_app.codecs.image_decode import resize_square
    from serve_app.model.types import ConceptPrompt, ConceptRequest

    size = runner.info.image_size
    return [ConceptRequest(resize_square(test_image(W, H, seed + i), size), (H, W),
                           tuple(ConceptPrompt(TEXTS[(i + k) % len(TEXTS)]) for k in range(prompts)), 0.5, 100)
            for i in range(batch_size)]


def concept_curve(runner, batch_sizes: tuple[int, ...], prompts: int, iters: int, label: str = "") -> list[dict]:
    """ConceptRunner.segment_batch on B images x P prompts: ms per batch, images/s, the replica's own timings."""
    sync = synchronizer(runner.placement.device.type)
    rows = []
    for bs in batch_sizes:
        reqs = concept_requests(runner, bs, prompts)
        outs: list = []
        lat = timed(lambda i: outs.append(runner.segment_batch(reqs)), iters, sync)
        own = outs[-1][0].timings_ms
        row = {"batch_size": bs, "prompts_per_image": prompts, **summary(lat),
               "images_per_s": bs * 1e3 / float(np.median(lat)),
               "replica_timings_ms": {k: round(float(v), 2) for k, v in own.items()}}
        rows.append(row)
        print(f"concept {label:18s} bs={bs:2d} p={prompts}  p50={row['p50_ms']:8.1f} ms  "
              f"{row['images_per_s']:8.1f} img/s", flush=True)
    return rows


# ------------------------------------------------------------------------------------------------ clicks


def click_rows(runner, iters: int, concurrent: tuple[int, ...] = (1, 4, 8)) -> dict:
    """ClickRunner: vision encoder per image (cold click = encoder + decoder), warm clicks with 1/4/16 objects
    (decoder only, embedding cached), `concurrent` warm clicks on different images in one batch (what the
    ClickSegmenter's @serve.batch forms under load), automatic masks on a cached embedding."""
    from serve_app.codecs.image_decode import resize_square
    from serve_app.model.types import AutoRequest, ClickObject, ClickRequest

    sync = synchronizer(runner.placement.device.type)
    size = runner.info.image_size
    n_images = iters + 2 + max(concurrent)
    pixels = [resize_square(test_image(W, H, i), size) for i in range(n_images)]
    one = (ClickObject(np.array([[W / 2, H / 2]], np.float32), np.array([1])),)
    rows: dict[str, Any] = {}

    def cold(i: int) -> None:
        out = runner.segment_batch([ClickRequest(f"cold{i}", one, pixels[i], (H, W))])
        assert not isinstance(out[0], Exception), out[0]

    rows["cold_click"] = summary(timed(cold, iters, sync))
    warm_keys = [f"cold{i}" for i in range(2, 2 + max(concurrent))]  # embeddings the cold loop left cached
    for key, i in zip(warm_keys, range(2, 2 + max(concurrent))):
        runner.segment_batch([ClickRequest(key, one, pixels[i], (H, W))])
    for n in (1, 4, 16):
        objs = tuple(ClickObject(np.array([[10.0 + 50 * k, 20.0 + 30 * k]], np.float32), np.array([1]))
                     for k in range(n))
        rows[f"warm_click_{n}_objects"] = summary(
            timed(lambda i, objs=objs: runner.segment_batch([ClickRequest(warm_keys[0], objs)]), iters * 2, sync))
    for c in concurrent:
        batch = [ClickRequest(k, one) for k in warm_keys[:c]]
        lat = timed(lambda i, batch=batch: runner.segment_batch(batch), iters, sync)
        rows[f"warm_batch_{c}"] = {**summary(lat), "clicks_per_s": c * 1e3 / float(np.median(lat))}
    for side in (16, 32):
        req = AutoRequest(warm_keys[0], points_per_side=side, points_per_batch=64, pred_iou_thresh=0.0,
                          stability_score_thresh=0.0)
        rows[f"automatic_{side}x{side}"] = summary(timed(lambda i, req=req: runner.generate_masks(req),
                                                         max(3, iters // 4), sync, warmup=1))
    for name, row in rows.items():
        print(f"click   {name:24s} p50={row['p50_ms']:8.2f} ms", flush=True)
    return rows


# ------------------------------------------------------------------------------------------------ video


def synthetic_video(n: int, h: int, w: int) -> np.ndarray:
    """uint8 (n,h,w,3): a red disc moving right and a blue square moving down on a textured background."""
    yy, xx = np.mgrid[:h, :w]
    frames = np.empty((n, h, w, 3), np.uint8)
    for i in range(n):
        img = np.full((h, w, 3), 128, np.uint8)
        img[(yy // 8 + xx // 8) % 2 == 0] = 112
        p = i / max(1, n - 1)
        cx, cy, r = 0.1 * w + 0.7 * w * p, 0.35 * h, 0.15 * h
        img[(xx - cx) ** 2 + (yy - cy) ** 2 <= r * r] = (220, 30, 30)
        s, x0, y0 = h // 5, int(0.6 * w), int(0.05 * h + 0.6 * h * p)
        img[y0:y0 + s, x0:x0 + s] = (30, 30, 220)
        frames[i] = img
    return frames


def grid_points(n: int, h: int, w: int) -> list[list[float]]:
    cols = int(np.ceil(np.sqrt(n * w / h)))
    rows = int(np.ceil(n / cols))
    return [[(0.5 + k % cols) * w / cols, (0.5 + k // cols) * h / rows] for k in range(n)]


def prompted_session(runner, source, kind: str, k: int):
    """A new VideoSession on `source` (a FrameSource) prompted on frame 0: "clicks" = k clicked objects on a
    grid, "text" = the text prompt "red disc" (how many objects it yields: runner.model.max_num_objects)."""
    from serve_app.model.video_types import VideoObjectPrompt

    session = runner.new_session(source)
    if kind == "clicks":
        objs = [VideoObjectPrompt(i + 1, np.array([p], np.float32), np.array([1]), None, None, False)
                for i, p in enumerate(grid_points(k, source.height, source.width))]
        session.add_objects(0, objs)
    else:
        session.add_text(0, "red disc")
    return session


def video_rows(runner, frames: np.ndarray, workloads: list[tuple[str, int, bool]],
               concurrent: tuple[int, ...], concurrent_workload: tuple[str, int]) -> dict:
    """VideoSession propagation. workloads: ("clicks", N, batched) = N clicked objects, ("text", N, batched) =
    one text prompt with the detector capped at N objects (random weights + detection threshold 0 detect N);
    batched = the runner's batched tracker (else transformers' per-object loop) — frames/s of one session,
    first-frame latency, state bytes and (CUDA) peak memory. concurrent: S sessions propagating at once from
    S threads (one GPU, batched tracker): aggregate frames/s — how many sessions one GPU carries."""
    import torch

    from serve_app.model.video_types import FrameSource

    cuda = runner.placement.device.type == "cuda"
    sync = synchronizer(runner.placement.device.type)
    n, h, w = frames.shape[:3]
    source = FrameSource.from_array(frames)
    cap, batch_default = runner.model.max_num_objects, runner.batch_objects

    def prompted(kind: str, k: int):
        return prompted_session(runner, source, kind, k)

    def propagate(session) -> list[float]:
        steps, last = [], time.perf_counter()
        for _ in session.propagate(0, "forward"):
            sync()
            now = time.perf_counter()
            steps.append((now - last) * 1e3)
            last = now
        return steps

    out: dict[str, Any] = {"frames": n, "size": f"{w}x{h}", "single": [], "concurrent": []}
    try:
        warm = prompted("clicks", 1)  # lazy initialisation is not measured
        for _ in warm.propagate(0, "forward", max_frames=3):
            pass
        del warm
        for kind, k, batched in workloads:
            runner.model.max_num_objects = k
            runner.batch_objects = batched
            if cuda:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                base = torch.cuda.memory_allocated()
            t0 = time.perf_counter()
            session = prompted(kind, k)
            sync()
            prompt_ms = (time.perf_counter() - t0) * 1e3
            t1 = time.perf_counter()
            steps = propagate(session)
            total = time.perf_counter() - t1
            row = {"workload": kind, "objects": k, "batched": batched, "objects_tracked": len(session.object_ids),
                   "prompt_ms": prompt_ms, "first_new_frame_ms": steps[0] + steps[1], "fps": len(steps) / total,
                   "frame_ms": summary(steps[1:]), "state_bytes": session.state_nbytes()}
            if cuda:
                row["session_peak_mb"] = (torch.cuda.max_memory_allocated() - base) / 2**20
                row["session_resident_mb"] = (torch.cuda.memory_allocated() - base) / 2**20
            out["single"].append(row)
            print(f"video   {kind:6s} {k:2d} obj {'batched' if batched else 'loop':7s} (tracked {row['objects_tracked']:2d})  "
                  f"prompt={prompt_ms:7.1f} ms  {row['fps']:7.1f} frames/s", flush=True)
            del session
        kind, k = concurrent_workload
        runner.model.max_num_objects = k
        runner.batch_objects = True
        for s in concurrent:
            sessions = [prompted(kind, k) for _ in range(s)]
            sync()
            counts = [0] * s
            errors: list[BaseException] = []

            def run(j: int) -> None:
                try:
                    for _ in sessions[j].propagate(0, "forward"):
                        counts[j] += 1
                except BaseException as exc:  # noqa: BLE001 - reported in the row
                    errors.append(exc)

            threads = [threading.Thread(target=run, args=(j,)) for j in range(s)]
            t0 = time.perf_counter()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            sync()
            wall = time.perf_counter() - t0
            row = {"sessions": s, "workload": kind, "objects": k, "frames": sum(counts),
                   "aggregate_fps": sum(counts) / wall, "per_session_fps": sum(counts) / wall / s,
                   "errors": [repr(e) for e in errors]}
            if cuda:
                row["allocated_mb"] = torch.cuda.memory_allocated() / 2**20
            out["concurrent"].append(row)
            print(f"video   {s} sessions {kind} {k} obj  aggregate {row['aggregate_fps']:7.1f} frames/s", flush=True)
            sessions.clear()  # free their state before the next count
    finally:
        runner.model.max_num_objects = cap
        runner.batch_objects = batch_default
    return out


# ------------------------------------------------------------------------------------------------ video profile

PROFILE_WARMUP = 3  # frame steps propagated before the timed ones (lazy init, allocator, cudnn autotune)
STEP_MARK = "campaign::video_step"  # the record_function around each profiled step (in the trace too)
# Events counted per profiled step. CUDA runtime calls (CPU side): the waits and copies a frame step makes;
# aten ops that read a device value on the host (a sync each on CUDA). The harness adds ONE
# cudaDeviceSynchronize per step (torch.cuda.synchronize after the step).
SYNC_EVENTS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize", "cudaMemcpyAsync",
               "aten::item", "aten::_local_scalar_dense", "aten::nonzero", "aten::is_nonzero", "aten::equal")
WAIT_EVENTS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize", "cudaMemcpyAsync")
TRACE_MAX_BYTES = 12 * 2**20
LAUNCH_PREFIXES = ("cudaLaunchKernel", "cuLaunchKernel", "cudaLaunchCooperativeKernel", "cudaGraphLaunch")


def video_profile_frames(steps: int, warmup: int = PROFILE_WARMUP) -> int:
    """Frames video_profile needs: the prompted frame, the warm-up steps, `steps` unprofiled + `steps` profiled."""
    return 1 + warmup + 2 * steps


def _union_us(intervals: list[tuple[float, float]]) -> float:
    total, end = 0.0, float("-inf")
    for a, b in sorted(intervals):
        if b <= end:
            continue
        total += b - max(a, end)
        end = b
    return total


def video_profile(runner, frames: np.ndarray, workload: tuple[str, int] = ("text", 5), steps: int = 8,
                  out_dir=None, batched: bool = True, warmup: int = PROFILE_WARMUP, top: int = 30) -> dict:
    """Where the time of one video frame step goes: torch.profiler around `steps` steps of ONE session's
    propagate (workload ("text", N): one text prompt, detector capped at N objects; batched tracker by default
    = the service's), after `warmup` steps and `steps` unprofiled steps (their wall time = the profiler's
    overhead check). Device synchronised after each step, so each step's kernels end inside its wall window.

    Per step (all "per step" values are totals over the profiled steps / steps): wall ms (median), the device's
    busy time (union of kernel/memcpy/memset intervals inside the step, CUDA only) and the python-side gap =
    wall - busy; the self CPU time of aten ops, of CUDA runtime calls (and of its waits: stream/device/event
    synchronize + cudaMemcpyAsync) and the time inside the step outside any profiled op (Python, mostly);
    counts of SYNC_EVENTS, device-to-host memcpys, kernel launches, aten ops; top `top` ops by self CPU time,
    top `top` ops by self device time (CPU ops: the kernels they launched) and top kernels. With out_dir, the
    Chrome trace of the profiled steps is written to out_dir/video_profile_trace.json.gz (open in Perfetto)."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile, record_function

    from serve_app.model.video_types import FrameSource

    device_type = runner.placement.device.type
    cuda = device_type == "cuda"
    sync = synchronizer(device_type)
    if frames.shape[0] < video_profile_frames(steps, warmup):
        raise ValueError(f"video_profile needs {video_profile_frames(steps, warmup)} frames, got {frames.shape[0]}")
    kind, k = workload
    cap, batch_default = runner.model.max_num_objects, runner.batch_objects
    runner.model.max_num_objects = k
    runner.batch_objects = batched
    try:
        session = prompted_session(runner, FrameSource.from_array(frames), kind, k)
        frame_iter = iter(session.propagate(0, "forward"))

        def step() -> float:
            t = time.perf_counter()
            next(frame_iter)
            sync()
            return (time.perf_counter() - t) * 1e3

        next(frame_iter)  # frame 0: the prompted frame's result, computed by add_text
        for _ in range(warmup):
            step()
        plain = [step() for _ in range(steps)]
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
        walls = []
        with profile(activities=activities, record_shapes=False, with_stack=False) as prof:
            for _ in range(steps):
                with record_function(STEP_MARK):
                    walls.append(step())
        tracked = len(session.object_ids)
    finally:
        runner.model.max_num_objects = cap
        runner.batch_objects = batch_default

    events = list(prof.events())
    marks = sorted((e for e in events if e.name == STEP_MARK and e.device_type == DeviceType.CPU),
                   key=lambda e: e.time_range.start)
    device = [e for e in events if e.device_type != DeviceType.CPU and e.name != STEP_MARK
              and not getattr(e, "is_user_annotation", False)]  # kernels, memcpy, memset
    spans = [(float(e.time_range.start), float(e.time_range.end)) for e in device]
    busy_ms = [_union_us([(max(a, m.time_range.start), min(b, m.time_range.end)) for a, b in spans
                          if b > m.time_range.start and a < m.time_range.end]) / 1e3 for m in marks]
    if len(busy_ms) != len(walls):  # no step marks (should not happen): the whole profile's busy time, spread
        busy_ms = [_union_us(spans) / 1e3 / len(walls)] * len(walls)
    gap_ms = [w - b for w, b in zip(walls, busy_ms)]

    def dev_us(e) -> float:
        return float(getattr(e, "self_device_time_total", None) or getattr(e, "self_cuda_time_total", 0) or 0)

    def per_step(us: float) -> float:
        return round(us / 1e3 / steps, 4)

    avgs = [a for a in prof.key_averages() if a.key != STEP_MARK]
    cpu_avgs = [a for a in avgs if a.device_type == DeviceType.CPU]

    def row(a) -> dict:
        return {"name": a.key[:200], "calls_per_step": round(a.count / steps, 2),
                "self_cpu_ms_per_step": per_step(a.self_cpu_time_total), "self_device_ms_per_step": per_step(dev_us(a))}

    def self_cpu(pred) -> float:
        return per_step(sum(a.self_cpu_time_total for a in cpu_avgs if pred(a.key)))

    counts = {name: 0 for name in SYNC_EVENTS}
    for a in cpu_avgs:
        if a.key in counts:
            counts[a.key] += a.count
    counts = {name: round(c / steps, 2) for name, c in counts.items()}
    counts["memcpy_DtoH"] = round(sum(e.name.startswith("Memcpy DtoH") for e in device) / steps, 2)
    counts["memcpy_HtoD"] = round(sum(e.name.startswith("Memcpy HtoD") for e in device) / steps, 2)
    mark_self_cpu = sum(e.self_cpu_time_total for e in marks)
    out: dict[str, Any] = {
        "workload": kind, "objects": k, "batched": batched, "objects_tracked": tracked,
        "size": f"{frames.shape[2]}x{frames.shape[1]}", "device": device_type, "warmup_steps": warmup,
        "steps": len(walls), "wall_ms": round(float(np.median(walls)), 3),
        "wall_ms_unprofiled": round(float(np.median(plain)), 3),
        "wall_ms_steps": [round(w, 3) for w in walls], "wall_ms_unprofiled_steps": [round(w, 3) for w in plain],
        "device_busy_ms": round(float(np.median(busy_ms)), 3), "device_busy_ms_steps": [round(b, 3) for b in busy_ms],
        "device_busy_fraction": round(sum(busy_ms) / sum(walls), 4),
        "device_self_ms_per_step": per_step(sum(dev_us(e) for e in device)),  # sum, overlaps counted twice
        "python_gap_ms": round(float(np.median(gap_ms)), 3), "python_gap_ms_steps": [round(g, 3) for g in gap_ms],
        "host": {"aten_self_cpu_ms": self_cpu(lambda n: n.startswith("aten::")),
                 "cuda_runtime_self_cpu_ms": self_cpu(lambda n: n.startswith("cu")),
                 "sync_wait_self_cpu_ms": self_cpu(lambda n: n in WAIT_EVENTS),
                 "outside_ops_ms": per_step(mark_self_cpu),  # in the step, in no profiled op: Python, mostly
                 "aten_ops": round(sum(a.count for a in cpu_avgs if a.key.startswith("aten::")) / steps, 1),
                 "kernel_launches": round(sum(a.count for a in cpu_avgs if a.key.startswith(LAUNCH_PREFIXES))
                                          / steps, 1),
                 "device_events": round(len(device) / steps, 1)},
        "syncs_per_step": counts,
        "top_self_cpu": [row(a) for a in sorted(cpu_avgs, key=lambda a: -a.self_cpu_time_total)[:top]],
        "top_self_device": [row(a) for a in sorted((a for a in cpu_avgs if dev_us(a) > 0), key=lambda a: -dev_us(a))
                            [:top]],
        "top_kernels": [row(a) for a in sorted((a for a in avgs if a.device_type != DeviceType.CPU
                                                and not getattr(a, "is_user_annotation", False)),
                                               key=lambda a: -dev_us(a))[:top]],
    }
    if out_dir is not None:
        try:
            path = Path(out_dir) / "video_profile_trace.json.gz"
            prof.export_chrome_trace(str(path))
            if path.stat().st_size > TRACE_MAX_BYTES:  # files back from the GPU machine: 16 MiB each at most
                out["trace_error"] = f"{path.stat().st_size} bytes > {TRACE_MAX_BYTES}: removed"
                path.unlink()
            else:
                out.update(trace=path.name, trace_bytes=path.stat().st_size)
        except Exception as exc:  # noqa: BLE001 - the numbers above are kept
            out["trace_error"] = f"{type(exc).__name__}: {exc}"
    top3 = ", ".join(f"{r['name'][:40]} {r['self_cpu_ms_per_step']:.2f}" for r in out["top_self_cpu"][:3])
    print(f"profile video {kind} {k} obj: {out['steps']} steps, wall {out['wall_ms']:.1f} ms "
          f"(unprofiled {out['wall_ms_unprofiled']:.1f}), device busy {out['device_busy_ms']:.1f} ms "
          f"({100 * out['device_busy_fraction']:.0f}%), gap {out['python_gap_ms']:.1f} ms; "
          f"top self CPU ms/step: {top3}", flush=True)
    return out
