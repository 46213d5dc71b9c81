"""Dice evaluation of any `PromptPredictor` on a dataset in SAM-Med2D's layout, with Markdown/JSON/PNG reports.

Modes (prompts are derived from each ground-truth mask, in original-image pixels):
    box: the tight box of the whole mask, inclusive pixel indices (`metrics.box_from_mask`);
        multimask_output=False. SAM-Med2D's test.py boxes the largest connected component at 256 x 256 with
        exclusive maxima instead; the whole-mask box at the original resolution is the prompt a user would draw
        and does not depend on the model's input size.
    points1, points3, points5: simultaneous random points drawn as test.py draws them (`metrics.sample_points`:
        one foreground pixel; n > 1: n // 2 foreground + the rest background, with replacement, shuffled), from a
        numpy Generator seeded by a hash of (run seed, mask path, n), so every mask gets the same points whatever
        the other masks, modes or processing order; multimask_output=True keeping the candidate with the highest
        predicted IoU (`best_only`), as SAM-Med2D's predictor and test.py do.
    clicks: deterministic interactive segmentation. Click 1 is positive at the object's pixel farthest from the
        background (`metrics.interior_point`); each further click goes to the centre of the largest connected error
        region, positive in a miss and negative in a false positive (`metrics.next_click`). All clicks are kept and
        the previous low-res logits are fed back as the mask prompt in the family's convention
        (`processing.mask_prompt_from_logits`: probabilities for SAM-Med2D, logits for SAM / LiteMedSAM). Click 1
        uses multimask_output=True with `best_only` (one click is ambiguous, and the multimask tokens are what
        SAM-style models are trained on for single points); later clicks use multimask_output=False, since with
        several points and a mask prompt the single-mask token is the refined answer (SAM's and RITM-style
        interactive evaluation). When a prediction has no error pixel the run stops and its Dice is carried to
        the remaining clicks.

Point coordinates are integer pixel indices (x = column, y = row): SAM's prompt encoder adds half a pixel, so an
index addresses the pixel's centre, the convention of `box_from_mask` and of test.py's sampled points.

Dice is computed per mask at the original resolution against the mask read from disk (`metrics.dice`) and rounded
to 4 decimals as SAM-Med2D's `SegMetrics` does; reported means are x100 ("points") with 2 decimals. Masks with an
empty ground truth cannot be prompted and are recorded as skipped.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from . import metrics, processing, zoom
from .eval_report import (  # write_report, load_result and overall_table are part of this API
    DICE_DECIMALS,
    MODES,
    POINT_MODES,
    check_modes,
    load_result,
    overall_table,
    result_name,
    summarize,
    write_report,
)
from .io import MaskItem, cap_per_source, default_data_root, read_datasets, read_image, read_mask, select_sources
from .predictor import PromptPredictor
from .progress import ProgressBar

def evaluate(
    predictor: PromptPredictor,
    items: Sequence[MaskItem],
    *,
    modes: Sequence[str] = MODES,
    num_clicks: int = 5,
    seed: int = 0,
    progress: bool = True,
    label: str = "",
    zoom_policy: zoom.ZoomPolicy | None = None,
) -> dict[str, Any]:
    """Evaluate a predictor on (image, mask) items in every requested mode.

    Items are grouped by image so that `set_image` runs once per image; records keep the order of `items`.

    Args:
        predictor: any `PromptPredictor` (PyTorch reference, runtime backend).
        items: the masks to evaluate (`runtime.io.read_dataset`), each mask at most once.
        modes: a subset of `MODES`.
        num_clicks: clicks of the interactive protocol (N >= 1).
        seed: run seed of the random point prompts.
        progress: draw a progress bar with running mean Dice on stderr.
        label: name of the evaluated model, shown in reports.
        zoom_policy: zoom for small objects (`runtime.zoom`): box prompts and, with `clicks`, the clicks after the
            first one are segmented in a crop around the object; None segments the whole image only.

    Returns:
        A JSON-ready dict:
            settings: label, family, input_size, modes, num_clicks, seed.
            items: one record per item: image and mask paths relative to the folder holding all items,
                modality, source, class, `dice` {mode: Dice in [0, 1]} (for "clicks" the Dice after the last
                click), `points` {points mode: [[x, y, label], ...]} and, with "clicks", `clicks` {dice: N values,
                auc, points: [[x, y, label], ...] as clicked, stopped_early}; or `skipped` with a reason.
            summary: `summarize(...)` of the records.

    Raises:
        ValueError: unknown mode, num_clicks < 1, a mask listed twice, or a mask whose size differs from its image.
    """
    modes = check_modes(modes)
    if num_clicks < 1:
        raise ValueError(f"num_clicks must be >= 1, got {num_clicks}")
    items = list(items)
    keys = _relative_paths(items)
    masks = [key[1] for key in keys]
    if len(set(masks)) != len(masks):
        raise ValueError("each mask may be evaluated once; the items list a mask twice")
    by_image: dict[Path, list[int]] = {}
    for index, item in enumerate(items):
        by_image.setdefault(item.image, []).append(index)

    records: list[dict[str, Any] | None] = [None] * len(items)
    running = _RunningDice(modes, num_clicks)
    bar = ProgressBar(label or "evaluate", len(items), enabled=progress)
    try:
        for image_path, indices in by_image.items():
            image = read_image(image_path)
            predictor.set_image(image)
            for index in indices:
                item = items[index]
                record = _evaluate_item(predictor, item, image.shape[:2], keys[index], modes, num_clicks, seed, zoom_policy)
                records[index] = record
                running.add(record)
                bar.advance(postfix=running.postfix())
    finally:
        bar.close()

    done = [record for record in records if record is not None]
    policy = predictor.policy
    return {
        "settings": {
            "label": label,
            "family": policy.family,
            "input_size": policy.input_size,
            "modes": list(modes),
            "num_clicks": int(num_clicks),
            "seed": int(seed),
            "zoom": zoom_policy.to_dict() if zoom_policy is not None else None,
        },
        "items": done,
        "summary": summarize(done, modes, num_clicks),
    }


def _relative_paths(items: Sequence[MaskItem]) -> list[tuple[str, str]]:
    """(image, mask) paths relative to the deepest folder holding every item, POSIX style.

    In SAM-Med2D's layout that folder is the dataset root and the mask path equals its label2image.json key, so
    the names (and the point seeds derived from them) do not depend on where the dataset lies.
    """
    if not items:
        return []
    absolute = [(os.path.abspath(item.image), os.path.abspath(item.mask)) for item in items]
    root = os.path.commonpath([path for pair in absolute for path in pair])
    if any(path == root for pair in absolute for path in pair):
        root = os.path.dirname(root)
    def relative(path: str) -> str:
        return Path(os.path.relpath(path, root)).as_posix()

    return [(relative(image), relative(mask)) for image, mask in absolute]


def point_rng(seed: int, mask_key: str, count: int) -> np.random.Generator:
    """The random generator of one mask's point prompts: a stable hash of (seed, mask path, number of points)."""
    digest = hashlib.sha256(f"{int(seed)}\x00{mask_key}\x00{int(count)}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def _evaluate_item(
    predictor: PromptPredictor,
    item: MaskItem,
    image_size: tuple[int, int],
    key: tuple[str, str],
    modes: Sequence[str],
    num_clicks: int,
    seed: int,
    zoom_policy: zoom.ZoomPolicy | None = None,
) -> dict[str, Any]:
    truth = read_mask(item.mask)
    if truth.shape != tuple(image_size):
        raise ValueError(
            f"mask {item.mask} is {truth.shape[1]} x {truth.shape[0]} but its image {item.image} is "
            f"{image_size[1]} x {image_size[0]} (W x H)"
        )
    record: dict[str, Any] = {
        "image": key[0],
        "mask": key[1],
        "modality": item.modality,
        "source": item.source,
        "class": item.label,
    }
    if not truth.any():
        record["skipped"] = "empty ground-truth mask"
        return record
    scores: dict[str, float] = {}
    points: dict[str, list[list[int]]] = {}
    if "box" in modes:
        box = metrics.box_from_mask(truth)
        window = zoom.box_window(zoom_policy, box, truth.shape)
        masks, _, _ = predictor.predict(box=box, multimask_output=False, **_zoomed(window))
        scores["box"] = _dice(masks[0], truth)
        if window is not None:
            record["zoom"] = {"box": list(window)}
    for mode, count in POINT_MODES.items():
        if mode not in modes:
            continue
        coords, labels = metrics.sample_points(truth, count, point_rng(seed, key[1], count))
        masks, _, _ = predictor.predict(point_coords=coords, point_labels=labels, multimask_output=True, best_only=True)
        scores[mode] = _dice(masks[0], truth)
        points[mode] = [[int(x), int(y), int(label)] for (x, y), label in zip(coords, labels)]
    if "clicks" in modes:
        curve = click_curve(predictor, truth, num_clicks, zoom_policy)
        scores["clicks"] = curve["dice"][-1]
        record["clicks"] = curve
    record["dice"] = scores
    if points:
        record["points"] = points
    return record


