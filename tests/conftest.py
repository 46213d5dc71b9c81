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


@pytest.fixture(name="shared")
def shared_fixture():
    """`shared("reference", "x.json")` -> path under ../shared, skipping (failing in CI) when absent."""
    return require_shared
