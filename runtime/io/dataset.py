"""Datasets in SAM-Med2D's layout: `images/`, `masks/`, `label2image.json` (mask -> image), optional manifest.csv."""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass
from pathlib import Path

DATA_ENV = "SAMMED_DATA"


@dataclass(frozen=True)
class MaskItem:
    """One object mask and the image it belongs to (absolute paths), with the manifest's metadata if any."""

    image: Path
    mask: Path
    modality: str = ""
    label: str = ""
    source: str = ""


def default_data_root() -> Path | None:
    """The development set: $SAMMED_DATA, else `../shared/data/medseg-dev` beside the working directory or checkout."""
    if os.environ.get(DATA_ENV):
        return Path(os.environ[DATA_ENV])
    for base in (Path.cwd(), Path(__file__).resolve().parents[2]):
        candidate = base.parent / "shared" / "data" / "medseg-dev"
        if (candidate / "label2image.json").is_file():
            return candidate
    return None


def read_dataset(root: str | Path) -> list[MaskItem]:
    """All (image, mask) pairs of a dataset folder, in label2image.json order.

    Raises:
        FileNotFoundError: no label2image.json in `root`.
    """
    root = Path(root)
    index = root / "label2image.json"
    if not index.is_file():
        raise FileNotFoundError(f"{root} is not a dataset in SAM-Med2D's layout (no label2image.json)")
    mapping: dict[str, str] = json.loads(index.read_text())
    meta: dict[str, dict[str, str]] = {}
    manifest = root / "manifest.csv"
    if manifest.is_file():
        with manifest.open(newline="") as handle:
            meta = {row["mask"]: row for row in csv.DictReader(handle)}
    items = []
    for mask, image in mapping.items():
        row = meta.get(mask, {})
        items.append(MaskItem(root / image, root / mask, row.get("modality", ""), row.get("class", ""), row.get("source_dataset", "")))
    return items
