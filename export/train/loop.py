"""One training batch and the validation protocol, in the decoder's L x L frame.

`train_batch` runs SAM-Med2D's interactive recipe on a batch of masks: a first prompt (a box: tight, loose or
jittered; a click at the centre or anywhere inside; or random points), then corrective clicks in the error region,
the previous low-res logits fed back as the mask prompt in the family's convention. `validate` is a fast version of
the evaluator's box and click protocols. `ImageStore` serves the batches' embeddings: from the on-disk cache (the
frozen encoder, or cached features through the trained encoder tail) or from the encoder in the loop.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from sammed_edge.runtime import metrics, processing
from sammed_edge.runtime.processing import ProcessingPolicy
from sammed_edge.runtime.progress import ProgressBar

from ..models import SamModel
from . import prompts
from .data import ImageRef, MaskSet, load_image
from .embeddings import EmbeddingCache
from .losses import mask_dice, segmentation_loss
from .settings import Settings, box_kinds

log = logging.getLogger(__name__)


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
        kind = rng.choice(["tight", "loose", "jittered"], p=box_kinds(settings))
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
