"""`sammed-edge`: segment, evaluate, benchmark and inspect bundles, with numpy and one backend (no torch).

    sammed-edge info out/lite_medsam_clicks-onnx-fp32
    sammed-edge segment --bundle out/lite_medsam_clicks-onnx-fp32 --image ct.dcm --window abdomen --box 120 80 260 210
    sammed-edge evaluate --bundle out/lite_medsam_clicks-onnx-fp32 --modes box --out out/eval
    sammed-edge bench --bundle out/lite_medsam_clicks-onnx-fp32 --markdown docs/benchmarks.md
    sammed-edge segment-volume --bundle out/lite_medsam_clicks-onnx-fp32 --image ct.nii.gz --slice 42 --box 120 80 160 130 --out seg.nii.gz
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InputError


def _add_predictor_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bundle", type=Path, required=True, help="bundle folder (from export/build.py)")
    parser.add_argument("--backend", help="backend (default: the bundle's target backend)")
    parser.add_argument("--threads", type=int, help="CPU threads per graph (default: the backend's choice)")


def _predictor(args: argparse.Namespace, **kwargs: Any):
    from .predictor import Predictor

    return Predictor.from_bundle(args.bundle, backend=args.backend, threads=args.threads, **kwargs)


# ------------------------------------------------------------------------------------------------- info


def cmd_info(args: argparse.Namespace) -> int:
    from .bundle import load_bundle

    bundle = load_bundle(args.bundle, verify_hashes=not args.no_verify)
    manifest = bundle.manifest
    if args.json:
        print(json.dumps(manifest, indent=2))
        return 0
    prov = manifest["provenance"]
    print(f"bundle      {bundle.root}")
    print(f"schema      {manifest['schema']} v{manifest['schema_version']} (hashes {'verified' if not args.no_verify else 'not checked'})")
    print(f"model       {manifest['model']['name']} (family {manifest['model']['family']})")
    print(f"target      {manifest['target']['name']} on {manifest['target']['backend']}, precision {manifest['target']['precision']}")
    policy = manifest["processing"]
    print(f"processing  input {policy['input_size']}, {policy['resize']} / {policy['interpolation']}, {policy['normalize']}, low-res {policy['low_res_size']}")
    for name, graph in manifest["graphs"].items():
        ins = ", ".join(f"{s['name']}{s['shape']}" for s in graph["contract"]["inputs"])
        outs = ", ".join(f"{s['name']}{s['shape']}" for s in graph["contract"]["outputs"])
        print(f"{name:<11} {graph['file']} {graph.get('bytes', 0) / 2**20:.1f} MB sha256 {graph['sha256'][:16]}…  {ins} -> {outs}")
    check = manifest["verification"]
    print(f"verified    {'passed' if check.get('passed') else 'NOT passed'}: " + "; ".join(
        f"{k} " + ", ".join(f"{m}={v:.2e}" for m, v in r.items() if m.endswith("max_abs"))
        for k, r in check.items() if isinstance(r, dict) and k in ("encoder", "decoder")))
    print(f"provenance  checkpoint sha256 {str(prov['checkpoint'].get('sha256'))[:16]}…, created {prov['created']}, "
          + ", ".join(f"{k} {v}" for k, v in prov["tools"].items()))
    return 0


# ------------------------------------------------------------------------------------------------ bench


def cmd_bench(args: argparse.Namespace) -> int:
    from . import bench

    if args.compare:
        if args.markdown:
            raise SystemExit("--markdown updates a single bundle's section; with --compare use --json")
        bundles: dict[str, Path] = {}
        for path in (args.bundle, *args.compare):  # a bundle given twice (a noise check) gets a second row
            name, copy = str(path), 2
            while name in bundles:
                name, copy = f"{path}#{copy}", copy + 1
            bundles[name] = path
        result = bench.compare_bundles(bundles, rounds=args.rounds, threads=args.threads)
        if args.json:
            args.json.write_text(json.dumps(result, indent=1) + "\n")
        print(bench.compare_markdown(result))
        return 0
    result = bench.run_benchmark(args.bundle, runs=args.runs, threads=args.threads, reference=not args.no_reference, cold_runs=args.cold_runs)
    bench.write_report(result, args.markdown, args.json)
    print(bench.markdown(result))
    return 0


# --------------------------------------------------------------------------------------------- evaluate


def cmd_evaluate(args: argparse.Namespace) -> int:
    from . import evaluate

    return evaluate.run(args, _predictor(args, cache_size=4), label=f"{args.bundle.name}")


# ---------------------------------------------------------------------------------------------- segment


def cmd_segment(args: argparse.Namespace) -> int:
    from .io import write_mask_png, write_overlay_png
    from .io.loading import load_for_segmentation, write_labels_like

    loaded = load_for_segmentation(args.image, window=args.window, frame=args.frame, index=args.slice, axis=args.axis)
    clicks = args.point + args.negative
    if not clicks and args.box is None:
        raise InputError("segment needs a prompt: --box and/or --point / --negative")
    predictor = _predictor(args)
    predictor.set_image(loaded.image)
    masks, iou, _ = predictor.predict(
        point_coords=np.array(clicks, dtype=np.float64) if clicks else None,
        point_labels=np.array([1] * len(args.point) + [0] * len(args.negative)) if clicks else None,
        box=np.array(args.box) if args.box is not None else None,
        multimask_output=bool(clicks) and args.box is None,
        best_only=True,
    )
    mask = masks[0]
    out = args.out or Path(f"{Path(args.image).name.split('.')[0]}_mask.png")
    written = [write_mask_png(out, mask)]
    if args.overlay:
        written.append(write_overlay_png(args.overlay, loaded.image, mask))
    if args.labels_out:
        written.append(write_labels_like(args.labels_out, mask.astype(np.uint8), loaded))
    timings = predictor.timings
    print(f"mask {mask.shape[1]}x{mask.shape[0]}, {int(mask.sum())} pixels, predicted IoU {float(iou[0]):.3f}; "
          f"encoder {timings.get('encode_ms', 0):.0f} ms, click {timings.get('predict_ms', 0):.0f} ms")
    for path in written:
        print(f"wrote {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sammed-edge", description="Promptable medical segmentation on a bundle (no torch).")
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    info = sub.add_parser("info", help="print a bundle's manifest")
    info.add_argument("bundle", type=Path)
    info.add_argument("--json", action="store_true", help="the whole manifest as JSON")
    info.add_argument("--no-verify", action="store_true", help="skip the artifact hash check")
    info.set_defaults(func=cmd_info)

    segment = sub.add_parser("segment", help="image + prompts -> mask file")
    _add_predictor_args(segment)
    segment.add_argument("--image", type=Path, required=True, help="PNG/JPEG/TIFF, DICOM (.dcm) or NIfTI (.nii, .nii.gz)")
    segment.add_argument("--box", type=float, nargs=4, metavar=("X0", "Y0", "X1", "Y1"))
    segment.add_argument("--point", type=float, nargs=2, action="append", default=[], metavar=("X", "Y"), help="foreground click")
    segment.add_argument("--negative", type=float, nargs=2, action="append", default=[], metavar=("X", "Y"), help="background click")
    segment.add_argument("--window", help="DICOM/NIfTI window: a preset (brain, lung, abdomen, bone) or CENTER,WIDTH")
    segment.add_argument("--frame", type=int, default=0, help="frame of a multi-frame DICOM")
    segment.add_argument("--slice", type=int, help="NIfTI slice index (default: middle)")
    segment.add_argument("--axis", type=int, default=2, help="NIfTI slice axis")
    segment.add_argument("--out", type=Path, help="mask PNG (default: <image>_mask.png)")
    segment.add_argument("--overlay", type=Path, help="also write the image with the mask overlaid")
    segment.add_argument("--labels-out", type=Path, help="also write a NIfTI label map aligned with a DICOM/NIfTI input")
    segment.set_defaults(func=cmd_segment)

    evaluate = sub.add_parser("evaluate", help="Dice on a dataset in SAM-Med2D's layout (box, points, click protocol)")
    _add_predictor_args(evaluate)
    from . import evaluate as evaluation

    evaluation.add_arguments(evaluate)
    evaluate.set_defaults(func=cmd_evaluate)

    bench = sub.add_parser("bench", help="latency, cold start and peak memory, with the PyTorch reference")
    _add_predictor_args(bench)
    bench.add_argument("--runs", type=int, default=20)
    bench.add_argument("--cold-runs", type=int, default=5, help="fresh processes for the cold-start measure")
    bench.add_argument("--no-reference", action="store_true", help="skip the PyTorch eager reference")
    bench.add_argument("--compare", type=Path, nargs="+", metavar="BUNDLE",
                       help="time these bundles and --bundle in turns in one process (encoder and click), with ratios "
                            "against --bundle, instead of the single-bundle report")
    bench.add_argument("--rounds", type=int, default=15, help="rounds of --compare")
    bench.add_argument("--markdown", type=Path, help="Markdown file to update (e.g. docs/benchmarks.md)")
    bench.add_argument("--json", type=Path, help="write the report as JSON")
    bench.set_defaults(func=cmd_bench)

    from . import volume_cli

    volume_cli.add_commands(sub, _add_predictor_args, _predictor)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    from .backends import BackendError
    from .bundle import BundleError

    try:
        status = args.func(args)
        sys.stdout.flush()  # a reader that went away shows up here rather than as a traceback at exit
        return status
    except (InputError, BundleError, BackendError, FileNotFoundError) as exc:
        print(f"sammed-edge {args.command}: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # the output's reader closed early (`sammed-edge info B | head`): stop quietly, as shell tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
