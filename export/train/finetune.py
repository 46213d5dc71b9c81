"""Fine-tune a model's prompt encoder and mask decoder for point prompts, in SAM-Med2D's recipe.

    python -m sammed_edge.export.train.finetune --data ../shared/data/medseg-dev --out out/train/lite_medsam_clicks --epochs 6
    python -m sammed_edge.export.train.finetune --data ../shared/data/medseg-dev --out out/train/lite_medsam_clicks --epochs 9 --resume
    python -m sammed_edge.export.train.finetune --data ../shared/data/medseg-dev --out out/eval/clicks --evaluate lite_medsam_clicks

Each batch of masks gets a first prompt, a jittered box or points (50/50), then `iterations` corrective clicks in the
error region, the previous low-res logits fed back as the mask prompt in the family's convention
(`processing.mask_prompt_from_logits`, as the evaluator and the demo feed it); every decoder pass is one Adam step on
20 x focal + Dice + MSE(predicted IoU, actual IoU) (`losses.segmentation_loss`). Outputs follow inference: a lone
prompt set of points (the first pass) is trained on the multimask candidates (the lowest-loss one counts, the IoU
head learns all), boxes and every pass with a mask prompt on the single-mask output.

CPU mode (the default without CUDA): the image encoder stays frozen and its embeddings are computed once into an
on-disk cache (`embeddings.EmbeddingCache`), so an epoch only runs the prompt encoder and the decoder. With CUDA the
encoder runs in the loop (`--embeddings online`), and `--trainable` may include `adapters` or `encoder`.

Model selection uses the validation sources only (`data.leave_sources_out`): after every epoch a fast version of the
evaluator's protocols runs in the decoder's frame (tight box; click 1 at the interior point with the best of the
multimask candidates, then clicks at the centre of the largest error region). The best epoch has the highest mean
Dice over clicks 1..N among the epochs whose box Dice is at most 1 point below the starting model's.

Outputs in --out: last.pt (resumable checkpoint: plain state dicts, optimiser state, random-generator states),
metrics.csv, training-curves.png (when matplotlib is installed), split.json, and weights.safetensors: the best
epoch's trained parts in float16.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import logging
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from sammed_edge.runtime import evaluate as runtime_evaluate
from sammed_edge.runtime import metrics, processing
from sammed_edge.runtime.io import cap_per_source, default_data_root, read_dataset
from sammed_edge.runtime.processing import ProcessingPolicy
from sammed_edge.runtime.progress import ProgressBar

from ..models import SamModel, list_models, load_model
from ..predictor import TorchPredictor
from . import prompts
from .data import ImageRef, MaskSet, concat_mask_sets, leave_sources_out, load_image, load_mask_set
from .embeddings import EmbeddingCache
from .losses import mask_dice, segmentation_loss

log = logging.getLogger(__name__)

CHECKPOINT = "last.pt"
WEIGHTS = "weights.safetensors"
METRICS = "metrics.csv"
PLOT = "training-curves.png"
FORMAT = 2
# CLI names of the trainable parts -> the model attribute (or "adapters": SAM-Med2D's encoder adapters)
PARTS = {"prompt_encoder": "prompt_encoder", "decoder": "mask_decoder", "mask_decoder": "mask_decoder",
         "adapters": "adapters", "encoder": "image_encoder", "image_encoder": "image_encoder",
         "encoder_tail": "encoder_tail"}
ENCODER_PARTS = ("adapters", "image_encoder", "encoder_tail")
SCHEDULES = ("constant", "cosine")
BOX_DICE_BUDGET = 1.0  # points of box Dice an epoch may lose against the starting model and still be selected


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

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["trainable"] = list(self.trainable)
        return out


# ----------------------------------------------------------------------------------------------- model parts


def trainable_parts(names: Sequence[str]) -> tuple[str, ...]:
    """Canonical part names from CLI names ("decoder", "prompt_encoder", "adapters", "encoder"), sorted, unique."""
    unknown = sorted(set(names) - set(PARTS))
    if unknown or not names:
        raise ValueError(f"unknown trainable parts {unknown or list(names)}; choose from {sorted(PARTS)}")
    parts = {PARTS[name] for name in names}
    if "image_encoder" in parts:
        parts -= {"adapters", "encoder_tail"}
    return tuple(sorted(parts))


def set_trainable(model: SamModel, parts: Sequence[str], tail_split: int = 3) -> list[torch.nn.Parameter]:
    """Freeze the model except `parts` (canonical names); returns the trainable parameters.

    Raises:
        ValueError: "adapters" on a model without adapters, "encoder_tail" on an encoder that cannot be split.
    """
    model.requires_grad_(False)
    for part in parts:
        if part == "adapters":
            adapters = [param for name, param in model.image_encoder.named_parameters() if ".Adapter." in f".{name}"]
            if not adapters:
                raise ValueError("the model's image encoder has no adapters to train")
            for param in adapters:
                param.requires_grad_(True)
        elif part == "encoder_tail":
            for module in _tail_modules(model, tail_split):
                module.requires_grad_(True)
        else:
            getattr(model, part).requires_grad_(True)
    return [param for param in model.parameters() if param.requires_grad]


def _tail_modules(model: SamModel, split: int) -> list[torch.nn.Module]:
    encoder = model.image_encoder
    if not hasattr(encoder, "tail_modules"):
        raise ValueError(f"the {type(encoder).__name__} encoder cannot be split into cached and trained stages")
    return encoder.tail_modules(split)


def _prefixes(model: SamModel, parts: Sequence[str], tail_split: int = 3) -> tuple[str, ...]:
    prefixes: list[str] = []
    for part in parts:
        if part == "adapters":
            prefixes.append("image_encoder.")
        elif part == "encoder_tail":
            names = {id(module): name for name, module in model.image_encoder.named_modules()}
            prefixes += [f"image_encoder.{names[id(module)]}." for module in _tail_modules(model, tail_split)]
        else:
            prefixes.append(f"{part}.")
    return tuple(prefixes)


def part_state(model: SamModel, parts: Sequence[str], tail_split: int = 3) -> dict[str, torch.Tensor]:
    """State-dict entries of the modules holding `parts` (CPU copies): what a checkpoint and the weights store."""
    prefixes = _prefixes(model, parts, tail_split)
    return {key: value.detach().cpu().clone() for key, value in model.state_dict().items() if key.startswith(prefixes)}


def load_part_state(model: SamModel, state: dict[str, torch.Tensor], parts: Sequence[str], tail_split: int = 3) -> None:
    """Load `part_state` output back, strictly: exactly the keys and shapes of those modules."""
    expected = {key: value for key, value in model.state_dict().items() if key.startswith(_prefixes(model, parts, tail_split))}
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    misshapen = [key for key in expected if key in state and state[key].shape != expected[key].shape]
    if missing or unexpected or misshapen:
        raise ValueError(f"checkpoint does not fit the model: missing {missing[:5]}, unexpected {unexpected[:5]}, shapes {misshapen[:5]}")
    with torch.no_grad():
        for key, value in expected.items():
            value.copy_(state[key])


def decode_all(model: SamModel, embeddings: torch.Tensor, coords: torch.Tensor, labels: torch.Tensor,
               mask_input: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Every mask token of the decoder, as `SamModel.decode` computes them before choosing the output.

    Args:
        embeddings: B x C x h x w.
        coords: B x N x 2 model-frame points (box corners included); labels: B x N.
        mask_input: B x 1 x L x L mask prompt or None.

    Returns:
        logits B x T x L x L (token 0 = single-mask output, 1.. = multimask candidates), iou B x T.
    """
    encoder = model.prompt_encoder
    sparse = encoder.embed_labelled_points(coords, labels)
    dense = encoder.embed_masks(mask_input) if mask_input is not None else encoder.no_mask_dense(sparse.shape[0])
    return model.mask_decoder.predict_masks(embeddings, encoder.get_dense_pe(), sparse, dense)


