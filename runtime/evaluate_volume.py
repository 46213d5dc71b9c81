"""3D evaluation of slice propagation on labelled volumes (`images/<case>.nii.gz`, `labels/<case>.nii.gz`).

For every structure (a label value, or a region of several values named in `manifest.csv`'s `regions` column as
`name:v1,v2;...`) the slice where its ground truth is largest is prompted, and the mask propagated
(`volume.VolumeSegmenter`). Prompts of that slice: "box", the tight box of its ground truth (inclusive pixel indices,
`metrics.box_from_mask`); or "clicks", one click at the truth's interior (`metrics.interior_point`) and corrective
clicks at the largest error (`metrics.next_click`) on that slice only. Scores per structure: 3D Dice and NSD
(`metrics.surface_dice`, 2 mm, the volume's voxel spacing) of

    propagation: the propagated masks;
    oracle:      a tight ground-truth box on every slice where the structure exists (what box propagation could
                 reach with this 2D model at best);
    lower bound: the prompted slice's mask copied to every slice of the structure's extent.

Per volume: seconds of prompting + propagating every structure from a cold embedding cache (encodes included) and
the encoder runs it took. `settings` variants are scored on the same cached embeddings (after the first one, their
time is not a cold time and is not reported). Slices are read with one window per volume (`read_nifti_volume`).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from . import metrics
from .errors import InputError
from .io.images import import_optional
from .io.volumes import Volume, read_nifti_volume
from .predictor import Predictor
from .progress import ProgressBar
from .volume import PropagationSettings, VolumeSegmenter

METHODS = ("propagation", "oracle", "lower_bound")
TOLERANCE_MM = 2.0


def read_cases(root: str | Path) -> list[dict[str, Any]]:
    """The labelled volumes of a folder: case, image, label paths, modality and structures {name: label values}.

    Raises:
        InputError: no images/ folder, or an image without its label file.
    """
    root = Path(root)
    images = sorted((root / "images").glob("*.nii*")) if (root / "images").is_dir() else []
    if not images:
        raise InputError(f"{root} has no images/*.nii.gz (a folder of labelled volumes: images/, labels/)")
    manifest: dict[str, dict[str, str]] = {}
    if (root / "manifest.csv").is_file():
        with open(root / "manifest.csv", newline="") as handle:
            manifest = {row["case"]: row for row in csv.DictReader(handle)}
    cases = []
    for image in images:
        case = image.name.split(".nii")[0]
        label = root / "labels" / image.name
        if not label.is_file():
            raise InputError(f"{image} has no label file {label}")
        row = manifest.get(case, {})
        structures: dict[str, list[int]] | None = None
        if row.get("regions"):
            structures = {}
            for part in row["regions"].split(";"):
                name, values = part.split(":")
                structures[name.strip()] = [int(v) for v in values.split(",")]
        cases.append({"case": case, "image": image, "label": label, "modality": row.get("modality", ""),
                      "structures": structures})
    return cases


def read_labels(path: Path, volume: Volume) -> np.ndarray:
    """A label NIfTI on the volume's grid as S x H x W integers."""
    nib = import_optional("nibabel", "medical")
    image = nib.load(path)
    if not np.allclose(image.affine, volume.affine, atol=1e-3):
        raise InputError(f"{path} does not share its image's affine")
    return volume.from_voxels(np.asarray(image.dataobj).astype(np.int32))


def _scores(pred: np.ndarray, truth: np.ndarray, spacing: tuple[float, float, float]) -> dict[str, float]:
    return {"dice": round(100 * metrics.dice(pred, truth), 2),
            "nsd": round(100 * metrics.surface_dice(pred, truth, spacing, TOLERANCE_MM), 2)}


def prompt_slice(segmenter: VolumeSegmenter, index: int, truth: np.ndarray, prompt: str, clicks: int, label: int) -> int:
    """Prompt slice `index` from its ground truth as `prompt` says; returns the clicks used (0 for a box)."""
    if prompt == "box":
        segmenter.prompt(index, box=metrics.box_from_mask(truth), label=label, replace=True)
        return 0
    x, y = metrics.interior_point(truth)
    result = segmenter.prompt(index, points=[(x, y)], label=label, replace=True)
    used = 1
    while used < clicks:
        click = metrics.next_click(result.mask, truth)
        if click is None:
            break
        result = segmenter.prompt(index, points=[click[:2]], point_labels=[click[2]], label=label)
        used += 1
    return used


