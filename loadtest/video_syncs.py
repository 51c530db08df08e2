"""Per-frame census of aten ops (a kernel-launch proxy) and host-sync points of a video propagation, by call site.

    python loadtest/video_syncs.py                       # tiny random checkpoint, CPU, 12 frames, ~1 min
    python loadtest/video_syncs.py --frames 6 --batch-objects both --out /tmp/syncs.json

On a GPU a SAM 3 video frame step is dominated by host work: many small kernels and CPU<->GPU syncs in
transformers' Sam3VideoModel / Sam3TrackerVideoModel and in serve_app's per-frame code. This script measures
that objectively on a CPU box (no GPU needed, deterministic counts, not timings): it builds the tiny random
checkpoint offline (tracker object-score bias +10, detection thresholds 0, hotstart_delay 0: as
loadtest/bench_video.py, whose frame and click helpers it imports), runs two scenarios on a synthetic video,

  text:   one text prompt ("red disc") on frame 0 with the detector capped at 5 objects (max_num_objects=5),
  clicks: 5 clicked objects on frame 0 (one add_objects call),

then propagates forward over --frames frames and, for every propagated frame (one `next()` of
VideoSession.propagate, which computes the frame step and builds its VideoFrameResult), counts:

- ops: every aten op that reaches the Python dispatch key (a TorchDispatchMode). On a GPU nearly each is one
  kernel launch (views and metadata ops included here: an upper bound of launches, a faithful count of
  dispatcher round trips).
  launches: the ops that would launch a kernel on a GPU, an estimate: ops minus view ops (`OpOverload.is_view`),
  detach/alias/lift_fresh/resolve_*/scalar reads, and non-in-place ops that return their input unchanged
  (`.to()`/`.contiguous()` with nothing to do).
- syncs: the points where a GPU run would wait for the device:
    * seen by the dispatcher (on CPU as on GPU): `aten._local_scalar_dense` / `aten.item` / `aten.is_nonzero`
      (`.item()`, `bool(t)`, `int(t)`, `float(t)`, `if t:`), `aten.equal`, `aten.nonzero` / `nonzero_numpy` /
      `argwhere` / one-argument `where`, `aten.masked_select`, `aten._unique*`/`unique_*`,
      `aten.repeat_interleave.Tensor` (tensor repeats: the output size is data dependent), `aten.index.Tensor`
      and `aten.index_put_` with a bool/uint8 index (`x[mask]`: a nonzero inside the kernel, which a dispatch
      mode does not see separately);
    * seen only as a Python call (a TorchFunctionMode), because on CPU they move nothing and dispatch nothing:
      `Tensor.tolist()`, `Tensor.cpu()`, `Tensor.to("cpu")` (a literal "cpu" string), `Tensor.numpy()` / `np.asarray(t)` (`__array__`). A `.numpy()`/`.tolist()`/`.item()` on a
      tensor that a counted `.cpu()` / `.to("cpu")` returned is a host read, not a sync: it is reported as kind
      `host_*` and left out of the sync count.
- h2d (reported apart, not in syncs): `torch.tensor(python data, device=...)` calls (`aten.lift_fresh`; without a
  device argument the tensor stays on the host on a GPU machine too: not counted, and reads of it are host reads), e.g. an index list:
  on a GPU `torch.tensor(x, device="cuda")` (or a CPU tensor used to index a CUDA one) is a host->device copy
  that PyTorch follows with a stream synchronize (non_blocking=False from pageable memory).
  NOT detectable here: `.to(some_device)` with a torch.device or variable (the session's device is "cpu" on
  this box, "cuda" on the server: indistinguishable from a no-op; transformers' sam3 code has no explicit
  `.cpu()`/`.to("cpu")`), `np.asarray(list_of_0d_tensors)` (a `__float__` per element: counted as item), implicit syncs inside kernels other than the
  bool-index case (e.g. torch.multinomial, some CUDA index checks), cudaMalloc/allocator syncs, pinned-memory
  copies, and anything torch.compile'd (compile is off for this run).

Each op/sync is attributed to a call site "path:line:function": the innermost stack frame that lives in
serve_app/ or in transformers' `models/sam3*` files (owner `serve_app` / `transformers`; `other` when neither
is on the stack, e.g. a transformers utility called from elsewhere), and also to `caller`, the first frame
outside torch itself (a torch.nn.functional call from our code is attributed to our line). Steady state =
frames 2..N (frame 1 is the prompted frame, reused by propagate); the printed tables rank the top 25 sites by
syncs per frame and by ops per frame for each scenario. JSON: --out (default
loadtest/results/video-syncs-tiny-cpu/video_syncs.json).

Importable: `SyncCensus` (the context manager), `run_scenario(runner, kind, frames, ...)` and `census(...)`
(used by tests/unit/test_video_syncs.py).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import weakref
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
for _p in (str(REPO), str(HERE)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

DEFAULT_OUT = "loadtest/results/video-syncs-tiny-cpu/video_syncs.json"
TEXT = "red disc"
N_OBJECTS = 5

_TORCH_DIR = os.path.dirname(torch.__file__) + os.sep
_THIS = os.path.abspath(__file__)
_SERVE_APP = str(REPO / "serve_app") + os.sep
_aten = torch.ops.aten

# dispatcher-level sync ops -> kind
_SYNC_OPS = {
    _aten._local_scalar_dense.default: "item",
    # Under torch.inference_mode (every VideoSession entry point) composite ops reach the Python key whole, so
    # the op that syncs may be the composite one (aten.item, not the _local_scalar_dense inside it): both are
    # listed, and an op running inside another one's kernel is never seen twice.
    _aten.item.default: "item",
    _aten.is_nonzero.default: "item",  # bool(t) / `if t:`
    _aten.allclose.default: "item",
    _aten.equal.default: "equal",
    _aten.nonzero.default: "nonzero",
    _aten.nonzero_numpy.default: "nonzero",  # torch.nonzero(as_tuple=True), torch.where(cond)
    _aten.argwhere.default: "nonzero",
    _aten.where.default: "nonzero",
    _aten.nonzero.out: "nonzero",
    _aten.masked_select.default: "masked_select",
    _aten._unique.default: "unique",
    _aten._unique2.default: "unique",
    _aten.unique_dim.default: "unique",
    _aten.unique_consecutive.default: "unique",
    _aten.unique_dim_consecutive.default: "unique",
    _aten.repeat_interleave.Tensor: "repeat_interleave",
    _aten.repeat_interleave.self_Tensor: "repeat_interleave",
}
_BOOL_INDEX_OPS = {_aten.index.Tensor, _aten.index_put_.default, _aten.index_put.default,
                   _aten._index_put_impl_.default}
# ops that never launch a kernel (metadata, host scalars, or returning their input unchanged: see `launches`)
_NO_LAUNCH = {_aten.lift_fresh.default, _aten.detach.default, _aten.detach_.default, _aten.alias.default,
              _aten._local_scalar_dense.default, _aten.is_nonzero.default, _aten.item.default, _aten.resolve_conj.default,
              _aten.resolve_neg.default, _aten.sym_size.int, _aten.sym_numel.default, _aten.sym_stride.int,
              _aten.numpy_T.default}
# Python-level tensor methods that copy to the host (dispatch nothing on CPU) -> kind
_HOST_CALLS = {"tolist": "tolist", "cpu": "cpu", "numpy": "numpy", "__array__": "numpy"}
# Python-level names whose sync the dispatcher sees as _local_scalar_dense: recorded as the API of that sync
_SCALAR_APIS = {"item", "__bool__", "__int__", "__float__", "__index__", "__len__"}


_kind_cache: dict[str, str] = {}


def _file_kind(path: str) -> str:
    """'torch' (torch internals, this file, contextlib/typing glue), 'serve_app', 'transformers' (a sam3* model
    file) or 'other'."""
    kind = _kind_cache.get(path)
    if kind is None:
        if path.startswith(_TORCH_DIR) or os.path.abspath(path) == _THIS or path.endswith(
                (os.sep + "contextlib.py", os.sep + "functools.py")):
            kind = "torch"
        elif os.path.abspath(path).startswith(_SERVE_APP):
            kind = "serve_app"
        elif "transformers" in path and f"{os.sep}models{os.sep}sam3" in path:
            kind = "transformers"
        else:
            kind = "other"
        _kind_cache[path] = kind
    return kind


def _short(path: str) -> str:
    p = os.path.abspath(path)
    if p.startswith(str(REPO) + os.sep):
        return os.path.relpath(p, REPO)
    i = p.rfind(f"{os.sep}transformers{os.sep}")
    if i >= 0:
        return p[i + 1:]
    i = p.rfind(f"{os.sep}site-packages{os.sep}")
    return p[i + len("site-packages") + 2:] if i >= 0 else p


def _where(depth: int = 2) -> tuple[str, str, str]:
    """(owner, site, caller) of the current Python stack (see the module docstring)."""
    f = sys._getframe(depth)
    caller = None
    while f is not None:
        code = f.f_code
        kind = _file_kind(code.co_filename)
        if kind != "torch":
            label = f"{_short(code.co_filename)}:{f.f_lineno}:{code.co_name}"
            if caller is None:
                caller = label
            if kind in ("serve_app", "transformers"):
                return kind, label, caller
        f = f.f_back
    return "other", caller or "?", caller or "?"


class _Counts:
    """Counters of one measured interval (one frame)."""

    def __init__(self) -> None:
        self.ops: Counter[tuple[str, str]] = Counter()  # (owner, site) -> aten ops
        self.launches: Counter[tuple[str, str]] = Counter()  # ops that would launch a kernel (estimate)
        self.syncs: Counter[tuple[str, str, str]] = Counter()  # (owner, site, kind) -> syncs
        self.host: Counter[tuple[str, str, str]] = Counter()  # host reads of tensors already on the host
        self.h2d: Counter[tuple[str, str, str]] = Counter()  # torch.tensor(python data) (host->device copies)
        self.callers: dict[tuple[str, str], Counter[str]] = defaultdict(Counter)
        self.op_names: dict[tuple[str, str], Counter[str]] = defaultdict(Counter)


class _Dispatch(TorchDispatchMode):
    def __init__(self, census: SyncCensus):
        super().__init__()
        self.census = census

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        c = self.census
        if c.current is not None:
            owner, site, caller = _where()
            key = (owner, site)
            c.current.ops[key] += 1
            c.current.op_names[key][func.__name__] += 1
            c.current.callers[key][caller] += 1
            kind = _SYNC_OPS.get(func)
            if kind is None and func in _BOOL_INDEX_OPS:
                indices = args[1] if len(args) > 1 else kwargs.get("indices", ())
                if any(isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in indices or ()):
                    kind = "bool_index"
            if func is _aten.lift_fresh.default and not c.host_factories:  # torch.tensor(data, device=...): on a GPU, a blocking host->device copy
                c.current.h2d[(owner, site, "torch.tensor")] += 1
            if kind is not None:
                if kind == "item" and c.api:
                    kind = f"item({c.api[-1]})"
                host = bool(args) and isinstance(args[0], torch.Tensor) and c.is_host(args[0])
                (c.current.host if host else c.current.syncs)[(owner, site, kind)] += 1
        out = func(*args, **kwargs)
        if c.current is not None and not (func in _NO_LAUNCH or getattr(func, "is_view", False)
                                          or (out is (args[0] if args else None) and not func.__name__.endswith("_"))):
            c.current.launches[key] += 1
        return out


class _Function(TorchFunctionMode):
    def __init__(self, census: SyncCensus):
        super().__init__()
        self.census = census

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        c = self.census
        name = getattr(func, "__name__", "")
        kind = _HOST_CALLS.get(name)
        if name == "to" and args and isinstance(args[0], torch.Tensor):
            dev = kwargs.get("device", args[1] if len(args) > 1 else None)
            if isinstance(dev, str) and dev.split(":")[0] == "cpu":
                kind = "to_cpu"
        if c.current is not None and kind is not None and args and isinstance(args[0], torch.Tensor):
            owner, site, _ = _where()
            bucket = c.current.host if c.is_host(args[0]) else c.current.syncs
            bucket[(owner, site, kind if bucket is c.current.syncs else f"host_{kind}")] += 1
        scalar = name in _SCALAR_APIS
        if scalar:
            c.api.append(name.strip("_"))
        # torch.tensor(data) without a device makes a host tensor on a GPU machine too: not a host->device copy
        host_factory = func is torch.tensor and kwargs.get("device") is None
        c.host_factories += host_factory
        try:
            out = func(*args, **kwargs)
        finally:
            if scalar:
                c.api.pop()
            c.host_factories -= host_factory
        if host_factory and isinstance(out, torch.Tensor):
            c.mark_host(out)
            c._host_storages[out.untyped_storage().data_ptr()] = weakref.ref(out)
        if (kind in ("cpu", "to_cpu")) and isinstance(out, torch.Tensor):
            if out is args[0]:  # on CPU .cpu() returns its input: a new tensor object, as on a GPU
                out = out.view_as(out)
            c.mark_host(out)
        return out


class SyncCensus:
    """Count aten ops and host syncs by call site while active; `frame()` starts a new interval.

        with SyncCensus() as census:
            for result in census.frames(session.propagate(0, "forward")):
                ...
        census.intervals  # one _Counts per frame"""

    def __init__(self) -> None:
        self.intervals: list[_Counts] = []
        self.current: _Counts | None = None
        self.api: list[str] = []
        self.host_factories = 0  # > 0 inside torch.tensor(data) without a device
        self._host_storages: dict[int, weakref.ref] = {}  # storage address -> the host factory tensor
        self._host: set[int] = set()
        self._modes: list[Any] = []

    def is_host(self, t: torch.Tensor) -> bool:
        """A tensor .cpu() returned or torch.tensor made without a device, or a view of one (views made under
        inference_mode have no _base: for the factory tensors, their storage while the tensor lives)."""
        if getattr(t, "_census_host", False) or getattr(t._base, "_census_host", False):
            return True
        ref = self._host_storages.get(t.untyped_storage().data_ptr())
        return ref is not None and ref() is not None

    def mark_host(self, t: torch.Tensor) -> None:
        try:
            t._census_host = True  # type: ignore[attr-defined]
        except (AttributeError, RuntimeError):
            pass

    def __enter__(self) -> SyncCensus:
        self._modes = [_Function(self), _Dispatch(self)]
        for m in self._modes:
            m.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        for m in reversed(self._modes):
            m.__exit__(*exc)
        self.current = None

    def start(self) -> _Counts:
        self.current = _Counts()
        self.intervals.append(self.current)
        return self.current

    def stop(self) -> None:
        self.current = None

    def frames(self, iterator):
        """Yield the items of `iterator`, each `next()` measured as one interval."""
        it = iter(iterator)
        while True:
            self.start()
            try:
                item = next(it)
            except StopIteration:
                self.intervals.pop()
                self.stop()
                return
            self.stop()
            yield item


