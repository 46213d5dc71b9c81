"""Named model variants, configurations, and building / loading models.

A configuration is a plain dict in the layout of the official SAM-Med2D constructor arguments
(`image_encoder`, `prompt_encoder`, `mask_decoder`, `pixel_mean`, `pixel_std`), extended with `family` and an
image-encoder `type` ("vit" or "tiny_vit"). `normalize_config` turns any accepted spelling into the canonical
form that `model_from_config` builds; `infer_config` reads it off a state dict's shapes.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

from sammed_edge.runtime.processing import IMAGENET_MEAN, IMAGENET_STD

from . import checkpoints
from .image_encoder_vit import ImageEncoderViT
from .mask_decoder import MaskDecoder
from .prompt_encoder import PromptEncoder
from .sam import SamModel
from .student import StudentEncoder
from .tiny_vit import TinyViT
from .transformer import TwoWayTransformer

FAMILIES = ("sam_med2d", "lite_medsam", "sam")

_VIT_DEFAULTS: dict[str, Any] = {
    "img_size": 1024, "patch_size": 16, "in_chans": 3, "embed_dim": 768, "depth": 12, "num_heads": 12,
    "mlp_ratio": 4.0, "out_chans": 256, "qkv_bias": True, "norm_eps": 1e-6, "act": "GELU", "use_abs_pos": True,
    "use_rel_pos": True, "window_size": 14, "global_attn_indexes": [2, 5, 8, 11], "adapter_hidden": None,
}
_TINY_VIT_DEFAULTS: dict[str, Any] = {
    "img_size": 256, "in_chans": 3, "embed_dims": [64, 128, 160, 320], "depths": [2, 2, 6, 2],
    "num_heads": [2, 4, 5, 10], "window_sizes": [7, 7, 14, 7], "mlp_ratio": 4.0, "mbconv_expand_ratio": 4.0,
    "local_conv_size": 3, "stem_kernel": 1, "stem_stride": 1, "merge_strides": [2, 2, 1], "neck_out": 256,
}
_STUDENT_DEFAULTS: dict[str, Any] = {
    "img_size": 256, "in_chans": 3, "embed_dims": [64, 128, 160, 320], "depths": [2, 2, 3, 1],
    "num_heads": [2, 4, 5, 10], "window_sizes": [7, 8, 16, 8], "mlp_ratio": 4.0, "mbconv_expand_ratio": 4.0,
    "local_conv_size": 3, "neck_out": 256,
}
_TRANSFORMER_DEFAULTS: dict[str, Any] = {
    "depth": 2, "embedding_dim": 256, "num_heads": 8, "mlp_dim": 2048, "activation": "ReLU", "attention_downsample_rate": 2,
}
_DECODER_DEFAULTS: dict[str, Any] = {
    "transformer_dim": 256, "num_multimask_outputs": 3, "iou_head_depth": 3, "iou_head_hidden_dim": 256, "activation": "GELU",
}
_PROMPT_DEFAULTS: dict[str, Any] = {"embed_dim": 256, "mask_in_chans": 16, "act": "GELU"}
# Descriptive keys of the official constructor dumps that do not change the architecture.
_IGNORED_ENCODER_KEYS = {"rel_pos_zero_init", "type"}


class ConfigError(ValueError):
    """A model configuration that cannot be built."""


def sam_global_attn_indexes(depth: int) -> list[int]:
    """SAM's global-attention blocks: the last block of each quarter (ViT-B: 2, 5, 8, 11)."""
    return [(k + 1) * depth // 4 - 1 for k in range(4)]


def _parse_eps(norm_layer: str) -> float:
    match = re.fullmatch(r"LayerNorm\(eps=([0-9.eE+-]+)\)", norm_layer.strip())
    if not match:
        raise ConfigError(f"unsupported norm_layer {norm_layer!r}; expected 'LayerNorm(eps=...)'")
    return float(match.group(1))


def _merge(defaults: Mapping[str, Any], given: Mapping[str, Any], where: str) -> dict[str, Any]:
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise ConfigError(f"unknown {where} settings: {unknown}")
    return {**defaults, **given}


def _normalize_encoder(raw: Mapping[str, Any]) -> dict[str, Any]:
    enc = {k: v for k, v in raw.items() if k not in _IGNORED_ENCODER_KEYS}
    kind = raw.get("type") or ("tiny_vit" if "embed_dims" in raw else "vit")
    if kind == "tiny_vit":
        return {"type": "tiny_vit", **_merge(_TINY_VIT_DEFAULTS, enc, "tiny_vit image_encoder")}
    if kind == "student":
        return {"type": "student", **_merge(_STUDENT_DEFAULTS, enc, "student image_encoder")}
    if kind != "vit":
        raise ConfigError(f"unknown image encoder type {kind!r}; expected 'vit', 'tiny_vit' or 'student'")
    if "norm_layer" in enc:
        enc["norm_eps"] = _parse_eps(enc.pop("norm_layer"))
    if "act_layer" in enc:
        enc["act"] = enc.pop("act_layer")
    if "adapter_train" in enc:  # SAM-Med2D's flag; the adapter bottleneck is a quarter of the width
        adapter = enc.pop("adapter_train")
        enc.setdefault("adapter_hidden", int(enc.get("embed_dim", _VIT_DEFAULTS["embed_dim"]) * 0.25) if adapter else None)
    enc = _merge(_VIT_DEFAULTS, enc, "vit image_encoder")
    enc["global_attn_indexes"] = [int(i) for i in enc["global_attn_indexes"]]
    return {"type": "vit", **enc}


def encoder_grid(encoder_cfg: Mapping[str, Any]) -> int:
    """Side of the embedding grid an encoder configuration produces."""
    if encoder_cfg["type"] == "vit":
        return encoder_cfg["img_size"] // encoder_cfg["patch_size"]
    if encoder_cfg["type"] == "student":
        return encoder_cfg["img_size"] // 4
    side = encoder_cfg["img_size"]
    kernel, stride = encoder_cfg["stem_kernel"], encoder_cfg["stem_stride"]
    for _ in range(2):
        side = (side + 2 * (kernel // 2) - kernel) // stride + 1
    for merge in encoder_cfg["merge_strides"]:
        side = (side - 1) // merge + 1
    return side


def default_family(encoder_cfg: Mapping[str, Any]) -> str:
    """Family implied by an encoder: TinyViT or its student -> lite_medsam; ViT at 1024 without adapters -> sam;
    else sam_med2d."""
    if encoder_cfg["type"] in ("tiny_vit", "student"):
        return "lite_medsam"
    if encoder_cfg["img_size"] == 1024 and not encoder_cfg.get("adapter_hidden"):
        return "sam"
    return "sam_med2d"


def normalize_config(config: Mapping[str, Any] | str | Path) -> dict[str, Any]:
    """Canonical configuration from a dict or a JSON file (the official constructor layout is accepted).

    Raises:
        ConfigError: unknown settings or an inconsistent configuration.
    """
    if isinstance(config, (str, Path)):
        config = json.loads(Path(config).read_text())
    if "image_encoder" not in config:
        raise ConfigError("a model configuration needs an 'image_encoder' section")
    encoder = _normalize_encoder(config["image_encoder"])
    grid = encoder_grid(encoder)
    side = encoder["img_size"]
    prompt = dict(config.get("prompt_encoder", {}))
    prompt.setdefault("embed_dim", encoder["out_chans"] if encoder["type"] == "vit" else encoder["neck_out"])
    prompt.setdefault("image_embedding_size", [grid, grid])
    prompt.setdefault("input_image_size", [side, side])
    prompt = _merge({**_PROMPT_DEFAULTS, "image_embedding_size": None, "input_image_size": None}, prompt, "prompt_encoder")
    prompt["image_embedding_size"] = [int(v) for v in prompt["image_embedding_size"]]
    prompt["input_image_size"] = [int(v) for v in prompt["input_image_size"]]
    if prompt["image_embedding_size"] != [grid, grid]:
        raise ConfigError(f"prompt_encoder.image_embedding_size {prompt['image_embedding_size']} does not match the encoder's {grid} x {grid} grid")
    # Decoder widths follow the embedding width unless given (SAM: all 256, transformer MLP 8x).
    decoder_raw = dict(config.get("mask_decoder", {}))
    width = int(decoder_raw.get("transformer_dim", prompt["embed_dim"]))
    transformer = _merge(
        {**_TRANSFORMER_DEFAULTS, "embedding_dim": width, "mlp_dim": 8 * width},
        decoder_raw.pop("transformer", {}),
        "mask_decoder.transformer",
    )
    decoder = _merge({**_DECODER_DEFAULTS, "transformer_dim": width, "iou_head_hidden_dim": width}, decoder_raw, "mask_decoder")
    decoder["transformer"] = transformer
    family = config.get("family") or default_family(encoder)
    if family not in FAMILIES:
        raise ConfigError(f"unknown family {family!r}; known: {FAMILIES}")
    return {
        "family": family,
        "image_encoder": encoder,
        "prompt_encoder": prompt,
        "mask_decoder": decoder,
        "pixel_mean": [float(v) for v in config.get("pixel_mean", IMAGENET_MEAN)],
        "pixel_std": [float(v) for v in config.get("pixel_std", IMAGENET_STD)],
    }


def model_from_config(config: Mapping[str, Any] | str | Path) -> SamModel:
    """Build a randomly initialised model (eval mode) from any accepted configuration."""
    cfg = normalize_config(config)
    enc = dict(cfg["image_encoder"])
    kind = enc.pop("type")
    encoders = {"vit": ImageEncoderViT, "tiny_vit": TinyViT, "student": StudentEncoder}
    image_encoder = encoders[kind](**enc)
    prompt = cfg["prompt_encoder"]
    prompt_encoder = PromptEncoder(
        embed_dim=prompt["embed_dim"],
        image_embedding_size=tuple(prompt["image_embedding_size"]),
        input_image_size=tuple(prompt["input_image_size"]),
        mask_in_chans=prompt["mask_in_chans"],
        act=prompt["act"],
    )
    dec = dict(cfg["mask_decoder"])
    mask_decoder = MaskDecoder(transformer=TwoWayTransformer(**dec.pop("transformer")), **dec)
    return SamModel(image_encoder, prompt_encoder, mask_decoder, family=cfg["family"], config=cfg).eval()


# ------------------------------------------------------------------------------------- config inference


def _count(state: Mapping[str, torch.Tensor], pattern: str) -> int:
    regex = re.compile(pattern)
    found = {int(m.group(1)) for key in state if (m := regex.match(key))}
    return max(found) + 1 if found else 0


def _infer_vit(state: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    proj = state["image_encoder.patch_embed.proj.weight"]
    embed_dim, in_chans, patch = int(proj.shape[0]), int(proj.shape[1]), int(proj.shape[2])
    depth = _count(state, r"image_encoder\.blocks\.(\d+)\.")
    enc: dict[str, Any] = {
        "type": "vit", "patch_size": patch, "in_chans": in_chans, "embed_dim": embed_dim, "depth": depth,
        "mlp_ratio": state["image_encoder.blocks.0.mlp.lin1.weight"].shape[0] / embed_dim,
        "out_chans": int(state["image_encoder.neck.0.weight"].shape[0]),
        "qkv_bias": "image_encoder.blocks.0.attn.qkv.bias" in state,
        "norm_eps": _VIT_DEFAULTS["norm_eps"], "act": _VIT_DEFAULTS["act"],
        "use_abs_pos": "image_encoder.pos_embed" in state,
        "use_rel_pos": "image_encoder.blocks.0.attn.rel_pos_h" in state,
    }
    adapter = state.get("image_encoder.blocks.0.Adapter.channel.0.weight")
    enc["adapter_hidden"] = int(adapter.shape[0]) if adapter is not None else None
    sizes = []
    if enc["use_rel_pos"]:
        head_dim = int(state["image_encoder.blocks.0.attn.rel_pos_h"].shape[1])
        enc["num_heads"] = embed_dim // head_dim
        sizes = [(int(state[f"image_encoder.blocks.{i}.attn.rel_pos_h"].shape[0]) + 1) // 2 for i in range(depth)]
    else:
        enc["num_heads"] = max(embed_dim // 64, 1)  # SAM's head dim
    if enc["use_abs_pos"]:
        grid = int(state["image_encoder.pos_embed"].shape[1])
    elif sizes:
        grid = max(sizes)
    else:
        grid = _VIT_DEFAULTS["img_size"] // patch
    enc["img_size"] = grid * patch
    if sizes:
        global_blocks = [i for i, size in enumerate(sizes) if size == grid]
        windows = {size for size in sizes if size != grid}
        if len(windows) > 1:
            raise ConfigError(f"blocks use different window sizes {sorted(windows)}; pass a config")
        enc["window_size"] = windows.pop() if windows else 0
        enc["global_attn_indexes"] = global_blocks
    else:
        enc["window_size"] = _VIT_DEFAULTS["window_size"]
        enc["global_attn_indexes"] = sam_global_attn_indexes(depth)
    return enc


def _infer_tiny_vit(state: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    stem = state["image_encoder.patch_embed.seq.0.c.weight"]
    stages = _count(state, r"image_encoder\.layers\.(\d+)\.")
    dims = [int(state["image_encoder.patch_embed.seq.2.c.weight"].shape[0])]
    depths = [_count(state, rf"image_encoder\.layers\.{i}\.blocks\.(\d+)\.") for i in range(stages)]
    heads, windows = [_TINY_VIT_DEFAULTS["num_heads"][0]], [_TINY_VIT_DEFAULTS["window_sizes"][0]]
    for i in range(1, stages):
        dims.append(int(state[f"image_encoder.layers.{i - 1}.downsample.conv1.c.weight"].shape[0]))
        biases = state[f"image_encoder.layers.{i}.blocks.0.attn.attention_biases"]
        heads.append(int(biases.shape[0]))
        windows.append(math.isqrt(int(biases.shape[1])))
    kernel = int(stem.shape[-1])
    return {
        "type": "tiny_vit", "img_size": _TINY_VIT_DEFAULTS["img_size"], "in_chans": int(stem.shape[1]),
        "embed_dims": dims, "depths": depths, "num_heads": heads, "window_sizes": windows,
        "mlp_ratio": state["image_encoder.layers.1.blocks.0.mlp.fc1.weight"].shape[0] / dims[1],
        "mbconv_expand_ratio": state["image_encoder.layers.0.blocks.0.conv1.c.weight"].shape[0] / dims[0],
        "local_conv_size": int(state["image_encoder.layers.1.blocks.0.local_conv.c.weight"].shape[-1]),
        "stem_kernel": kernel, "stem_stride": 1 if kernel == 1 else 2,
        "merge_strides": [2] * (stages - 2) + [1],
        "neck_out": int(state["image_encoder.neck.0.weight"].shape[0]),
    }


def _infer_student(state: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    dims = [int(state["image_encoder.stem.2.c.weight"].shape[0])]
    depths = [_count(state, r"image_encoder\.stage0\.blocks\.(\d+)\.")]
    heads, windows = [_STUDENT_DEFAULTS["num_heads"][0]], [_STUDENT_DEFAULTS["window_sizes"][0]]
    for i in range(1, 4):
        biases = state[f"image_encoder.stage{i}.blocks.0.attn.attention_biases"]
        dims.append(int(state[f"image_encoder.stage{i}.blocks.0.attn.qkv.weight"].shape[1]))
        depths.append(_count(state, rf"image_encoder\.stage{i}\.blocks\.(\d+)\."))
        heads.append(int(biases.shape[0]))
        windows.append(math.isqrt(int(biases.shape[1])))
    return {
        "type": "student", "img_size": _STUDENT_DEFAULTS["img_size"], "in_chans": int(state["image_encoder.stem.0.c.weight"].shape[1]),
        "embed_dims": dims, "depths": depths, "num_heads": heads, "window_sizes": windows,
        "mlp_ratio": state["image_encoder.stage1.blocks.0.mlp.fc1.weight"].shape[0] / dims[1],
        "mbconv_expand_ratio": state["image_encoder.stage0.blocks.0.conv1.c.weight"].shape[0] / dims[0],
        "local_conv_size": int(state["image_encoder.stage1.blocks.0.local_conv.c.weight"].shape[-1]),
        "neck_out": int(state["image_encoder.neck.0.weight"].shape[0]),
    }


def infer_config(state: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """Canonical configuration read off a state dict's keys and shapes.

    What shapes cannot tell takes SAM's defaults: decoder heads (8), activations, LayerNorm eps, and for a
    TinyViT its input size (256) and merge strides (2, ..., 2, 1).

    Raises:
        ConfigError: the state dict is not a SAM-style model.
    """
    try:
        if "image_encoder.patch_embed.proj.weight" in state:
            encoder = _infer_vit(state)
        elif "image_encoder.patch_embed.seq.0.c.weight" in state:
            encoder = _infer_tiny_vit(state)
        elif "image_encoder.stem.0.c.weight" in state:
            encoder = _infer_student(state)
        else:
            raise ConfigError("state dict has no ViT, TinyViT or student image encoder (no image_encoder.patch_embed or .stem)")
        dim = int(state["mask_decoder.iou_token.weight"].shape[1])
        cross = state["mask_decoder.transformer.layers.0.cross_attn_token_to_image.q_proj.weight"]
        decoder = {
            "transformer_dim": dim,
            "num_multimask_outputs": int(state["mask_decoder.mask_tokens.weight"].shape[0]) - 1,
            "iou_head_depth": _count(state, r"mask_decoder\.iou_prediction_head\.layers\.(\d+)\.weight"),
            "iou_head_hidden_dim": int(state["mask_decoder.iou_prediction_head.layers.0.weight"].shape[0]),
            "transformer": {
                "depth": _count(state, r"mask_decoder\.transformer\.layers\.(\d+)\."),
                "embedding_dim": dim,
                "mlp_dim": int(state["mask_decoder.transformer.layers.0.mlp.lin1.weight"].shape[0]),
                "attention_downsample_rate": dim // int(cross.shape[0]),
            },
        }
        prompt = {
            "embed_dim": int(state["prompt_encoder.point_embeddings.0.weight"].shape[1]),
            "mask_in_chans": int(state["prompt_encoder.mask_downscaling.3.weight"].shape[0]),
        }
    except KeyError as exc:
        raise ConfigError(f"cannot infer the architecture: state dict lacks {exc.args[0]!r}") from None
    return normalize_config({"image_encoder": encoder, "prompt_encoder": prompt, "mask_decoder": decoder})


# ---------------------------------------------------------------------------------------------- registry


def _vit_config(family: str, img_size: int, adapter: bool, embed_dim: int, depth: int, num_heads: int, global_attn_indexes, **overrides: Any) -> dict[str, Any]:
    decoder_keys = {"transformer_dim", "num_multimask_outputs", "iou_head_depth", "iou_head_hidden_dim"}
    encoder = {
        "img_size": img_size, "embed_dim": embed_dim, "depth": depth, "num_heads": num_heads,
        "global_attn_indexes": list(global_attn_indexes), "adapter_hidden": int(embed_dim * 0.25) if adapter else None,
    }
    decoder: dict[str, Any] = {}
    transformer: dict[str, Any] = {}
    for key, value in overrides.items():
        if key in decoder_keys:
            decoder[key] = value
        elif key.startswith("decoder_"):
            transformer[key.removeprefix("decoder_")] = value
        else:
            encoder[key] = value
    if transformer:
        decoder["transformer"] = transformer
    return normalize_config({"family": family, "image_encoder": encoder, "mask_decoder": decoder})


def sam_med2d_vit_b_config(img_size: int = 256, adapter: bool = True, embed_dim: int = 768, depth: int = 12, num_heads: int = 12,
                           global_attn_indexes=(2, 5, 8, 11), **overrides: Any) -> dict[str, Any]:
    """SAM-Med2D ViT-B: 256 input, 16 x 16 grid, adapters. Other keywords: any ViT setting (`window_size`,
    `patch_size`, `out_chans`, ...), decoder settings (`transformer_dim`, ...) and transformer settings
    prefixed `decoder_` (`decoder_num_heads`, ...)."""
    return _vit_config("sam_med2d", img_size, adapter, embed_dim, depth, num_heads, global_attn_indexes, **overrides)


def sam_vit_b_config(img_size: int = 1024, adapter: bool = False, embed_dim: int = 768, depth: int = 12, num_heads: int = 12,
                     global_attn_indexes=(2, 5, 8, 11), **overrides: Any) -> dict[str, Any]:
    """Original SAM ViT-B at 1024, no adapters (keywords as for `sam_med2d_vit_b_config`)."""
    return _vit_config("sam", img_size, adapter, embed_dim, depth, num_heads, global_attn_indexes, **overrides)


def lite_medsam_config(**overrides: Any) -> dict[str, Any]:
    """LiteMedSAM: TinyViT (64/128/160/320) at 256 input with a 64 x 64 embedding grid, SAM's decoder.
    Keywords: any TinyViT setting (`embed_dims`, `depths`, ...)."""
    return normalize_config({"family": "lite_medsam", "image_encoder": {"type": "tiny_vit", **overrides}})


def student_config(**overrides: Any) -> dict[str, Any]:
    """The distilled student: LiteMedSAM's TinyViT at half resolution with an upsampling neck (`student.py`),
    same 256 input, 64 x 64 grid and decoder. Keywords: any student setting (`depths`, `window_sizes`, ...)."""
    return normalize_config({"family": "lite_medsam", "image_encoder": {"type": "student", **overrides}})


@dataclass(frozen=True)
class ModelSpec:
    """A named variant: its configuration builder and, when public weights exist, how to fetch them."""

    config: Callable[..., dict[str, Any]]
    description: str
    fetch_weights: Callable[[], Path] | None = None


MODELS: dict[str, ModelSpec] = {
    "sam_med2d_vit_b": ModelSpec(sam_med2d_vit_b_config, "SAM-Med2D ViT-B, 256 input, adapters"),
    "sam_vit_b": ModelSpec(sam_vit_b_config, "original SAM ViT-B, 1024 input, no adapters"),
    "lite_medsam": ModelSpec(lite_medsam_config, "LiteMedSAM (TinyViT encoder), released weights", checkpoints.fetch_lite_medsam),
    "lite_medsam_clicks": ModelSpec(
        lite_medsam_config,
        "LiteMedSAM's released encoder with its prompt encoder and decoder fine-tuned for clicks (export/weights)",
        checkpoints.fetch_lite_medsam_clicks,
    ),
    "student": ModelSpec(
        student_config,
        "distilled student encoder (half-resolution TinyViT, ~5x fewer FLOPs) with lite_medsam_clicks' decoder (export/weights)",
        checkpoints.fetch_student,
    ),
}


def list_models() -> list[str]:
    return sorted(MODELS)


def build_model(name: str, **overrides: Any) -> SamModel:
    """Randomly initialised model of a registered variant (eval mode); keywords override its settings."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; known: {list_models()}")
    return model_from_config(MODELS[name].config(**overrides))


def load_model(checkpoint: str | Path, config: Mapping[str, Any] | str | Path | None = None) -> SamModel:
    """Load a model with its weights, strictly.

    Args:
        checkpoint: a checkpoint path (.pth / .pt raw state dict or {'model': state dict}, or .safetensors), or
            a registered name with public weights ("lite_medsam", "lite_medsam_clicks"), fetched and verified on
            first use.
        config: configuration dict or JSON path; inferred from the state dict when None.

    Returns:
        The model in eval mode; `model.checkpoint_path` says where the weights came from.

    Raises:
        CheckpointError: unreadable checkpoint, or keys / shapes that do not match the architecture.
        ConfigError: a configuration that cannot be built.
    """
    name = str(checkpoint)
    if name in MODELS and not Path(name).exists():
        spec = MODELS[name]
        if spec.fetch_weights is None:
            raise ValueError(f"{name!r} has no downloadable weights; pass the path of a checkpoint")
        path = spec.fetch_weights()
        config = spec.config() if config is None else config
    else:
        path = Path(checkpoint)
    state = checkpoints.read_checkpoint(path)
    model = model_from_config(config if config is not None else infer_config(state))
    checkpoints.load_state_dict_strict(model, state)
    model.checkpoint_path = str(path)
    return model.eval()
