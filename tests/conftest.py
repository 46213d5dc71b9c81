"""Shared test helpers: locating ../shared (reference vectors, data) and the real LiteMedSAM weights.

Tests that need ../shared skip with a reason when it is absent, and fail instead when CI=true (CI always has it).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
IN_CI = os.environ.get("CI", "").lower() == "true"


def shared_root() -> Path:
    return Path(os.environ.get("SAMMED_SHARED") or REPO.parent / "shared")


def require_shared(*parts: str) -> Path:
    """Path under ../shared; skip (or fail in CI) when it is missing."""
    path = shared_root().joinpath(*parts)
    if not path.exists():
        message = f"{path} is missing (reference material lives in ../shared; set SAMMED_SHARED to relocate it)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture(scope="session")
def sammed2d_parity() -> tuple[Path, dict[str, np.ndarray]]:
    folder = require_shared("reference", "parity-sammed2d-small")
    with np.load(folder / "vectors.npz") as data:
        return folder, dict(data)


@pytest.fixture(scope="session")
def litemedsam_parity() -> dict[str, np.ndarray]:
    folder = require_shared("reference", "parity-litemedsam")
    with np.load(folder / "vectors.npz") as data:
        return dict(data)


@pytest.fixture(scope="session")
def lite_medsam_model():
    """LiteMedSAM with its released weights (fetched once into the cache); skips offline unless in CI."""
    from sammed_edge.export.models import CheckpointError, load_model

    try:
        return load_model("lite_medsam")
    except CheckpointError as exc:
        if IN_CI:
            raise
        pytest.skip(f"LiteMedSAM weights unavailable: {exc}")


@pytest.fixture(scope="session")
def medvol_dev() -> Path:
    """../shared/data/medvol-dev (labelled 3D volumes), skipping (failing in CI) when absent."""
    return require_shared("data", "medvol-dev")


@pytest.fixture(name="shared")
def shared_fixture():
    """`shared("reference", "x.json")` -> path under ../shared, skipping (failing in CI) when absent."""
    return require_shared


TINY_SAM_MED2D = dict(embed_dim=64, depth=2, num_heads=2, global_attn_indexes=[1], img_size=64, out_chans=32)


def randomized(model, seed: int = 0):
    """Perturb every parameter so that zero-initialised tables do not hide wiring mistakes."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.1 * torch.randn(param.shape, generator=generator))
    return model


@pytest.fixture(scope="session")
def tiny_model():
    """A small random SAM-Med2D-architecture model (64 px input, adapters), built through the registry."""
    import torch

    from sammed_edge.export.models import build_model

    # the same model in every test session, whichever tests drew random numbers before this fixture
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return randomized(build_model("sam_med2d_vit_b", **TINY_SAM_MED2D))


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory, tiny_model):
    """An onnx-fp32 bundle of `tiny_model`, built and verified by the real pipeline."""
    from sammed_edge.export.bundler import TARGETS, build_bundle
    from sammed_edge.runtime.samples import phantom

    out = tmp_path_factory.mktemp("bundles") / "tiny-onnx-fp32"
    images = [phantom(120 + 40 * i, seed=i)[0] for i in range(2)]
    build_bundle(tiny_model, TARGETS["onnx-fp32"], out, images, model_name="tiny", checkpoint=None)
    return out
