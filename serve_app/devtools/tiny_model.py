"""Build a tiny, randomly initialised SAM 3 checkpoint offline, in the `facebook/sam3` layout.

    python -m serve_app.devtools.tiny_model OUT_DIR [--seed 0]

The directory holds a `Sam3VideoModel` checkpoint (keys `detector_model.*`, `tracker_model.*`,
`tracker_neck.*`), a CLIP byte-level BPE tokenizer built from a hand-written vocabulary, and the image
and video processors. Like the real checkpoint it loads as `Sam3Model`, `Sam3TrackerModel` (with the
`tracker_model.` key mapping), `Sam3VideoModel` and `Sam3TrackerVideoModel`, through `from_pretrained`
with `HF_HUB_OFFLINE=1`. About 4 M parameters; a forward takes milliseconds on a CPU. The weights are
random: outputs have the real shapes and formats, not meaningful masks.

Sizes follow the constraints in shared/notes/SAM3_TRANSFORMERS.md: image 112 px, patch 14 (8x8 grid),
shared head width D=128 (a multiple of 64 above 64), memory encoder output 64 channels.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import cast

IMAGE_SIZE = 112
PATCH_SIZE = 14
D = 128  # FPN / DETR / mask decoder / tracker width
NUM_QUERIES = 32

# Words the tokenizer knows whole; anything else falls back to byte-level pieces.
_WORDS = (
    "a an the of in on with and or red blue green black white yellow shirt car dog cat person people "
    "man woman child bird tree house road sky truck bus bicycle boat chair table cup bottle visual"
).split()


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP byte -> printable unicode char table."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def build_tokenizer():
    """A CLIPTokenizer: 256 byte chars, the same with `</w>`, one token per merge, BOS/EOS."""
    from transformers import CLIPTokenizer

    chars = list(_bytes_to_unicode().values())
    vocab: dict[str, int] = {}
    for tok in chars + [c + "</w>" for c in chars]:
        vocab.setdefault(tok, len(vocab))
    merges: list[tuple[str, str]] = []
    for word in _WORDS:
        pieces = list(word[:-1]) + [word[-1] + "</w>"]
        left = pieces[0]
        for right in pieces[1:]:
            merged = left + right
            if merged not in vocab:
                merges.append((left, right))
                vocab[merged] = len(vocab)
            left = merged
    for special in ("<|startoftext|>", "<|endoftext|>"):
        vocab[special] = len(vocab)
    # transformers annotates `merges` as list[str], but its tokenizers.BPE backend takes (left, right) pairs and
    # rejects "left right" strings.
    return CLIPTokenizer(vocab=vocab, merges=cast("list[str]", merges))


def build_config(tokenizer):
    """A `Sam3VideoConfig` with tiny widths and the real structure."""
    from transformers import Sam3Config, Sam3TrackerVideoConfig, Sam3VideoConfig

    grid = IMAGE_SIZE // PATCH_SIZE
    vision = {
        "backbone_config": {
            "model_type": "sam3_vit_model",
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": IMAGE_SIZE,
            "patch_size": PATCH_SIZE,
            "window_size": 4,
            "global_attn_indexes": [1],
            "pretrain_image_size": IMAGE_SIZE,
        },
        "fpn_hidden_size": D,
        "backbone_feature_sizes": [[4 * grid, 4 * grid], [2 * grid, 2 * grid], [grid, grid]],
    }
    small = {"hidden_size": D, "num_attention_heads": 2, "intermediate_size": 2 * D}
    detector = Sam3Config(
        vision_config=vision,
        text_config={
            "model_type": "clip_text_model",
            "vocab_size": len(tokenizer),
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
            "hidden_size": 32,
            "intermediate_size": 64,
            "projection_dim": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "max_position_embeddings": 32,
            "hidden_act": "gelu",
        },
        geometry_encoder_config={**small, "num_layers": 1},
        detr_encoder_config={**small, "num_layers": 1},
        detr_decoder_config={**small, "num_layers": 1, "num_queries": NUM_QUERIES},
        mask_decoder_config={"hidden_size": D, "num_attention_heads": 2},
    )
    tracker = Sam3TrackerVideoConfig(
        vision_config=vision,
        prompt_encoder_config={"hidden_size": D},
        mask_decoder_config={"hidden_size": D, "mlp_dim": 2 * D, "num_attention_heads": 2, "iou_head_hidden_dim": D},
        memory_attention_hidden_size=D,
        memory_attention_num_layers=1,
        memory_attention_feed_forward_hidden_size=2 * D,
        memory_attention_rope_feat_sizes=[grid, grid],
        memory_encoder_hidden_size=D,
        memory_encoder_output_channels=64,
        mask_downsampler_embed_dim=D,
        memory_fuser_embed_dim=D,
        memory_fuser_intermediate_dim=2 * D,
    )
    # A property, not a constructor field (__post_init__ sets it, 1008 by default): setting it resizes the vision
    # and prompt-encoder configs and recomputes the feature and RoPE sizes for our patch grid.
    tracker.image_size = IMAGE_SIZE
    return Sam3VideoConfig(
        detector_config=detector.to_dict(),
        tracker_config=tracker.to_dict(),
        low_res_mask_size=4 * IMAGE_SIZE // PATCH_SIZE,
    )


def build_full_size_config(tokenizer):
    """The real facebook/sam3 architecture (Sam3VideoConfig defaults): same FLOPs, random weights."""
    from transformers import CLIPTextConfig, Sam3Config, Sam3VideoConfig

    config = Sam3VideoConfig()
    detector = config.detector_config
    # __post_init__ turns the dict / None defaults into config objects; the annotations keep the union.
    assert isinstance(detector, Sam3Config) and isinstance(detector.text_config, CLIPTextConfig)
    text = detector.text_config
    text.bos_token_id, text.eos_token_id, text.pad_token_id = (
        tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id)
    return config


def build_processors(tokenizer, image_size: int = IMAGE_SIZE):
    """Image, tracker and video processors for `image_size` inputs (mean/std 0.5 like SAM 3)."""
    from transformers import Sam3ImageProcessor, Sam3Processor, Sam3VideoProcessor
    from transformers.models.sam2_video.video_processing_sam2_video import Sam2VideoVideoProcessor

    size = {"height": image_size, "width": image_size}
    low_res = 4 * image_size // PATCH_SIZE
    mean, std = [0.5, 0.5, 0.5], [0.5, 0.5, 0.5]
    image_processor = Sam3ImageProcessor(size=size, mask_size={"height": low_res, "width": low_res},
                                         image_mean=mean, image_std=std)
    video_processor = Sam2VideoVideoProcessor(size=size, image_mean=mean, image_std=std)
    return (
        Sam3Processor(image_processor=image_processor, tokenizer=tokenizer, target_size=image_size),
        Sam3VideoProcessor(image_processor=image_processor, video_processor=video_processor, tokenizer=tokenizer,
                           target_size=image_size),
    )


def build_tiny_checkpoint(out_dir: str | Path, seed: int = 0, full_size: bool = False,
                          object_score_bias: float = 0.0, init_device: str = "cpu") -> Path:
    """Write the tiny checkpoint to `out_dir` (created) and return its path. Deterministic for a seed.

    full_size=True writes the real SAM 3 architecture with random weights instead (~3.4 GB, for GPU
    benchmarks: same cost as facebook/sam3, meaningless outputs). object_score_bias is added to the
    tracker's object-score head: with random weights the tracker otherwise says "no object" on every frame
    (masks at -1024, SAM3_VIDEO.md pitfall 5); +10 makes clicks and tracking produce masks in tests.
    init_device: where the random weights are drawn ("cuda" makes a full-size build seconds instead of a
    minute; the weights then differ from a CPU build of the same seed)."""
    import torch
    from transformers import Sam3VideoModel

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer()
    config = build_full_size_config(tokenizer) if full_size else build_config(tokenizer)
    torch.manual_seed(seed)
    with torch.device(init_device):
        model = Sam3VideoModel(config).eval()
    if object_score_bias:
        with torch.no_grad():
            model.tracker_model.mask_decoder.pred_obj_score_head.proj_out.bias += object_score_bias
    model.save_pretrained(out)
    image_proc, video_proc = build_processors(tokenizer, int(config.image_size))
    video_proc.save_pretrained(out)  # tokenizer, preprocessor + video preprocessor configs
    image_proc.image_processor.save_pretrained(out)
    facts = {"seed": seed, "image_size": int(config.image_size), "full_size": full_size,
             "object_score_bias": object_score_bias}
    (out / "tiny_sam3.json").write_text(json.dumps(facts) + "\n")
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", help="directory to write (created if missing)")
    parser.add_argument("--seed", type=int, default=0, help="torch seed for the random weights")
    parser.add_argument("--full-size", action="store_true", help="real SAM 3 architecture, random weights (GPU benchmarks)")
    parser.add_argument("--object-score-bias", type=float, default=0.0,
                        help="added to the tracker's object-score head (10 makes the random tracker see objects)")
    args = parser.parse_args(argv)
    path = build_tiny_checkpoint(args.out_dir, seed=args.seed, full_size=args.full_size,
                                 object_score_bias=args.object_score_bias)
    print(path.resolve())


if __name__ == "__main__":
    main()
