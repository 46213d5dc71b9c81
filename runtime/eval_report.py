"""Summaries, comparison tables, Markdown/JSON reports and the Dice-vs-clicks plot of evaluation results."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Iterable, Sequence

import cv2
import numpy as np

MODES: tuple[str, ...] = ("box", "points1", "points3", "points5", "clicks")
POINT_MODES: dict[str, int] = {"points1": 1, "points3": 3, "points5": 5}
DICE_DECIMALS = 4  # per-item rounding of SAM-Med2D's SegMetrics
UNKNOWN_GROUP = "unknown"


# ------------------------------------------------------------------------------------------------ evaluation


def check_modes(modes: Iterable[str]) -> tuple[str, ...]:
    """Validate evaluation modes; returns them deduplicated in `MODES` order."""
    requested = [modes] if isinstance(modes, str) else list(modes)
    unknown = sorted(set(requested) - set(MODES))
    if unknown:
        raise ValueError(f"unknown evaluation modes {unknown}; known: {list(MODES)}")
    if not requested:
        raise ValueError("no evaluation mode requested")
    return tuple(mode for mode in MODES if mode in requested)


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


def result_name(result: dict[str, Any], fallback: str) -> str:
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
        "label": result_name(other, "B"),
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
    lines = [f"# Evaluation: {result_name(result, 'model')}", ""]
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
        lines += ["", f"A = {result_name(result, 'A')}, B = {view['label']}, Δ = A − B ({view['common_items']} masks)."]
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
        sides = [(result_name(result, "A"), result["summary"])]
    else:  # the curves of the masks both results hold, as in the tables
        sides = [(result_name(result, "A"), view["summary"]), (view["label"], view["other_summary"])]
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
