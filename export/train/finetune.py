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
import dataclasses
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from sammed_edge.runtime import evaluate as runtime_evaluate
from sammed_edge.runtime.io import cap_per_source, default_data_root, read_dataset
from sammed_edge.runtime.progress import ProgressBar

from ..models import SamModel, list_models, load_model
from ..predictor import TorchPredictor
from .data import concat_mask_sets, leave_sources_out, load_mask_set
from .loop import ImageStore, train_batch, validate
from .parts import ENCODER_PARTS, load_part_state, part_state, set_trainable, trainable_parts
from .records import (BOX_DICE_BUDGET, CHECKPOINT, METRICS, PLOT, WEIGHTS, eligible, plot_history, read_resume_state,
                      save_checkpoint, save_weights, selection_score, write_metrics)
from .settings import SCHEDULES, Settings, box_kinds, learning_rate_scale

log = logging.getLogger(__name__)

FORMAT = 2


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
    box_kinds(settings)
    device = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
    encoder_trained = any(part in ENCODER_PARTS for part in settings.trainable)
    online_parts = any(part in ("adapters", "image_encoder") for part in settings.trainable)
    mode = embeddings if embeddings != "auto" else ("online" if device.type == "cuda" or online_parts else "cache")
    if mode == "cache" and online_parts:
        raise ValueError("training the whole encoder or its adapters needs the encoder in the loop: use embeddings='online'")
    tail = "encoder_tail" in settings.trainable or settings.cache_features
    split = settings.tail_split if tail and mode == "cache" else None
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
        keep = eligible(row, history[0])
        trained = part_state(net, settings.trainable, settings.tail_split)
        if best is None or (keep, selection_score(row)) > (best["eligible"], best["score"]):
            best = {"epoch": epoch, "score": selection_score(row), "eligible": keep, "model": trained}
        log.info("epoch %d: loss %.4f, validation box %.2f, clicks %s (%.0f s)%s", epoch, row["train_loss"], val["box"],
                 val["clicks"], row["seconds"], " *" if best["epoch"] == epoch else "")
        save_checkpoint(checkpoint_path, {
            "format": FORMAT, "settings": settings.to_dict(), "epoch": epoch, "step": steps,
            "model": trained, "optimizer": optimizer.state_dict(),
            "rng": {"numpy": rng.bit_generator.state, "torch": torch.get_rng_state()},
            "history": history, "best": best,
        })
        _write_outputs(out, history, best, settings)

    if best is None:
        raise ValueError(f"no epoch trained: the checkpoint already holds {first_epoch - 1} epochs (ask for more with --epochs)")
    return _write_outputs(out, history, best, settings)


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
    parser.add_argument("--cache-features", action="store_true",
                        help="cache the encoder's features before --tail-split (shared by runs with and without encoder_tail)")
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
                        encoder_lr_scale=args.encoder_lr_scale, cache_features=args.cache_features)
    start = time.perf_counter()
    path = finetune(args.data, args.out, model=args.model, epochs=args.epochs, settings=settings, resume=args.resume,
                    device=args.device, embeddings=args.embeddings, cache_dir=args.cache_dir, progress=not args.no_progress)
    print(f"weights: {path} ({path.stat().st_size / 2**20:.1f} MB), {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
