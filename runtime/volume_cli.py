"""The volume subcommands of `sammed-edge`: `segment-volume` (prompt one slice, propagate, write labels) and
`evaluate-volume` (3D Dice / NSD on labelled volumes, `evaluate_volume.py`).

    sammed-edge segment-volume --bundle B --image ct.nii.gz --slice 42 --box 120 80 160 130 --out seg.nii.gz
    sammed-edge segment-volume --bundle B --image series_dir/ --slice 10 --point 200 150 --out seg.nii.gz --dicom-seg seg.dcm
    sammed-edge evaluate-volume --bundle B --data ../shared/data/medvol-dev
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .errors import InputError
from .volume import PropagationSettings


def cmd_segment_volume(args: argparse.Namespace, make_predictor: Callable[..., Any]) -> int:
    from .io.loading import parse_window
    from .io.volume_writers import write_volume_dicom_seg, write_volume_nifti
    from .io.loading import read_volume
    from .progress import ProgressBar
    from .volume import VolumeSegmenter

    clicks = args.point + args.negative
    if not clicks and args.box is None:
        raise InputError("segment-volume needs a prompt on --slice: --box and/or --point / --negative")
    volume = read_volume(args.image, window=parse_window(args.window), axis=args.axis, series_uid=args.series_uid)
    index = volume.check_index(args.slice)
    if args.dicom_seg is not None and not volume.datasets:
        raise InputError("--dicom-seg needs a DICOM input (a series folder or a multi-frame file)")
    predictor = make_predictor(cache_size=volume.num_slices)
    settings = PropagationSettings(prompt=args.propagate_with, margin=args.margin)
    segmenter = VolumeSegmenter(predictor, volume, settings)
    first = segmenter.prompt(index, box=args.box, points=clicks or None,
                             point_labels=[1] * len(args.point) + [0] * len(args.negative) if clicks else None,
                             label=args.label)
    bar = ProgressBar("propagating", volume.num_slices - 1, enabled=not args.no_progress)
    seen = [0]

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.advance(done - seen[0])
        seen[0] = done

    run = segmenter.propagate(args.label, progress=progress)
    bar.close()
    labels = segmenter.label_volume()
    out = args.out or Path(f"{Path(args.image).name.split('.')[0]}_seg.nii.gz")
    written = [write_volume_nifti(out, labels, volume)]
    if args.dicom_seg is not None:
        written.append(write_volume_dicom_seg(args.dicom_seg, labels, volume, {args.label: args.name}))
    slices = run["slices"]
    print(f"slice {index}: {int(first.mask.sum())} pixels, predicted IoU {first.iou:.3f}; propagated to slices "
          f"{slices[0]}-{slices[-1]} ({len(slices)} slices, {int(labels.astype(bool).sum())} voxels) in {run['seconds']:.1f} s, "
          f"{predictor.cache_misses} encoder runs")
    for stop in run["stops"]:
        print(f"  {'up' if stop['direction'] > 0 else 'down'} from {stop['anchor']}: last slice {stop['last']} ({stop['reason']})")
    for path in written:
        print(f"wrote {path}")
    return 0


def cmd_evaluate_volume(args: argparse.Namespace, make_predictor: Callable[..., Any]) -> int:
    from . import evaluate_volume

    return evaluate_volume.run(args, make_predictor(cache_size=1024), label=args.bundle.name)


def add_commands(sub: Any, add_predictor_args: Callable[[argparse.ArgumentParser], None],
                 make_predictor: Callable[..., Any]) -> None:
    """Register `segment-volume` and `evaluate-volume` on `sammed-edge`'s subparsers.

    Args:
        sub: the subparsers action.
        add_predictor_args: adds --bundle, --backend, --threads.
        make_predictor: make_predictor(args, **predictor options) -> Predictor.
    """
    segment = sub.add_parser("segment-volume", help="prompt one slice of a volume, propagate, write a label volume")
    add_predictor_args(segment)
    segment.add_argument("--image", type=Path, required=True, help="NIfTI volume, DICOM series folder or multi-frame DICOM")
    segment.add_argument("--slice", type=int, required=True, help="the prompted slice (index along the slice axis)")
    segment.add_argument("--box", type=float, nargs=4, metavar=("X0", "Y0", "X1", "Y1"))
    segment.add_argument("--point", type=float, nargs=2, action="append", default=[], metavar=("X", "Y"), help="foreground click")
    segment.add_argument("--negative", type=float, nargs=2, action="append", default=[], metavar=("X", "Y"), help="background click")
    segment.add_argument("--window", help="one window for the volume: a preset (lung, abdomen, ...) or CENTER,WIDTH")
    segment.add_argument("--axis", type=int, default=2, help="NIfTI voxel axis slices are cut across")
    segment.add_argument("--series-uid", help="SeriesInstanceUID to read from a folder holding several series")
    segment.add_argument("--label", type=int, default=1, help="label value of the structure in the outputs")
    segment.add_argument("--name", default="Structure", help="segment label in the DICOM-SEG")
    segment.add_argument("--propagate-with", default=PropagationSettings.prompt, help="what a slice gives its neighbour (volume.PROMPTS)")
    segment.add_argument("--margin", type=float, default=PropagationSettings.margin, help="pixels added to the previous mask's box")
    segment.add_argument("--out", type=Path, help="label volume NIfTI (default: <image>_seg.nii.gz)")
    segment.add_argument("--dicom-seg", type=Path, help="also write a DICOM-SEG (DICOM input)")
    segment.add_argument("--no-progress", action="store_true")
    segment.set_defaults(func=lambda args: cmd_segment_volume(args, lambda **kw: make_predictor(args, **kw)))

    from . import evaluate_volume

    evaluate = sub.add_parser("evaluate-volume", help="3D Dice / NSD of propagation, oracle and lower bound on labelled volumes")
    add_predictor_args(evaluate)
    evaluate_volume.add_arguments(evaluate)
    evaluate.set_defaults(func=lambda args: cmd_evaluate_volume(args, lambda **kw: make_predictor(args, **kw)))


__all__ = ["add_commands", "cmd_evaluate_volume", "cmd_segment_volume"]
