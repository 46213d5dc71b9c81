"""Distil a model's image encoder into a small student: embeddings first, then prompts in the loop.

    python -m sammed_edge.export.train.distill --out out/train/student --epochs 8 --bf16
    python -m sammed_edge.export.train.distill --out out/train/student --epochs 8 --bf16 --resume
    python -m sammed_edge.export.train.distill --out out/train/student --epochs 8 --bf16 --prompt-epochs 1

Stage 1 (embeddings): the student encoder learns to reproduce the teacher's image embeddings (MSE), as MobileSAM
does. The teacher's embeddings are computed once and cached on disk (`embeddings.EmbeddingCache`, keyed by image
content and encoder weights), so an epoch costs only the student's forward and backward passes. Images: the
training sources of the dataset (the validation sources, `data.split_by_source`, are never seen) plus an unlabeled
pool of real images without masks; pool images whose source shares its first word with a validation source
("BUSI ...") are left out too. Augmentation: a random gamma on the [0, 1] image (LiteMedSAM's min-max input), the
target staying the teacher's embedding of the original, which teaches invariance to window/contrast settings.

Stage 2 (prompts, `--prompt-epochs`): the student encoder, in the loop, is fine-tuned through the frozen prompt
encoder and decoder with the interactive recipe of `finetune` (box or points first, corrective clicks, SAM-Med2D's
loss), as EdgeSAM's prompt-in-the-loop stage does.

The student starts from the teacher's weights where shapes allow (`models.student.init_from_teacher`), and its
prompt encoder and mask decoder are the teacher's. After every epoch it is validated on the validation sources
(embedding MSE; box and click Dice with the evaluator's protocols); the epoch with the best box Dice is kept.

Outputs in --out: last.pt (resumable: state dicts, optimiser, scheduler position, random-generator states),
metrics.csv, split.json, weights.safetensors (the kept epoch's image-encoder entries in float16, the format of
`export/weights/student.safetensors`), and prompts/ (stage 2's run folder) with --prompt-epochs.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import logging
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from sammed_edge.runtime import processing
from sammed_edge.runtime.io import cap_per_source, default_data_root, read_dataset
from sammed_edge.runtime.progress import ProgressBar

from ..models import SamModel, build_model, list_models, load_model
from ..models.student import StudentEncoder, init_from_teacher
from ..models.tiny_vit import TinyViT
from . import finetune as ft
from . import loop, records
from .data import ImageRef, default_pool, leave_sources_out, load_image, load_mask_set
from .embeddings import EmbeddingCache

log = logging.getLogger(__name__)

CHECKPOINT = "last.pt"
WEIGHTS = "weights.safetensors"
METRICS = "metrics.csv"
FORMAT = 1


@dataclass(frozen=True)
class DistillSettings:
    """Everything that decides the result of a distillation run; a resumed run must have the same.

    Attributes:
        teacher: registered name or checkpoint path of the teacher (its prompt encoder and decoder go to the student).
        student: registered name of the student architecture.
        student_overrides: settings of that architecture that differ from its registered ones (`depths`, ...).
        init: "teacher" (copy the teacher's weights where shapes allow) or "random".
        epochs: stage-1 epochs (the learning-rate schedule spans them).
        batch_size: images per step.
        lr: peak AdamW learning rate (cosine decay after a one-epoch-fraction warm-up).
        weight_decay: AdamW weight decay.
        pool_limit: at most this many unlabeled-pool images (None: all), drawn with the seed.
        gamma_prob: probability of the gamma augmentation per image; gamma_range: its log-uniform range.
        seed: training seed (order, augmentation, pool draw).
        split_seed: seed of the validation-source choice.
        bf16: bfloat16 autocast for the student's training passes.
        limit_train: train on the first N images only (quick runs).
        val_clicks: clicks of the validation protocol.
        val_per_source: at most that many validation masks per source (None: all).
        prompt_recipe: `finetune.Settings` fields for stage 2 beyond its defaults (views, schedule, prompt
            sampling, ...), e.g. the teacher's fine-tuning recipe; batch size, seeds, bf16 and clicks come from here.
    """

    teacher: str = "lite_medsam_clicks"
    student: str = "student"
    student_overrides: dict[str, Any] = dataclasses.field(default_factory=dict)
    init: str = "teacher"
    epochs: int = 8
    batch_size: int = 8
    lr: float = 5e-4
    weight_decay: float = 0.01
    pool_limit: int | None = 800
    gamma_prob: float = 0.5
    gamma_range: tuple[float, float] = (0.7, 1.4)
    seed: int = 0
    split_seed: int = 0
    bf16: bool = False
    limit_train: int | None = None
    val_clicks: int = 5
    val_per_source: int | None = None
    prompt_recipe: dict[str, Any] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["gamma_range"] = list(self.gamma_range)
        return out


# ------------------------------------------------------------------------------------------------------ data


def pool_images(pool: str | Path | None, excluded_sources: Sequence[str], limit: int | None, seed: int) -> list[Path]:
    """Images of an unlabeled pool (a folder with manifest.csv: file, modality, source_dataset), minus sources that
    share their first word with `excluded_sources`, at most `limit` of them drawn with `seed` (sorted by path)."""
    if pool is None:
        return []
    pool = Path(pool)
    manifest = pool / "manifest.csv"
    if not manifest.is_file():
        raise FileNotFoundError(f"unlabeled pool {pool} has no manifest.csv")
    banned = {source.split()[0].lower() for source in excluded_sources if source.split()}
    with manifest.open(newline="") as handle:
        rows = [row for row in csv.DictReader(handle) if (row.get("source_dataset") or "").split()[:1] != []]
    kept = sorted(pool / row["file"] for row in rows if row["source_dataset"].split()[0].lower() not in banned)
    if limit is not None and limit < len(kept):
        chosen = np.random.default_rng(seed).choice(len(kept), size=limit, replace=False)
        kept = [kept[i] for i in sorted(chosen)]
    return kept


def preprocess_all(model: SamModel, paths: Sequence[Path | ImageRef], progress: bool = True) -> torch.Tensor:
    """N x 3 x S x S float16 model inputs of image files or views (the model family's preprocessing)."""
    policy = model.processing_policy()
    out = torch.empty((len(paths), 3, policy.input_size, policy.input_size), dtype=torch.float16)
    bar = ProgressBar("images", len(paths), enabled=progress)
    try:
        for index, path in enumerate(paths):
            tensor, _ = processing.preprocess_image(load_image(path), policy)
            out[index] = torch.from_numpy(tensor[0])
            bar.advance()
    finally:
        bar.close()
    return out


def gamma_augment(images: torch.Tensor, rng: np.random.Generator, prob: float, low: float, high: float) -> torch.Tensor:
    """Random gamma per image on B x 3 x S x S inputs in [0, 1] (min-max normalised; padding stays 0)."""
    gammas = np.where(rng.random(len(images)) < prob, np.exp(rng.uniform(math.log(low), math.log(high), len(images))), 1.0)
    scale = torch.as_tensor(gammas, dtype=images.dtype).view(-1, 1, 1, 1)
    return images.clamp(min=0.0).pow(scale)


# ------------------------------------------------------------------------------------------------ the student


def make_student(settings: DistillSettings, teacher: SamModel, student: SamModel | None = None) -> SamModel:
    """The student model (`student`, or the registered `settings.student`): its encoder from the teacher's weights
    (or random), the teacher's prompt encoder and decoder."""
    if student is None:
        overrides = dict(settings.student_overrides)
        if settings.init == "teacher" and isinstance(teacher.image_encoder, TinyViT):
            overrides = {**teacher_shaped(teacher, settings.student), **overrides}
        student = build_model(settings.student, **overrides)
    if settings.init == "teacher":
        if not isinstance(student.image_encoder, StudentEncoder) or not isinstance(teacher.image_encoder, TinyViT):
            raise ValueError("init='teacher' needs a TinyViT teacher and a StudentEncoder student; use init='random'")
        init_from_teacher(student.image_encoder, teacher.image_encoder)
    elif settings.init != "random":
        raise ValueError(f"init must be 'teacher' or 'random', got {settings.init!r}")
    student.prompt_encoder.load_state_dict(teacher.prompt_encoder.state_dict())
    student.mask_decoder.load_state_dict(teacher.mask_decoder.state_dict())
    if student.processing_policy() != teacher.processing_policy():
        raise ValueError("student and teacher preprocess differently; their embeddings cannot be compared")
    return student.eval()


def teacher_shaped(teacher: SamModel, student: str) -> dict[str, Any]:
    """Settings that give the registered `student` the widths, input size and heads of a TinyViT teacher (so it can
    start from the teacher's weights), with no more blocks per stage than the teacher has."""
    from ..models.registry import MODELS

    mine = MODELS[student].config()["image_encoder"]
    theirs = teacher.config["image_encoder"]
    shared = ("img_size", "in_chans", "embed_dims", "num_heads", "mlp_ratio", "mbconv_expand_ratio", "local_conv_size", "neck_out")
    out = {key: theirs[key] for key in shared}
    out["depths"] = [min(a, b) for a, b in zip(mine["depths"], theirs["depths"])]
    return out


def learning_rate(settings: DistillSettings, step: int, total: int) -> float:
    """Linear warm-up over the first 3 % of steps, then cosine decay to 1 % of the peak."""
    warm = max(1, int(0.03 * total))
    if step < warm:
        return settings.lr * (step + 1) / warm
    progress = min(1.0, (step - warm) / max(1, total - warm))
    return settings.lr * (0.01 + 0.99 * 0.5 * (1.0 + math.cos(math.pi * progress)))


@torch.no_grad()
def embedding_error(encoder: torch.nn.Module, inputs: torch.Tensor, targets: torch.Tensor, batch_size: int) -> float:
    """Mean squared error of the encoder's embeddings against `targets` (eval mode, float32)."""
    encoder.eval()
    total = 0.0
    for start in range(0, len(inputs), batch_size):
        out = encoder(inputs[start : start + batch_size].float())
        total += float(((out - targets[start : start + batch_size].float()) ** 2).mean(dim=(1, 2, 3)).sum())
    return total / len(inputs)


# ------------------------------------------------------------------------------------------------------ stage


def distill(
    data: str | Path | Sequence[str | Path],
    out: str | Path,
    *,
    pool: str | Path | None = None,
    settings: DistillSettings | None = None,
    teacher: SamModel | None = None,
    student: SamModel | None = None,
    resume: bool = False,
    device: str | torch.device | None = None,
    cache_dir: str | Path | None = None,
    prompt_epochs: int = 0,
    progress: bool = True,
) -> Path:
    """Distil the teacher's image encoder into the student and write the kept epoch's weights.

    Args:
        data: one or more datasets in SAM-Med2D's layout with manifest.csv (training images and the validation
            sources, split as the fine-tuning stage splits them: `data.leave_sources_out`).
        out: run folder.
        pool: unlabeled images with manifest.csv (optional).
        settings: the run's settings (default `DistillSettings()`).
        teacher, student: model objects instead of the settings' registered names (tests, custom architectures);
            the settings then record "custom".
        resume: continue from out/last.pt (settings must match).
        device: torch device (default CUDA when available, else CPU).
        cache_dir: teacher-embedding cache (default ~/.cache/sammed-edge/embeddings).
        prompt_epochs: epochs of stage 2 (prompts in the loop) after stage 1; 0 skips it.
        progress: draw progress bars.

    Returns:
        Path of the student's float16 image-encoder weights (out/weights.safetensors; stage 2's when it ran).

    Raises:
        ValueError: settings that contradict the checkpoint, an empty split.
        FileNotFoundError: --resume without a checkpoint, a pool without manifest.csv.
    """
    out = Path(out)
    settings = settings or DistillSettings()
    settings = dataclasses.replace(settings, teacher=settings.teacher if teacher is None else "custom",
                                   student=settings.student if student is None else "custom")
    device = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
    checkpoint_path = out / CHECKPOINT
    state = records.read_resume_state(checkpoint_path, FORMAT, settings.to_dict()) if resume else None

    rng = np.random.default_rng(settings.seed)
    torch.manual_seed(settings.seed)
    teacher = (teacher if teacher is not None else load_model(settings.teacher)).to(device)
    student = make_student(settings, teacher, student).to(device)

    roots = [data] if isinstance(data, (str, Path)) else list(data)
    datasets = [read_dataset(root) for root in roots]
    held = leave_sources_out(datasets, settings.split_seed)
    items = [item for dataset in datasets for item in dataset]
    train_items = [item for item in items if item.source not in held]
    val_items = cap_per_source([item for item in items if item.source in held], settings.val_per_source, settings.split_seed)
    train_paths = sorted({item.image for item in train_items})
    extra = pool_images(pool, held, settings.pool_limit, settings.seed)
    paths = (train_paths + extra)[: settings.limit_train]
    if not paths or not val_items:
        raise ValueError(f"empty split: {len(paths)} training images and {len(val_items)} validation masks")
    out.mkdir(parents=True, exist_ok=True)
    (out / "split.json").write_text(json.dumps({
        "split_seed": settings.split_seed, "validation_sources": held,
        "train_images": len(paths), "dataset_images": len(train_paths[: settings.limit_train]),
        "pool_images": max(0, len(paths) - len(train_paths)), "validation_masks": len(val_items),
    }, indent=1) + "\n")

    cache = EmbeddingCache(teacher, cache_dir)
    targets = cache.load_all(paths, progress=progress)
    inputs = preprocess_all(teacher, paths, progress=progress)
    masks = load_mask_set(val_items, student.processing_policy(), progress=progress)
    val_targets = cache.load_all(masks.images, progress=progress)
    val_inputs = preprocess_all(teacher, masks.images, progress=progress)
    log.info("teacher embeddings: %d cached, %d computed", cache.hits, cache.misses)
    del teacher

    encoder = student.image_encoder
    optimizer = torch.optim.AdamW(encoder.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    steps_per_epoch = math.ceil(len(paths) / settings.batch_size)
    total_steps = steps_per_epoch * settings.epochs
    val_store = loop.ImageStore(student, masks.images, "online")
    val_index = np.arange(len(masks))

    def validation() -> dict[str, Any]:
        mse = embedding_error(encoder, val_inputs.to(device), val_targets.to(device), settings.batch_size)
        result = loop.validate(student, val_store, masks, val_index, settings.batch_size, settings.val_clicks, device, progress)
        return {"val_mse": mse, "val_box": result["box"], "val_clicks": result["clicks"]}

    history: list[dict[str, Any]] = []
    best: dict[str, Any] | None = None
    first_epoch, step = 1, 0
    if state is not None:
        encoder.load_state_dict(state["encoder"])
        optimizer.load_state_dict(state["optimizer"])
        rng.bit_generator.state = state["rng"]["numpy"]
        torch.set_rng_state(state["rng"]["torch"])
        history, best, step = list(state["history"]), state["best"], int(state["step"])
        first_epoch = int(state["epoch"]) + 1
        log.info("resuming after epoch %d (%d steps) from %s", first_epoch - 1, step, checkpoint_path)
    else:
        start = time.perf_counter()
        row = {"epoch": 0, "steps": 0, "seconds": 0.0, "train_mse": None, **validation()}
        row["seconds"] = round(time.perf_counter() - start, 1)
        history.append(row)
        log.info("student at initialisation: validation mse %.5f, box %.2f, clicks %s", row["val_mse"], row["val_box"], row["val_clicks"])

    for epoch in range(first_epoch, settings.epochs + 1):
        start = time.perf_counter()
        encoder.train()
        order = rng.permutation(len(paths))
        bar = ProgressBar(f"distil {epoch}/{settings.epochs}", steps_per_epoch, enabled=progress)
        loss_sum = 0.0
        try:
            for index in range(steps_per_epoch):
                chunk = torch.as_tensor(order[index * settings.batch_size : (index + 1) * settings.batch_size])
                images = gamma_augment(inputs[chunk].float(), rng, settings.gamma_prob, *settings.gamma_range).to(device)
                target = targets[chunk].to(device=device, dtype=torch.float32)
                for group in optimizer.param_groups:
                    group["lr"] = learning_rate(settings, step, total_steps)
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=settings.bf16):
                    prediction = encoder(images)
                loss = torch.nn.functional.mse_loss(prediction.float(), target)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                step += 1
                loss_sum += float(loss.detach())
                bar.advance(postfix=f"mse {loss_sum / (index + 1):.5f}")
        finally:
            bar.close()
        row = {"epoch": epoch, "steps": step, "seconds": 0.0, "train_mse": loss_sum / steps_per_epoch, **validation()}
        row["seconds"] = round(time.perf_counter() - start, 1)
        history.append(row)
        if best is None or row["val_box"] > best["val_box"]:
            best = {"epoch": epoch, "val_box": row["val_box"], "encoder": _encoder_state(student)}
        log.info("epoch %d: train mse %.5f, validation mse %.5f, box %.2f, clicks %s (%.0f s)%s", epoch, row["train_mse"],
                 row["val_mse"], row["val_box"], row["val_clicks"], row["seconds"], " *" if best["epoch"] == epoch else "")
        records.save_checkpoint(checkpoint_path, {
            "format": FORMAT, "settings": settings.to_dict(), "epoch": epoch, "step": step,
            "encoder": {k: v.detach().cpu().clone() for k, v in encoder.state_dict().items()},
            "optimizer": optimizer.state_dict(),
            "rng": {"numpy": rng.bit_generator.state, "torch": torch.get_rng_state()},
            "history": history, "best": best,
        })
        _write_outputs(out, history, best, settings)
    if best is None:
        raise ValueError(f"no epoch trained: the checkpoint already holds {first_epoch - 1} epochs")
    weights = _write_outputs(out, history, best, settings)
    if prompt_epochs > 0:
        weights = prompt_stage(student, best, data, out / "prompts", settings, prompt_epochs, resume, device, progress)
    return weights


def _encoder_state(model: SamModel) -> dict[str, torch.Tensor]:
    return {f"image_encoder.{k}": v.detach().cpu().clone() for k, v in model.image_encoder.state_dict().items()}


def _write_outputs(out: Path, history: list[dict[str, Any]], best: dict[str, Any], settings: DistillSettings) -> Path:
    fields = ["epoch", "steps", "seconds", "train_mse", "val_mse", "val_box"] + [f"val_click{k}" for k in range(1, settings.val_clicks + 1)] + ["selected"]
    with (out / METRICS).open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        for row in history:
            flat = {key: row.get(key) for key in fields}
            flat.update({f"val_click{k + 1}": value for k, value in enumerate(row["val_clicks"])})
            flat["selected"] = int(row["epoch"] == best["epoch"])
            writer.writerow({key: records.csv_value(value) for key, value in flat.items()})
    metadata = {"settings": json.dumps(settings.to_dict()), "epoch": str(best["epoch"]), "stage": "embeddings",
                "validation": json.dumps(next(row for row in history if row["epoch"] == best["epoch"]), default=str)}
    return records.save_weights(best["encoder"], out / WEIGHTS, metadata)


def prompt_stage(student: SamModel, best: dict[str, Any], data: str | Path | Sequence[str | Path], out: Path, settings: DistillSettings, epochs: int,
                 resume: bool, device: torch.device, progress: bool) -> Path:
    """Stage 2: fine-tune the kept student encoder with prompts in the loop (decoder frozen); returns its weights."""
    state = {k.removeprefix("image_encoder."): v for k, v in best["encoder"].items()}
    student.image_encoder.load_state_dict(state)
    recipe = ft.Settings(**{**settings.prompt_recipe, "batch_size": settings.batch_size, "lr": settings.lr * 0.1,
                            "trainable": ("image_encoder",), "seed": settings.seed, "split_seed": settings.split_seed,
                            "bf16": settings.bf16, "val_clicks": settings.val_clicks,
                            "val_per_source": settings.val_per_source, "cache_features": False})
    resume = resume and (out / ft.CHECKPOINT).is_file()
    return ft.finetune(data, out, model=student, epochs=epochs, settings=recipe, resume=resume, device=device,
                       embeddings="online", progress=progress)


RECIPE_FIELDS = ("iterations", "box_prob", "interior_prob", "keep_box_prob", "centre_prob", "views", "schedule",
                 "warmup", "anywhere_prob", "tight_box_prob", "loose_box_prob", "focal_weight", "iou_weight")


def read_recipe(path: str | Path) -> dict[str, Any]:
    """The prompt-sampling and schedule fields of a fine-tuning run's settings (JSON, or a weights file's metadata)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), "pt") as handle:
            settings = json.loads((handle.metadata() or {}).get("settings", "{}"))
    else:
        settings = json.loads(path.read_text())
    return {key: settings[key] for key in RECIPE_FIELDS if key in settings}


# -------------------------------------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    defaults = DistillSettings()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_data = default_data_root()
    parser.add_argument("--data", type=Path, nargs="+", default=None if default_data is None else [default_data], metavar="DIR",
                        help="one or more datasets in SAM-Med2D's layout, split by source as fine-tuning splits them "
                             "(default: $SAMMED_DATA or ../shared/data/medseg-dev)")
    parser.add_argument("--pool", type=Path, default=None, metavar="DIR",
                        help="unlabeled images with manifest.csv (default: unlabeled-pool beside the dataset, when present)")
    parser.add_argument("--no-pool", action="store_true", help="train on the dataset's images only")
    parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="run folder")
    parser.add_argument("--teacher", default=defaults.teacher, help=f"teacher: {', '.join(list_models())} or a checkpoint path")
    parser.add_argument("--student", default=defaults.student, help="registered student architecture (default student)")
    parser.add_argument("--init", choices=("teacher", "random"), default=defaults.init, help="student initialisation")
    parser.add_argument("--epochs", type=int, default=defaults.epochs, help=f"stage-1 epochs (default {defaults.epochs})")
    parser.add_argument("--prompt-epochs", type=int, default=0, help="stage-2 epochs, prompts in the loop (default 0)")
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--lr", type=float, default=defaults.lr)
    parser.add_argument("--pool-limit", type=int, default=defaults.pool_limit, help="at most N pool images (default %(default)s)")
    parser.add_argument("--limit-train", type=int, default=None, metavar="N", help="train on the first N images only (quick runs)")
    parser.add_argument("--val-clicks", type=int, default=defaults.val_clicks, help="clicks of the validation protocol (default %(default)s)")
    parser.add_argument("--val-per-source", type=int, default=None, metavar="N", help="at most N validation masks per source")
    parser.add_argument("--prompt-recipe", type=Path, default=None, metavar="JSON",
                        help="stage 2's fine-tuning settings (a JSON object of finetune.Settings fields, or a weights "
                             ".safetensors whose metadata holds them)")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--split-seed", type=int, default=defaults.split_seed)
    parser.add_argument("--bf16", action="store_true", help="bfloat16 autocast for the training passes")
    parser.add_argument("--resume", action="store_true", help="continue from --out/last.pt")
    parser.add_argument("--cache-dir", type=Path, default=None, metavar="DIR", help="teacher-embedding cache")
    parser.add_argument("--device", default=None)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    pool = None if args.no_pool else (args.pool or default_pool(args.data[0] if args.data else None))
    settings = DistillSettings(
        teacher=args.teacher, student=args.student, init=args.init, epochs=args.epochs, batch_size=args.batch_size,
        lr=args.lr, pool_limit=args.pool_limit, seed=args.seed, split_seed=args.split_seed, bf16=args.bf16,
        limit_train=args.limit_train, val_clicks=args.val_clicks, val_per_source=args.val_per_source,
        prompt_recipe=read_recipe(args.prompt_recipe) if args.prompt_recipe else {},
    )
    try:
        weights = distill(args.data, args.out, pool=pool, settings=settings, resume=args.resume, device=args.device,
                          cache_dir=args.cache_dir, prompt_epochs=args.prompt_epochs, progress=not args.no_progress)
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"student weights: {weights}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
