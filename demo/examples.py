"""Example images for the demo, taken from test files that ship inside installed PyPI packages.

pydicom bundles small DICOM files (a CT slice, an MR slice, an RGB ultrasound frame) and nibabel a few NIfTI
volumes; the demo offers whichever of them are installed, so a fresh machine has examples without any image in
this repository.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Example:
    """An example image: a short name for the page, its file, and the reading options it is shown with."""

    name: str
    path: Path
    kind: str
    description: str
    window: str | None = None


# (name, package, file inside the package's data folder, kind, description, default window)
_CANDIDATES = (
    ("CT", "pydicom", "data/test_files/CT_small.dcm", "dicom", "CT slice, 128 x 128 (pydicom CT_small.dcm)", "abdomen"),
    ("MR", "pydicom", "data/test_files/MR_small.dcm", "dicom", "MR slice, 64 x 64 (pydicom MR_small.dcm)", None),
    ("Ultrasound", "pydicom", "data/test_files/examples_rgb_color.dcm", "dicom",
     "RGB ultrasound frame, 320 x 240 (pydicom examples_rgb_color.dcm)", None),
    ("NIfTI MR", "nibabel", "tests/data/example4d.nii.gz", "nifti",
     "4D MR volume 128 x 96 x 24 (nibabel example4d.nii.gz), first volume", None),
    ("NIfTI anatomical", "nibabel", "tests/data/anatomical.nii", "nifti",
     "anatomical MR volume 33 x 41 x 25 (nibabel anatomical.nii)", None),
)


def _package_dir(package: str) -> Path | None:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def find_examples() -> list[Example]:
    """The example images available in this environment (none when pydicom and nibabel are absent)."""
    found = []
    for name, package, relative, kind, description, window in _CANDIDATES:
        root = _package_dir(package)
        if root is not None and (root / relative).is_file():
            found.append(Example(name, root / relative, kind, description, window))
    return found


def example_by_name(name: str) -> Example:
    """The installed example called `name`.

    Raises:
        KeyError: no such example here.
    """
    for example in find_examples():
        if example.name == name:
            return example
    raise KeyError(f"example {name!r} is not available; installed: {[e.name for e in find_examples()]}")