# ------------------------------------------------------------------------------------------------------ data


class ImageStore:
    """Image embeddings for batches: cached float16 embeddings (frozen encoder) or the encoder in the loop.

    Args:
        model: the model.
        images: images or views (`data.ImageRef`); batches address them by index.
        mode: "cache" (embeddings from `EmbeddingCache`, read from disk per batch, so that many augmented views
            need no memory) or "online" (preprocessed images through the encoder).
        cache_dir: folder of the embedding cache (mode "cache").
        progress: show a progress bar while embedding.
        split: mode "cache" with features before encoder stage `split` cached; `batch` runs the stages after it
            (`forward_tail`), which may be trained.
        bf16: run those stages under bfloat16 autocast when they are trained (validation stays float32).
    """

    def __init__(self, model: SamModel, images: Sequence[ImageRef | Path], mode: str, cache_dir: str | Path | None = None,
                 progress: bool = True, split: int | None = None, bf16: bool = False) -> None:
        if mode not in ("cache", "online"):
            raise ValueError(f"embedding mode must be 'cache' or 'online', got {mode!r}")
        self.model, self.images, self.mode, self.split, self.bf16 = model, list(images), mode, split, bf16
        self.files: list[Path] | None = None
        self._tensors: dict[int, torch.Tensor] = {}
        if mode == "cache":
            cache = EmbeddingCache(model, cache_dir, split=split)
            self.files = cache.files(self.images, progress=progress)
            log.info("embeddings: %d cached, %d computed (%s)", cache.hits, cache.misses, cache.folder)

    def batch(self, indices: np.ndarray, device: torch.device, grad: bool = False) -> torch.Tensor:
        """B x C x h x w float32 embeddings of the images `indices` (with gradients when `grad` in online mode)."""
        if self.files is not None:
            table = np.stack([np.load(self.files[int(index)]) for index in indices])
            cached = torch.from_numpy(table).to(device=device, dtype=torch.float32)
            if self.split is None:
                return cached
            with torch.set_grad_enabled(grad), torch.autocast(device.type, dtype=torch.bfloat16, enabled=self.bf16 and grad):
                return self.model.image_encoder.forward_tail(cached, self.split).float()
        policy = self.model.processing_policy()
        for index in indices:
            if int(index) not in self._tensors:
                tensor, _ = processing.preprocess_image(load_image(self.images[int(index)]), policy)
                self._tensors[int(index)] = torch.from_numpy(tensor[0])
        images = torch.stack([self._tensors[int(index)] for index in indices]).to(device)
        with torch.set_grad_enabled(grad):
            return self.model.encode(images)


