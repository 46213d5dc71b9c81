"""Smoke test of a real bundle in an environment with only the runtime's extras (CI runs it without torch).

Set SAMMED_BUNDLE to a bundle folder (`.ci/run` builds the default one); skipped otherwise.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest

from sammed_edge.runtime import Predictor
from sammed_edge.runtime.io import read_dataset, read_image, read_mask
from sammed_edge.runtime.metrics import box_from_mask, dice

BUNDLE = os.environ.get("SAMMED_BUNDLE")
pytestmark = pytest.mark.skipif(not BUNDLE, reason="set SAMMED_BUNDLE to a bundle folder to run the smoke test")


def test_runtime_segments_real_images_without_torch(shared):
    if os.environ.get("SAMMED_REQUIRE_NO_TORCH"):
        assert importlib.util.find_spec("torch") is None, "this environment must not have torch"
    items = read_dataset(shared("data", "medseg-dev"))[:40:8]
    predictor = Predictor.from_bundle(BUNDLE)
    scores = []
    for item in items:
        truth = read_mask(item.mask)
        predictor.set_image(read_image(item.image))
        masks, iou, _ = predictor.predict(box=box_from_mask(truth), multimask_output=False)
        scores.append(dice(masks[0], truth))
    assert sum(scores) / len(scores) > 0.7, scores
    assert "torch" not in sys.modules


def test_cli_segment(shared, tmp_path):
    item = read_dataset(shared("data", "medseg-dev"))[0]
    box = [str(int(v)) for v in box_from_mask(read_mask(item.mask))]
    out = tmp_path / "mask.png"
    result = subprocess.run([sys.executable, "-m", "sammed_edge.runtime.cli", "segment", "--bundle", BUNDLE,
                             "--image", str(item.image), "--box", *box, "--out", str(out)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert dice(read_mask(out), read_mask(item.mask)) > 0.5
    info = subprocess.run([sys.executable, "-m", "sammed_edge.runtime.cli", "info", BUNDLE], capture_output=True, text=True)
    assert info.returncode == 0 and "hashes verified" in info.stdout
