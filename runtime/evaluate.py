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
import json
import math
import os
import re
import sys
from pathlib import Path
from typing import Any, Iterable, Sequence

import cv2
import numpy as np

from . import metrics, processing
from .io import MaskItem, default_data_root, read_dataset, read_image, read_mask
from .predictor import PromptPredictor
from .progress import ProgressBar

MODES: tuple[str, ...] = ("box", "points1", "points3", "points5", "clicks")
POINT_MODES: dict[str, int] = {"points1": 1, "points3": 3, "points5": 5}
DICE_DECIMALS = 4  # per-item rounding of SAM-Med2D's SegMetrics
UNKNOWN_GROUP = "unknown"


# ------------------------------------------------------------------------------------------------ evaluation


def evaluate(
    predictor: PromptPredictor,
    items: Sequence[MaskItem],
    *,
    modes: Sequence[str] = MODES,
    num_clicks: int = 5,
    seed: int = 0,
    progress: bool = True,
    label: str = "",
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
                record = _evaluate_item(predictor, item, image.shape[:2], keys[index], modes, num_clicks, seed)
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
        },
        "items": done,
        "summary": summarize(done, modes, num_clicks),
    }


def check_modes(modes: Iterable[str]) -> tuple[str, ...]:
    """Validate evaluation modes; returns them deduplicated in `MODES` order."""
    requested = [modes] if isinstance(modes, str) else list(modes)
    unknown = sorted(set(requested) - set(MODES))
    if unknown:
        raise ValueError(f"unknown evaluation modes {unknown}; known: {list(MODES)}")
    if not requested:
        raise ValueError("no evaluation mode requested")
    return tuple(mode for mode in MODES if mode in requested)


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
        masks, _, _ = predictor.predict(box=metrics.box_from_mask(truth), multimask_output=False)
        scores["box"] = _dice(masks[0], truth)
    for mode, count in POINT_MODES.items():
        if mode not in modes:
            continue
        coords, labels = metrics.sample_points(truth, count, point_rng(seed, key[1], count))
        masks, _, _ = predictor.predict(point_coords=coords, point_labels=labels, multimask_output=True, best_only=True)
        scores[mode] = _dice(masks[0], truth)
        points[mode] = [[int(x), int(y), int(label)] for (x, y), label in zip(coords, labels)]
    if "clicks" in modes:
        curve = click_curve(predictor, truth, num_clicks)
        scores["clicks"] = curve["dice"][-1]
        record["clicks"] = curve
    record["dice"] = scores
    if points:
        record["points"] = points
    return record


def _dice(pred: np.ndarray, truth: np.ndarray) -> float:
    return round(metrics.dice(pred, truth), DICE_DECIMALS)


