"""A run's files: the resumable checkpoint, the trained weights, the metrics table and plot, and epoch selection."""

from __future__ import annotations

import csv
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

log = logging.getLogger(__name__)

CHECKPOINT = "last.pt"
WEIGHTS = "weights.safetensors"
METRICS = "metrics.csv"
PLOT = "training-curves.png"
BOX_DICE_BUDGET = 1.0  # points of box Dice an epoch may lose against the starting model and still be selected


def selection_score(row: dict[str, Any]) -> float:
    return float(np.mean(row["val_clicks"]))


def eligible(row: dict[str, Any], baseline: dict[str, Any]) -> bool:
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


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def csv_value(value: Any) -> Any:
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
            flat["val_mean_clicks"] = round(selection_score(row), 2)
            flat["selected"] = int(row["epoch"] == selected)
            writer.writerow({key: csv_value(value) for key, value in flat.items()})


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