def _zoomed(window: zoom.Window | None) -> dict[str, Any]:
    """`predict`'s window argument, passed only when there is one (predictors without zoom keep working)."""
    return {} if window is None else {"window": window}


def _dice(pred: np.ndarray, truth: np.ndarray) -> float:
    return round(metrics.dice(pred, truth), DICE_DECIMALS)


def click_curve(predictor: PromptPredictor, truth: np.ndarray, num_clicks: int,
                zoom_policy: zoom.ZoomPolicy | None = None) -> dict[str, Any]:
    """Run the interactive click protocol on the predictor's current image.

    Args:
        predictor: a predictor with the mask's image set.
        truth: H x W boolean ground truth at the image's resolution, not empty.
        num_clicks: number of clicks N >= 1.
        zoom_policy: with `clicks` zoom, the mask after click 1 and the clicks decide a window
            (`zoom.mask_window`) in which the later clicks are segmented (chosen again when a click falls outside
            it); the first click in a new window starts without a mask prompt (the previous logits are in another
            frame), the later ones feed the window's back.

    Returns:
        dice: N Dice values (rounded to 4 decimals) after clicks 1..N; auc: `metrics.curve_auc` of them;
        points: the clicks made, [[x, y, label], ...] (fewer than N when stopped early); stopped_early: whether a
        prediction without error ended the run before click N; window: the zoom window of clicks 2.. or None.
    """
    truth = np.asarray(truth, dtype=bool)
    x, y = metrics.interior_point(truth)
    clicks: list[tuple[int, int, int]] = [(x, y, 1)]
    curve: list[float] = []
    mask_input = None
    stopped = False
    window = None
    while True:
        first = len(clicks) == 1
        points = np.array([click[:2] for click in clicks], dtype=np.float64)
        masks, _, low_res = predictor.predict(
            point_coords=points,
            point_labels=np.array([click[2] for click in clicks], dtype=np.int64),
            mask_input=mask_input,
            multimask_output=first,
            best_only=first,
            **_zoomed(window),
        )
        pred = masks[0]
        curve.append(_dice(pred, truth))
        if len(curve) == num_clicks:
            break
        click = metrics.next_click(pred, truth)
        if click is None:
            stopped = True
            curve.extend([curve[-1]] * (num_clicks - len(curve)))
            break
        clicks.append(click)
        mask_input = processing.mask_prompt_from_logits(low_res[0], predictor.policy)
        if first or (window is not None and not zoom.contains(window, click[:2])):
            # a window is chosen after click 1 and moved only when a click falls outside it
            new = zoom.mask_window(zoom_policy, pred, np.array([c[:2] for c in clicks], dtype=np.float64), truth.shape)
            if new != window:
                window, mask_input = new, None
    return {
        "dice": curve,
        "auc": round(metrics.curve_auc(curve), DICE_DECIMALS),
        "points": [list(click) for click in clicks],
        "stopped_early": stopped,
        "window": None if window is None else list(window),
    }


