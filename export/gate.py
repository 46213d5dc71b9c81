"""The accuracy gate of reduced-precision builds.

A bundle whose graphs run in int8 / bf16 / fp16 is scored on held-out data (never used for calibration) next to
the fp32 graphs of the same export, with the same runtime code, and fails when box-prompt Dice drops by more than
`box_budget` points or one-point-prompt Dice by more than `point_budget` points. A build whose decoder runs below
fp32 is also judged on clicks (the evaluator's interactive protocol, previous mask fed back): Dice after click 1 and
after click 3 may each drop at most `click_budget` points, since a decoder's rounding compounds over the clicks
that feed its own masks back. With held-out ground-truth masks every mode is scored against them; without masks (a
calibration folder of bare images) the fp32 graph's masks for a centred box serve as ground truth.
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
CLICK_BUDGET = 1.0
GATED_CLICKS = (1, 3)  # Dice after these clicks is gated for a reduced-precision decoder


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
    click_budget: float | None = None,
) -> dict[str, Any]:
    """Score `candidate` against the fp32 `reference` on held-out data.

    Args:
        click_budget: also gate Dice after clicks `GATED_CLICKS` with this budget (None: clicks not scored).

    Returns:
        report: Dice of both per mode (points; "click1", "click3" with a click budget), the drops, the budgets,
        `passed`.

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
        modes = MODES + (("clicks",) if click_budget is not None else ())
        scores = {}
        for name, predictor in (("fp32", reference), ("candidate", candidate)):
            result = evaluate.evaluate(predictor, items, modes=modes, num_clicks=max(GATED_CLICKS), progress=False, label=name)
            overall = result["summary"]["overall"]
            scores[name] = {mode: overall["dice"][mode] for mode in MODES}
            if click_budget is not None:
                scores[name].update({f"click{k}": overall["clicks"]["dice"][k - 1] for k in GATED_CLICKS})
    budget = {"box": box_budget, "points1": point_budget}
    if click_budget is not None:
        budget.update({f"click{k}": click_budget for k in GATED_CLICKS})
    drops = {mode: round(scores["fp32"][mode] - scores["candidate"][mode], 2) for mode in budget}
    report = {
        "holdout_masks": len(items), "ground_truth": "fp32 predictions" if pseudo else "held-out masks",
        "dice_fp32": scores["fp32"], "dice": scores["candidate"], "drop": drops, "budget": budget, "enforced": enforce,
    }
    failed = [mode for mode in budget if drops[mode] > budget[mode]]
    report["passed"] = not failed
    if enforce and failed:
        detail = "; ".join(f"{mode} Dice {scores['candidate'][mode]:.2f} vs fp32 {scores['fp32'][mode]:.2f} "
                           f"(drop {drops[mode]:.2f}, budget {budget[mode]})" for mode in failed)
        raise GateError(f"accuracy gate failed on {len(items)} held-out masks: {detail}. Full report: {json.dumps(report)}")
    return report