# ----------------------------------------------------------------------------------------------- scenarios


def build_runner(model_dir: str, batch_objects: bool = True):
    """The VideoRunner bench_video.py uses for the tiny model (thresholds 0, hotstart 0) with max_num_objects 5."""
    from serve_app.config import ModelConfig
    from serve_app.model.video import VideoRunner

    return VideoRunner.from_config(ModelConfig(model_id=model_dir, device="cpu"), score_threshold_detection=0.0,
                                   new_det_thresh=0.0, max_num_objects=N_OBJECTS, hotstart_delay=0,
                                   batch_objects=batch_objects)


def run_scenario(runner, kind: str, frames: int, h: int = 120, w: int = 160, keep_results: bool = False):
    """One session: the prompt on frame 0 (not measured), then a forward propagation over `frames` frames, one
    census interval per frame. Returns (intervals, results or None, the prompt's result)."""
    import numpy as np
    from bench_video import click_points, synthetic_frames

    from serve_app.model.video_types import FrameSource, VideoObjectPrompt

    source = FrameSource.from_array(synthetic_frames(frames, h, w))
    session = runner.new_session(source)
    if kind == "clicks":
        objs = [VideoObjectPrompt(i + 1, np.array([p], np.float32), np.array([1]), None, None, False)
                for i, p in enumerate(click_points(N_OBJECTS, h, w))]
        prompt = session.add_objects(0, objs)
    elif kind == "text":
        prompt = session.add_text(0, TEXT)
    else:
        raise ValueError(kind)
    results = []
    with SyncCensus() as census:
        for r in census.frames(session.propagate(0, "forward")):
            if keep_results:
                results.append(r)
    return census.intervals, (results if keep_results else None), prompt


