"""The naive baseline of the multi-target benchmark: a plain export run with onnxruntime's defaults."""

from __future__ import annotations

import numpy as np

from sammed_edge.export.studies.bench_targets import NAIVE, naive_bundle
from sammed_edge.runtime import Predictor
from sammed_edge.runtime.bundle import load_bundle
from sammed_edge.runtime.samples import phantom


def test_naive_bundle_is_unfused_unslimmed_with_onnxruntime_defaults(tiny_bundle, tiny_model, tmp_path):
    out = naive_bundle(tiny_bundle, tmp_path / "naive", model=tiny_model)
    bundle = load_bundle(out)  # hashes verified
    assert bundle.manifest["target"]["name"] == NAIVE
    fused = load_bundle(tiny_bundle).manifest["graphs"]
    for graph in ("encoder", "decoder"):
        entry = bundle.manifest["graphs"][graph]
        assert entry["opset"] == 17 and "onnxslim" not in entry and "fusion" not in entry
        assert entry["nodes"] > fused[graph]["nodes"]  # no cleaning, no fusion
    naive, ours = Predictor.from_bundle(out), Predictor.from_bundle(tiny_bundle)
    assert naive.encoder.describe()["memory_pattern"] is True and naive.encoder.describe()["arena_shrinkage"] is False
    assert naive.decoder.describe()["memory_arena"] is True
    image = phantom(130, seed=3)[0]
    results = []
    for predictor in (naive, ours):
        predictor.set_image(image)
        results.append(predictor.predict(point_coords=[[60, 70]], point_labels=[1], return_logits=True)[0])
    np.testing.assert_allclose(results[0], results[1], rtol=0, atol=1e-3 * np.abs(results[1]).max())


def test_interleaved_rows_are_named_by_target_and_rendered(tiny_bundle, tiny_model, tmp_path):
    from sammed_edge.export.studies.bench_targets import interleaved, markdown

    naive = naive_bundle(tiny_bundle, tmp_path / "naive", model=tiny_model)
    turns = interleaved(naive, [tiny_bundle], ["onnx-fp32"], threads=1, rounds=2)
    assert turns["reference"] == NAIVE and list(turns["rows"]) == [NAIVE, "onnx-fp32"]
    assert turns["rows"][NAIVE]["encoder_ratio"] == 1.0 and turns["rows"]["onnx-fp32"]["click"]["runs"] == 2
    stats = {"median_ms": 1.0, "p90_ms": 1.0, "runs": 1}
    timing = {key: stats for key in ("encoder", "click", "end_to_end")}
    result = {"model": "tiny", "threads": 1, "runs": 1, "tools": {}, "interleaved": turns,
              "machine": {"cpu": "cpu", "cores": 1, "memory_gb": 1},
              "rows": {NAIVE: {"runtime": timing, "process": None}, "onnx-fp32": {"runtime": timing, "process": None}}}
    text = markdown(result)
    assert "timed in turns in one process (2 rounds" in text
    assert f"| onnx-fp32 | {turns['rows']['onnx-fp32']['encoder']['median_ms']:.0f} |" in text


def test_fusion_comparison_times_candidates_in_turns():
    from types import SimpleNamespace

    from sammed_edge.export.studies.compare_fusion import measure

    seen = []
    candidates = [SimpleNamespace(run=lambda feeds, k=k: seen.append(k), feeds={}, times=[1.0]) for k in range(2)]
    measure(candidates, rounds=3, warmup=0, gap_ms=0.0)
    assert [len(c.times) for c in candidates] == [4, 4] and sorted(seen) == [0, 0, 0, 1, 1, 1]