def _region_maps(regions: np.ndarray, side: int, device: torch.device) -> torch.Tensor:
    rows = torch.arange(side, device=device)
    heights = torch.as_tensor(regions[:, 0], device=device)
    widths = torch.as_tensor(regions[:, 1], device=device)
    inside = (rows[None, :, None] < heights[:, None, None]) & (rows[None, None, :] < widths[:, None, None])
    return inside[:, None].to(torch.float32)


def _prompt_tensors(sets: list[tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None]], policy: ProcessingPolicy,
                    device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    pairs = [prompts.decoder_prompts(coords, labels, box, policy) for coords, labels, box in sets]
    coords = torch.from_numpy(np.stack([pair[0] for pair in pairs])).to(device)
    labels = torch.from_numpy(np.stack([pair[1] for pair in pairs])).to(device)
    return coords, labels


def _feedback(logits: torch.Tensor, policy: ProcessingPolicy, device: torch.device) -> tuple[np.ndarray, torch.Tensor]:
    """(B x L x L predicted masks, B x 1 x L x L next mask prompt) from B x L x L chosen logits."""
    low = logits.detach().float().cpu().numpy()
    mask_input = processing.mask_prompt_from_logits(low, policy)
    return low > policy.mask_threshold, torch.from_numpy(mask_input[:, None]).to(device)


def _add_clicks(clicks: list[list[tuple[int, int, int]]], pred: np.ndarray, truth: np.ndarray, regions: np.ndarray,
                rng: np.random.Generator | None, centre: bool) -> np.ndarray:
    """Append one corrective click per sample (a padding point where the prediction has no error); returns done flags."""
    done = np.zeros(len(clicks), dtype=bool)
    for index, sample in enumerate(clicks):
        click = prompts.corrective_click(pred[index], truth[index], rng, tuple(regions[index]), centre=centre)
        if click is None:
            done[index] = True
            click = (0, 0, prompts.PADDING)
        sample.append(click)
    return done


def _click_arrays(sample: list[tuple[int, int, int]]) -> tuple[np.ndarray, np.ndarray]:
    return (np.array([click[:2] for click in sample], dtype=np.float64).reshape(-1, 2),
            np.array([click[2] for click in sample], dtype=np.int64))


# --------------------------------------------------------------------------------------------------- training


def train_batch(model: SamModel, embed, truth: np.ndarray, regions: np.ndarray, settings: Settings,
                rng: np.random.Generator, optimizer: torch.optim.Optimizer | None, device: torch.device) -> dict[str, float]:
    """One batch of SAM-Med2D's interactive training: first prompt, then `settings.iterations` corrective clicks.

    Args:
        model: the model (trainable parts set).
        embed: callable grad -> B x C x h x w embeddings of the batch's images.
        truth: B x L x L bool ground truth in the decoder's frame; regions: B x 2 (h, w) image regions.
        settings: the run's settings.
        rng: the run's random generator.
        optimizer: stepped after every decoder pass (None: forward only).
        device: where the model is.

    Returns:
        {"loss": mean loss over passes, "dice": mean Dice (0-1) of the trained candidate over passes, "passes": n}.
    """
    policy = model.processing_policy()
    batch = len(truth)
    targets = torch.from_numpy(truth[:, None].astype(np.float32)).to(device)
    valid = _region_maps(regions, policy.low_res_size, device)
    box_start = rng.random() < settings.box_prob
    boxes: list[np.ndarray | None] = [None] * batch
    clicks: list[list[tuple[int, int, int]]] = [[] for _ in range(batch)]
    if box_start:
        kind = rng.choice(["tight", "loose", "jittered"], p=_box_kinds(settings))
        for i in range(batch):
            region = tuple(regions[i])
            if kind == "tight":
                boxes[i] = prompts.tight_box(truth[i], region)
            elif kind == "loose":
                boxes[i] = prompts.loose_box(truth[i], rng, region)
            else:
                boxes[i] = prompts.jittered_box(truth[i], rng, region, max_shift=20.0 * policy.low_res_size / 256)
    elif rng.random() < settings.interior_prob:
        anywhere = rng.random() < settings.anywhere_prob
        for i in range(batch):
            if anywhere:
                coords, labels = prompts.inner_click(truth[i], rng, tuple(regions[i]))
            else:
                coords, labels = prompts.first_click(truth[i], tuple(regions[i]))
            clicks[i] = [(int(x), int(y), int(label)) for (x, y), label in zip(coords, labels)]
    else:
        count = int(rng.choice([1, 3, 5]))
        for i in range(batch):
            coords, labels = prompts.random_points(truth[i], count, rng, tuple(regions[i]))
            clicks[i] = [(int(x), int(y), int(label)) for (x, y), label in zip(coords, labels)]
    keep_box = box_start and rng.random() < settings.keep_box_prob
    # The encoder (when trained) learns from the first pass and later passes reuse its output without gradients,
    # unless it is the only trained part (distillation's prompt stage): then every pass's loss reaches it through one
    # backward pass and one step per batch.
    encoder_only = optimizer is not None and not any(
        p.requires_grad for part in (model.prompt_encoder, model.mask_decoder) for p in part.parameters()
    )
    embeddings = embed(optimizer is not None)
    mask_input = None
    losses, dices = [], []
    pending: list[torch.Tensor] = []
    for step in range(settings.iterations + 1):
        multimask = step == 0 and not box_start
        sets = [(*_click_arrays(clicks[i]), boxes[i]) if clicks[i] else (None, None, boxes[i]) for i in range(batch)]
        coords, labels = _prompt_tensors(sets, policy, device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=settings.bf16):
            logits, iou = decode_all(model, embeddings, coords, labels, mask_input)
        chosen = slice(1, None) if multimask else slice(0, 1)
        logits, iou = logits[:, chosen].float(), iou[:, chosen].float()
        out = segmentation_loss(logits, iou, targets, valid, settings.focal_weight, settings.iou_weight)
        if encoder_only:
            pending.append(out.loss)
        elif optimizer is not None:
            optimizer.zero_grad(set_to_none=True)
            out.loss.backward()
            optimizer.step()
        losses.append(float(out.loss.detach()))
        dices.append(float(out.dice.mean()))
        if step == settings.iterations:
            break
        # the candidate inference would keep (highest predicted IoU) is what the next pass sees
        best = iou.detach().argmax(dim=1)
        pred, mask_input = _feedback(logits[torch.arange(batch, device=device), best], policy, device)
        _add_clicks(clicks, pred, truth, regions, rng, centre=bool(rng.random() < settings.centre_prob))
        if step == 0 and not keep_box:
            boxes = [None] * batch
        if not encoder_only:
            embeddings = embeddings.detach()
    if pending:
        optimizer.zero_grad(set_to_none=True)
        torch.stack(pending).mean().backward()
        optimizer.step()
    return {"loss": float(np.mean(losses)), "dice": float(np.mean(dices)), "passes": len(losses)}


