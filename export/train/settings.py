"""The fine-tuning stage's settings: everything that decides a run's result, and the learning-rate schedule.

A resumed run must have the same settings as the checkpoint it continues (`records.read_resume_state`).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

SCHEDULES = ("constant", "cosine")


@dataclass(frozen=True)
class Settings:
    """Everything that decides the result of a run; a resumed run must have the same (the epoch count aside).

    Attributes:
        model: registered name or checkpoint path of the starting model ("custom" for a model object).
        batch_size: masks per batch.
        lr: Adam learning rate.
        iterations: corrective clicks after the first prompt, one decoder pass (and step) each.
        box_prob: probability that a batch starts from a jittered box instead of points.
        interior_prob: probability that a points start is the evaluator's click 1 (interior point) rather than
            1, 3 or 5 random points as the pointsN modes draw them.
        keep_box_prob: probability that a box start keeps the box with the clicks (the demo) instead of dropping it
            (SAM-Med2D).
        centre_prob: probability that a corrective click goes to the centre of the largest error region (the
            evaluator) instead of a random error pixel (SAM-Med2D).
        trainable: parts trained, from `PARTS`' values.
        seed: training seed (order, prompts).
        split_seed: seed of the validation-source choice.
        focal_weight, iou_weight: loss weights.
        val_clicks: clicks of the validation protocol.
        limit_train, limit_val: use only that many masks (quick runs), None for all.
        bf16: run the training passes under bfloat16 autocast (weights, optimiser and loss stay float32; about
            1.6x faster on CPUs with AVX512-BF16); validation always runs in float32, as inference does.
        views: augmented views per training image besides the image (`augment`); each epoch uses one view (or
            the image) of every image, drawn at random. Validation never uses views.
        val_per_source: at most that many validation masks per source (`runtime.io.cap_per_source`), None for all.
        schedule: learning rate "constant", or "cosine" decay to 1 % over the run after `warmup` (a fraction of
            all steps) of linear warm-up.
        schedule_epochs: length of the cosine schedule in epochs; None takes the run's epoch count (and records
            it, so that a resumed run follows the same schedule; pass it to train one schedule in several runs).
        anywhere_prob: probability that a lone first click lies anywhere inside the object (a random pixel at
            least a fifth of the object's depth from its edge) instead of at its centre.
        tight_box_prob, loose_box_prob: probabilities that a box start is the tight box, or a box grown by 5-25 %
            of its side on each edge; otherwise the Gaussian-jittered box.
        tail_split: with "encoder_tail" trainable, the encoder stages from this one on (and the neck) are
            trained, on cached features of the stages before it.
        encoder_lr_scale: learning rate of trained encoder parts relative to `lr`.
        cache_features: cache the encoder's features before `tail_split` instead of its embeddings even when the
            tail is frozen (it then runs per batch), so that runs with and without the tail trained share a cache.
    """

    model: str = "lite_medsam"
    batch_size: int = 8
    lr: float = 1e-4
    iterations: int = 4
    box_prob: float = 0.5
    interior_prob: float = 0.5
    keep_box_prob: float = 0.5
    centre_prob: float = 0.5
    trainable: tuple[str, ...] = ("prompt_encoder", "mask_decoder")
    seed: int = 0
    split_seed: int = 0
    focal_weight: float = 20.0
    iou_weight: float = 1.0
    val_clicks: int = 5
    limit_train: int | None = None
    limit_val: int | None = None
    bf16: bool = False
    views: int = 0
    val_per_source: int | None = None
    schedule: str = "constant"
    schedule_epochs: int | None = None
    warmup: float = 0.0
    anywhere_prob: float = 0.0
    tight_box_prob: float = 0.0
    loose_box_prob: float = 0.0
    tail_split: int = 3
    encoder_lr_scale: float = 0.1
    cache_features: bool = False

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["trainable"] = list(self.trainable)
        return out


def box_kinds(settings: Settings) -> list[float]:
    tight, loose = settings.tight_box_prob, settings.loose_box_prob
    if tight < 0 or loose < 0 or tight + loose > 1:
        raise ValueError(f"box kind probabilities must be >= 0 with a sum <= 1, got tight {tight}, loose {loose}")
    return [tight, loose, 1.0 - tight - loose]


def learning_rate_scale(settings: Settings, step: int, total_steps: int) -> float:
    """Factor on the base learning rate at decoder pass `step` of `total_steps`: constant, or linear warm-up over
    `settings.warmup` of the steps followed by cosine decay to 1 %."""
    if settings.schedule == "constant":
        return 1.0
    warm = settings.warmup * total_steps
    if step < warm:
        return (step + 1) / warm
    progress = min(1.0, (step - warm) / max(1.0, total_steps - warm))
    return 0.01 + 0.99 * 0.5 * (1.0 + math.cos(math.pi * progress))
