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


def test_compare_bundles_times_in_turns_with_ratios(tiny_bundle, tmp_path):
    import json
    import subprocess
    import sys

    from sammed_edge.runtime.bench import compare_bundles, compare_markdown

    result = compare_bundles({"a": tiny_bundle, "b": tiny_bundle}, rounds=3, threads=1, gap_ms=1.0, size=96)
    assert result["reference"] == "a" and list(result["rows"]) == ["a", "b"]
    for row in result["rows"].values():
        assert row["encoder"]["runs"] == 3 and row["click"]["runs"] == 3 and row["click"]["median_ms"] > 0
        assert row["encoder_ratio"] > 0 and row["click_ratio"] > 0
    assert result["rows"]["a"]["encoder_ratio"] == result["rows"]["a"]["click_ratio"] == 1.0
    assert "| b |" in compare_markdown(result)
    # the CLI's form: bundles named by their paths, --bundle first; a bundle given twice gets a second row
    report = tmp_path / "compare.json"
    subprocess.run([sys.executable, "-m", "sammed_edge.runtime.cli", "bench", "--bundle", str(tiny_bundle), "--compare",
                    str(tiny_bundle), "--rounds", "2", "--threads", "1", "--json", str(report)], check=True, capture_output=True, timeout=300)
    cli = json.loads(report.read_text())
    assert cli["rounds"] == 2 and cli["reference"] == str(tiny_bundle) and list(cli["rows"]) == [str(tiny_bundle), f"{tiny_bundle}#2"]


def test_time_in_turns_runs_every_call_once_per_round_in_shuffled_orders():
    from sammed_edge.runtime.bench import time_in_turns

    log: list[int] = []
    calls = [lambda i=i: log.append(i) for i in range(3)]
    times = time_in_turns(calls, rounds=6, warmup=1, gap_ms=0.0)
    assert [len(t) for t in times] == [6, 6, 6] and all(ms >= 0 for t in times for ms in t)
    assert log[:3] == [0, 1, 2]  # warm-up, in order
    rounds = [log[3 + 3 * r: 6 + 3 * r] for r in range(6)]
    assert all(sorted(r) == [0, 1, 2] for r in rounds)
    assert len({tuple(r) for r in rounds}) > 1  # the order changes between rounds


def test_time_in_turns_phases_run_one_after_another():
    from sammed_edge.runtime.bench import time_in_turns

    log: list[int] = []
    calls = [lambda i=i: log.append(i) for i in range(4)]
    time_in_turns(calls, rounds=3, warmup=0, gap_ms=0.0, phases=[[0, 2], [1, 3]])
    for r in range(3):
        round_log = log[4 * r: 4 * r + 4]
        assert sorted(round_log[:2]) == [0, 2] and sorted(round_log[2:]) == [1, 3]


def _report(click_ms: float) -> dict:
    stats = {"median_ms": click_ms, "p90_ms": click_ms + 1, "runs": 3}
    return {
        "model": "m", "family": "f", "target": "onnx-fp32", "threads": 2, "image_size": 512,
        "machine": {"cpu": "cpu", "cores": 2, "memory_gb": 1.0}, "tools": {"numpy": "2"}, "torch_eager": None,
        "runtime": {key: stats for key in ("encoder", "set_image", "click", "click_3", "end_to_end")},
        "process": {"cold_start_s": 1.0, "cold_start_p90_s": 1.1, "runs": 2, "in_process_first_mask_s": 0.9,
                    "peak_rss_mb": 100.0, "torch_loaded": False},
    }


def test_write_report_replaces_only_its_own_section(tmp_path):
    from sammed_edge.runtime.bench import write_report

    doc = tmp_path / "benchmarks.md"
    doc.write_text("# Benchmarks\n\nintro\n\n### m (f), target `onnx-fp32`\n\nold table\n\n## Next part\n\nkept text\n\n### other\n\nkept too\n")
    write_report(_report(12.5), doc, None)
    once = doc.read_text()
    assert "old table" not in once and "| 12.5 |" in once
    assert once.index("| 12.5 |") < once.index("\n\n## Next part\n\nkept text") < once.index("### other\n\nkept too")
    write_report(_report(12.5), doc, None)
    assert doc.read_text() == once
