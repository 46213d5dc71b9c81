"""Why later clicks add little: which decoder output a corrective click should keep, measured on a bundle.

    python -m sammed_edge.export.studies.click_candidates --bundle out/lite_medsam_clicks-onnx-fp32 \
        --data ../shared/data/medseg-dev ../shared/data/medseg-train --sources BUSI ... --per-source 12

For each mask the evaluator's click protocol runs once per rule (click 1 at the interior point with the best
multimask candidate; later clicks at the centre of the largest error region), and the rules differ in what the
predictor returns after a corrective click:

    single: the single-mask output (token 0), previous logits fed back (the evaluator's protocol);
    iou: the output of the four with the highest predicted IoU;
    consistent: the outputs that agree with the most clicks (positive inside, negative outside), then the highest
        predicted IoU among them;
    no-feedback: token 0 without the previous logits as mask prompt.

It prints Dice after every click per rule and the share of clicks that lowered Dice.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from sammed_edge.runtime import metrics, processing
from sammed_edge.runtime.io import cap_per_source, read_datasets, read_image, read_mask, select_sources
from sammed_edge.runtime.predictor import Predictor

RULES = ("single", "iou", "consistent", "no-feedback")


def agreement(masks: np.ndarray, clicks: list[tuple[int, int, int]]) -> np.ndarray:
    """(C,) number of clicks each C x H x W mask agrees with."""
    xs = np.array([c[0] for c in clicks])
    ys = np.array([c[1] for c in clicks])
    labels = np.array([c[2] for c in clicks], dtype=bool)
    return (masks[:, ys, xs] == labels[None]).sum(axis=1)


def run_clicks(predictor: Predictor, truth: np.ndarray, rule: str, num_clicks: int) -> list[float]:
    """Dice after clicks 1..N under one rule."""
    geometry = predictor.geometry
    embedding = predictor._current()[0]
    policy = predictor.policy
    x, y = metrics.interior_point(truth)
    clicks = [(x, y, 1)]
    mask_input = None
    curve: list[float] = []
    while True:
        points = np.array([c[:2] for c in clicks], dtype=np.float64)
        labels = np.array([c[2] for c in clicks], dtype=np.int64)
        feed = None if rule == "no-feedback" else mask_input
        prompts = processing.check_prompts(geometry, policy, points, labels, None, feed)
        outputs = predictor.decoder.run({**processing.decoder_inputs(prompts, geometry, policy), "image_embeddings": embedding})
        low = outputs["low_res_masks"][0]
        iou = outputs["iou_predictions"][0]
        if len(clicks) == 1:
            pick = 1 + int(np.argmax(iou[1:]))
        elif rule in ("single", "no-feedback"):
            pick = 0
        else:
            masks = processing.postprocess_logits(low, geometry, policy) > policy.mask_threshold
            if rule == "iou":
                pick = int(np.argmax(iou))
            else:
                agree = agreement(masks, clicks)
                best = np.flatnonzero(agree == agree.max())
                pick = int(best[np.argmax(iou[best])])
        pred = processing.postprocess_logits(low[pick : pick + 1], geometry, policy)[0] > policy.mask_threshold
        curve.append(metrics.dice(pred, truth))
        if len(curve) == num_clicks:
            return curve
        click = metrics.next_click(pred, truth)
        if click is None:
            return curve + [curve[-1]] * (num_clicks - len(curve))
        clicks.append(click)
        mask_input = processing.mask_prompt_from_logits(low[pick], policy)[None, None]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--data", type=Path, nargs="+", required=True)
    parser.add_argument("--sources", nargs="+", default=None)
    parser.add_argument("--per-source", type=int, default=12)
    parser.add_argument("--clicks", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None, help="write the curves per rule and source here")
    args = parser.parse_args(argv)
    items = read_datasets(args.data)
    if args.sources:
        items = select_sources(items, args.sources)
    items = cap_per_source(items, args.per_source)
    predictor = Predictor.from_bundle(args.bundle, threads=args.threads)
    curves: dict[str, list[list[float]]] = {rule: [] for rule in RULES}
    sources: list[str] = []
    for item in items:
        truth = read_mask(item.mask)
        if not truth.any():
            continue
        predictor.set_image(read_image(item.image))
        sources.append(item.source)
        for rule in RULES:
            curves[rule].append(run_clicks(predictor, truth, rule, args.clicks))
    print(f"{len(sources)} masks, {len(set(sources))} sources")
    print("| rule | " + " | ".join(f"click {k}" for k in range(1, args.clicks + 1)) + " | clicks lowering Dice |")
    print("|---|" + "---:|" * (args.clicks + 1))
    for rule in RULES:
        table = 100 * np.array(curves[rule])
        lowered = (np.diff(table, axis=1) < -0.5).mean()
        print(f"| {rule} | " + " | ".join(f"{v:.2f}" for v in table.mean(axis=0)) + f" | {100 * lowered:.0f} % |")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"sources": sources, "curves": curves}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
