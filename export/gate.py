"""The accuracy gate of reduced-precision builds.

A bundle whose graphs run in int8 / bf16 / fp16 is scored on held-out data (never used for calibration) next to
the fp32 graphs of the same export, with the same runtime code, and fails when box-prompt Dice drops by more than
`box_budget` points or one-point-prompt Dice by more than `point_budget` points. With held-out ground-truth masks
both are scored against them; without masks (a calibration folder of bare images) the fp32 graph's masks for a
centred box and a centre click serve as ground truth, and the drop is 100 minus the reduced bundle's Dice.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from sammed_edge.runtime import evaluate
from sammed_edge.runtime.io import MaskItem, write_mask_png
from sammed_edge.runtime.predictor import PromptPredictor

MODES = ("box", "points1")
BOX_BUDGET = 1.0
POINT_BUDGET = 2.0


class GateError(RuntimeError):
    """A reduced-precision build lost more accuracy than its budget allows."""


def pseudo_ground_truth(reference: PromptPredictor, images: Sequence[np.ndarray], folder: Path) -> list[MaskItem]:
    """Masks of the fp32 predictor for a centred box (half the image), written as a dataset for the evaluator."""
    import cv2

    (folder / "images").mkdir(parents=True, exist_ok=True)
    items = []
    for index, image in enumerate(images):
        height, width = image.shape[:2]
        reference.set_image(image)
        masks, _, _ = reference.predict(box=[width / 4, height / 4, 3 * width / 4, 3 * height / 4], multimask_output=False)
        if not masks[0].any():
            continue
        image_path = folder / "images" / f"{index:03d}.png"
        cv2.imwrite(str(image_path), image[:, :, ::-1])
        mask_path = write_mask_png(folder / "masks" / f"{index:03d}_object.png", masks[0])
        items.append(MaskItem(image_path, mask_path, "reference", "object", "fp32 prediction"))
    return items


def accuracy_gate(
    reference: PromptPredictor,
    candidate: PromptPredictor,
    holdout: Sequence[MaskItem],
    holdout_images: Sequence[np.ndarray] = (),
    box_budget: float = BOX_BUDGET,
    point_budget: float = POINT_BUDGET,
    enforce: bool = True,
) -> dict[str, Any]:
    """Score `candidate` against the fp32 `reference` on held-out data.

    Returns:
        report: Dice of both per mode (points), the drops, the budgets, `passed`.

    Raises:
        GateError: a drop exceeds its budget (only with `enforce`).
    """
    with tempfile.TemporaryDirectory() as tmp:
        items = list(holdout)
        pseudo = not items
        if pseudo:
            items = pseudo_ground_truth(reference, holdout_images, Path(tmp))
        if not items:
            raise GateError("the accuracy gate has no held-out data (no masks and no held-out images)")
        scores = {}
        for name, predictor in (("fp32", reference), ("candidate", candidate)):
            result = evaluate.evaluate(predictor, items, modes=MODES, progress=False, label=name)
            scores[name] = result["summary"]["overall"]["dice"]
    drops = {mode: round(scores["fp32"][mode] - scores["candidate"][mode], 2) for mode in MODES}
    report = {
        "holdout_masks": len(items), "ground_truth": "fp32 predictions" if pseudo else "held-out masks",
        "dice_fp32": scores["fp32"], "dice": scores["candidate"], "drop": drops,
        "budget": {"box": box_budget, "points1": point_budget}, "enforced": enforce,
    }
    report["passed"] = drops["box"] <= box_budget and drops["points1"] <= point_budget
    if enforce and not report["passed"]:
        raise GateError(
            f"accuracy gate failed on {len(items)} held-out masks: box Dice {scores['candidate']['box']:.2f} vs fp32 "
            f"{scores['fp32']['box']:.2f} (drop {drops['box']:.2f}, budget {box_budget}); one-point Dice "
            f"{scores['candidate']['points1']:.2f} vs {scores['fp32']['points1']:.2f} (drop {drops['points1']:.2f}, "
            f"budget {point_budget}). Full report: {json.dumps(report)}"
        )
    return report
