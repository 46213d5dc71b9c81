"""Build a deployable bundle from a checkpoint.

    python export/build.py --target onnx-fp32                      # default model (lite_medsam), fetched once
    python export/build.py --target onnx-fp32 --checkpoint my.pth --out bundles/mine

Every graph is verified against PyTorch on real images (the development set at $SAMMED_DATA or
../shared/data/medseg-dev, else synthetic phantoms) before the bundle is written; a failed check raises with the
numbers and leaves no bundle.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import torch

from sammed_edge.export.bundler import TARGETS, BuildOptions, build_bundle
from sammed_edge.export.graphs import EXPORTERS, VerificationError
from sammed_edge.export.models import list_models, load_model
from sammed_edge.runtime.samples import sample_images

DEFAULT_MODEL = "lite_medsam"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Build a verified bundle (graphs + manifest) from a checkpoint.")
    parser.add_argument("--target", required=True, choices=sorted(TARGETS),
                        help="; ".join(f"{t.name}: {t.description}" for t in TARGETS.values()))
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--model", choices=list_models(), help=f"registered model with public weights (default {DEFAULT_MODEL})")
    source.add_argument("--checkpoint", type=Path, help="checkpoint file (.pth/.pt/.safetensors)")
    parser.add_argument("--config", type=Path, help="model config JSON (default: inferred from the checkpoint)")
    parser.add_argument("--out", type=Path, help="bundle folder (default: out/<model>-<target>)")
    parser.add_argument("--exporter", choices=EXPORTERS, default=BuildOptions.exporter, help="ONNX exporter (see docs/exporters.md)")
    parser.add_argument("--opset", type=int, default=BuildOptions.opset)
    parser.add_argument("--no-slim", action="store_true", help="skip onnxslim graph cleanup")
    parser.add_argument("--verify-images", type=int, default=BuildOptions.verify_images, help="real images used by the checks")
    parser.add_argument("--data", type=Path, help="image folder in SAM-Med2D's layout for the checks")
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    parser.add_argument("-q", "--quiet", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s")
    log = logging.getLogger("sammed_edge.build")
    if args.threads:
        torch.set_num_threads(args.threads)

    target = TARGETS[args.target]
    name = args.checkpoint.stem if args.checkpoint else (args.model or DEFAULT_MODEL)
    out = args.out or Path("out") / f"{name}-{target.name}"
    log.info("… load %s", args.checkpoint or name)
    model = load_model(args.checkpoint or name, args.config)
    images = sample_images(args.verify_images, args.data)
    options = BuildOptions(exporter=args.exporter, opset=args.opset, slim=not args.no_slim, verify_images=len(images))
    try:
        result = build_bundle(model, target, out, images, model_name=name, checkpoint=model.checkpoint_path, options=options)
    except VerificationError as exc:
        print(f"build failed: {exc}\nno bundle was written", file=sys.stderr)
        return 1

    manifest = result.manifest
    check = manifest["verification"]
    rows = [
        ("graph", "file", "MB", "nodes", "max |onnx - torch|", "of max |torch|"),
        ("encoder", "encoder.onnx", f"{manifest['graphs']['encoder']['bytes'] / 2**20:.1f}", str(manifest["graphs"]["encoder"]["nodes"]),
         f"{check['encoder']['embedding_max_abs']:.2e}", f"{check['encoder']['embedding_max_abs_scale']:.3g}"),
        ("decoder", "decoder.onnx", f"{manifest['graphs']['decoder']['bytes'] / 2**20:.1f}", str(manifest["graphs"]["decoder"]["nodes"]),
         f"{check['decoder']['low_res_logits_max_abs']:.2e}", f"{check['decoder']['low_res_logits_max_abs_scale']:.3g}"),
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    print()
    for index, row in enumerate(rows):
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)))
        if index == 0:
            print("  ".join("-" * width for width in widths))
    print(f"\nbundle {result.path}  target {target.name}  model {name} ({model.family})")
    print(f"verified on {check['encoder']['images']} images, {check['decoder']['prompt_sets']} prompt sets; runtime Predictor "
          f"masks agree on {check['predictor']['min_mask_agreement']:.4%} of pixels (worst prompt)")
    print("time: " + ", ".join(f"{k} {v:.1f}s" for k, v in result.seconds.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
