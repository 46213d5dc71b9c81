"""The reduced-precision risk measure runs end to end on the CPU (bf16 autocast), softmax pinning included."""

from __future__ import annotations

import json
import math

import torch

from sammed_edge.export.studies import precision_risk


def test_bf16_risk_on_one_dev_image(shared, lite_medsam_model, tmp_path):
    shared("data", "medseg-dev", "label2image.json")
    with torch.random.fork_rng():
        assert precision_risk.main(["--images", "1", "--dtype", "bfloat16", "--device", "cpu", "--json", str(tmp_path / "r.json")]) == 0
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["images"] == 1 and result["masks"] >= 1 and set(result["variants"]) == set(precision_risk.VARIANTS)
    for row in result["variants"].values():
        # bf16 changes the numbers, but only a little: a wiring mistake (or fp32 everywhere) would not land here
        assert 1e-4 < row["embedding_rel_max"] < 0.5 and 1e-4 < row["logits_rel_max"] < 0.5
        assert math.isfinite(row["flipped_mean"]) and row["flipped_max"] < 0.05