class _RunningDice:
    """Running mean Dice per mode for the progress bar's postfix."""

    _SHORT = {"box": "box", "points1": "p1", "points3": "p3", "points5": "p5"}

    def __init__(self, modes: Sequence[str], num_clicks: int) -> None:
        self.modes = modes
        self.names = {**self._SHORT, "clicks": f"c{num_clicks}"}
        self.sums = {mode: 0.0 for mode in modes}
        self.count = 0

    def add(self, record: dict[str, Any]) -> None:
        if "dice" not in record:
            return
        self.count += 1
        for mode in self.modes:
            self.sums[mode] += record["dice"][mode]

    def postfix(self) -> str:
        if not self.count:
            return ""
        return "Dice " + " ".join(f"{self.names[mode]} {100.0 * self.sums[mode] / self.count:.1f}" for mode in self.modes)


# --------------------------------------------------------------------------------------------- aggregation


def _modes_argument(value: str) -> list[str]:
    modes = [mode.strip() for mode in value.split(",") if mode.strip()]
    try:
        check_modes(modes)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc
    return modes


def _positive_int(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return number


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the evaluation flags shared by every evaluation CLI (bundle, checkpoint) to `parser`."""
    default = default_data_root()
    parser.add_argument("--data", type=Path, nargs="+", default=None if default is None else [default], metavar="DIR",
                        help="one or more datasets in SAM-Med2D's layout, read one after the other "
                             "(default: $SAMMED_DATA or ../shared/data/medseg-dev)")
    parser.add_argument("--modes", type=_modes_argument, nargs="+", default=[list(MODES)], metavar="MODE",
                        help=f"evaluation modes, space or comma separated (default: all of {','.join(MODES)})")
    parser.add_argument("--clicks", type=_positive_int, default=5, metavar="N",
                        help="clicks of the interactive protocol (default 5)")
    parser.add_argument("--limit", type=_positive_int, default=None, metavar="N",
                        help="evaluate only the first N masks (quick runs)")
    parser.add_argument("--sources", nargs="+", default=None, metavar="NAME",
                        help="evaluate only masks of these source datasets (manifest.csv's source_dataset; a name may "
                             "be a prefix, e.g. BUSI CHAOS Drishti-GS1 LGG: the training split's validation sources)")
    parser.add_argument("--per-source", type=_positive_int, default=None, metavar="N",
                        help="at most N masks of every source, chosen by a seeded hash of the mask's name (so that "
                             "no large source decides the mean alone; the training split's validation uses the same)")
    zoom.add_arguments(parser)
    parser.add_argument("--seed", type=int, default=0, help="seed of the random point prompts (default 0)")
    parser.add_argument("--out", type=Path, default=None, metavar="DIR",
                        help="report folder (default: out/evaluate/<label>)")
    parser.add_argument("--compare", type=Path, default=None, metavar="JSON",
                        help="another evaluation.json (or its folder) to compare with, e.g. the PyTorch reference")
    parser.add_argument("--no-progress", action="store_true", help="do not draw a progress bar")


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._") or "model"


def run(args: argparse.Namespace, predictor: PromptPredictor, label: str) -> int:
    """Evaluate `predictor` as the flags of `add_arguments` say, write the report and print the overall table.

    Args:
        args: parsed flags (data, modes, clicks, limit, seed, out, compare, no_progress).
        predictor: the predictor to evaluate.
        label: the model's name in reports.

    Returns:
        Exit status: 0 on success, 2 when the dataset or the comparison result cannot be read.
    """
    if args.data is None:
        print("error: no dataset: pass --data DIR or set $SAMMED_DATA", file=sys.stderr)
        return 2
    try:
        items = read_datasets(args.data)
        compare = load_result(args.compare) if args.compare is not None else None
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if getattr(args, "sources", None):
        items = select_sources(items, args.sources)
        if not items:
            print(f"error: no masks of the sources {args.sources} in {', '.join(map(str, args.data))}", file=sys.stderr)
            return 2
    items = cap_per_source(items, getattr(args, "per_source", None))
    if args.limit is not None:
        items = items[: args.limit]
    modes = [mode for group in args.modes for mode in (group if isinstance(group, list) else [group])]
    result = evaluate(
        predictor, items, modes=modes, num_clicks=args.clicks, seed=args.seed, progress=not args.no_progress, label=label,
        zoom_policy=zoom.policy_from_args(args),
    )
    out = args.out if args.out is not None else Path("out") / "evaluate" / _slug(label)
    paths = write_report(result, out, compare)
    count = result["summary"]["count"]
    print(f"{label or 'model'}: {count['evaluated']} masks on {count['images']} images (mean Dice, points)")
    if compare is not None:
        print(f"A = {label or 'model'}, B = {result_name(compare, 'B')}")
    print(overall_table(result, compare))
    print("report: " + ", ".join(str(path) for path in paths.values()))
    return 0