def frame_totals(c: _Counts) -> dict[str, int]:
    out = {"ops": 0, "syncs": 0, "host_reads": sum(c.host.values())}
    for owner in ("serve_app", "transformers", "other"):
        out[f"h2d_{owner}"] = sum(v for (o, _, _), v in c.h2d.items() if o == owner)
    for owner in ("serve_app", "transformers", "other"):
        out[f"ops_{owner}"] = sum(v for (o, _), v in c.ops.items() if o == owner)
        out[f"syncs_{owner}"] = sum(v for (o, _, _), v in c.syncs.items() if o == owner)
        out[f"launches_{owner}"] = sum(v for (o, _), v in c.launches.items() if o == owner)
    out["ops"] = sum(c.ops.values())
    out["launches"] = sum(c.launches.values())
    out["syncs"] = sum(c.syncs.values())
    out["h2d"] = sum(c.h2d.values())
    return out


def steady_sites(intervals: list[_Counts]) -> list[dict[str, Any]]:
    """Per call site over the steady-state frames (2..N): ops and syncs per frame, sync kinds, op names,
    callers."""
    steady = intervals[1:]
    n = max(1, len(steady))
    ops: Counter = Counter()
    syncs: Counter = Counter()
    h2d: Counter = Counter()
    launches: Counter = Counter()
    kinds: dict[tuple, Counter] = defaultdict(Counter)
    names: dict[tuple, Counter] = defaultdict(Counter)
    callers: dict[tuple, Counter] = defaultdict(Counter)
    for c in steady:
        ops.update(c.ops)
        launches.update(c.launches)
        for (o, s, k), v in c.syncs.items():
            syncs[(o, s)] += v
            kinds[(o, s)][k] += v
        for (o, s, _), v in c.h2d.items():
            h2d[(o, s)] += v
        for key, cnt in c.op_names.items():
            names[key].update(cnt)
        for key, cnt in c.callers.items():
            callers[key].update(cnt)
    rows = []
    for key in set(ops) | set(syncs):
        rows.append({"owner": key[0], "site": key[1], "ops_per_frame": ops[key] / n,
                     "launches_per_frame": launches[key] / n,
                     "syncs_per_frame": syncs[key] / n, "h2d_per_frame": h2d[key] / n,
                     "sync_kinds": {k: v / n for k, v in sorted(kinds[key].items())},
                     "top_ops": {k: v / n for k, v in names[key].most_common(6)},
                     "callers": [c for c, _ in callers[key].most_common(3)]})
    rows.sort(key=lambda r: (-r["syncs_per_frame"], -r["ops_per_frame"], r["site"]))
    return rows