def oracle(segmenter: VolumeSegmenter, truth: np.ndarray) -> np.ndarray:
    """Masks from a tight ground-truth box on every slice where the structure exists."""
    out = np.zeros_like(truth)
    for k in np.flatnonzero(truth.any(axis=(1, 2))):
        segmenter.encoder.ensure(int(k))
        with segmenter.lock:
            segmenter.predictor.set_image(segmenter.slice_image(int(k)))
            masks, _, _ = segmenter.predictor.predict(box=metrics.box_from_mask(truth[k]), multimask_output=False)
        out[k] = masks[0]
    return out


def evaluate_case(predictor: Predictor, case: dict[str, Any], variants: dict[str, PropagationSettings], prompt: str = "box",
                  clicks: int = 3, window: Any = None) -> dict[str, Any]:
    """Score every structure of one case with every settings variant and the two references."""
    volume = read_nifti_volume(case["image"], window=window)
    labels = read_labels(case["label"], volume)
    structures = case["structures"] or {f"label_{v}": [int(v)] for v in np.unique(labels) if v != 0}
    predictor.clear_cache()
    records: list[dict[str, Any]] = []
    timing: dict[str, Any] = {}
    for number, (name, settings) in enumerate(variants.items()):
        segmenter = VolumeSegmenter(predictor, volume, settings)
        misses, start = predictor.cache_misses, time.perf_counter()
        for label, (structure, values) in enumerate(structures.items(), start=1):
            truth = np.isin(labels, values)
            if not truth.any():
                continue
            index = int(np.argmax(truth.sum(axis=(1, 2))))
            used = prompt_slice(segmenter, index, truth[index], prompt, clicks, label)
            run = segmenter.propagate(label)
            pred = segmenter.mask_volume(label)
            extent = np.flatnonzero(truth.any(axis=(1, 2)))
            found = np.flatnonzero(pred.any(axis=(1, 2)))
            record = {"case": case["case"], "modality": case["modality"], "structure": structure, "variant": name,
                      "prompt_slice": index, "clicks": used, "truth_slices": [int(extent[0]), int(extent[-1])],
                      "predicted_slices": [int(found[0]), int(found[-1])] if found.size else None,
                      "stops": run["stops"], "propagation": _scores(pred, truth, volume.spacing)}
            if number == 0:
                base = segmenter.structures[label].slices[index].mask
                copied = np.zeros_like(truth)
                copied[extent[0]: extent[-1] + 1] = base
                record["lower_bound"] = _scores(copied, truth, volume.spacing)
            records.append(record)
        if number == 0:
            seconds = time.perf_counter() - start
            visited = len(segmenter.encoder.encoded)
            timing = {"seconds": round(seconds, 3), "encoder_runs": predictor.cache_misses - misses,
                      "slices": volume.num_slices, "slices_encoded": visited,
                      "seconds_per_encoded_slice": round(seconds / max(visited, 1), 4)}
        segmenter.close()
    segmenter = VolumeSegmenter(predictor, volume)
    for record in records:
        if "lower_bound" in record:
            truth = np.isin(labels, structures[record["structure"]])
            record["oracle"] = _scores(oracle(segmenter, truth), truth, volume.spacing)
    return {"case": case["case"], "modality": case["modality"], "shape": list(volume.images.shape),
            "spacing": list(volume.spacing), "timing": timing, "records": records}


def background_study(predictor: Predictor, case: dict[str, Any], think: float, window: Any = None) -> dict[str, Any]:
    """The wait after the first click with and without background encoding, on one case's largest structure.

    Both runs start from an empty cache: the user's box on the structure's largest slice (its encode and
    decode: the first click's wait), a second click on that slice `think` seconds later (a correction), then
    `think` seconds more before asking for the propagation, whose wait is measured. With background encoding the
    worker starts when the volume opens and encodes the nearest slices first.

    Returns:
        per mode ("foreground only", "background"): first_click_s, correction_s, propagate_wait_s, slices.
    """
    volume = read_nifti_volume(case["image"], window=window)
    labels = read_labels(case["label"], volume)
    structures = case["structures"] or {f"label_{v}": [int(v)] for v in np.unique(labels) if v != 0}
    values = max(structures.values(), key=lambda v: int(np.isin(labels, v).sum()))
    truth = np.isin(labels, values)
    index = int(np.argmax(truth.sum(axis=(1, 2))))
    out: dict[str, Any] = {"case": case["case"], "slice": index, "think_s": think}
    for mode in ("foreground only", "background"):
        predictor.clear_cache()
        segmenter = VolumeSegmenter(predictor, volume)
        if mode == "background":
            segmenter.start_background(index)
        start = time.perf_counter()
        first = segmenter.prompt(index, box=metrics.box_from_mask(truth[index]))
        first_click = time.perf_counter() - start
        time.sleep(think)
        click = metrics.next_click(first.mask, truth[index]) or (*metrics.interior_point(truth[index]), 1)
        start = time.perf_counter()
        segmenter.prompt(index, points=[click[:2]], point_labels=[click[2]])
        correction = time.perf_counter() - start
        time.sleep(think)
        start = time.perf_counter()
        run = segmenter.propagate()
        wait = time.perf_counter() - start
        segmenter.close()
        out[mode] = {"first_click_s": round(first_click, 3), "correction_s": round(correction, 3),
                     "propagate_wait_s": round(wait, 3), "slices": len(run["slices"])}
    return out


