"""Build a deployable bundle from a checkpoint.

    python export/build.py --target onnx-fp32                      # default model (lite_medsam), fetched once
    python export/build.py --target ov-int8                        # int8 encoder, gated on held-out Dice
    python export/build.py --target auto                           # the best target for this machine
    python export/build.py --target onnx-fp32 --checkpoint my.pth --out bundles/mine
    python export/build.py --target ov-int8 --model student                # the distilled student, int8
    python export/build.py --target ov-int8 --finetune-data DATA --distill student --teacher lite_medsam --dry-run

With --finetune-data and/or --distill the build first runs the training chain (fine-tune -> distill), each stage
cached by content (export/pipeline.py): a rerun with the same inputs skips finished stages, and the bundle step is
skipped when the output folder already holds a passed bundle of the same checkpoint, target and export settings.

Every graph is verified against PyTorch on real images (the development set at $SAMMED_DATA or
../shared/data/medseg-dev, else synthetic phantoms) before the bundle is written; reduced-precision targets must
also pass the accuracy gate on held-out data. A failed check raises with the numbers and leaves no bundle.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import torch

from sammed_edge.export.bundler import TARGETS, BuildOptions, build_bundle
from sammed_edge.export.calibration import calibration_set
from sammed_edge.export.gate import GateError
from sammed_edge.export.quantize import OPENVINO_PRESETS
from sammed_edge.export.graphs import (DECODER_FORMS, EMBEDDING_LAYOUTS, ENCODER_FORMS, EXPORTERS, SOFTMAX_PLACEMENTS,
                                       VerificationError)
from sammed_edge.export import pipeline
from sammed_edge.export.train.data import default_pool
from sammed_edge.export.models import list_models, load_model
from sammed_edge.export.models.registry import MODELS
from sammed_edge.export.targets import choose_target
from sammed_edge.runtime.samples import sample_images

# LiteMedSAM with its prompt encoder and decoder fine-tuned for clicks (export/weights/README.md); "lite_medsam"
# keeps the released, box-trained decoder.
DEFAULT_MODEL = "lite_medsam_clicks"


def student_models() -> list[str]:
    """Registered models whose image encoder is a distillation student."""
    return [name for name in list_models() if MODELS[name].config()["image_encoder"]["type"] == "student"]


def _summary(result, target, name, family) -> None:
    manifest = result.manifest
    check = manifest["verification"]
    rows = [("graph", "file", "precision", "MB", "max |exported - torch|", "of max |torch|", "judged by")]
    for graph, key in (("encoder", "embedding_max_abs"), ("decoder", "low_res_logits_max_abs")):
        entry, report = manifest["graphs"][graph], check[graph]
        rows.append((graph, entry["file"], entry["precision"], f"{entry['bytes'] / 2**20:.1f}", f"{report[key]:.2e}",
                     f"{report[key + '_scale']:.3g}", report["judged_by"]))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    print()
    for index, row in enumerate(rows):
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)))
        if index == 0:
            print("  ".join("-" * width for width in widths))
    print(f"\nbundle {result.path}  target {target.name} ({target.backend})  model {name} ({family})")
    print(f"fp32 graphs verified against PyTorch on {check['onnx_fp32']['encoder']['images']} images, "
          f"{check['onnx_fp32']['decoder']['prompt_sets']} prompt sets")
    fused = {g: e["fusion"] for g, e in manifest["graphs"].items() if e.get("fusion", {}).get("applied")}
    print("attention fused: " + (", ".join(f"{g} {sum(r['counts'].values())} x {r['op']}" for g, r in fused.items()) or "none"))
    if "predictor" in check:
        print(f"runtime Predictor masks agree with PyTorch on {check['predictor']['min_mask_agreement']:.4%} of pixels (worst prompt)")
    if "gate" in check:
        g = check["gate"]
        print(f"accuracy gate ({g['holdout_masks']} held-out masks, ground truth: {g['ground_truth']}): "
              f"box Dice {g['dice']['box']:.2f} vs fp32 {g['dice_fp32']['box']:.2f} (drop {g['drop']['box']:+.2f}, budget {g['budget']['box']}); "
              f"1-point Dice {g['dice']['points1']:.2f} vs {g['dice_fp32']['points1']:.2f} (drop {g['drop']['points1']:+.2f}, "
              f"budget {g['budget']['points1']}): {'passed' if g['passed'] else 'FAILED (not enforced: --no-gate)'}")
    print("time: " + ", ".join(f"{k} {v:.1f}s" for k, v in result.seconds.items()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Build a verified bundle (graphs + manifest) from a checkpoint.")
    parser.add_argument("--target", required=True, choices=sorted(TARGETS) + ["auto"],
                        help="; ".join(f"{t.name}: {t.description}" for t in TARGETS.values()) + "; auto: the best for this machine")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--model", choices=list_models(), help=f"registered model with public weights (default {DEFAULT_MODEL})")
    source.add_argument("--checkpoint", type=Path, help="checkpoint file (.pth/.pt/.safetensors)")
    parser.add_argument("--config", type=Path, help="model config JSON (default: inferred from the checkpoint)")
    parser.add_argument("--out", type=Path, help="bundle folder (default: out/<model>-<target>)")
    parser.add_argument("--exporter", choices=EXPORTERS, default=BuildOptions.exporter, help="ONNX exporter (see docs/exporters.md)")
    parser.add_argument("--opset", type=int, default=BuildOptions.opset)
    parser.add_argument("--no-slim", action="store_true", help="skip onnxslim graph cleanup")
    parser.add_argument("--decoder-form", choices=DECODER_FORMS, default=BuildOptions.decoder_form,
                        help="factored: the decoder's image-sized products reordered (same outputs, fewer FLOPs); "
                             "sam: the model's own forward (docs/exporters.md)")
    parser.add_argument("--encoder-form", choices=("auto",) + ENCODER_FORMS, default=BuildOptions.encoder_form,
                        help="auto: the target's measured choice (tokens for the OpenVINO targets where the encoder is TinyViT); "
                             "model: the model's own forward; tokens: TinyViT's attention stages on B x L x C tokens "
                             "(docs/exporters.md)")
    parser.add_argument("--embedding-layout", choices=("auto",) + EMBEDDING_LAYOUTS, default=BuildOptions.embedding_layout,
                        help="how the image embedding passes from encoder to decoder. auto: the target's measured choice "
                             "(tokens for the OpenVINO targets); nchw: SAM's 1 x C x h x w; tokens: 1 x h w x C, which the "
                             "decoder reads without a transpose (docs/exporters.md)")
    parser.add_argument("--decoder-softmax", choices=("auto",) + SOFTMAX_PLACEMENTS, default=BuildOptions.decoder_softmax,
                        help="where the factored decoder's token -> image attentions normalise their softmax. auto: the "
                             "target's measured choice; inside: between the two products, as SAM writes it (the "
                             "onnxruntime targets); after: the second product divided by the sums (the OpenVINO "
                             "targets, where it is faster) (docs/exporters.md)")
    parser.add_argument("--export-cache", type=Path, metavar="DIR",
                        help="keep the verified fp32 graphs here and reuse them in later builds of the same model, "
                             "export settings and checks (e.g. several targets of one checkpoint)")
    parser.add_argument("--verify-images", type=int, default=BuildOptions.verify_images, help="real images used by the checks")
    parser.add_argument("--data", type=Path, help="image folder in SAM-Med2D's layout for the checks")
    parser.add_argument("--calib", type=Path, help="calibration source: a dataset in SAM-Med2D's layout or a folder of images "
                                                   "(default: the development set, else pydicom's test images)")
    parser.add_argument("--calib-images", type=int, default=32, help="calibration images")
    parser.add_argument("--holdout", type=int, default=60, help="held-out masks scored by the accuracy gate")
    parser.add_argument("--nncf-preset", choices=OPENVINO_PRESETS, default=BuildOptions.nncf_preset,
                        help="ov-int8: asymmetric (mixed, the default) or symmetric (performance) int8 activations "
                             "(docs/quantization.md)")
    parser.add_argument("--no-fuse", action="store_true",
                        help="keep the unfused attention subgraphs (default: fused where measured faster, docs/fusion.md)")
    parser.add_argument("--no-gate", action="store_true", help="record the accuracy gate but do not fail on it (experiments)")
    parser.add_argument("--click-budget", type=float, default=BuildOptions.click_budget,
                        help="largest Dice drop after click 1 and after click 3 allowed for a reduced-precision decoder "
                             f"(default {BuildOptions.click_budget})")
    chain = parser.add_argument_group("training chain (fine-tune -> distill -> quantize -> export; docs/training.md)")
    chain.add_argument("--finetune-data", type=Path, nargs="+", default=[], metavar="DIR",
                       help="fine-tune the prompt encoder and decoder for clicks on these datasets first (split by source in rounds)")
    chain.add_argument("--finetune-epochs", type=int, default=pipeline.ChainOptions.finetune_epochs)
    chain.add_argument("--distill", metavar="STUDENT", choices=student_models(),
                       help="distil the (fine-tuned) teacher's encoder into this registered student architecture")
    chain.add_argument("--teacher", default=None, help="the chain's starting model: registered name or checkpoint (default: --model or lite_medsam)")
    chain.add_argument("--distill-data", type=Path, nargs="+", default=[], metavar="DIR", help="datasets of the distillation (default: --finetune-data)")
    chain.add_argument("--pool", type=Path, metavar="DIR", help="unlabeled images for distillation (default: unlabeled-pool beside the dataset)")
    chain.add_argument("--distill-epochs", type=int, default=pipeline.ChainOptions.distill_epochs)
    chain.add_argument("--prompt-epochs", type=int, default=0, help="distillation epochs with prompts in the loop")
    chain.add_argument("--work", type=Path, help="folder of the stage runs (default ~/.cache/sammed-edge/pipeline)")
    parser.add_argument("--dry-run", action="store_true", help="print the plan (stages, their cache status, the export) and stop")
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    parser.add_argument("-q", "--quiet", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s")
    log = logging.getLogger("sammed_edge.build")
    if args.threads:
        torch.set_num_threads(args.threads)

    if args.target == "auto":
        choice, reason = choose_target()
        print(f"auto: {choice} — {reason}")
        target = TARGETS[choice]
    else:
        target = TARGETS[args.target]
    missing = target.missing()
    if missing:
        print(f"target {target.name} cannot be built here: {', '.join(missing)} not installed", file=sys.stderr)
        return 2
    name = args.checkpoint.stem if args.checkpoint else (args.model or DEFAULT_MODEL)
    checkpoint = args.checkpoint or name
    options = BuildOptions(exporter=args.exporter, opset=args.opset, slim=not args.no_slim, verify_images=args.verify_images,
                           fuse=not args.no_fuse, gate=not args.no_gate, click_budget=args.click_budget, decoder_form=args.decoder_form,
                           encoder_form=args.encoder_form, embedding_layout=args.embedding_layout,
                           decoder_softmax=args.decoder_softmax, nncf_preset=args.nncf_preset, export_cache=args.export_cache)
    stages: list[pipeline.Stage] = []
    if args.finetune_data or args.distill:
        chain = pipeline.ChainOptions(
            teacher=str(args.teacher or args.checkpoint or args.model or "lite_medsam"), finetune_data=args.finetune_data,
            finetune_epochs=args.finetune_epochs, distill=args.distill, distill_data=args.distill_data,
            pool=args.pool if args.pool else (default_pool((args.distill_data or args.finetune_data or [None])[0]) if args.distill else None),
            distill_epochs=args.distill_epochs, prompt_epochs=args.prompt_epochs, work=args.work,
        )
        try:
            stages = pipeline.plan(chain)
        except (ValueError, FileNotFoundError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        name = args.distill or f"{Path(chain.teacher).stem}-finetuned"
    out = args.out or Path("out") / f"{name}-{target.name}"
    if args.dry_run:
        print(pipeline.describe(stages, target.name, out))
        return 0
    for stage in stages:
        checkpoint = stage.execute()
    if stages and pipeline.bundle_is_current(out, Path(checkpoint), target.name, options.exporter_record()):
        print(f"bundle {out} is current (same checkpoint, target and export settings): nothing to do")
        return 0
    log.info("… load %s", checkpoint)
    model = load_model(checkpoint, args.config)
    images = sample_images(args.verify_images, args.data)
    calibration = calibration_set(args.calib, args.calib_images, args.holdout) if target.reduced else None
    if calibration is not None:
        log.info("  calibration: %s", calibration.describe())
    options.verify_images = len(images)
    try:
        result = build_bundle(model, target, out, images, model_name=name, checkpoint=model.checkpoint_path,
                              options=options, calibration=calibration)
    except (VerificationError, GateError) as exc:
        print(f"build failed: {exc}\nno bundle was written", file=sys.stderr)
        return 1
    _summary(result, target, name, model.family)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
