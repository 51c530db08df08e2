"""Load SAM 3 checkpoints through transformers' `from_pretrained`, on the right device and dtype.

The same path serves `facebook/sam3` from the Hub (HF_TOKEN / HF_HOME honoured by huggingface_hub) and a
local directory such as the tiny test checkpoint. `load_model` is the one place where the runtime options of
ModelConfig are applied (every runner's `from_config` goes through it): placement (device, dtype), attention
implementation, TF32 on CUDA and torch.compile of the heavy module(s). The resulting `Placement` records what
is in effect, so benchmarks can report it (`Placement.describe()`). No Ray, no FastAPI.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch

from serve_app.config import ModelConfig
from serve_app.errors import Unavailable

log = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

# facebook/sam3 is a Sam3VideoModel checkpoint: the image tracker's weights live under `tracker_model.`.
TRACKER_KEY_MAPPING = {r"^tracker_model\.(.+)": r"\1"}


@dataclass(frozen=True)
class Placement:
    """Where and how a runner's model runs. The fields after dtype are the runtime options in effect:
    attn_implementation as found on the loaded model's attention layers ("sdpa", "eager"; "mixed:..." if
    they differ; "" before loading), compile = the torch.compile mode of `compiled` ("off": nothing compiled),
    tf32 = TF32 allowed for fp32 matmuls/convolutions (only ever True on CUDA)."""

    device: torch.device
    dtype: torch.dtype
    attn_implementation: str = ""
    compile: str = "off"
    compiled: tuple[str, ...] = ()
    tf32: bool = False

    @property
    def pinned_copies(self) -> bool:
        """Host->device batch copies go through pinned memory, non-blocking (CUDA only)."""
        return self.device.type == "cuda"

    def describe(self) -> dict[str, Any]:
        """JSON-able facts for logs and benchmarks."""
        return {"device": str(self.device), "dtype": str(self.dtype).removeprefix("torch."),
                "attn_implementation": self.attn_implementation, "compile": self.compile,
                "compiled": list(self.compiled), "tf32": self.tf32, "pinned_copies": self.pinned_copies}


def resolve_placement(cfg: ModelConfig) -> Placement:
    """CUDA + bf16 when a GPU is visible (or requested), else CPU + fp32; explicit settings win. TF32 is
    recorded as on only for CUDA (apply_tf32 sets it)."""
    if cfg.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(cfg.device)
    if cfg.dtype == "auto":
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    else:
        dtype = _DTYPES[cfg.dtype]
    return Placement(device, dtype, tf32=cfg.tf32 and device.type == "cuda")


def apply_tf32(placement: Placement) -> bool:
    """On CUDA, set the process-wide TF32 flags for fp32 matmuls and cuDNN convolutions to placement.tf32
    (True: TF32 tensor cores; False: strict fp32). A no-op on CPU. Returns whether the flags were set.

    Uses the `allow_tf32` flags (not `fp32_precision`): torch refuses to read the flags once the two APIs are
    mixed, and other code (tests/gpu) uses these."""
    if placement.device.type != "cuda":
        return False
    torch.backends.cuda.matmul.allow_tf32 = placement.tf32
    torch.backends.cudnn.allow_tf32 = placement.tf32
    return True


def attention_implementations(model: Any) -> set[str]:
    """The attention implementation of every attention layer of `model` (each reads its own config's
    `_attn_implementation` at call time), or of the top-level config when no layer is found."""
    layers = [getattr(getattr(m, "config", None), "_attn_implementation", None)
              for m in model.modules() if hasattr(m, "q_proj")]
    found = {str(impl) for impl in layers if impl is not None}
    return found or {str(model.config._attn_implementation)}


def set_attention(model: Any, requested: str) -> str:
    """Make every attention layer use `requested` ("auto" keeps what transformers chose); returns the effective
    implementation ("mixed:a,b" when layers differ).

    Sam3TrackerModel loaded from a facebook/sam3 (sam3_video) checkpoint ignores from_pretrained's
    attn_implementation (transformers 5.24): it is then set again through `set_attn_implementation`."""
    found = attention_implementations(model)
    if requested != "auto" and found != {requested}:
        model.set_attn_implementation(requested)
        found = attention_implementations(model)
        if found != {requested}:
            raise RuntimeError(f"{type(model).__name__}: attention {requested!r} requested, layers use {sorted(found)}")
    return found.pop() if len(found) == 1 else "mixed:" + ",".join(sorted(found))


def compile_modules(model: torch.nn.Module, names: Sequence[str], mode: str) -> tuple[str, ...]:
    """torch.compile the named submodules in place (`nn.Module.compile`: same module objects and state_dict
    keys, calls go through the compiled forward). mode "off" compiles nothing. Compilation itself happens on
    the first call of each new input shape (lazily, on the first batch)."""
    if mode == "off":
        return ()
    for name in names:
        model.get_submodule(name).compile(mode=mode)
    return tuple(names)


def load_model(cls, cfg: ModelConfig, *, compile_targets: Sequence[str] = (), **kwargs) -> tuple[Any, Placement]:
    """Load `cls` from `cfg` with every runtime option of ModelConfig applied; the runners' one entry point.

    resolve_placement -> TF32 flags (CUDA) -> from_pretrained(dtype, attn_implementation) -> attention checked
    on every layer -> torch.compile of `compile_targets` (submodule names) when cfg.compile is not "off".
    Returns the model in eval mode and the Placement describing what is in effect."""
    placement = resolve_placement(cfg)
    apply_tf32(placement)
    model = load_pretrained(cls, cfg, placement, **kwargs)
    attn = set_attention(model, cfg.attn_implementation)
    compiled = compile_modules(model, compile_targets, cfg.compile)
    placement = replace(placement, attn_implementation=attn, compile=cfg.compile if compiled else "off",
                        compiled=compiled)
    log.info("%s runtime: %s", cls.__name__, placement.describe())
    return model, placement


def local_files_only(cfg: ModelConfig) -> bool:
    """Never contact the Hub for local directories, HF_HUB_OFFLINE=1 or when configured so."""
    return cfg.local_files_only or os.environ.get("HF_HUB_OFFLINE") == "1" or os.path.isdir(cfg.model_id)


def load_pretrained(cls, cfg: ModelConfig, placement: Placement, **kwargs):
    """`cls.from_pretrained(cfg.model_id)` in eval mode on `placement`; fails loudly on missing weights.

    Raises Unavailable when the checkpoint cannot be fetched (gated repo without HF_TOKEN, offline).
    """
    if cfg.attn_implementation != "auto":
        kwargs.setdefault("attn_implementation", cfg.attn_implementation)
    try:
        model, info = cls.from_pretrained(
            cfg.model_id,
            revision=cfg.revision,
            dtype=placement.dtype,
            local_files_only=local_files_only(cfg),
            output_loading_info=True,
            **kwargs,
        )
    except OSError as exc:  # missing files, gated repo, no network
        raise Unavailable(f"cannot load {cls.__name__} from {cfg.model_id!r}: {exc}", "model_unavailable") from exc
    if info.get("missing_keys"):
        missing = sorted(info["missing_keys"])
        raise RuntimeError(f"{cls.__name__} from {cfg.model_id!r} left {len(missing)} weights random: {missing[:5]}")
    log.info("loaded %s from %s on %s/%s", cls.__name__, cfg.model_id, placement.device, placement.dtype)
    return model.to(placement.device).eval()


def load_tokenizer(cfg: ModelConfig):
    """The CLIP tokenizer saved with the checkpoint."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(cfg.model_id, revision=cfg.revision, local_files_only=local_files_only(cfg))