def summarize(cases: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean Dice / NSD per variant and method, overall, per structure name and per modality."""
    rows = [r for c in cases for r in c["records"]]
    base = {r["case"] + "/" + r["structure"]: r for r in rows if "oracle" in r}
    out: dict[str, Any] = {}
    for variant in dict.fromkeys(r["variant"] for r in rows):
        chosen = [r for r in rows if r["variant"] == variant]

        def mean(group: list[dict[str, Any]], method: str, metric: str) -> float:
            values = [(r if method == "propagation" else base[r["case"] + "/" + r["structure"]])[method][metric] for r in group]
            return round(float(np.mean(values)), 2)

        groups = {"all": chosen}
        for key in ("structure", "modality"):
            for value in dict.fromkeys(r[key] for r in chosen):
                groups[f"{key}:{value}"] = [r for r in chosen if r[key] == value]
        out[variant] = {name: {"count": len(group), **{f"{m}_{k}": mean(group, m, k) for m in METHODS for k in ("dice", "nsd")}}
                        for name, group in groups.items()}
    timings = [c["timing"] for c in cases if c["timing"]]
    out["timing"] = {"median_seconds_per_volume": round(float(np.median([t["seconds"] for t in timings])), 3),
                     "median_seconds_per_slice": round(float(np.median([t["seconds_per_encoded_slice"] for t in timings])), 4),
                     "mean_encoder_runs_per_volume": round(float(np.mean([t["encoder_runs"] for t in timings])), 1)}
    return out


def markdown(result: dict[str, Any]) -> str:
    """The report: per-structure table of the first variant, then means per variant."""
    lines = [f"# Volume evaluation: {result['label']}", "", f"prompt: {result['prompt']}; NSD tolerance {TOLERANCE_MM} mm", ""]
    first = next(iter(result["variants"]))
    lines += ["| case | structure | truth slices | predicted | propagation Dice / NSD | oracle | lower bound | stops |",
              "|---|---|---|---|---:|---:|---:|---|"]
    for case in result["cases"]:
        for r in case["records"]:
            if r["variant"] != first:
                continue
            stops = ", ".join(f"{'up' if s['direction'] > 0 else 'down'}: {s['reason']}" for s in r["stops"])
            lines.append(f"| {r['case']} | {r['structure']} | {r['truth_slices'][0]}-{r['truth_slices'][1]} | "
                         f"{'-'.join(map(str, r['predicted_slices'])) if r['predicted_slices'] else '–'} | "
                         f"{r['propagation']['dice']:.1f} / {r['propagation']['nsd']:.1f} | {r['oracle']['dice']:.1f} / "
                         f"{r['oracle']['nsd']:.1f} | {r['lower_bound']['dice']:.1f} / {r['lower_bound']['nsd']:.1f} | {stops} |")
    lines += ["", "| variant | group | n | propagation Dice | NSD | oracle Dice | NSD | lower bound Dice | NSD |",
              "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for variant, groups in result["summary"].items():
        if variant == "timing":
            continue
        for group, s in groups.items():
            lines.append(f"| {variant} | {group} | {s['count']} | {s['propagation_dice']:.2f} | {s['propagation_nsd']:.2f} | "
                         f"{s['oracle_dice']:.2f} | {s['oracle_nsd']:.2f} | {s['lower_bound_dice']:.2f} | {s['lower_bound_nsd']:.2f} |")
    lines += ["", "| case | slices | slices encoded | seconds | s per encoded slice | encoder runs |", "|---|---:|---:|---:|---:|---:|"]
    for case in result["cases"]:
        t = case["timing"]
        lines.append(f"| {case['case']} | {t['slices']} | {t['slices_encoded']} | {t['seconds']:.2f} | "
                     f"{t['seconds_per_encoded_slice']:.3f} | {t['encoder_runs']} |")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------- CLI


def parse_variant(text: str) -> tuple[str, PropagationSettings]:
    """A settings variant from the command line: "name:key=value,key=value" (keys of PropagationSettings)."""
    name, _, body = text.partition(":")
    fields = PropagationSettings.__dataclass_fields__
    values: dict[str, Any] = {}
    for item in filter(None, body.split(",")):
        key, _, value = item.partition("=")
        if key not in fields:
            raise argparse.ArgumentTypeError(f"unknown setting {key!r}; known: {sorted(fields)}")
        values[key] = value if key == "prompt" else float(value) if key != "min_pixels" else int(value)
    try:
        return name, PropagationSettings(**values)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", type=Path, help="folder of labelled volumes (images/, labels/, manifest.csv)")
    parser.add_argument("--prompt", choices=("box", "clicks"), default="box", help="how the largest slice is prompted")
    parser.add_argument("--clicks", type=int, default=3, help="clicks on the prompted slice with --prompt clicks")
    parser.add_argument("--window", help="one window for every volume (a preset or CENTER,WIDTH; default: percentiles per volume)")
    parser.add_argument("--variant", type=parse_variant, action="append", default=[], metavar="NAME:KEY=VALUE,...",
                        help="propagation settings to compare (default: the defaults); the first one is timed")
    parser.add_argument("--cases", nargs="+", help="only these cases")
    parser.add_argument("--out", type=Path, help="report folder (default: out/evaluate-volume/<bundle>)")
    parser.add_argument("--background-study", type=float, metavar="SECONDS",
                        help="instead: the wait after the first click with and without background encoding, the user "
                             "thinking SECONDS between the click, a correction and asking for the propagation")
    parser.add_argument("--merge", type=Path, nargs="+", metavar="JSON",
                        help="instead: combine evaluation.json files of separate runs (e.g. one per case) into one report")
    parser.add_argument("--no-progress", action="store_true")


def merge_results(paths: list[Path]) -> dict[str, Any]:
    """One result from the evaluation.json files of runs with the same variants (e.g. one run per case)."""
    parts = [json.loads(Path(p).read_text()) for p in paths]
    cases = [case for part in parts for case in part["cases"]]
    return {**parts[0], "cases": cases, "summary": summarize(cases)}


def _write(result: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "evaluation.json").write_text(json.dumps(result, indent=1) + "\n")
    text = markdown(result)
    (out / "report.md").write_text(text)
    sys.stdout.write(text[text.index("| variant |"):])
    print(f"report: {out / 'report.md'}")


def run(args: argparse.Namespace, predictor: Predictor, label: str) -> int:
    """Evaluate as the flags of `add_arguments` say; writes evaluation.json and report.md."""
    from .io.loading import parse_window

    if args.merge:
        _write(merge_results(args.merge), args.out or Path("out") / "evaluate-volume" / label)
        return 0
    if args.data is None:
        raise InputError("evaluate-volume needs --data DIR (a folder of labelled volumes) or --merge")
    cases = read_cases(args.data)
    if args.cases:
        cases = [c for c in cases if c["case"] in args.cases]
    if args.background_study is not None:
        studies = [background_study(predictor, case, args.background_study, parse_window(args.window)) for case in cases]
        out = args.out or Path("out") / "evaluate-volume" / f"{label}-background"
        out.mkdir(parents=True, exist_ok=True)
        (out / "background.json").write_text(json.dumps(studies, indent=1) + "\n")
        for study in studies:
            print(json.dumps(study))
        return 0
    variants = dict(args.variant) or {"default": PropagationSettings()}
    bar = ProgressBar("volumes", len(cases), enabled=not args.no_progress)
    results = []
    for case in cases:
        results.append(evaluate_case(predictor, case, variants, args.prompt, args.clicks, parse_window(args.window)))
        bar.advance(postfix=case["case"])
    bar.close()
    result = {"label": label, "prompt": args.prompt, "variants": {k: asdict(v) for k, v in variants.items()},
              "predictor": predictor.describe(), "cases": results, "summary": summarize(results)}
    _write(result, args.out or Path("out") / "evaluate-volume" / label)
    return 0
