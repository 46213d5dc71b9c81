"""Datasets in SAM-Med2D's layout: `images/`, `masks/`, `label2image.json` (mask -> image), optional manifest.csv."""

from __future__ import annotations

import csv
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

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


def read_datasets(roots: Iterable[str | Path]) -> list[MaskItem]:
    """The items of several datasets, one after the other (`read_dataset` of each root, in order).

    Raises:
        FileNotFoundError: a root that is not a dataset.
        ValueError: no roots, or a mask file listed by two roots.
    """
    roots = list(roots)
    if not roots:
        raise ValueError("no dataset given")
    items: list[MaskItem] = []
    for root in roots:
        items.extend(read_dataset(root))
    masks = [item.mask.resolve() for item in items]
    if len(set(masks)) != len(masks):
        raise ValueError("the datasets list a mask file twice; give each dataset once")
    return items


def cap_per_source(items: Sequence[MaskItem], limit: int | None, seed: int = 0) -> list[MaskItem]:
    """At most `limit` masks of every source, chosen by a seeded hash of the mask's file name; input order kept.

    A large source would otherwise decide a mean over sources by itself. The choice of a mask depends only on
    (seed, source, mask file name), so it does not change with the other sources, the order or the folder.

    Args:
        items: dataset items.
        limit: masks kept per source (None keeps all).
        seed: seed of the hash order.
    """
    if limit is None:
        return list(items)
    if limit < 1:
        raise ValueError(f"the per-source limit must be >= 1, got {limit}")

    def rank(item: MaskItem) -> str:
        return hashlib.sha256(f"{int(seed)}\x00{item.source}\x00{item.mask.name}".encode()).hexdigest()

    by_source: dict[str, list[MaskItem]] = {}
    for item in items:
        by_source.setdefault(item.source, []).append(item)
    kept = {id(item) for group in by_source.values() for item in sorted(group, key=rank)[:limit]}
    return [item for item in items if id(item) in kept]


def select_sources(items: Sequence[MaskItem], names: Sequence[str]) -> list[MaskItem]:
    """Items whose source is one of `names` or starts with one of them (manifest.csv's source_dataset)."""
    return [item for item in items if any(item.source.startswith(name) for name in names)]