def summarize(intervals: list[_Counts]) -> dict[str, Any]:
    per_frame = [dict(frame=i + 1, **frame_totals(c)) for i, c in enumerate(intervals)]
    steady = per_frame[1:]
    mean = {k: (sum(f[k] for f in steady) / len(steady) if steady else 0.0) for k in per_frame[0] if k != "frame"}
    return {"per_frame": per_frame, "steady_mean": mean, "sites": steady_sites(intervals)}


def census(model_dir: str, frames: int = 12, batch_modes=(True,), kinds=("text", "clicks")) -> dict[str, Any]:
    """Run every (batch mode, scenario); returns the JSON-able result (without the config header)."""
    out: dict[str, Any] = {}
    for batch in batch_modes:
        runner = build_runner(model_dir, batch)
        run_scenario(runner, "clicks", 3)  # lazy first-call initialisation: not measured
        for kind in kinds:
            t0 = time.perf_counter()
            intervals, _, _ = run_scenario(runner, kind, frames)
            res = summarize(intervals)
            res["wall_s"] = time.perf_counter() - t0
            out[f"{kind}{'' if batch else '-unbatched'}"] = res
    return out


def print_tables(result: dict[str, Any], top: int = 25) -> None:
    for name, res in result["scenarios"].items():
        m = res["steady_mean"]
        print(f"\n=== {name}: steady state (frames 2..{len(res['per_frame'])}), per frame: ops {m['ops']:.0f} "
              f"(serve_app {m['ops_serve_app']:.0f}, transformers {m['ops_transformers']:.0f}, other "
              f"{m['ops_other']:.0f}; of which kernel launches {m['launches']:.0f}: serve_app {m['launches_serve_app']:.0f}, "
              f"transformers {m['launches_transformers']:.0f}); syncs {m['syncs']:.1f} (serve_app {m['syncs_serve_app']:.1f}, transformers "
              f"{m['syncs_transformers']:.1f}, other {m['syncs_other']:.1f}); torch.tensor() host->device copies {m['h2d']:.1f} (serve_app "
              f"{m['h2d_serve_app']:.1f}, transformers {m['h2d_transformers']:.1f}); host reads {m['host_reads']:.1f}")
        for title, key in (("syncs", "syncs_per_frame"), ("ops", "ops_per_frame")):
            rows = sorted(res["sites"], key=lambda r: (-r[key], r["site"]))[:top]
            rows = [r for r in rows if r[key] > 0]
            print(f"--- top {len(rows)} call sites by {title}/frame")
            print(f"{'syncs':>6} {'ops':>7} {'kern':>6} {'h2d':>4}  {'owner':12s} site  [sync kinds]")
            for r in rows:
                kinds = ", ".join(f"{k}:{v:g}" for k, v in r["sync_kinds"].items())
                print(f"{r['syncs_per_frame']:6.1f} {r['ops_per_frame']:7.1f} {r['launches_per_frame']:6.1f} {r['h2d_per_frame']:4.1f}  {r['owner']:12s} {r['site']}"
                      + (f"  [{kinds}]" if kinds else ""))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=12, help="frames propagated per scenario (>= 2)")
    parser.add_argument("--batch-objects", choices=["on", "off", "both"], default="on",
                        help="VideoRunner.batch_objects (video.batch_tracker_objects; the service default: on)")
    parser.add_argument("--model-dir", help="a tiny checkpoint directory (default: build one in a temp dir)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (counts do not depend on it)")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--out", default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    if args.frames < 2:
        parser.error("--frames must be >= 2")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import transformers

    from serve_app.devtools.tiny_model import build_tiny_checkpoint

    transformers.logging.set_verbosity_error()
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="video-syncs-ckpt-") as tmp:
        model_dir = args.model_dir or str(build_tiny_checkpoint(tmp, object_score_bias=10.0))
        modes = {"on": (True,), "off": (False,), "both": (True, False)}[args.batch_objects]
        scenarios = census(model_dir, args.frames, modes)
    result = {"tool": "loadtest/video_syncs.py", "model": "tiny random (object-score bias +10)", "device": "cpu",
              "torch": torch.__version__, "transformers": transformers.__version__, "frames": args.frames,
              "batch_objects": args.batch_objects, "text": TEXT, "objects": N_OBJECTS,
              "scenarios": scenarios, "wall_s": time.perf_counter() - t0}
    print_tables(result, args.top)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"\nwrote {out} ({result['wall_s']:.0f} s)")
    return result


if __name__ == "__main__":
    main()
