"""`sammed-edge`: segment, evaluate, benchmark and inspect bundles, with numpy and one backend (no torch).

    sammed-edge info out/lite_medsam_clicks-onnx-fp32
    sammed-edge segment --bundle out/lite_medsam_clicks-onnx-fp32 --image ct.dcm --window abdomen --box 120 80 260 210
    sammed-edge evaluate --bundle out/lite_medsam_clicks-onnx-fp32 --modes box --out out/eval
    sammed-edge bench --bundle out/lite_medsam_clicks-onnx-fp32 --markdown docs/benchmarks.md
    sammed-edge segment --server http://127.0.0.1:8000 --image ct.dcm --window abdomen --box 120 80 260 210
    sammed-edge segment-volume --bundle out/lite_medsam_clicks-onnx-fp32 --image ct.nii.gz --slice 42 --box 120 80 160 130 --out seg.nii.gz
    sammed-edge serve --bundle out/lite_medsam_clicks-onnx-fp32     (the `serve` extra; see docs/serving.md)

Subcommands that live outside runtime/ (`serve`) are found through the `sammed_edge.commands` entry-point group
and imported only when asked for, so this module never imports them.
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


COMMANDS_GROUP = "sammed_edge.commands"
PLUGINS = {"serve": ("HTTP segmentation service on a bundle (the serve extra)", "serve")}


def _add_predictor_args(parser: argparse.ArgumentParser, required: bool = True) -> None:
    parser.add_argument("--bundle", type=Path, required=required, help="bundle folder (from export/build.py)")
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


def _segment_remote(args: argparse.Namespace, clicks: list, labels: list) -> tuple[np.ndarray, float, dict]:
    """Segment through a running service (`--server`): upload, one predict, the best mask."""
    from .client import Client, ServerError

    token = args.token_file.read_text().strip() if args.token_file else None
    try:
        with Client(args.server, token=token) as client:
            session = client.create_session(args.image, window=args.window, slice=args.slice, axis=args.axis,
                                            frame=args.frame)
            masks, iou, timings = client.predict(session["session"], points=clicks or None,
                                                 labels=labels or None, box=args.box,
                                                 multimask=bool(clicks) and args.box is None)
            client.delete(session["session"])
    except ServerError as exc:
        raise InputError(f"the server at {args.server} refused: {exc.message}") from None
    except ConnectionError as exc:
        raise InputError(str(exc)) from None
    return masks[0], float(iou[0]), {"encode_ms": session["encode_ms"], "predict_ms": timings.get("decode", 0.0)}


def _segment_local(args: argparse.Namespace, image: np.ndarray, clicks: list, labels: list[int]) -> tuple[np.ndarray, float, dict]:
    """Best mask, its predicted IoU and the timings of one prediction here; with --zoom, a small object's box (or
    the mask of the clicks) is segmented again in a window around it (`runtime.zoom`)."""
    from . import zoom

    predictor = _predictor(args)
    predictor.set_image(image)
    policy = zoom.policy_from_args(args)
    points = np.array(clicks, dtype=np.float64) if clicks else None
    box = np.array(args.box, dtype=np.float64) if args.box is not None else None

    def predict(window: zoom.Window | None) -> tuple[np.ndarray, float]:
        masks, iou, _ = predictor.predict(point_coords=points, point_labels=np.array(labels) if clicks else None, box=box,
                                          multimask_output=bool(clicks) and box is None, best_only=True, window=window)
        return masks[0], float(iou[0])

    window = zoom.box_window(policy, box, image.shape[:2])
    mask, iou = predict(window)
    if window is None and box is None:
        window = zoom.mask_window(policy, mask, points, image.shape[:2])
        if window is not None:
            mask, iou = predict(window)
    if window is not None:
        print(f"zoom: segmented in the window {list(window)}")
    return mask, iou, predictor.timings


def cmd_segment(args: argparse.Namespace) -> int:
    from .io import write_mask_png, write_overlay_png
    from .io.loading import load_for_segmentation, write_labels_like

    if (args.bundle is None) == (args.server is None):
        raise InputError("segment needs exactly one of --bundle (run here) and --server (a running service)")
    # read here too for a local run, an overlay or a label map (a remote run alone only uploads the file)
    loaded = None
    if args.server is None or args.overlay or args.labels_out:
        loaded = load_for_segmentation(args.image, window=args.window, frame=args.frame, index=args.slice, axis=args.axis)
    clicks = args.point + args.negative
    labels = [1] * len(args.point) + [0] * len(args.negative)
    if not clicks and args.box is None:
        raise InputError("segment needs a prompt: --box and/or --point / --negative")
    if args.server is not None:
        mask, best_iou, timings = _segment_remote(args, clicks, labels)
    else:
        mask, best_iou, timings = _segment_local(args, loaded.image, clicks, labels)
    out = args.out or Path(f"{Path(args.image).name.split('.')[0]}_mask.png")
    written = [write_mask_png(out, mask)]
    if args.overlay:
        written.append(write_overlay_png(args.overlay, loaded.image, mask))
    if args.labels_out:
        written.append(write_labels_like(args.labels_out, mask.astype(np.uint8), loaded))
    print(f"mask {mask.shape[1]}x{mask.shape[0]}, {int(mask.sum())} pixels, predicted IoU {best_iou:.3f}; "
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
    _add_predictor_args(segment, required=False)
    segment.add_argument("--server", help="segment on a running service (`sammed-edge serve`) at this URL instead of --bundle")
    segment.add_argument("--token-file", type=Path, help="bearer token for --server")
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
    from . import zoom

    zoom.add_arguments(segment)
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
    for name, (summary, _) in PLUGINS.items():
        # listed here for --help; `main` hands the arguments to the installed command before parsing
        sub.add_parser(name, help=summary, add_help=False)
    return parser


def run_plugin(name: str, argv: list[str]) -> int:
    """Run a subcommand registered in the `sammed_edge.commands` entry-point group (e.g. `serve`).

    Raises:
        SystemExit: the command or its extra is not installed (the message names the extra).
    """
    from importlib.metadata import entry_points

    extra = PLUGINS[name][1]
    found = [ep for ep in entry_points(group=COMMANDS_GROUP) if ep.name == name]
    if not found:
        raise SystemExit(f"sammed-edge {name}: not installed; install it with `pip install 'sammed-edge[{extra}]'`")
    try:
        command = found[0].load()
    except ImportError as exc:
        raise SystemExit(f"sammed-edge {name} needs the {extra} extra: pip install 'sammed-edge[{extra}]' ({exc})") from None
    return int(command(argv) or 0)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in PLUGINS:
        return run_plugin(argv[0], argv[1:])
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
