"""Load SAM 3 checkpoints through transformers' `from_pretrained`, on the right device and dtype.

The same path serves `facebook/sam3` from the Hub (HF_TOKEN / HF_HOME honoured by huggingface_hub) and a
local directory such as the tiny test checkpoint. No Ray, no FastAPI.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch

from serve_app.config import ModelConfig
from serve_app.errors import Unavailable

log = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

# facebook/sam3 is a Sam3VideoModel checkpoint: the image tracker's weights live under `tracker_model.`.
TRACKER_KEY_MAPPING = {r"^tracker_model\.(.+)": r"\1"}


@dataclass(frozen=True)
class Placement:
    device: torch.device
    dtype: torch.dtype


def resolve_placement(cfg: ModelConfig) -> Placement:
    """CUDA + bf16 when a GPU is visible (or requested), else CPU + fp32; explicit settings win."""
    if cfg.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(cfg.device)
    if cfg.dtype == "auto":
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    else:
        dtype = _DTYPES[cfg.dtype]
    return Placement(device, dtype)


def local_files_only(cfg: ModelConfig) -> bool:
    """Never contact the Hub for local directories, HF_HUB_OFFLINE=1 or when configured so."""
    return cfg.local_files_only or os.environ.get("HF_HUB_OFFLINE") == "1" or os.path.isdir(cfg.model_id)


def load_pretrained(cls, cfg: ModelConfig, placement: Placement, **kwargs):
    """`cls.from_pretrained(cfg.model_id)` in eval mode on `placement`; fails loudly on missing weights.

    Raises Unavailable when the checkpoint cannot be fetched (gated repo without HF_TOKEN, offline).
    """
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
