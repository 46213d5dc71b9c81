"""Tiny models and a tiny dataset in SAM-Med2D's layout for the fine-tuning tests (no downloads, no shared data)."""

from __future__ import annotations

import csv
import json

import cv2
import numpy as np
import pytest
import torch

from sammed_edge.runtime.samples import phantom

# A TinyViT LiteMedSAM at 64 px input: 16 x 16 embedding grid, 64 x 64 low-res logits, 16 channels.
TINY_LITE = dict(img_size=64, embed_dims=[8, 16, 16, 16], depths=[1, 1, 1, 1], num_heads=[1, 1, 1, 1],
                 window_sizes=[2, 2, 2, 2], neck_out=16)
# (modality, source, image sizes (H, W)); two modalities with two sources each, one with a single source.
SOURCES = [
    ("CT", "ct-a", [(70, 90), (80, 80)]),
    ("CT", "ct-b", [(90, 60), (64, 64)]),
    ("MR", "mr-a", [(72, 96), (96, 72)]),
    ("MR", "mr-b", [(80, 100), (70, 70)]),
    ("US", "us-a", [(60, 84), (84, 60)]),
]


def make_tiny_lite(seed: int = 0):
    """A randomly initialised tiny LiteMedSAM built through the registry, parameters perturbed by `seed`."""
    from sammed_edge.export.models import build_model

    torch.manual_seed(seed)
    model = build_model("lite_medsam", **TINY_LITE)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.05 * torch.randn(param.shape, generator=generator))
    return model


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run fastest on one thread (and do not compete with other work on the machine)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def tiny_lite():
    return make_tiny_lite()


@pytest.fixture
def make_lite():
    """`make_lite(seed)` -> a fresh tiny LiteMedSAM (the same seed gives the same weights)."""
    return make_tiny_lite


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory):
    return write_tiny_dataset(tmp_path_factory.mktemp("dataset"))


def write_tiny_dataset(root):
    """10 phantom images, 2 masks each (lesion, body), 5 sources over 3 modalities, with manifest.csv."""
    (root / "images").mkdir()
    (root / "masks").mkdir()
    mapping, rows = {}, []
    seed = 0
    for modality, source, sizes in SOURCES:
        for height, width in sizes:
            image, lesion = phantom(max(height, width), seed=seed)
            image, lesion = image[:height, :width], lesion[:height, :width]
            body = image[:, :, 0] > 40
            name = f"{source}_{seed}"
            cv2.imwrite(str(root / "images" / f"{name}.png"), image)
            for label, mask in (("lesion", lesion), ("body", body)):
                key = f"masks/{name}_{label}.png"
                cv2.imwrite(str(root / key), mask.astype(np.uint8) * 255)
                mapping[key] = f"images/{name}.png"
                rows.append({"image": f"images/{name}.png", "mask": key, "modality": modality, "source_dataset": source,
                             "class": label, "license_note": "synthetic"})
            seed += 1
    (root / "label2image.json").write_text(json.dumps(mapping))
    with (root / "manifest.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return root
