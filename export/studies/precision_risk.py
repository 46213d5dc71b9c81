"""How much accuracy fp16 / bf16 inference costs, measured in PyTorch: the evidence for pinning layers to fp32.

    python -m sammed_edge.export.studies.precision_risk [--model lite_medsam] [--images 8] [--device cpu|cuda]

The encoder and decoder graphs' modules run under `torch.autocast` in the reduced dtype (matrix products and
convolutions reduced, torch's autocast policy for the rest), on real dev-set images with a box prompt per mask,
with and without the attention softmax forced to fp32; reported against fp32: the embedding's relative error
(max |diff| / max |fp32|), the low-res logits' error, and the share of mask pixels that flip.
"""

from __future__ import annotations

import argparse
import contextlib
import json
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from sammed_edge.runtime import metrics, processing
from sammed_edge.runtime.io.dataset import default_data_root, read_dataset
from sammed_edge.runtime.io.images import read_image, read_mask

from ..graphs import EncoderGraph, decoder_module
from ..models import load_model

VARIANTS = ("autocast", "autocast, attention softmax fp32")


@contextlib.contextmanager
def _softmax_fp32() -> Iterator[None]:
    """Softmax and scaled_dot_product_attention computed in fp32 while the context is active."""
    softmax, sdpa, tensor_softmax = F.softmax, F.scaled_dot_product_attention, torch.Tensor.softmax

    def fp32_softmax(x, dim=None, *args, **kwargs):
        with torch.autocast(x.device.type, enabled=False):
            # the saved method: F.softmax itself calls Tensor.softmax, which is patched below
            return tensor_softmax(x.float(), dim).to(x.dtype)

    def fp32_sdpa(q, k, v, attn_mask=None, *args, **kwargs):
        mask = attn_mask.float() if attn_mask is not None and attn_mask.is_floating_point() else attn_mask
        with torch.autocast(q.device.type, enabled=False):
            return sdpa(q.float(), k.float(), v.float(), mask, *args, **kwargs).to(q.dtype)

    F.softmax, F.scaled_dot_product_attention = fp32_softmax, fp32_sdpa
    torch.softmax = fp32_softmax
    torch.Tensor.softmax = lambda self, dim=None, *a, **k: fp32_softmax(self, dim)
    try:
        yield
    finally:
        F.softmax, F.scaled_dot_product_attention, torch.softmax, torch.Tensor.softmax = softmax, sdpa, softmax, tensor_softmax


def _graphs(model_name: str, device: str) -> tuple[nn.Module, nn.Module]:
    model = load_model(model_name).eval().to(device)
    return EncoderGraph(model), decoder_module(model)  # the decoder in the form the build ships


def _run(encoder: nn.Module, decoder: nn.Module, tensor: torch.Tensor, boxes: list[np.ndarray], geometry, policy) -> tuple[np.ndarray, list[np.ndarray]]:
    """Embedding and, per box, the single-mask low-res logits."""
    with torch.no_grad():
        embedding = encoder(tensor)
        logits = []
        for box in boxes:
            feeds = processing.decoder_inputs(processing.check_prompts(geometry, policy, box=box), geometry, policy)
            inputs = {k: torch.from_numpy(v).to(tensor.device) for k, v in feeds.items()}
            _, low = decoder(embedding, inputs["point_coords"], inputs["point_labels"], inputs["mask_input"], inputs["has_mask_input"])
            logits.append(low[0, 0].float().cpu().numpy())
    return embedding.float().cpu().numpy(), logits


def measure(model_name: str, images: int, dtype: torch.dtype, device: str, root: str | Path | None = None) -> dict[str, Any]:
    """The risk measure on `images` images spread over the dataset at `root` (default: the development set)."""
    root = root if root is not None else default_data_root()
    if root is None:
        raise FileNotFoundError("no dataset: set SAMMED_DATA or pass its folder")
    items = read_dataset(root)
    by_image: dict[str, list] = {}
    for item in items:
        by_image.setdefault(str(item.image), []).append(item)
    chosen = sorted(by_image)[:: max(1, len(by_image) // images)][:images]
    graphs = _graphs(model_name, device)
    policy = load_model(model_name).processing_policy()
    rows: dict[str, dict[str, list[float]]] = {v: {"embedding": [], "logits": [], "flipped": []} for v in VARIANTS}
    for path in chosen:
        image = read_image(path)
        tensor, geometry = processing.preprocess_image(image, policy)
        tensor = torch.from_numpy(tensor).to(device)
        boxes = [metrics.box_from_mask(read_mask(item.mask)) for item in by_image[path]]
        ref_embedding, ref_logits = _run(*graphs, tensor, boxes, geometry, policy)
        for variant in VARIANTS:
            softmax = _softmax_fp32() if "softmax" in variant else contextlib.nullcontext()
            with softmax, torch.autocast(device_type=device.split(":")[0], dtype=dtype):
                embedding, logits = _run(*graphs, tensor, boxes, geometry, policy)
            rows[variant]["embedding"].append(float(np.abs(embedding - ref_embedding).max() / np.abs(ref_embedding).max()))
            for ours, ref in zip(logits, ref_logits):
                rows[variant]["logits"].append(float(np.abs(ours - ref).max() / np.abs(ref).max()))
                rows[variant]["flipped"].append(float(((ours > 0) != (ref > 0)).mean()))
    return {
        "model": model_name, "dtype": str(dtype).replace("torch.", ""), "device": device, "images": len(chosen),
        "masks": len(rows[VARIANTS[0]]["flipped"]),
        "variants": {v: {"embedding_rel_max": max(r["embedding"]), "logits_rel_max": max(r["logits"]),
                         "flipped_mean": float(np.mean(r["flipped"])), "flipped_max": max(r["flipped"])} for v, r in rows.items()},
    }


def markdown(result: dict[str, Any]) -> str:
    lines = [f"`{result['model']}` in {result['dtype']} on {result['device']}, {result['images']} dev-set images, "
             f"{result['masks']} box prompts (decoder single-mask output, low-res logits at 256 x 256):", "",
             "| variant | embedding max rel. error | logits max rel. error | mask pixels flipped (mean / worst) |",
             "|---|---:|---:|---:|"]
    for name, row in result["variants"].items():
        lines.append(f"| {name} | {row['embedding_rel_max']:.2e} | {row['logits_rel_max']:.2e} | "
                     f"{row['flipped_mean']:.4%} / {row['flipped_max']:.4%} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="lite_medsam")
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--dtype", choices=("float16", "bfloat16"), default="float16")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    result = measure(args.model, args.images, getattr(torch, args.dtype), args.device)
    print(markdown(result))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(result, handle, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
