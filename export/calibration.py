"""Calibration images for post-training quantization, and the held-out masks the accuracy gate scores.

Default source: the development set (`$SAMMED_DATA` or ../shared/data/medseg-dev). Images are split by a stable
hash of their file name into a calibration part and a disjoint held-out part, so the gate never scores an image
the quantizer has seen. `--calib DIR` overrides the source: a dataset in SAM-Med2D's layout (calibration images
and held-out masks both come from it) or a plain folder of images / DICOM files (calibration only; the gate then
scores agreement with the fp32 graph on those of its images that were not used for calibration). Without any
folder, the CT / MR / ultrasound test images that ship inside pydicom are used, else synthetic phantoms.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sammed_edge.runtime.io import MaskItem, default_data_root, read_dataset, read_image
from sammed_edge.runtime.io.loading import file_kind, load_for_segmentation
from sammed_edge.runtime.samples import phantom

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".dcm", ".nii", ".nii.gz")
PYDICOM_SAMPLES = ("CT_small.dcm", "MR_small.dcm", "US1_UNCR.dcm", "SC_rgb.dcm", "MR2_UNCI.dcm", "examples_ybr_color.dcm")


@dataclass
class CalibrationSet:
    """Images to calibrate on and what the accuracy gate scores.

    Attributes:
        images: H x W x 3 uint8 calibration images.
        holdout: masks of other images, for the gate (empty when the source has no masks).
        holdout_images: images not used for calibration, for a gate against the fp32 graph when there are no masks.
        source: where the images came from, for the manifest.
    """

    images: list[np.ndarray]
    holdout: list[MaskItem] = field(default_factory=list)
    holdout_images: list[np.ndarray] = field(default_factory=list)
    source: str = ""

    def describe(self) -> dict[str, object]:
        return {"source": self.source, "calibration_images": len(self.images), "holdout_masks": len(self.holdout),
                "holdout_images": len(self.holdout_images)}


def _bucket(name: str) -> float:
    """Stable pseudo-random number in [0, 1) from a file name."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big") / 2**64


def split_dataset(items: list[MaskItem], calibration: int, holdout: int, holdout_share: float = 0.5) -> tuple[list[Path], list[MaskItem]]:
    """Disjoint calibration images and held-out masks of a dataset, chosen by a hash of each image's name.

    Images whose hash falls below `holdout_share` are held out; calibration images are spread over the rest.
    """
    images = sorted({item.image for item in items}, key=lambda p: p.name)
    held = {p for p in images if _bucket(p.name) < holdout_share}
    calib_pool = [p for p in images if p not in held]
    picks = np.linspace(0, len(calib_pool) - 1, num=min(calibration, len(calib_pool))).round().astype(int) if calib_pool else []
    holdout_items = [item for item in items if item.image in held]
    if len(holdout_items) > holdout:
        holdout_items = [holdout_items[i] for i in np.linspace(0, len(holdout_items) - 1, num=holdout).round().astype(int)]
    return [calib_pool[i] for i in picks], holdout_items


def _pydicom_images() -> list[np.ndarray]:
    try:
        from pydicom.data import get_testdata_file
    except ImportError:
        return []
    images = []
    for name in PYDICOM_SAMPLES:
        try:
            path = get_testdata_file(name, download=False)
        except Exception:  # pydicom versions differ in what they ship; a missing sample is skipped
            path = None
        if path:
            images.append(load_for_segmentation(path).image)
    return images


def calibration_set(source: str | Path | None = None, calibration: int = 32, holdout: int = 60) -> CalibrationSet:
    """Calibration images and gate data from `source` (see the module docstring for the defaults)."""
    root = Path(source) if source is not None else default_data_root()
    if root is not None and (root / "label2image.json").is_file():
        calib_paths, holdout_items = split_dataset(read_dataset(root), calibration, holdout)
        return CalibrationSet([read_image(p) for p in calib_paths], holdout_items, source=f"dataset {root}")
    if root is not None and root.is_dir():
        files = sorted(p for p in root.rglob("*") if p.is_file() and (p.name.lower().endswith(IMAGE_SUFFIXES) or file_kind(p) == "dicom"))
        if not files:
            raise FileNotFoundError(f"no images in {root}")
        images = [load_for_segmentation(p).image for p in files]
        held = [image for path, image in zip(files, images) if _bucket(path.name) < 0.25][:holdout]
        calib = [image for path, image in zip(files, images) if _bucket(path.name) >= 0.25][:calibration]
        return CalibrationSet(calib or images[:calibration], [], held, source=f"folder {root}")
    images = _pydicom_images()
    if images:
        return CalibrationSet(images[::2], [], images[1::2], source="pydicom test files")
    images = [phantom(seed=i)[0] for i in range(calibration + 4)]
    return CalibrationSet(images[:calibration], [], images[calibration:], source="synthetic phantoms")
