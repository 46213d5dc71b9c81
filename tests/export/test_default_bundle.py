"""The README's main job: `python export/build.py --target onnx-fp32` builds a verified default bundle, and
`sammed-edge segment` turns a box on a real image into the right mask."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from sammed_edge.export.models import load_model
from sammed_edge.export.predictor import TorchPredictor
from sammed_edge.runtime.io import read_dataset, read_image, read_mask
from sammed_edge.runtime.metrics import box_from_mask, dice

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_build_default_and_segment(tmp_path, shared):
    out = tmp_path / "bundle"
    build = subprocess.run([sys.executable, str(REPO / "export" / "build.py"), "--target", "onnx-fp32", "--out", str(out)],
                           capture_output=True, text=True)
    assert build.returncode == 0, build.stderr[-2000:]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["model"]["name"] == "lite_medsam_clicks" and manifest["verification"]["passed"]
    assert Path(manifest["provenance"]["checkpoint"]["path"]).name.startswith("lite_medsam_clicks-")
    assert "verified against PyTorch on 4 images" in build.stdout

    item = next(i for i in read_dataset(shared("data", "medseg-dev")) if i.modality == "CT")
    truth = read_mask(item.mask)
    box = box_from_mask(truth)
    mask_path = tmp_path / "mask.png"
    segment = subprocess.run([sys.executable, "-m", "sammed_edge.runtime.cli", "segment", "--bundle", str(out), "--image",
                              str(item.image), "--box", *map(str, box), "--out", str(mask_path)], capture_output=True, text=True)
    assert segment.returncode == 0, segment.stderr
    ours = read_mask(mask_path)
    reference = TorchPredictor(load_model("lite_medsam_clicks"))
    reference.set_image(read_image(item.image))
    ref, _, _ = reference.predict(box=box, multimask_output=False)
    assert (ours == ref[0]).mean() > 0.999
    assert dice(ours, truth) > 0.6