def _box_kinds(settings: Settings) -> list[float]:
    tight, loose = settings.tight_box_prob, settings.loose_box_prob
    if tight < 0 or loose < 0 or tight + loose > 1:
        raise ValueError(f"box kind probabilities must be >= 0 with a sum <= 1, got tight {tight}, loose {loose}")
    return [tight, loose, 1.0 - tight - loose]


@torch.no_grad()
def validate(model: SamModel, store: ImageStore, masks: MaskSet, indices: np.ndarray, batch_size: int, num_clicks: int,
             device: torch.device, progress: bool = True) -> dict[str, Any]:
    """The evaluator's box and click protocols in the decoder's frame, for model selection.

    Box: the tight box of the mask, single-mask output. Clicks: click 1 positive at the interior point, best of the
    multimask candidates by predicted IoU; then a click at the centre of the largest error region with the previous
    logits fed back, single-mask output; a prediction without error ends its run and its Dice carries over.

    Returns:
        {"box": mean Dice (points), "clicks": [mean Dice after click k (points), k = 1..num_clicks], "count": n}.
    """
    model.eval()
    policy = model.processing_policy()
    box_scores: list[np.ndarray] = []
    curves: list[np.ndarray] = []
    bar = ProgressBar("validate", len(indices), enabled=progress)
    try:
        for start in range(0, len(indices), batch_size):
            chunk = indices[start : start + batch_size]
            truth, regions = masks.masks[chunk], masks.regions[chunk]
            batch = len(chunk)
            embeddings = store.batch(masks.image_index[chunk], device)
            targets = torch.from_numpy(truth[:, None].astype(np.float32)).to(device)
            valid = _region_maps(regions, policy.low_res_size, device)
            boxes = [metrics.box_from_mask(truth[i][: regions[i][0], : regions[i][1]]) for i in range(batch)]
            coords, labels = _prompt_tensors([(None, None, box) for box in boxes], policy, device)
            logits, _ = decode_all(model, embeddings, coords, labels, None)
            box_scores.append(mask_dice(logits[:, :1], targets, valid)[:, 0].cpu().numpy())

            clicks = []
            for i in range(batch):
                (x, y), = prompts.first_click(truth[i], tuple(regions[i]))[0]
                clicks.append([(int(x), int(y), 1)])
            mask_input = None
            done = np.zeros(batch, dtype=bool)
            curve = np.zeros((batch, num_clicks))
            for step in range(num_clicks):
                coords, labels = _prompt_tensors([(*_click_arrays(sample), None) for sample in clicks], policy, device)
                logits, iou = decode_all(model, embeddings, coords, labels, mask_input)
                logits, iou = (logits[:, 1:], iou[:, 1:]) if step == 0 else (logits[:, :1], iou[:, :1])
                chosen = logits[torch.arange(batch, device=device), iou.argmax(dim=1)]
                dice = mask_dice(chosen[:, None], targets, valid)[:, 0].cpu().numpy()
                curve[:, step] = np.where(done, curve[:, step - 1] if step else dice, dice)
                if step + 1 == num_clicks:
                    break
                pred, mask_input = _feedback(chosen, policy, device)
                done |= _add_clicks(clicks, pred, truth, regions, None, centre=True)
            curves.append(curve)
            bar.advance(batch)
    finally:
        bar.close()
    curve = np.concatenate(curves) if curves else np.zeros((0, num_clicks))
    return {
        "box": round(100.0 * float(np.concatenate(box_scores).mean()), 2) if box_scores else None,
        "clicks": [round(100.0 * float(v), 2) for v in curve.mean(axis=0)] if len(curve) else [],
        "count": int(len(curve)),
    }


# ------------------------------------------------------------------------------------------------ bookkeeping


def _selection_score(row: dict[str, Any]) -> float:
    return float(np.mean(row["val_clicks"]))


