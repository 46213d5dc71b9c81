"""Segment images with a PyTorch model through the reference predictor, and write masks and overlays.

    python -m sammed_edge.export.segment                      # lite_medsam, box prompts, dev-set samples
    python -m sammed_edge.export.segment --image ct.png --box 120 80 260 210
    python -m sammed_edge.export.segment --checkpoint my.pth --image x.png --point 140 120

Without --image it takes a few images of the development set ($SAMMED_DATA or ../shared/data/medseg-dev), prompts
each with the box of its ground-truth mask and reports Dice; without that folder it uses a synthetic phantom.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from sammed_edge.runtime.io import default_data_root, read_dataset, read_image, read_mask, write_mask_png, write_overlay_png
from sammed_edge.runtime.metrics import box_from_mask, dice

from .models import list_models, load_model
from .predictor import TorchPredictor

log = logging.getLogger("sammed_edge.segment")


@dataclass
class Job:
    name: str
    image: np.ndarray
    truth: np.ndarray | None
    box: np.ndarray | None
    points: np.ndarray | None
    labels: np.ndarray | None


def phantom(size: int = 320, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A synthetic grayscale 'lesion' (bright ellipse in noisy tissue) and its mask, for machines without data."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    mask = ((xx - 0.55 * size) / (0.18 * size)) ** 2 + ((yy - 0.45 * size) / (0.12 * size)) ** 2 <= 1.0
    body = ((xx - size / 2) / (0.45 * size)) ** 2 + ((yy - size / 2) / (0.4 * size)) ** 2 <= 1.0
    image = 20.0 + 70.0 * body + 90.0 * mask + rng.normal(0, 6, (size, size))
    return image.clip(0, 255).astype(np.uint8), mask


def sample_jobs(count: int) -> list[Job]:
    root = default_data_root()
    if root is None:
        log.warning("no dataset found (set SAMMED_DATA); using a synthetic phantom")
        image, mask = phantom()
        return [Job("phantom", image, mask, box_from_mask(mask), None, None)]
    items = read_dataset(root)
    picks = [items[i] for i in np.linspace(0, len(items) - 1, num=min(count, len(items))).round().astype(int)]
    jobs = []
    for item in picks:
        truth = read_mask(item.mask)
        jobs.append(Job(f"{item.modality or 'image'}:{item.mask.stem}", read_image(item.image), truth, box_from_mask(truth), None, None))
    return jobs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Segment images with a PyTorch model (reference predictor).")
    parser.add_argument("--model", default="lite_medsam", choices=list_models(), help="registered model with public weights")
    parser.add_argument("--checkpoint", type=Path, help="checkpoint file instead of --model")
    parser.add_argument("--config", type=Path, help="model config JSON (default: inferred from the checkpoint)")
    parser.add_argument("--image", type=Path, help="image to segment (PNG/JPEG/TIFF)")
    parser.add_argument("--box", type=float, nargs=4, metavar=("X0", "Y0", "X1", "Y1"), help="box prompt in pixels")
    parser.add_argument("--point", type=float, nargs=2, action="append", metavar=("X", "Y"), default=[], help="foreground click (repeatable)")
    parser.add_argument("--negative", type=float, nargs=2, action="append", metavar=("X", "Y"), default=[], help="background click (repeatable)")
    parser.add_argument("--samples", type=int, default=3, help="dev-set images to segment when no --image is given")
    parser.add_argument("--out", type=Path, default=Path("out/segment"), help="folder for masks and overlays")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--json", type=Path, help="also write the results table as JSON")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)

    log.info("loading %s", args.checkpoint or args.model)
    model = load_model(args.checkpoint or args.model, args.config)
    predictor = TorchPredictor(model)

    if args.image:
        clicks = args.point + args.negative
        if not clicks and args.box is None:
            parser.error("--image needs a prompt: --box and/or --point/--negative")
        points = np.array(clicks, dtype=np.float64) if clicks else None
        labels = np.array([1] * len(args.point) + [0] * len(args.negative)) if clicks else None
        box = np.array(args.box) if args.box is not None else None
        jobs = [Job(args.image.stem, read_image(args.image), None, box, points, labels)]
    else:
        jobs = sample_jobs(args.samples)

    rows = []
    for index, job in enumerate(jobs):
        start = time.perf_counter()
        predictor.set_image(job.image)
        encode_ms = (time.perf_counter() - start) * 1e3
        start = time.perf_counter()
        # A box alone is unambiguous (one mask); clicks are ambiguous, so take the best of the candidates.
        single = job.points is None
        masks, iou, _ = predictor.predict(job.points, job.labels, job.box, multimask_output=not single, best_only=True)
        decode_ms = (time.perf_counter() - start) * 1e3
        stem = f"{index:02d}_{job.name.split(':')[-1]}"
        write_mask_png(args.out / f"{stem}_mask.png", masks[0])
        write_overlay_png(args.out / f"{stem}_overlay.png", job.image, masks[0])
        rows.append({
            "image": job.name, "size": f"{job.image.shape[1]}x{job.image.shape[0]}", "encode_ms": round(encode_ms, 1),
            "decode_ms": round(decode_ms, 1), "iou_pred": round(float(iou[0]), 4),
            "dice": round(dice(masks[0], job.truth), 4) if job.truth is not None else None,
        })
    header = f"{'image':<48} {'size':>9} {'encode ms':>10} {'decode ms':>10} {'IoU pred':>9} {'Dice':>7}"
    print(header)
    print("-" * len(header))
    for row in rows:
        dice_text = f"{row['dice']:.4f}" if row["dice"] is not None else "-"
        print(f"{row['image'][:48]:<48} {row['size']:>9} {row['encode_ms']:>10.1f} {row['decode_ms']:>10.1f} {row['iou_pred']:>9.4f} {dice_text:>7}")
    print(f"masks and overlays in {args.out}/")
    if args.json:
        args.json.write_text(json.dumps({"model": str(args.checkpoint or args.model), "results": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
