"""Load SAM 3 checkpoints through transformers' `from_pretrained`, on the right device and dtype.

The same path serves `facebook/sam3` from the Hub (HF_TOKEN / HF_HOME honoured by huggingface_hub) and a
local directory such as the tiny test checkpoint. `load_model` is the one place where the runtime options of
ModelConfig are applied (every runner's `from_config` goes through it): placement (device, dtype), attention
implementation, TF32 on CUDA and torch.compile of the heavy module(s). The resulting `Placement` records what
is in effect, so benchmarks can report it (`Placement.describe()`). No Ray, no FastAPI.

A checkpoint that cannot be loaded for a known reason raises `ModelLoadError` (a StartupFailure: one line
with the cause and the fix, see `classify_load_error`, the one place that knows those reasons): the Hub
cannot be reached, a gated repo without access, an unknown id or missing directory, a directory that is
not a SAM 3 checkpoint, a transformers without the SAM 3 classes. `model_load_errors()` applies the same
classification around a whole runner construction (imports, tokenizer and processors included).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from serve_app.config import ModelConfig
from serve_app.errors import StartupFailure, exception_chain

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

    Raises ModelLoadError when the checkpoint cannot be loaded for a known reason (see classify_load_error):
    a local directory is checked first (config.json of a SAM 3 model type, weight files), then whatever
    from_pretrained raises is classified; weights the checkpoint lacks (left random) are not_a_checkpoint.
    """
    check_checkpoint_dir(cfg.model_id)
    if cfg.attn_implementation != "auto":
        kwargs.setdefault("attn_implementation", cfg.attn_implementation)
    with model_load_errors(cfg):
        model, info = cls.from_pretrained(
            cfg.model_id,
            revision=cfg.revision,
            dtype=placement.dtype,
            local_files_only=local_files_only(cfg),
            output_loading_info=True,
            **kwargs,
        )
    if info.get("missing_keys"):
        missing = sorted(info["missing_keys"])
        raise ModelLoadError.of(
            cfg.model_id, "model_not_a_checkpoint",
            f"it is not a complete SAM 3 checkpoint: {cls.__name__} would keep {len(missing)} weights random "
            f"(e.g. {', '.join(missing[:3])})", FIX_CHECKPOINT)
    log.info("loaded %s from %s on %s/%s", cls.__name__, cfg.model_id, placement.device, placement.dtype)
    return model.to(placement.device).eval()


# --------------------------------------------------------------------------- why a checkpoint does not load

MIN_TRANSFORMERS = "5.23"
FIX_LOCAL = "--model-id DIR (model.model_id) with a local checkout of facebook/sam3"
FIX_TINY = "python -m serve_app.devtools.tiny_model DIR builds the tiny offline checkpoint"
FIX_CHECKPOINT = (f"point --model-id (model.model_id) at a facebook/sam3 download (hf download facebook/sam3 "
                  f"--local-dir DIR) or a Hub id; {FIX_TINY}")
FIX_TRANSFORMERS = f'pip install "transformers>={MIN_TRANSFORMERS}"'
_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                 "pytorch_model.bin.index.json")
# Connection failures, whichever HTTP stack raised them (httpx, requests, urllib3, the socket).
_MISSING_SAM3 = re.compile(r"cannot import name '(Sam3|sam3)|No module named 'transformers\.models\.sam3")
_NETWORK_ERRORS = re.compile(r"Connect|Timeout|NameResolution|MaxRetry|ProtocolError|RemoteDisconnected|gaierror|"
                             r"NetworkError|SSLError|ProxyError")


class ModelLoadError(StartupFailure):
    """A checkpoint that cannot be loaded, with its cause and fix. Codes: model_hub_unreachable (retryable:
    the network may come back), model_gated, model_not_found, model_not_a_checkpoint, transformers_too_old."""

    code = "model_unavailable"

    @classmethod
    def of(cls, model_id: str, code: str, cause: str, fix: str) -> ModelLoadError:
        return cls(f"cannot load the model {model_id!r}", code, cause, fix)


def _looks_like_path(model_id: str) -> bool:
    return model_id.startswith(("/", "./", "../", "~")) or model_id.count("/") > 1 or os.sep + os.sep in model_id