def _eligible(row: dict[str, Any], baseline: dict[str, Any]) -> bool:
    return row["val_box"] >= baseline["val_box"] - BOX_DICE_BUDGET


def save_weights(state: dict[str, torch.Tensor], path: str | Path, metadata: dict[str, str] | None = None) -> Path:
    """Write trained parts as float16 safetensors (floating tensors halved, others as they are), atomically."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {key: (value.half() if value.is_floating_point() else value).contiguous() for key, value in state.items()}
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata=metadata)
    os.replace(tmp, path)
    return path


def read_resume_state(path: Path, fmt: int, settings: dict[str, Any]) -> dict[str, Any]:
    """A run's `last.pt` (read with weights_only), checked to be of format `fmt` and made with `settings`.

    Raises:
        FileNotFoundError: no checkpoint to resume.
        ValueError: another format, or settings that differ (the differences are listed).
    """
    if not path.is_file():
        raise FileNotFoundError(f"nothing to resume: {path} does not exist")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if state.get("format") != fmt:
        raise ValueError(f"{path} has checkpoint format {state.get('format')}, expected {fmt}")
    if state["settings"] != settings:
        diff = {k: (state["settings"].get(k), v) for k, v in settings.items() if state["settings"].get(k) != v}
        raise ValueError(f"settings differ from the checkpoint's (checkpoint, now): {diff}")
    return state


def _save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def _csv_value(value: Any) -> Any:
    if value is None:
        return ""
    return f"{value:.6g}" if isinstance(value, float) else value


def write_metrics(history: list[dict[str, Any]], path: Path, num_clicks: int, selected: int) -> None:
    """One CSV row per epoch (epoch 0: the starting model): losses, Dice, validation box / clicks Dice; `selected`
    marks the epoch whose weights were kept."""
    fields = ["epoch", "steps", "seconds", "lr", "train_loss", "train_dice", "val_box"] + [f"val_click{k}" for k in range(1, num_clicks + 1)] + ["val_mean_clicks", "selected"]
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        for row in history:
            flat = {key: row.get(key) for key in fields}
            flat.update({f"val_click{k + 1}": value for k, value in enumerate(row["val_clicks"])})
            flat["val_mean_clicks"] = round(_selection_score(row), 2)
            flat["selected"] = int(row["epoch"] == selected)
            writer.writerow({key: _csv_value(value) for key, value in flat.items()})


def plot_history(history: list[dict[str, Any]], path: Path) -> Path | None:
    """Training loss and validation Dice per epoch as a PNG; None (with a log note) without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.info("matplotlib is not installed: %s not drawn (metrics.csv holds the same numbers)", path.name)
        return None
    epochs = [row["epoch"] for row in history]
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    trained = [row for row in history if row.get("train_loss") is not None]
    left.plot([row["epoch"] for row in trained], [row["train_loss"] for row in trained], marker="o")
    left.set(xlabel="epoch", ylabel="training loss", title="loss")
    right.plot(epochs, [row["val_box"] for row in history], marker="o", label="box")
    for k in (0, len(history[0]["val_clicks"]) - 1):
        right.plot(epochs, [row["val_clicks"][k] for row in history], marker="o", label=f"click {k + 1}")
    right.set(xlabel="epoch", ylabel="validation Dice", title="validation")
    right.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


# ------------------------------------------------------------------------------------------------------ stage