def click_curve(predictor: PromptPredictor, truth: np.ndarray, num_clicks: int) -> dict[str, Any]:
    """Run the interactive click protocol on the predictor's current image.

    Args:
        predictor: a predictor with the mask's image set.
        truth: H x W boolean ground truth at the image's resolution, not empty.
        num_clicks: number of clicks N >= 1.

    Returns:
        dice: N Dice values (rounded to 4 decimals) after clicks 1..N; auc: `metrics.curve_auc` of them;
        points: the clicks made, [[x, y, label], ...] (fewer than N when stopped early); stopped_early: whether a
        prediction without error ended the run before click N.
    """
    truth = np.asarray(truth, dtype=bool)
    x, y = metrics.interior_point(truth)
    clicks: list[tuple[int, int, int]] = [(x, y, 1)]
    curve: list[float] = []
    mask_input = None
    stopped = False
    while True:
        first = len(clicks) == 1
        masks, _, low_res = predictor.predict(
            point_coords=np.array([click[:2] for click in clicks], dtype=np.float64),
            point_labels=np.array([click[2] for click in clicks], dtype=np.int64),
            mask_input=mask_input,
            multimask_output=first,
            best_only=first,
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
    return {
        "dice": curve,
        "auc": round(metrics.curve_auc(curve), DICE_DECIMALS),
        "points": [list(click) for click in clicks],
        "stopped_early": stopped,
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


def _points(values: list[float]) -> float | None:
    """Mean of [0, 1] values in points (x100), 2 decimals; None without values."""
    if not values:
        return None
    return round(100.0 * float(np.mean(values)), 2)


def _group_stats(records: list[dict[str, Any]], modes: Sequence[str], num_clicks: int) -> dict[str, Any]:
    scored = [record for record in records if "dice" in record]
    stats: dict[str, Any] = {
        "count": len(scored),
        "dice": {mode: _points([record["dice"][mode] for record in scored]) for mode in modes},
    }
    if "clicks" in modes:
        curves = [record["clicks"]["dice"] for record in scored]
        stats["clicks"] = {
            "dice": [_points([curve[k] for curve in curves]) for k in range(num_clicks)],
            "auc": _points([record["clicks"]["auc"] for record in scored]),
        }
    return stats


def summarize(records: list[dict[str, Any]], modes: Sequence[str], num_clicks: int) -> dict[str, Any]:
    """Aggregate per-item records.

    Args:
        records: `evaluate(...)["items"]` or a subset of them.
        modes: the evaluated modes.
        num_clicks: clicks per curve.

    Returns:
        count: {items, evaluated, skipped, images}; overall, by_modality {name: ...}, by_source {name: ...}, each
        {count, dice {mode: mean Dice in points}, clicks {dice: N per-click means, auc: mean AUC} (with "clicks")};
        groups are sorted by name, an empty name is "unknown". Means are None where a group has no scored item.
    """
    modes = check_modes(modes)
    scored = [record for record in records if "dice" in record]
    summary: dict[str, Any] = {
        "count": {
            "items": len(records),
            "evaluated": len(scored),
            "skipped": len(records) - len(scored),
            "images": len({record["image"] for record in records}),
        },
        "overall": _group_stats(records, modes, num_clicks),
    }
    for name, field in (("by_modality", "modality"), ("by_source", "source")):
        groups: dict[str, list[dict[str, Any]]] = {}
        for record in records:
            groups.setdefault(record.get(field) or UNKNOWN_GROUP, []).append(record)
        summary[name] = {group: _group_stats(groups[group], modes, num_clicks) for group in sorted(groups)}
    return summary


# ------------------------------------------------------------------------------------------------- reports


def load_result(path: str | Path) -> dict[str, Any]:
    """Read a result written by `write_report` (its evaluation.json, or the folder holding it)."""
    path = Path(path)
    if path.is_dir():
        path = path / "evaluation.json"
    if not path.is_file():
        raise FileNotFoundError(f"no evaluation result at {path}")
    result = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(result, dict) or "items" not in result or "settings" not in result:
        raise ValueError(f"{path} is not an evaluation result (no settings / items)")
    return result


def _name(result: dict[str, Any], fallback: str) -> str:
    return result.get("settings", {}).get("label") or fallback


def _comparable(result: dict[str, Any], other: dict[str, Any]) -> dict[str, Any]:
    """Summaries of both results on the masks they share, with the settings they are compared under."""
    mine = {record["mask"]: record for record in result["items"]}
    theirs = {record["mask"]: record for record in other["items"]}
    common = [key for key in mine if key in theirs]
    modes = check_modes([*result["settings"]["modes"], *other["settings"]["modes"]])
    with_clicks = [side["settings"]["num_clicks"] for side in (result, other) if "clicks" in side["settings"]["modes"]]
    clicks = max(with_clicks, default=result["settings"]["num_clicks"])

    def restricted(side: dict[str, Any], records: dict[str, dict[str, Any]]) -> dict[str, Any]:
        own = [mode for mode in modes if mode in side["settings"]["modes"]]
        return summarize([records[key] for key in common], own, side["settings"]["num_clicks"])

    notes = []
    if len(common) != len(mine) or len(common) != len(theirs):
        notes.append(f"compared on the {len(common)} masks both results hold ({len(mine)} vs {len(theirs)} evaluated)")
    for field in ("seed", "num_clicks", "modes"):
        if result["settings"].get(field) != other["settings"].get(field):
            notes.append(f"settings differ: {field} {result['settings'].get(field)} vs {other['settings'].get(field)}")
    return {
        "label": _name(other, "B"),
        "other_settings": other["settings"],
        "common_items": len(common),
        "modes": list(modes),
        "num_clicks": clicks,
        "notes": notes,
        "summary": restricted(result, mine),
        "other_summary": restricted(other, theirs),
    }


def _get(stats: dict[str, Any] | None, *path: Any) -> float | None:
    value: Any = stats
    for key in path:
        if value is None:
            return None
        if isinstance(key, int):
            value = value[key] if isinstance(value, list) and key < len(value) else None
        else:
            value = value.get(key) if isinstance(value, dict) else None
    return value


def _delta(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else round(a - b, 2)


def _cell(value: float | None, signed: bool = False) -> str:
    if value is None:
        return "–"
    return f"{value:+.2f}" if signed else f"{value:.2f}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    """Markdown table, first column left-aligned, the others right-aligned; pipes in cells are escaped."""

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"

    rule = "|" + "|".join([":---"] + ["---:"] * (len(header) - 1)) + "|"
    return [line(header), rule] + [line(row) for row in rows]


def _mode_columns(modes: Sequence[str], num_clicks: int) -> list[tuple[str, tuple[Any, ...]]]:
    """(column title, path into a group's stats) per reported quantity."""
    columns: list[tuple[str, tuple[Any, ...]]] = [(mode, ("dice", mode)) for mode in modes if mode != "clicks"]
    if "clicks" in modes:
        columns += [(f"clicks@{num_clicks}", ("dice", "clicks")), ("clicks AUC", ("clicks", "auc"))]
    return columns


def _overall_lines(
    summary: dict[str, Any], other: dict[str, Any] | None, modes: Sequence[str], num_clicks: int
) -> list[str]:
    columns = _mode_columns(modes, num_clicks)
    overall, rival = summary.get("overall"), (other or {}).get("overall")
    if other is None:
        rows = [[title, _cell(_get(overall, *path))] for title, path in columns]
        return _table(["Mode", "Dice"], rows)
    rows = []
    for title, path in columns:
        a, b = _get(overall, *path), _get(rival, *path)
        rows.append([title, _cell(a), _cell(b), _cell(_delta(a, b), signed=True)])
    return _table(["Mode", "A", "B", "Δ (A − B)"], rows)


def _group_lines(
    title: str, groups: dict[str, Any], rivals: dict[str, Any] | None, modes: Sequence[str], num_clicks: int
) -> list[str]:
    columns = _mode_columns(modes, num_clicks)
    names = sorted(set(groups) | set(rivals or {}))
    if rivals is None:
        header = [title, "n"] + [name for name, _ in columns]
        rows = [[name, str(groups[name]["count"])] + [_cell(_get(groups[name], *path)) for _, path in columns] for name in names]
        return _table(header, rows)
    header = [title, "n"]
    for name, _ in columns:
        header += [f"{name} A", f"{name} B", f"{name} Δ"]
    rows = []
    for name in names:
        mine, theirs = groups.get(name), rivals.get(name)
        row = [name, str(_get(mine, "count") if mine else _get(theirs, "count"))]
        for _, path in columns:
            a, b = _get(mine, *path), _get(theirs, *path)
            row += [_cell(a), _cell(b), _cell(_delta(a, b), signed=True)]
        rows.append(row)
    return _table(header, rows)


def _click_lines(summary: dict[str, Any], other: dict[str, Any] | None, num_clicks: int) -> list[str]:
    mine = _get(summary, "overall", "clicks")
    theirs = _get(other, "overall", "clicks") if other is not None else None
    labels = [str(k + 1) for k in range(num_clicks)] + ["AUC"]
    paths: list[tuple[Any, ...]] = [("dice", k) for k in range(num_clicks)] + [("auc",)]
    if other is None:
        return _table(["Click", "Dice"], [[label, _cell(_get(mine, *path))] for label, path in zip(labels, paths)])
    rows = []
    for label, path in zip(labels, paths):
        a, b = _get(mine, *path), _get(theirs, *path)
        rows.append([label, _cell(a), _cell(b), _cell(_delta(a, b), signed=True)])
    return _table(["Click", "A", "B", "Δ (A − B)"], rows)


def overall_table(result: dict[str, Any], compare: dict[str, Any] | None = None) -> str:
    """The overall mean-Dice table (Markdown), with the other result and the difference when `compare` is given."""
    if compare is None:
        settings = result["settings"]
        return "\n".join(_overall_lines(result["summary"], None, settings["modes"], settings["num_clicks"]))
    view = _comparable(result, compare)
    return "\n".join(_overall_lines(view["summary"], view["other_summary"], view["modes"], view["num_clicks"]))


def _markdown(result: dict[str, Any], view: dict[str, Any] | None, plot: Path | None) -> str:
    """The report's Markdown; `view` is `_comparable(result, compare)` when comparing."""
    settings = result["settings"]
    count = result["summary"]["count"]
    lines = [f"# Evaluation: {_name(result, 'model')}", ""]
    lines.append(
        f"{count['evaluated']} masks on {count['images']} images"
        + (f" ({count['skipped']} skipped: empty ground truth)" if count["skipped"] else "")
        + f"; family `{settings['family']}` ({settings['input_size']} px input); modes {', '.join(settings['modes'])};"
        f" seed {settings['seed']}; {settings['num_clicks']} clicks."
    )
    lines.append("")
    lines.append(
        "Mean Dice in points (x100) at the original resolution. box: tight box of the whole mask; pointsN: N random"
        " points (N // 2 foreground, rest background; 1 point: foreground); clicks: deterministic interactive"
        " protocol (click 1 at the object's centre, then at the centre of the largest error region), clicks@N ="
        " Dice after the last click, AUC = normalised area under the Dice-vs-clicks curve."
    )
    if view is None:
        summary, other, modes, clicks = result["summary"], None, settings["modes"], settings["num_clicks"]
    else:
        summary, other, modes, clicks = view["summary"], view["other_summary"], view["modes"], view["num_clicks"]
        lines += ["", f"A = {_name(result, 'A')}, B = {view['label']}, Δ = A − B ({view['common_items']} masks)."]
        lines += [f"- Note: {note}" for note in view["notes"]]
    lines += ["", "## Overall", ""] + _overall_lines(summary, other, modes, clicks)
    for heading, title, field in (("By modality", "Modality", "by_modality"), ("By source dataset", "Source", "by_source")):
        rivals = other[field] if other is not None else None
        lines += ["", f"## {heading}", ""] + _group_lines(title, summary[field], rivals, modes, clicks)
    if "clicks" in modes:
        lines += ["", "## Dice vs. clicks", ""] + _click_lines(summary, other, clicks)
        if plot is not None:
            lines += ["", f"![Dice vs. clicks]({plot.name})"]
    return "\n".join(lines) + "\n"


def write_report(result: dict[str, Any], out_dir: str | Path, compare: dict[str, Any] | None = None) -> dict[str, Path]:
    """Write an evaluation's JSON, Markdown tables and Dice-vs-clicks plot.

    Args:
        result: what `evaluate` returned.
        out_dir: folder to write into (created).
        compare: another result (e.g. the PyTorch reference of an exported bundle): tables show A (result), B
            (compare) and A − B on the masks both hold, the plot draws both curves, and evaluation.json gains a
            `comparison` entry.

    Returns:
        {"json": evaluation.json, "markdown": evaluation.md, "plot": dice_vs_clicks.png}; "plot" only when a
        result has click curves.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    view = _comparable(result, compare) if compare is not None else None
    if view is None:
        sides = [(_name(result, "A"), result["summary"])]
    else:  # the curves of the masks both results hold, as in the tables
        sides = [(_name(result, "A"), view["summary"]), (view["label"], view["other_summary"])]
    curves = [(name, _get(summary, "overall", "clicks", "dice")) for name, summary in sides]
    curves = [(name, values) for name, values in curves if values is not None]
    if curves:
        paths["plot"] = draw_click_plot(curves, out / "dice_vs_clicks.png")
    document = dict(result)
    if view is not None:
        document["comparison"] = {
            "label": view["label"],
            "settings": view["other_settings"],
            "common_items": view["common_items"],
            "notes": view["notes"],
            "summary": view["summary"],
            "other_summary": view["other_summary"],
        }
    paths["json"] = out / "evaluation.json"
    paths["json"].write_text(json.dumps(document, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    paths["markdown"] = out / "evaluation.md"
    paths["markdown"].write_text(_markdown(result, view, paths.get("plot")), encoding="utf-8")
    return {key: paths[key] for key in ("json", "markdown", "plot") if key in paths}


# ---------------------------------------------------------------------------------------------------- plot

_COLORS_BGR = [(180, 119, 31), (14, 127, 255), (44, 160, 44), (40, 39, 214), (189, 103, 148), (75, 86, 140)]
_FONT = cv2.FONT_HERSHEY_SIMPLEX


def _ascii(text: str) -> str:
    return text.encode("ascii", "replace").decode("ascii")


def _text(
    canvas: np.ndarray, text: str, anchor: tuple[int, int], align: str = "left", scale: float = 0.5, thickness: int = 1
) -> None:
    """Draw text with its vertical centre at anchor[1]; align is left / center / right of anchor[0]."""
    text = _ascii(text)
    (width, height), _ = cv2.getTextSize(text, _FONT, scale, thickness)
    x = anchor[0] - {"left": 0, "center": width // 2, "right": width}[align]
    cv2.putText(canvas, text, (int(x), int(anchor[1] + height / 2)), _FONT, scale, (40, 40, 40), thickness, cv2.LINE_AA)


def _nice_step(span: float, target: int = 6) -> float:
    raw = span / target
    magnitude = 10.0 ** math.floor(math.log10(raw))
    for factor in (1, 2, 2.5, 5, 10):
        if factor * magnitude >= raw:
            return factor * magnitude
    return 10 * magnitude


def _value_range(low: float, high: float, min_span: float = 10.0) -> tuple[float, float]:
    """A y range in [0, 100] around [low, high] with a 10 % margin, at least `min_span` wide."""
    pad = max(0.1 * (high - low), 1.0)
    low, high = low - pad, high + pad
    if high - low < min_span:
        centre = (low + high) / 2
        low, high = centre - min_span / 2, centre + min_span / 2
    shift = max(0.0, -low) - max(0.0, high - 100.0)
    return max(0.0, low + shift), min(100.0, high + shift)


def draw_click_plot(
    curves: Sequence[tuple[str, Sequence[float | None]]], path: str | Path, size: tuple[int, int] = (900, 540)
) -> Path:
    """Draw mean Dice (points) against the click number with OpenCV, one line per model, and write a PNG.

    Args:
        curves: (label, per-click mean Dice in points; None entries are skipped) per model.
        path: the PNG to write.
        size: (width, height) of the image in pixels.

    Returns:
        `path`.
    """
    width, height = size
    canvas = np.full((height, width, 3), 255, dtype=np.uint8)
    left, right, top, bottom = 80, width - 230, 50, height - 70
    values = [v for _, curve in curves for v in curve if v is not None]
    count = max((len(curve) for _, curve in curves), default=1)
    y_lo, y_hi = _value_range(min(values, default=0.0), max(values, default=100.0))
    step = _nice_step(y_hi - y_lo)
    y_lo, y_hi = max(0.0, math.floor(y_lo / step) * step), min(100.0, math.ceil(y_hi / step) * step)
    x_lo, x_hi = (0.5, 1.5) if count == 1 else (1.0 - 0.05 * (count - 1), count + 0.05 * (count - 1))

    def px(click: float, dice: float) -> tuple[int, int]:
        return (
            int(round(left + (click - x_lo) / (x_hi - x_lo) * (right - left))),
            int(round(bottom - (dice - y_lo) / (y_hi - y_lo) * (bottom - top))),
        )

    # grid, ticks and tick labels
    tick = y_lo
    while tick <= y_hi + 1e-9:
        _, y = px(x_lo, tick)
        cv2.line(canvas, (left, y), (right, y), (230, 230, 230), 1)
        cv2.line(canvas, (left - 5, y), (left, y), (40, 40, 40), 1)
        _text(canvas, f"{tick:g}", (left - 8, y), align="right", scale=0.45)
        tick += step
    x_step = max(1, math.ceil(count / 15))
    for click in range(1, count + 1, x_step):
        x, _ = px(click, y_lo)
        cv2.line(canvas, (x, top), (x, bottom), (230, 230, 230), 1)
        cv2.line(canvas, (x, bottom), (x, bottom + 5), (40, 40, 40), 1)
        _text(canvas, str(click), (x, bottom + 16), align="center", scale=0.45)
    cv2.rectangle(canvas, (left, top), (right, bottom), (40, 40, 40), 1)

    # axis labels and title; the y label is drawn horizontally, then rotated
    _text(canvas, "Number of clicks", ((left + right) // 2, bottom + 45), align="center", scale=0.55)
    label = np.full((30, bottom - top, 3), 255, dtype=np.uint8)
    _text(label, "Mean Dice (%)", (label.shape[1] // 2, 15), align="center", scale=0.55)
    canvas[top:bottom, 12:42] = cv2.rotate(label, cv2.ROTATE_90_COUNTERCLOCKWISE)
    _text(canvas, "Dice vs. clicks", ((left + right) // 2, top // 2), align="center", scale=0.65, thickness=2)

    # curves and legend
    for index, (name, curve) in enumerate(curves):
        color = _COLORS_BGR[index % len(_COLORS_BGR)]
        points = [px(click + 1, value) for click, value in enumerate(curve) if value is not None]
        if len(points) > 1:
            cv2.polylines(canvas, [np.array(points, dtype=np.int32)], False, color, 2, cv2.LINE_AA)
        for point in points:
            cv2.circle(canvas, point, 4, color, -1, cv2.LINE_AA)
        y = top + 15 + 26 * index
        cv2.line(canvas, (right + 20, y), (right + 50, y), color, 2, cv2.LINE_AA)
        cv2.circle(canvas, (right + 35, y), 4, color, -1, cv2.LINE_AA)
        _text(canvas, name[:22], (right + 58, y), scale=0.5)

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), canvas):
        raise OSError(f"could not write {path}")
    return path


# ----------------------------------------------------------------------------------------------------- CLI


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
    parser.add_argument("--data", type=Path, default=default_data_root(), metavar="DIR",
                        help="dataset in SAM-Med2D's layout (default: $SAMMED_DATA or ../shared/data/medseg-dev)")
    parser.add_argument("--modes", type=_modes_argument, nargs="+", default=[list(MODES)], metavar="MODE",
                        help=f"evaluation modes, space or comma separated (default: all of {','.join(MODES)})")
    parser.add_argument("--clicks", type=_positive_int, default=5, metavar="N",
                        help="clicks of the interactive protocol (default 5)")
    parser.add_argument("--limit", type=_positive_int, default=None, metavar="N",
                        help="evaluate only the first N masks (quick runs)")
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
        items = read_dataset(args.data)
        compare = load_result(args.compare) if args.compare is not None else None
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.limit is not None:
        items = items[: args.limit]
    modes = [mode for group in args.modes for mode in (group if isinstance(group, list) else [group])]
    result = evaluate(
        predictor, items, modes=modes, num_clicks=args.clicks, seed=args.seed, progress=not args.no_progress, label=label
    )
    out = args.out if args.out is not None else Path("out") / "evaluate" / _slug(label)
    paths = write_report(result, out, compare)
    count = result["summary"]["count"]
    print(f"{label or 'model'}: {count['evaluated']} masks on {count['images']} images (mean Dice, points)")
    if compare is not None:
        print(f"A = {label or 'model'}, B = {_name(compare, 'B')}")
    print(overall_table(result, compare))
    print("report: " + ", ".join(str(path) for path in paths.values()))
    return 0