def check_checkpoint_dir(model_id: str) -> None:
    """For a local path: raise ModelLoadError unless it is a directory with a config.json of a SAM 3 model type
    (sam3, sam3_video, ...) and weight files. Hub ids pass (the Hub answers for them)."""
    path = Path(model_id)
    if not path.exists():
        if _looks_like_path(model_id):
            raise ModelLoadError.of(model_id, "model_not_found", "no such directory",
                                    f"build the tiny offline checkpoint there (python -m serve_app.devtools.tiny_model "
                                    f"{model_id}), or pass --model-id with an existing checkpoint directory or a Hub "
                                    "id (facebook/sam3)")
        return
    if not path.is_dir():
        raise ModelLoadError.of(model_id, "model_not_a_checkpoint", "it is a file, not a checkpoint directory",
                                FIX_CHECKPOINT)
    config = path / "config.json"
    if not config.is_file():
        raise ModelLoadError.of(model_id, "model_not_a_checkpoint", "the directory has no config.json",
                                FIX_CHECKPOINT)
    try:
        model_type = str(json.loads(config.read_text()).get("model_type", ""))
    except (OSError, ValueError, AttributeError) as exc:
        raise ModelLoadError.of(model_id, "model_not_a_checkpoint", f"its config.json is unreadable ({exc})",
                                FIX_CHECKPOINT) from exc
    if not model_type.startswith("sam3"):
        raise ModelLoadError.of(model_id, "model_not_a_checkpoint",
                                f"its config.json is of model type {model_type or '(none)'!r}, not a SAM 3 model "
                                "(sam3_video, sam3, ...)", FIX_CHECKPOINT)
    if not any((path / name).is_file() for name in _WEIGHT_FILES) and not any(path.glob("*.safetensors")):
        raise ModelLoadError.of(model_id, "model_not_a_checkpoint",
                                "the directory has no weights (model.safetensors or pytorch_model.bin)", FIX_CHECKPOINT)


def _brief(exc: BaseException) -> str:
    text = re.sub(r" \(/[^)]*\)$", "", " ".join(str(exc).split()))  # ImportError's "(/path/to/__init__.py)"
    return f"{type(exc).__name__}: {text[:160]}" if text else type(exc).__name__


def _transformers_version() -> str:
    try:
        from importlib.metadata import version

        return version("transformers")
    except Exception:  # not installed at all
        return "(not installed)"


def _hf_token_state() -> str:
    try:
        from huggingface_hub import get_token

        return "HF_TOKEN is set but its account has no access" if get_token() else "HF_TOKEN is not set"
    except Exception:
        return "HF_TOKEN is set but its account has no access" if os.environ.get("HF_TOKEN") else "HF_TOKEN is not set"


def _hf_cache() -> str:
    try:
        from huggingface_hub import constants

        return str(constants.HF_HUB_CACHE)
    except Exception:
        return "HF_HOME"


def _http_status(exc: BaseException) -> int | None:
    response = getattr(exc, "response", None)
    status = getattr(response, "status_code", None)
    return int(status) if isinstance(status, int) else None


