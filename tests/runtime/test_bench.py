"""The benchmark protocol runs on a real bundle and reports every measure, the click broken into its parts."""

from __future__ import annotations

from sammed_edge.runtime import Predictor
from sammed_edge.runtime.bench import measure_predictor


def test_measure_predictor_reports_click_breakdown(tiny_bundle):
    result = measure_predictor(Predictor.from_bundle(tiny_bundle), runs=2, warmup=1, size=96)
    expected = {"encoder", "set_image", "end_to_end", "click", "click_3", "click_prompts", "click_decoder", "click_post"}
    assert set(result) == expected
    for name, stats in result.items():
        assert stats["median_ms"] > 0 and stats["p90_ms"] >= stats["median_ms"] and stats["runs"] >= 2, (name, stats)