def finetune(
    data: str | Path | Sequence[str | Path],
    out: str | Path,
    *,
    model: str | SamModel = "lite_medsam",
    epochs: int = 6,
    settings: Settings | None = None,
    resume: bool = False,
    device: str | torch.device | None = None,
    embeddings: str = "auto",
    cache_dir: str | Path | None = None,
    progress: bool = True,
) -> Path:
    """Fine-tune for point prompts and write the best epoch's weights.

    Args:
        data: one or more datasets in SAM-Med2D's layout with manifest.csv (modality, source_dataset); several
            are split into training and validation sources by `data.leave_sources_out`.
        out: run folder (checkpoint, metrics, weights).
        model: registered name or checkpoint path (loaded with `load_model`), or a `SamModel` (tests).
        epochs: total epochs; a resumed run continues up to this number.
        settings: the run's settings (default `Settings()`; its `model` is replaced by the model's name).
        resume: continue from out/last.pt (settings must match the checkpoint's).
        device: torch device; default CUDA when available, else CPU.
        embeddings: "cache" (frozen encoder or its cached first stages, on disk), "online" (encoder in the loop)
            or "auto" (online on CUDA or when the whole encoder or its adapters are trained, else cache).
        cache_dir: embedding cache folder (default ~/.cache/sammed-edge/embeddings).
        progress: draw progress bars.

    Returns:
        Path of the best epoch's float16 weights (out/weights.safetensors).

    Raises:
        ValueError: settings that contradict the checkpoint or each other, an empty split.
        FileNotFoundError: --resume without a checkpoint.
    """
    out = Path(out)
    settings = settings or Settings()
    name = model if isinstance(model, str) else "custom"
    settings = dataclasses.replace(settings, model=str(name), trainable=trainable_parts(settings.trainable))
    if settings.schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {settings.schedule!r}; choose from {SCHEDULES}")
    if settings.schedule != "constant" and settings.schedule_epochs is None:
        settings = dataclasses.replace(settings, schedule_epochs=epochs)
    _box_kinds(settings)
    device = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
    encoder_trained = any(part in ENCODER_PARTS for part in settings.trainable)
    online_parts = any(part in ("adapters", "image_encoder") for part in settings.trainable)
    mode = embeddings if embeddings != "auto" else ("online" if device.type == "cuda" or online_parts else "cache")
    if mode == "cache" and online_parts:
        raise ValueError("training the whole encoder or its adapters needs the encoder in the loop: use embeddings='online'")
    split = settings.tail_split if "encoder_tail" in settings.trainable and mode == "cache" else None
    checkpoint_path = out / CHECKPOINT
    state = read_resume_state(checkpoint_path, FORMAT, settings.to_dict()) if resume else None

    net = load_model(model) if isinstance(model, str) else model
    net.to(device)
    params = set_trainable(net, settings.trainable, settings.tail_split)
    encoder_params = {id(param) for param in net.image_encoder.parameters()}
    groups = [{"params": [p for p in params if id(p) not in encoder_params], "lr": settings.lr},
              {"params": [p for p in params if id(p) in encoder_params], "lr": settings.lr * settings.encoder_lr_scale}]
    optimizer = torch.optim.Adam([group for group in groups if group["params"]], lr=settings.lr)
    base_lrs = [group["lr"] for group in optimizer.param_groups]
    rng = np.random.default_rng(settings.seed)
    torch.manual_seed(settings.seed)

    roots = [data] if isinstance(data, (str, Path)) else list(data)
    datasets = [read_dataset(root) for root in roots]
    held = leave_sources_out(datasets, settings.split_seed)
    items = [item for dataset in datasets for item in dataset]
    train_items = [item for item in items if item.source not in held]
    val_items = cap_per_source([item for item in items if item.source in held], settings.val_per_source, settings.split_seed)
    policy = net.processing_policy()
    train_set = load_mask_set(train_items, policy, progress=progress, views=settings.views, seed=settings.seed)
    val_set = load_mask_set(val_items, policy, progress=progress)
    masks = concat_mask_sets(train_set, val_set)
    train_idx = np.arange(len(train_set))
    val_idx = np.arange(len(train_set), len(masks))
    if settings.limit_train is not None:
        allowed = {item.mask for item in train_items[: settings.limit_train]}
        train_idx = np.array([i for i in train_idx if train_set.items[i].mask in allowed], dtype=np.int64)
    val_idx = val_idx[: settings.limit_val]
    if not len(train_idx) or not len(val_idx):
        raise ValueError(f"empty split: {len(train_idx)} training and {len(val_idx)} validation masks")
    out.mkdir(parents=True, exist_ok=True)
    identity = np.array([masks.images[masks.image_index[i]].view.identity for i in train_idx], dtype=bool)
    (out / "split.json").write_text(json.dumps({
        "datasets": [str(root) for root in roots], "split_seed": settings.split_seed, "validation_sources": held,
        "train_masks": int(identity.sum()), "train_view_masks": int((~identity).sum()),
        "validation_masks": int(len(val_idx)), "validation_per_source": settings.val_per_source,
        "train_sources": sorted({masks.items[i].source for i in train_idx}),
        "validation": sorted(str(masks.items[i].mask) for i in val_idx),
    }, indent=1) + "\n")
    store = ImageStore(net, masks.images, mode, cache_dir, progress=progress, split=split, bf16=settings.bf16)

    history: list[dict[str, Any]] = []
    best: dict[str, Any] | None = None
    first_epoch, steps = 1, 0
    if state is not None:
        load_part_state(net, state["model"], settings.trainable, settings.tail_split)
        optimizer.load_state_dict(state["optimizer"])
        rng.bit_generator.state = state["rng"]["numpy"]
        torch.set_rng_state(state["rng"]["torch"])
        history, best, steps = list(state["history"]), state["best"], int(state["step"])
        first_epoch = int(state["epoch"]) + 1
        log.info("resuming after epoch %d (%d steps) from %s", first_epoch - 1, steps, checkpoint_path)
    else:
        start = time.perf_counter()
        val = validate(net, store, masks, val_idx, settings.batch_size, settings.val_clicks, device, progress)
        history.append({"epoch": 0, "steps": 0, "seconds": round(time.perf_counter() - start, 1), "lr": settings.lr,
                        "train_loss": None, "train_dice": None, "val_box": val["box"], "val_clicks": val["clicks"]})
        log.info("starting model on %d validation masks: box %.2f, clicks %s", val["count"], val["box"], val["clicks"])

    # one epoch of the schedule: one view per image, about as many masks as the images have
    per_epoch = len(train_set.epoch_indices(train_idx, np.random.default_rng(0)))
    schedule_epochs = settings.schedule_epochs or epochs
    total_steps = max(1, schedule_epochs * -(-per_epoch // settings.batch_size) * (settings.iterations + 1))
    for epoch in range(first_epoch, epochs + 1):
        start = time.perf_counter()
        net.train()
        order = rng.permutation(train_set.epoch_indices(train_idx, rng))
        batches = [order[i : i + settings.batch_size] for i in range(0, len(order), settings.batch_size)]
        bar = ProgressBar(f"epoch {epoch}/{epochs}", len(batches), enabled=progress)
        loss_sum = dice_sum = 0.0
        try:
            for index, chunk in enumerate(batches, 1):
                scale = learning_rate_scale(settings, steps, total_steps)
                for group, base in zip(optimizer.param_groups, base_lrs):
                    group["lr"] = base * scale
                stats = train_batch(
                    net, lambda grad, ids=masks.image_index[chunk]: store.batch(ids, device, grad=grad and encoder_trained),
                    masks.masks[chunk], masks.regions[chunk], settings, rng, optimizer, device,
                )
                steps += stats["passes"]
                loss_sum += stats["loss"]
                dice_sum += stats["dice"]
                bar.advance(postfix=f"loss {loss_sum / index:.4f} dice {100 * dice_sum / index:.1f} lr {scale:.2f}")
        finally:
            bar.close()
        val = validate(net, store, masks, val_idx, settings.batch_size, settings.val_clicks, device, progress)
        row = {"epoch": epoch, "steps": steps, "seconds": round(time.perf_counter() - start, 1),
               "lr": settings.lr * learning_rate_scale(settings, steps, total_steps),
               "train_loss": loss_sum / len(batches), "train_dice": round(100 * dice_sum / len(batches), 2),
               "val_box": val["box"], "val_clicks": val["clicks"]}
        history.append(row)
        eligible = _eligible(row, history[0])
        trained = part_state(net, settings.trainable, settings.tail_split)
        if best is None or (eligible, _selection_score(row)) > (best["eligible"], best["score"]):
            best = {"epoch": epoch, "score": _selection_score(row), "eligible": eligible, "model": trained}
        log.info("epoch %d: loss %.4f, validation box %.2f, clicks %s (%.0f s)%s", epoch, row["train_loss"], val["box"],
                 val["clicks"], row["seconds"], " *" if best["epoch"] == epoch else "")
        _save_checkpoint(checkpoint_path, {
            "format": FORMAT, "settings": settings.to_dict(), "epoch": epoch, "step": steps,
            "model": trained, "optimizer": optimizer.state_dict(),
            "rng": {"numpy": rng.bit_generator.state, "torch": torch.get_rng_state()},
            "history": history, "best": best,
        })
        _write_outputs(out, history, best, settings)

    if best is None:
        raise ValueError(f"no epoch trained: the checkpoint already holds {first_epoch - 1} epochs (ask for more with --epochs)")
    return _write_outputs(out, history, best, settings)


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


def _write_outputs(out: Path, history: list[dict[str, Any]], best: dict[str, Any], settings: Settings) -> Path:
    write_metrics(history, out / METRICS, settings.val_clicks, best["epoch"])
    plot_history(history, out / PLOT)
    if not best["eligible"]:
        log.warning("no epoch kept box Dice within %.1f points of the starting model; weights of epoch %d (best clicks)",
                    BOX_DICE_BUDGET, best["epoch"])
    metadata = {"settings": json.dumps(settings.to_dict()), "epoch": str(best["epoch"]),
                "validation": json.dumps(next(row for row in history if row["epoch"] == best["epoch"]), default=str)}
    return save_weights(best["model"], out / WEIGHTS, metadata)


# ------------------------------------------------------------------------------------------------ evaluation


def validation_items(data: str | Path | Sequence[str | Path], split_seed: int = 0, per_source: int | None = None) -> list:
    """The validation masks of a run on `data`: `leave_sources_out`'s sources, at most `per_source` of each."""
    roots = [data] if isinstance(data, (str, Path)) else list(data)
    datasets = [read_dataset(root) for root in roots]
    held = set(leave_sources_out(datasets, split_seed))
    return cap_per_source([item for dataset in datasets for item in dataset if item.source in held], per_source, split_seed)


def evaluate_validation(model: SamModel, data: str | Path | Sequence[str | Path], out: str | Path, *, split_seed: int = 0,
                        per_source: int | None = None, modes: Sequence[str] = ("box", "points1", "clicks"),
                        num_clicks: int = 5, label: str = "", compare: str | Path | None = None,
                        progress: bool = True) -> dict[str, Any]:
    """Run the repository's evaluator (`runtime.evaluate`) on the validation sources and write its report.

    Args:
        model: the model to evaluate (through `TorchPredictor`).
        data: the dataset(s); the validation masks are `validation_items(data, split_seed, per_source)`.
        out: report folder (evaluation.json / .md / dice_vs_clicks.png).
        modes, num_clicks: evaluator modes and clicks.
        label: the model's name in reports.
        compare: another evaluation.json (or its folder) to report against.

    Returns:
        The evaluator's result dict.
    """
    val_items = validation_items(data, split_seed, per_source)
    result = runtime_evaluate.evaluate(TorchPredictor(model), val_items, modes=modes, num_clicks=num_clicks, progress=progress, label=label)
    other = runtime_evaluate.load_result(compare) if compare is not None else None
    runtime_evaluate.write_report(result, out, other)
    print(runtime_evaluate.overall_table(result, other))
    return result


# --------------------------------------------------------------------------------------------------------- CLI


def _parts_argument(value: str) -> tuple[str, ...]:
    try:
        return trainable_parts([part.strip() for part in value.split(",") if part.strip()])
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    defaults = Settings()
    default_data = default_data_root()
    parser.add_argument("--data", type=Path, nargs="+", default=None if default_data is None else [default_data], metavar="DIR",
                        help="one or more datasets in SAM-Med2D's layout, split by source in rounds (docs/training.md; "
                             "default: $SAMMED_DATA or ../shared/data/medseg-dev)")
    parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="run folder (checkpoint, metrics, weights) or report folder")
    parser.add_argument("--model", default=defaults.model, help=f"starting model: {', '.join(list_models())} or a checkpoint path")
    parser.add_argument("--epochs", type=int, default=6, help="total epochs (default 6)")
    parser.add_argument("--resume", action="store_true", help="continue from --out/last.pt")
    parser.add_argument("--trainable", type=_parts_argument, default=defaults.trainable, metavar="PARTS",
                        help="comma-separated parts to train: prompt_encoder, decoder, adapters, encoder, encoder_tail "
                             "(default prompt_encoder,decoder)")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="training seed (default 0)")
    parser.add_argument("--split-seed", type=int, default=defaults.split_seed, help="seed of the validation-source choice (default 0)")
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size, help=f"masks per batch (default {defaults.batch_size})")
    parser.add_argument("--lr", type=float, default=defaults.lr, help=f"Adam learning rate (default {defaults.lr:g})")
    parser.add_argument("--iterations", type=int, default=defaults.iterations,
                        help=f"corrective clicks after the first prompt (default {defaults.iterations})")
    parser.add_argument("--views", type=int, default=defaults.views, metavar="N",
                        help="augmented views per training image, embedded once (default 0: the images only)")
    parser.add_argument("--val-per-source", type=int, default=defaults.val_per_source, metavar="N",
                        help="at most N validation masks per source (default: all)")
    parser.add_argument("--schedule", choices=SCHEDULES, default=defaults.schedule, help="learning-rate schedule (default constant)")
    parser.add_argument("--schedule-epochs", type=int, default=None, metavar="N",
                        help="length of the cosine schedule in epochs (default: --epochs of the first run)")
    parser.add_argument("--warmup", type=float, default=defaults.warmup, metavar="F", help="warm-up share of the steps with --schedule cosine")
    parser.add_argument("--anywhere-prob", type=float, default=defaults.anywhere_prob, metavar="P",
                        help="probability that a lone first click is anywhere inside the object rather than at its centre")
    parser.add_argument("--tight-box-prob", type=float, default=defaults.tight_box_prob, metavar="P", help="share of tight boxes among box starts")
    parser.add_argument("--loose-box-prob", type=float, default=defaults.loose_box_prob, metavar="P", help="share of loose boxes among box starts")
    parser.add_argument("--tail-split", type=int, default=defaults.tail_split, metavar="K",
                        help=f"with --trainable encoder_tail: train encoder stages K.. and the neck (default {defaults.tail_split})")
    parser.add_argument("--encoder-lr-scale", type=float, default=defaults.encoder_lr_scale, metavar="F",
                        help=f"learning rate of trained encoder parts relative to --lr (default {defaults.encoder_lr_scale})")
    parser.add_argument("--limit-train", type=int, default=None, metavar="N", help="train on the first N masks only (quick runs)")
    parser.add_argument("--limit-val", type=int, default=None, metavar="N", help="validate on the first N masks only")
    parser.add_argument("--bf16", action="store_true", help="bfloat16 autocast for the training passes (faster on AVX512-BF16 CPUs and GPUs)")
    parser.add_argument("--embeddings", choices=("auto", "cache", "online"), default="auto",
                        help="cache: frozen encoder, embeddings cached on disk; online: encoder in the loop (default: online on CUDA)")
    parser.add_argument("--cache-dir", type=Path, default=None, metavar="DIR", help="embedding cache (default ~/.cache/sammed-edge/embeddings)")
    parser.add_argument("--device", default=None, help="torch device (default cuda when available, else cpu)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--evaluate", default=None, metavar="MODEL",
                        help="instead of training: run the evaluator on the validation sources with MODEL (name or checkpoint)")
    parser.add_argument("--compare", type=Path, default=None, metavar="JSON", help="with --evaluate: a result to compare with")
    parser.add_argument("--no-progress", action="store_true", help="do not draw progress bars")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.data is None:
        parser.error("no dataset: pass --data DIR or set $SAMMED_DATA")
    if args.evaluate is not None:
        evaluate_validation(load_model(args.evaluate), args.data, args.out, split_seed=args.split_seed,
                            per_source=args.val_per_source, label=f"torch:{args.evaluate}", compare=args.compare,
                            progress=not args.no_progress)
        return 0
    settings = Settings(model=args.model, batch_size=args.batch_size, lr=args.lr, iterations=args.iterations,
                        trainable=args.trainable, seed=args.seed, split_seed=args.split_seed,
                        limit_train=args.limit_train, limit_val=args.limit_val, bf16=args.bf16, views=args.views,
                        val_per_source=args.val_per_source, schedule=args.schedule, warmup=args.warmup,
                        schedule_epochs=args.schedule_epochs,
                        anywhere_prob=args.anywhere_prob, tight_box_prob=args.tight_box_prob,
                        loose_box_prob=args.loose_box_prob, tail_split=args.tail_split,
                        encoder_lr_scale=args.encoder_lr_scale)
    start = time.perf_counter()
    path = finetune(args.data, args.out, model=args.model, epochs=args.epochs, settings=settings, resume=args.resume,
                    device=args.device, embeddings=args.embeddings, cache_dir=args.cache_dir, progress=not args.no_progress)
    print(f"weights: {path} ({path.stat().st_size / 2**20:.1f} MB), {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