def classify_load_error(exc: BaseException, model_id: str, *, offline: bool = False) -> ModelLoadError | None:
    """The known reason `exc` (raised while loading `model_id`, with its causes) stands for, as a
    ModelLoadError with the fix; None when it is not a known reason (keep its traceback). `offline`: downloads
    were not allowed (HF_HUB_OFFLINE=1, local_files_only)."""
    chain = exception_chain(exc)
    for e in chain:
        if isinstance(e, ModelLoadError):
            return e
    names = [type(e).__name__ for e in chain]

    def of(code: str, cause: str, fix: str) -> ModelLoadError:
        return ModelLoadError.of(model_id, code, cause, fix)

    # transformers without the SAM 3 classes: an ImportError of them, or a config type it does not know.
    for e in chain:
        text = str(e)
        if isinstance(e, ImportError) and (e.name == "transformers" and "cannot import" not in text
                                           or _MISSING_SAM3.search(text)):
            return of("transformers_too_old", f"transformers {_transformers_version()} has no SAM 3 support "
                      f"({_brief(e)})", FIX_TRANSFORMERS)
        if isinstance(e, (ValueError, KeyError)) and "sam3" in text and (
                "does not recognize this architecture" in text or isinstance(e, KeyError)):
            return of("transformers_too_old", f"transformers {_transformers_version()} does not know the "
                      f"checkpoint's model type ({_brief(e)})", FIX_TRANSFORMERS)
    page = f"https://huggingface.co/{model_id}"
    if "GatedRepoError" in names:
        return of("model_gated", f"{model_id} is a gated repo and {_hf_token_state()}",
                  f"accept the license at {page} with your Hugging Face account, then export HF_TOKEN=hf_... "
                  f"(a read token of that account) where Ray starts; or {FIX_LOCAL}")
    if "RevisionNotFoundError" in names:
        return of("model_not_found", f"the Hub has no such revision of {model_id}",
                  "fix model.revision (or leave it unset for main)")
    if "RepositoryNotFoundError" in names:
        return of("model_not_found", f"the Hub has no repo {model_id!r} (or it is private and "
                  f"{_hf_token_state().replace('its account has no access', 'without access')})",
                  f"check model.model_id / --model-id (the real model is facebook/sam3), or {FIX_LOCAL}; {FIX_TINY}")
    statuses = [s for s in (_http_status(e) for e in chain) if s is not None]
    if any(s in (401, 403) for s in statuses):
        return of("model_gated", f"the Hub refused the download ({statuses[0]}) and {_hf_token_state()}",
                  f"accept the license at {page} with your Hugging Face account, then export HF_TOKEN=hf_... "
                  f"where Ray starts; or {FIX_LOCAL}")
    if "HFValidationError" in names:
        return of("model_not_found", "it is neither an existing directory nor a valid Hub repo id",
                  f"pass --model-id with an existing checkpoint directory or a Hub id (facebook/sam3); {FIX_TINY}")
    if any(n in ("RemoteEntryNotFoundError", "EntryNotFoundError") for n in names) and \
            "LocalEntryNotFoundError" not in names:
        return of("model_not_a_checkpoint", f"a file the SAM 3 loader needs is missing from {model_id} "
                  f"({_brief(chain[-1])})", FIX_CHECKPOINT)
    network = [e for e in chain if _NETWORK_ERRORS.search(type(e).__name__) or isinstance(e, (ConnectionError,
                                                                                               TimeoutError))]
    if network:
        return of("model_hub_unreachable", f"the Hugging Face Hub cannot be reached ({_brief(network[-1])}) and "
                  f"the files are not in the local cache ({_hf_cache()})",
                  f"connect this machine to the Hub (HF_ENDPOINT / HTTPS_PROXY), or {FIX_LOCAL}; {FIX_TINY}")
    if "LocalEntryNotFoundError" in names or "OfflineModeIsEnabled" in names:
        if offline:
            return of("model_not_found", f"{model_id} is not in the local Hugging Face cache ({_hf_cache()}) and "
                      "downloads are off (HF_HUB_OFFLINE=1 or model.local_files_only)",
                      f"unset HF_HUB_OFFLINE to download it once (facebook/sam3 also needs HF_TOKEN and its "
                      f"license accepted at https://huggingface.co/facebook/sam3), or {FIX_LOCAL}; {FIX_TINY}")
        return of("model_hub_unreachable", f"the Hugging Face Hub cannot be reached and the files are not in the "
                  f"local cache ({_hf_cache()})",
                  f"connect this machine to the Hub (HF_ENDPOINT / HTTPS_PROXY), or {FIX_LOCAL}; {FIX_TINY}")
    if os.path.isdir(model_id) and any(isinstance(e, OSError) for e in chain):
        return of("model_not_a_checkpoint", f"loading it failed ({_brief(chain[-1])})", FIX_CHECKPOINT)
    return None


@contextlib.contextmanager
def model_load_errors(cfg: ModelConfig | str) -> Iterator[None]:
    """Raise what the body raises as a ModelLoadError when classify_load_error knows the reason (the original
    exception as its cause); anything else passes unchanged."""
    model_id = cfg if isinstance(cfg, str) else cfg.model_id
    offline = os.environ.get("HF_HUB_OFFLINE") == "1" or (not isinstance(cfg, str) and local_files_only(cfg))
    try:
        yield
    except ModelLoadError:
        raise
    except Exception as exc:
        known = classify_load_error(exc, model_id, offline=offline)
        if known is None:
            raise
        raise known from exc


def load_tokenizer(cfg: ModelConfig):
    """The CLIP tokenizer saved with the checkpoint."""
    from transformers import AutoTokenizer

    with model_load_errors(cfg):
        return AutoTokenizer.from_pretrained(cfg.model_id, revision=cfg.revision,
                                             local_files_only=local_files_only(cfg))
